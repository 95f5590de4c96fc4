"""PyTorch calls around the Triton scan in a compiled Mamba mixer: what a GPU would launch one by one.

Not a test: a count, printed as one JSON line per direction setting.

    python -m benchmarks.scan_eager_calls                  # causal and bidirectional, d_model 64
    python -m benchmarks.scan_eager_calls --d-model 256 --length 512

Why: on CUDA the scan is a graph break inside the compiled model (mixers/mamba.py,
`torch.compiler.disable`), and every PyTorch operation that runs at the break runs eagerly, one kernel
launch each, where the compiled graphs around it fuse theirs. This counts the `aten::` calls of one
compiled mixer step (forward and backward, under bf16 autocast as on a GPU), on CPU: the scan runs
through Triton's interpreter path with its kernel launches replaced by no-ops, so what is counted is
exactly the PyTorch work around the kernels (the outputs are garbage; the count does not depend on
them). `top_level` counts calls not made from inside another aten call: the ones a host issues.
"""
from __future__ import annotations

import argparse
import json
import os

os.environ["TRITON_INTERPRET"] = "1"  # before mixers._scan_triton reads it: the scan's CPU path

import torch  # noqa: E402

import mixers  # noqa: E402
import mixers._scan_triton as st  # noqa: E402
from core.env import git_commit  # noqa: E402


class _NoLaunch:
    """A kernel whose launch does nothing: `kernel[grid](*args)` returns at once."""

    def __getitem__(self, grid):
        return lambda *args, **kw: None


def count(d_model: int, causal: bool, batch: int, length: int) -> dict:
    torch.manual_seed(0)
    m = mixers.build("mamba", d_model, causal, scan="triton")
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
    with torch.profiler.profile() as prof:
        once()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return {"mixer": "mamba", "scan": m.backend, "causal": causal, "d_model": d_model, "batch": batch,
            "length": length, "aten_calls": len(events), "top_level": len(top), "git_commit": git_commit()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=40)
    a = p.parse_args(argv)
    st._kernels = lambda interpret: (_NoLaunch(), _NoLaunch(), _NoLaunch())
    for causal in (True, False):
        print(json.dumps(count(a.d_model, causal, a.batch, a.length)))


if __name__ == "__main__":
    main()
