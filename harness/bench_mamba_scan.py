"""Throughput of the Mamba mixer alone: the chunked PyTorch scan vs. the step-by-step loop.

Not a test (timings are never asserted): a measurement whose result goes to a JSON file.

    OMP_NUM_THREADS=1 python -m harness.bench_mamba_scan --out runs/bench/mamba_scan_cpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import mixers
from harness.env import device_name, versions

VARIANTS = {  # name -> mixer options
    "chunked (chunk 64, checkpointed)": {"scan": "chunked", "chunk_size": 64, "checkpoint_chunks": True},
    "chunked (chunk 64)": {"scan": "chunked", "chunk_size": 64, "checkpoint_chunks": False},
    "reference (step loop)": {"scan": "reference"},
}


def tokens_per_s(m, x: torch.Tensor, train: bool, repeats: int) -> float:
    """Median tokens/s over `repeats` timed calls after one warm-up call."""
    def once():
        if train:
            xi = x.detach().requires_grad_(True)
            m(xi).square().mean().backward()
        else:
            with torch.no_grad():
                m(x)
        if x.is_cuda:
            torch.cuda.synchronize()

    once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return x.shape[0] * x.shape[1] / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/mamba_scan.json")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--d-models", default="64,256")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    rows = []
    for d_model in (int(v) for v in a.d_models.split(",")):
        torch.manual_seed(0)
        x = torch.randn(a.batch, a.seq_len, d_model, device=dev)
        for name, opts in VARIANTS.items():
            m = mixers.build("mamba", d_model, True, use_mamba_ssm=False, **opts).to(dev)
            row = {"d_model": d_model, "variant": name, "batch": a.batch, "seq_len": a.seq_len,
                   "backend": None, "fwd_tokens_per_s": None, "fwd_bwd_tokens_per_s": None}
            row["fwd_tokens_per_s"] = round(tokens_per_s(m, x, False, a.repeats))
            row["fwd_bwd_tokens_per_s"] = round(tokens_per_s(m, x, True, a.repeats))
            row["backend"] = m.backend
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": device_name(str(dev)), "threads": torch.get_num_threads(), "versions": versions(),
            "command": " ".join(sys.argv)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
