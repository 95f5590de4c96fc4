"""Cost versus sequence length, for every registered mixer: why mixers differ in speed and memory.

    python -m benchmarks.scaling                      # all mixers, 256 ... 16384 on CUDA
    python -m benchmarks.scaling --lengths 256,512    # a short CPU run

One mixer alone (no embedding, MLP or loss: those cost the same for every mixer) at a fixed width,
forward + backward (gradients of the input and of every parameter) at sequence lengths doubling
from 256. Each step holds a fixed number of tokens (`--tokens`, batch = tokens // length, at least
1), so the GPU is equally busy at every length and time per sequence grows as O(N) for a linear
mixer and O(N^2) for attention: slopes 1 and 2 on the report's log-log plot.

A mixer stops cleanly at its first out-of-memory length (that row says OutOfMemoryError) or
after a step slower than `--max-seconds` (longer lengths would only be slower). Rows go to
`results/bench_scaling.jsonl`; `python -m reports` draws them.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import mixers
from benchmarks.common import measured_row, peak_memory, run_and_report, sync, time_ms, warm_up
from core.env import resolve_device

RESULTS_NAME = "bench_scaling.jsonl"


@dataclass
class ScalingConfig:
    mixers: list[str] = field(default_factory=list)  # empty: every registered mixer
    d_model: int = 256
    lengths: list[int] = field(default_factory=list)  # empty: the device's default range
    tokens: int = 0  # tokens per step; 0: the longest length (batch 1 there)
    causal: bool = True
    warmup: int = 2  # untimed steps first (CUDA context, cuDNN/cuBLAS heuristics, allocator, compilation)
    reps: int = 0  # timed repetitions; 0: 10 on CUDA, 3 on CPU
    max_seconds: float = 20.0  # a step slower than this ends the mixer's range
    seed: int = 0

    def resolved(self, device: torch.device) -> "ScalingConfig":
        cuda = device.type == "cuda"
        lengths = sorted(self.lengths) or default_lengths(16384 if cuda else 2048)
        return ScalingConfig(
            mixers=self.mixers or mixers.names(), d_model=self.d_model, lengths=lengths,
            tokens=self.tokens or max(lengths), causal=self.causal, warmup=self.warmup,
            reps=self.reps or (10 if cuda else 3), max_seconds=self.max_seconds, seed=self.seed)


def default_lengths(max_len: int, min_len: int = 256) -> list[int]:
    """min_len, 2 min_len, ... up to max_len."""
    return [min_len * 2**i for i in range(int(math.log2(max_len // min_len)) + 1)]


def _step(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, device: torch.device):
    """One forward + backward: gradients of the input and every parameter, returned (then freed)."""
    params = [p for p in module.parameters() if p.requires_grad]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        y = module(x)  # (B, T, D)
    return torch.autograd.grad(y, [x, *params], g.to(y.dtype))


def measure(name: str, seq_len: int, cfg: ScalingConfig, device: torch.device) -> dict[str, Any]:
    """One (mixer, length) row; raises on failure (the caller turns OOM into a row and stops)."""
    torch.manual_seed(cfg.seed)
    module = mixers.build(name, cfg.d_model, cfg.causal).to(device)
    batch = max(1, cfg.tokens // seq_len)
    x = torch.randn(batch, seq_len, cfg.d_model, device=device, requires_grad=True)  # (B, T, D)
    g = torch.randn(batch, seq_len, cfg.d_model, device=device)
    try:
        step = lambda: _step(module, x, g, device)  # noqa: E731
        warm_up(step, device, cfg.warmup)  # never timed: the first calls pay one-off costs
        first = time_ms(step, device, 1)  # the first timed step decides whether longer lengths are worth it
        slow = first / 1000 > cfg.max_seconds
        ms = first if slow else time_ms(step, device, cfg.reps - 1, first=[first])
        peak, how = peak_memory(lambda: _step(module, x, g, device), device)
        sync(device)
        return {
            "ms_per_step": ms, "ms_per_seq": ms / batch, "tokens_per_s": batch * seq_len / (ms / 1000),
            # reps: the timed steps behind the figure (a step past --max-seconds is the figure alone)
            "peak_mem_bytes": peak, "mem_measure": how, "reps": 1 if slow else cfg.reps,
            "backend": module.backend, "params": sum(p.numel() for p in module.parameters()),
            "warmup": cfg.warmup,
            "note": f"one step took {first / 1000:.1f} s > {cfg.max_seconds} s: longer lengths skipped" if slow else None,
        }
    finally:
        del module, x, g


def run(cfg: ScalingConfig, device: torch.device, out: Path | None = None, log=print) -> list[dict[str, Any]]:
    """Measure every mixer over the lengths; append rows to `out` (a .jsonl path) when given."""
    cfg = cfg.resolved(device)
    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    rows = []
    for name in cfg.mixers:
        for L in cfg.lengths:
            identity = {"mixer": name, "mixer_opts": mixers.options_of(name), "seq_len": L, "d_model": cfg.d_model,
                        "tokens_per_step": cfg.tokens, "causal": cfg.causal, "dtype": dtype}
            # an OOM (or a mixer that cannot run this length) is recorded, and stops this mixer
            row = measured_row("scaling", device, identity, lambda: measure(name, L, cfg, device), out,
                               batch_size=max(1, cfg.tokens // L), note=None)
            stop = row["status"] != "ok" or row["note"] is not None
            rows.append(row)
            if row["status"] == "ok":
                mem = f"{row['peak_mem_bytes'] / 2**20:.1f} MiB" if row["peak_mem_bytes"] is not None else "n/a"
                log(f"  {name:20s} L={L:6d} B={row['batch_size']:3d}  {row['ms_per_step']:9.2f} ms/step  "
                    f"{row['tokens_per_s']:12,.0f} tok/s  peak {mem}")
            else:
                log(f"  {name:20s} L={L:6d} FAILED {row['error']}")
            if stop:
                if row.get("error") and not is_oom_text(row["error"]):
                    log(f"  {name}: stopped (not an out-of-memory error)")
                break
    return rows


def is_oom_text(error: str) -> bool:
    return error.startswith("OutOfMemoryError")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".", help=f"root holding results/ (rows go to results/{RESULTS_NAME})")
    p.add_argument("--device", default="auto")
    p.add_argument("--mixers", default="all", help="comma-separated mixer names, or 'all'")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--lengths", default="", help="comma-separated lengths (default 256 ... 16384 on CUDA, ... 2048 on CPU)")
    p.add_argument("--max-len", type=int, default=0, help="256, 512, ... up to this length")
    p.add_argument("--tokens", type=int, default=0, help="tokens per step (default: the longest length)")
    p.add_argument("--bidirectional", action="store_true", help="build mixers non-causal")
    p.add_argument("--reps", type=int, default=0)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing, at every length")
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--report", action="store_true", help="rebuild the reports afterwards")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    device = resolve_device(a.device)
    names = mixers.names() if a.mixers in ("all", "") else [s.strip() for s in a.mixers.split(",") if s.strip()]
    for n in names:
        mixers.get(n)  # unknown names fail before anything runs
    lengths = [int(s) for s in a.lengths.split(",") if s.strip()] or (default_lengths(a.max_len) if a.max_len else [])
    cfg = ScalingConfig(mixers=names, d_model=a.d_model, lengths=lengths, tokens=a.tokens,
                        causal=not a.bidirectional, reps=a.reps, max_seconds=a.max_seconds, warmup=a.warmup)
    return run_and_report("scaling", RESULTS_NAME, run, cfg, device, a.out, a.report)


if __name__ == "__main__":
    raise SystemExit(main())
