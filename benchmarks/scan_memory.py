"""Memory of Mamba's Triton scan, one layer and direction, at the presets' shapes: measured on CPU.

Not a test: figures, printed as one JSON line per shape (and written to `--out` when given).

    python -m benchmarks.scan_memory
    python -m benchmarks.scan_memory --out results/bench_scan_memory_cpu.json

Why: what the scan keeps for the backward is held for every layer and direction until the backward
reaches it, so it sets the peak VRAM a Mamba row reports. mamba-ssm's kernel keeps no states (it
recomputes them), and a fallback that kept every state (B, T, Di, N) fp32 would make Mamba look
memory-hungry because of our kernel, not because of Mamba (the same unfairness issue 14 found in speed).

How, on a machine without a GPU: the scan's PyTorch side runs for real (Triton's interpreter path)
and its kernel launches are replaced by no-ops. Allocation sizes do not depend on what the kernels
compute, so these are the bytes the CUDA path allocates (the values are garbage and unused).
- `saved_states_bytes`: the (B, ·, Di, N) states the forward saves for the backward
  (`saved_tensors_hooks`: the largest tensor it saves beyond its inputs);
- `saved_bytes`: everything the scan saves (its fp32 inputs included);
- `peak_bytes`: torch's CPU allocator peak above the inputs during one forward + backward
  (benchmarks/common.peak_memory), the scan's own transient buffers included.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import mixers._scan_triton as st
import mixers.mamba as mm
from benchmarks.common import peak_memory, stub_triton_launches
from core.env import device_name, git_commit, versions
from core.files import write_atomic
from core.presets import get_preset

# the presets' token budget per step, as many short rows or as few long ones (the mixer-alone sweep's ends)
SHAPES = ((32, 512), (2, 8192))


def measure(preset: str, rows: int, length: int) -> dict:
    """The three figures of the module doc for `rows` sequences of `length` tokens at `preset`'s width."""
    opts = mm.Mamba.Options()  # the grid's defaults
    d_state, d_inner = opts.d_state, opts.expand * get_preset(preset).d_model
    g = torch.Generator().manual_seed(0)
    x = dict(u=torch.randn(rows, length, d_inner, generator=g), delta=torch.rand(rows, length, d_inner, generator=g),
             A=-torch.rand(d_inner, d_state, generator=g), B=torch.randn(rows, length, d_state, generator=g),
             C=torch.randn(rows, length, d_state, generator=g))
    x = {k: v.requires_grad_(True) for k, v in x.items()}
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = mm.selective_scan_triton(**x)
    # the states: the largest tensor it saves beyond its inputs (its custom operator hands them on flat, beside
    # the chunks' summed Δ, B · nC · Di: N times smaller than one state per chunk)
    inputs = {t.data_ptr() for t in x.values()}
    states = max((t.numel() * t.element_size() for t in saved if t.data_ptr() not in inputs), default=0)
    kept = sum(t.numel() * t.element_size() for t in saved)
    del y
    saved.clear()  # the kept tensors freed before the peak is measured

    def step() -> None:
        mm.selective_scan_triton(**x).sum().backward()

    peak, how = peak_memory(step, torch.device("cpu"))
    return {"bench": "scan_memory", "scan": "triton_scan", "preset": preset, "rows": rows, "length": length,
            "d_inner": d_inner, "d_state": d_state,
            "ckpt": getattr(st, "CKPT", 1),  # 1: every state (the code before CKPT)
            "saved_states_bytes": states, "saved_bytes": kept, "peak_bytes": peak, "mem_measure": how,
            "kernels": "launches stubbed (CPU)"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="small,base")
    p.add_argument("--out", default="", help="write the rows and what measured them to this .json file")
    argv = sys.argv[1:] if argv is None else argv
    a = p.parse_args(argv)
    stub_triton_launches()  # the scan's CPU path, its launches no-ops: allocations as on a GPU
    meta = {"device": device_name("cpu"), "versions": versions(), "commit": git_commit(),
            "command": " ".join(["python -m benchmarks.scan_memory", *argv]), "unit": "bytes, one layer and direction"}
    rows = []
    for preset in a.presets.split(","):
        for n_rows, length in SHAPES:
            rows.append(measure(preset, n_rows, length))
            print(json.dumps(rows[-1]))
    if a.out:
        write_atomic(a.out, json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")  # whole or not at all
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
