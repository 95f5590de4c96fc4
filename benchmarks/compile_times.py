"""How long torch.compile takes per training step of each mixer's LM, over successive batch lengths.

Not a test (tests/test_compile.py holds the contract: no recompilation after the second shape); a
measurement whose figures go to a JSON file. torch.compile is on by default on CUDA, and only the
first two steps are warm-up: a mixer that recompiles for a new length pays the compilation inside
the budgeted clock, so here each step's wall time and the graphs compiled so far are recorded.

    nice -n 10 python -m benchmarks.compile_times --out results/bench_compile_times_cpu.json
    python -m benchmarks.compile_times --mixers gated_context,mamba --lengths 57,64,91,122 --device cuda

Each mixer gets a fresh LM at the preset's matched size (causal unless `--bidirectional`), compiled by
inductor, and one forward + backward per length at `--rows` rows. The first two steps compile (the
first shape, then a second that marks the sizes dynamic); later steps should take milliseconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import mixers
from core.env import device_name, git_commit, resolve_device, sync, versions
from core.files import write_atomic
from core.presets import get_preset
from harness.compiling import COMPILE_SCOPES, compile_for_training
from harness.model import LM, matched_config


def measure(mixer: str, causal: bool, lengths: list[int], rows: int, preset: str, device: torch.device,
            dynamic: bool | None = None, mark: bool = False, scope: str = "blocks") -> dict:
    """Wall seconds and graphs compiled so far, after each step of `mixer`'s compiled LM (compiled as
    the trainer compiles it: each block, or the whole model, `harness.compiling`)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    p = get_preset(preset)
    model = LM(matched_config(p, mixer, causal, p.vocab_size)).to(device)
    counter = CompileCounterWithBackend("inductor")
    step, scope = compile_for_training(model, scope=scope, backend=counter, dynamic=dynamic)
    seconds, frames = [], []
    for T in lengths:
        ids = torch.randint(0, p.vocab_size, (rows, T), device=device)
        if mark:  # rows and length symbolic from the first call, as the trainer does
            torch._dynamo.maybe_mark_dynamic(ids, 0)
            torch._dynamo.maybe_mark_dynamic(ids, 1)
        sync(device)
        t0 = time.perf_counter()
        step(ids).float().pow(2).mean().backward()
        sync(device)
        seconds.append(round(time.perf_counter() - t0, 3))
        frames.append(counter.frame_count)
    return {"mixer": mixer, "causal": causal, "scope": scope, "dynamic": dynamic, "mark_dynamic": mark, "lengths": lengths, "rows": rows, "seconds": seconds,
            "graphs_compiled": frames, "after_second_step_s": round(sum(seconds[2:]), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixers", default="all", help="comma-separated mixer names, or 'all'")
    ap.add_argument("--lengths", default="57,64,91,122,33", help="successive batch lengths")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--bidirectional", action="store_true", help="the masked-diffusion form of each mixer")
    ap.add_argument("--dynamic", action="store_true",
                    help="compile with dynamic=True (one symbolic graph from the first step; training does not)")
    ap.add_argument("--mark-dynamic", action="store_true",
                    help="mark the batch's rows and length dynamic before each call (training does not)")
    ap.add_argument("--scope", default="blocks", choices=COMPILE_SCOPES,
                    help="compile each block (what training does by default) or the whole model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/bench/compile_times.json")
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    device = resolve_device(a.device)
    names = mixers.names() if a.mixers == "all" else [n.strip() for n in a.mixers.split(",") if n.strip()]
    lengths = [int(v) for v in a.lengths.split(",") if v.strip()]
    out = {"meta": {"device": device_name(str(device)), "versions": versions(), "git_commit": git_commit(),
                    "preset": a.preset, "command": "python -m benchmarks.compile_times " + " ".join(argv)},
           "rows": []}
    for name in names:
        row = measure(mixers.get(name).name, not a.bidirectional, lengths, a.rows, a.preset, device,
                      True if a.dynamic else None, a.mark_dynamic, a.scope)
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    path = write_atomic(a.out, json.dumps(out, indent=1) + "\n")  # whole or not at all: it lands in results/
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
