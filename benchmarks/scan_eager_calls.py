"""PyTorch calls around the Triton kernels in a compiled mixer (Mamba's scan, gated_context's walk): what a
GPU would launch one by one.

Not a test: a count, printed as one JSON line per mixer, scan and direction setting.

    python -m benchmarks.scan_eager_calls                  # causal and bidirectional, d_model 64
    python -m benchmarks.scan_eager_calls --d-model 256 --length 512
    python -m benchmarks.scan_eager_calls --mixers gated_context --scans triton,pairwise

Why: on CUDA the scan was a graph break inside the compiled model (`torch.compiler.disable`; since
2026-12-05 a custom operator inside the graph, mixers/_ops.py, unless WAVEBENCH_SCAN_OPS=0), and every
PyTorch operation that runs at the break runs eagerly, one kernel launch each, where the compiled
graphs around it fuse theirs. This counts the `aten::` calls of one compiled mixer step (forward and
backward, under bf16 autocast as on a GPU), on CPU: a Triton scan runs through its CPU path with its
kernel launches replaced by no-ops (`benchmarks.common.stub_triton_launches`), so what is counted is
exactly the PyTorch work around the kernels (the outputs are garbage; the count does not depend on
them), and `launches` counts the kernels. A PyTorch scan (`--scans pairwise`) runs as it is.
`top_level` counts calls not made from inside another aten call: the ones a host issues.
"""
from __future__ import annotations

import argparse
import json

import torch

import mixers
from benchmarks.common import stub_triton_launches
from core.quiet import no_profiler_chatter
from core.env import git_commit


def count(d_model: int, causal: bool, batch: int, length: int, mixer: str = "mamba", scan: str = "triton",
          launches: list | None = None) -> dict:
    torch.manual_seed(0)
    m = mixers.build(mixer, d_model, causal, scan=scan)
    step = torch.compile(m)
    x = torch.randn(batch, length, d_model, requires_grad=True)
    pad = torch.ones(batch, length, dtype=torch.bool)
    pad[1:, :5] = False  # padded rows, as in training batches

    def once():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = step(x, pad)
        y.float().square().sum().backward()

    for _ in range(3):  # compile, and the recompile of a second call, off the count
        once()
    launches = [] if launches is None else launches
    launches.clear()
    with no_profiler_chatter(), torch.profiler.profile() as prof:
        once()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return {"mixer": mixer, "scan": m.backend, "causal": causal, "d_model": d_model, "batch": batch,
            "length": length, "aten_calls": len(events), "top_level": len(top), "launches": len(launches),
            "git_commit": git_commit()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=40)
    p.add_argument("--mixers", default="mamba", help="comma-separated: mamba, gated_context")
    p.add_argument("--scans", default="triton", help="comma-separated scan options, each for the mixers that have it")
    a = p.parse_args(argv)
    launches = stub_triton_launches()
    for mixer in [s.strip() for s in a.mixers.split(",") if s.strip()]:
        for scan in [s.strip() for s in a.scans.split(",") if s.strip()]:
            try:
                mixers.build(mixer, a.d_model, True, scan=scan)
            except ValueError:  # not one of this mixer's scans
                continue
            for causal in (True, False):
                print(json.dumps(count(a.d_model, causal, a.batch, a.length, mixer, scan, launches)), flush=True)


if __name__ == "__main__":
    main()
