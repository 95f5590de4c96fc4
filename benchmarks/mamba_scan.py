"""Speed of the Mamba mixer alone: the parallel PyTorch scan vs. the old chunk loop.

Not a test (timings are never asserted): a measurement whose figures go to a JSON file.

    nice -n 10 python -m benchmarks.mamba_scan --out results/bench_mamba_scan_cpu.json
    nice -n 10 python -m benchmarks.mamba_scan --parts sweep --d-model 64 --out ...   # one part only

Two measurements, each on the mixer alone (causal, no embedding / MLP / loss), fp32 (on CUDA under bf16
autocast, as the grid runs it; the scan is fp32 inside):
- `compare`: scan="parallel" vs scan="chunked" (chunk 64, checkpointed: the previous default) at one
  length (`--length`, 4096), forward (no grad) and forward + backward (gradients of the input and
  every parameter), with identical weights.
- `sweep`: forward + backward tokens/s at a fixed number of tokens per step (`--tokens`, batch =
  tokens // length) for lengths 256 ... `--max-length`: a scan whose cost is linear in T with no
  per-chunk overhead stays flat here (the CUDA figure the issue asks for: within +-30% from 256 to
  8192). `parallel_scan_alone` times `selective_scan_parallel` by itself at the mixer's shapes
  (d_inner = 2 d_model, d_state 16): on CPU, PyTorch's depthwise-conv backward (oneDNN) takes
  seconds at some shapes, erratically, which the mixer rows include and the scan rows do not.
  `--sweep-scans` takes any of `SCANS`: on CUDA, `triton,triton_unpipelined,triton_programs_256
  --scan-alone 0` sets the Triton scan's software-pipelined walks (the default) against walks that wait
  for each step's loads and its chunking until about 1,024 programs (the default) against 256 (the first
  GPU check's); `triton,triton_bwd_1warp,triton_bwd_pipelined,triton_bwd_1warp_pipelined` its backward
  walk on 4 warps of 32 channels (the default) against one warp of 8, with the reverse walk pipelined or
  not (the GPU check's since 2026-12-04).

Timing: one untimed warm-up call per (variant, length, mode) (allocations, oneDNN primitive
creation: the first depthwise-conv backward on CPU takes seconds), then `--repeats` rounds in which
the variants run back to back (A B A B ...), so that load from other processes hits both alike; the
median of the rounds is reported. The machine's load average at start and end goes into the file.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import mixers
from mixers import mamba
from core.env import device_name, git_commit, sync, versions
from core.files import write_atomic

SCANS = {  # variant -> mixer options ("triton*" only where its kernels run: CUDA)
    "parallel": {"scan": "parallel"},
    "chunked": {"scan": "chunked", "chunk_size": 64, "checkpoint_chunks": True},
    "triton": {"scan": "triton"},
    # the Triton scan with each step waiting for its own loads, against the default pipelined walks (the GPU
    # check's bench_scan_stages: `--parts sweep --sweep-scans triton,triton_unpipelined`)
    "triton_unpipelined": {"scan": "triton", "triton_stages": 1},
    # rows cut into chunks only until about 256 programs, not 1,024: fewer chunks (none up to T = 1,024 at
    # bench_scaling's 16,384 tokens, d_model 256), so less of the summary walk, against a busier GPU
    "triton_programs_256": {"scan": "triton", "triton_programs": 256},
    # the backward walk on one warp of 8 channels per program, not 4 warps of 32 channels: 2 barriers per reverse
    # step in its sm_90 code, not 12, and four times the programs (mixers/_scan_triton.py, BWD_WARPS); its reverse
    # walk software-pipelined (2 stages, BWD_STAGES); both
    "triton_bwd_1warp": {"scan": "triton", "triton_bwd_block_d": 8, "triton_bwd_warps": 1},
    "triton_bwd_pipelined": {"scan": "triton", "triton_bwd_stages": 2},
    "triton_bwd_1warp_pipelined": {"scan": "triton", "triton_bwd_block_d": 8, "triton_bwd_warps": 1,
                                   "triton_bwd_stages": 2},
}


def step_fn(m: torch.nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:
    """One call: forward without grad, or forward + backward to the input and every parameter. Under bf16
    autocast on CUDA, as the grid and benchmarks.scaling run the mixer (the scan itself is fp32 either way),
    so that these figures and bench_scaling's are of the same computation; fp32 on CPU."""
    params = [p for p in m.parameters() if p.requires_grad]
    cuda = x.device.type == "cuda"

    def once() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cuda):
            if train:
                xi = x.detach().requires_grad_(True)
                y = m(xi)
                torch.autograd.grad(y, [xi, *params], torch.ones_like(y))
            else:
                with torch.no_grad():
                    m(x)
        sync(x.device)

    return once


def scan_alone_fn(batch: int, length: int, d_inner: int, d_state: int, device: torch.device) -> Callable[[], None]:
    """Forward + backward of `selective_scan_parallel` alone on random inputs of the mixer's shapes:
    the scan's own cost, without the projections and the depthwise conv around it."""
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, device=device)  # noqa: E731
    xs = [r(batch, length, d_inner), F.softplus(r(batch, length, d_inner) - 2), -torch.exp(r(d_inner, d_state)),
          r(batch, length, d_state), r(batch, length, d_state), r(d_inner), r(batch, length, d_inner)]
    xs = [t.requires_grad_(True) for t in xs]

    def once() -> None:
        y = mamba.selective_scan_parallel(*xs)
        torch.autograd.grad(y, xs, torch.ones_like(y))
        sync(device)

    return once


def interleaved_ms(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median ms per call of each fn: one warm-up call each (not timed), then rounds of one call each."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def build(variant: str, d_model: int, device: torch.device, state: dict | None) -> torch.nn.Module:
    torch.manual_seed(0)
    m = mixers.build("mamba", d_model, True, use_mamba_ssm=False, **SCANS[variant]).to(device)
    if state is not None:
        m.load_state_dict(state)
    return m


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/mamba_scan.json")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--length", type=int, default=4096, help="compare: sequence length (batch 1)")
    ap.add_argument("--tokens", type=int, default=8192, help="sweep: tokens per step")
    ap.add_argument("--min-length", type=int, default=256, help="sweep: first length (then doubling)")
    ap.add_argument("--max-length", type=int, default=8192, help="sweep: lengths min, 2 min, ... up to this")
    ap.add_argument("--sweep-scans", default="parallel,chunked")
    ap.add_argument("--parts", default="compare,sweep")
    ap.add_argument("--scan-alone", type=int, default=1, help="sweep: also time the parallel scan alone (1/0)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    unknown = [v for v in a.sweep_scans.split(",") if v and v not in SCANS]
    if unknown:
        raise SystemExit(f"error: unknown scan(s) {', '.join(unknown)}; choose from {', '.join(SCANS)}")
    dev = torch.device(a.device)
    meta = {"device": device_name(str(dev)), "threads": torch.get_num_threads(), "versions": versions(),
            "commit": git_commit(),
            "command": " ".join(["python -m benchmarks.mamba_scan", *(sys.argv[1:] if argv is None else argv)]),
            "d_model": a.d_model, "causal": True,
            "dtype": "bf16 autocast" if dev.type == "cuda" else "float32", "repeats": a.repeats,
            "timing": "median of interleaved rounds after one untimed warm-up call per variant",
            "loadavg_start": [round(v, 2) for v in os.getloadavg()]}
    out = Path(a.out)  # (its folder is made by write_atomic)
    compare: list[dict] = []
    sweep: list[dict] = []

    def save() -> None:  # after every row: a run cut short by a time limit keeps what it measured
        meta["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
        # whole or absent (the GPU check's part writes into its results/ and is killed at its time limit;
        # its report reads this file)
        write_atomic(out, json.dumps({"meta": meta, "compare": compare, "sweep": sweep}, indent=1) + "\n")

    ref_state = build("parallel", a.d_model, dev, None).state_dict()

    # compare: the two scans back to back at one length
    x = torch.randn(1, a.length, a.d_model, device=dev)
    from mixers import _scan_triton

    models = {v: build(v, a.d_model, dev, ref_state) for v in ("parallel", "chunked", "triton")
              if v != "triton" or _scan_triton.available(dev)}
    for train in (False, True) if "compare" in a.parts else ():
        ms = interleaved_ms({v: step_fn(m, x, train) for v, m in models.items()}, a.repeats)
        row = {"mode": "forward+backward" if train else "forward", "length": a.length, "batch": 1,
               **{f"{v}_ms": round(t, 1) for v, t in ms.items()},
               "speedup_parallel_vs_chunked": round(ms["chunked"] / ms["parallel"], 2),
               "backends": {v: m.backend for v, m in models.items()}}
        compare.append(row)
        save()
        print(json.dumps(row), flush=True)

    # sweep: forward + backward tokens/s at fixed tokens per step
    length = a.min_length if "sweep" in a.parts else a.max_length + 1
    scans = [s for s in a.sweep_scans.split(",") if s]
    while length <= a.max_length:
        batch = max(1, a.tokens // length)
        x = torch.randn(batch, length, a.d_model, device=dev)
        fns = {v: step_fn(build(v, a.d_model, dev, ref_state), x, True) for v in scans}
        if a.scan_alone:
            fns["parallel_scan_alone"] = scan_alone_fn(batch, length, 2 * a.d_model, 16, dev)
        ms = interleaved_ms(fns, a.repeats)
        for v, t in ms.items():
            row = {"scan": v, "length": length, "batch": batch, "tokens": batch * length, "ms": round(t, 1),
                   "tokens_per_s": round(batch * length / (t / 1000))}
            sweep.append(row)
            save()
            print(json.dumps(row), flush=True)
        length *= 2
    for v in (scans + ["parallel_scan_alone"] * a.scan_alone) if sweep else ():  # flatness: fastest over slowest tokens/s across the lengths
        tps = [r["tokens_per_s"] for r in sweep if r["scan"] == v]
        print(f"{v}: tokens/s max/min over lengths = {max(tps) / min(tps):.2f}")

    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
