"""Output-loss memory and time: Cut Cross-Entropy versus materialised logits + cross-entropy.

    python -m benchmarks.loss_memory                          # CUDA defaults
    python -m benchmarks.loss_memory --vocab 8000 --tokens 256  # a quick CPU check

The output layer of a small LM is where memory goes: logits are tokens x vocabulary floats (fp32:
4 N V bytes, 13 GB at 32k tokens x 100k vocabulary), more than the whole rest of a 10M-parameter
model. This measures forward + backward (gradients of the hidden states and of the classifier) of
the mean token NLL for each path of `harness.loss`:
- `cce`          Cut Cross-Entropy's Triton kernel (CUDA only): never materialises the logits;
- `cce_compile`  Cut Cross-Entropy's torch.compile implementation (runs on CPU too);
- `chunked`      the exact PyTorch fallback: logits for 4096 tokens at a time;
- `plain`        the textbook `cross_entropy(h @ W.T, y)`: all N x V logits at once.
over vocabulary sizes (8k, 32k, 100k) and tokens per batch. Rows go to
`results/bench_loss_memory.jsonl`; each records the loss value, so the paths can be checked to agree.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import measured_row, peak_memory, run_and_report, time_ms, warm_up
from core.env import resolve_device
from harness.loss import plain_nll, resolve_impl, token_nll

RESULTS_NAME = "bench_loss_memory.jsonl"
IMPLS = ("cce", "cce_compile", "chunked", "plain")


@dataclass
class LossMemoryConfig:
    impls: list[str] = field(default_factory=list)  # empty: every path this device can run
    vocab_sizes: list[int] = field(default_factory=lambda: [8_000, 32_000, 100_000])
    tokens: list[int] = field(default_factory=list)  # empty: 4k/16k/32k on CUDA, 256/1024 on CPU
    d_model: int = 512
    warmup: int = 2  # untimed calls first (kernel autotuning, cce_compile's compilation, allocator)
    reps: int = 0  # 0: 10 on CUDA, 3 on CPU
    seed: int = 0

    def resolved(self, device: torch.device) -> "LossMemoryConfig":
        cuda = device.type == "cuda"
        impls = self.impls or runnable_impls(device)
        for i in impls:
            if i not in IMPLS:
                raise ValueError(f"unknown loss path {i!r}; choose from {', '.join(IMPLS)}")
            if i not in runnable_impls(device):
                raise ValueError(f"loss path {i!r} cannot run on {device} here (cce needs CUDA and cut-cross-entropy)")
        return LossMemoryConfig(impls=impls, vocab_sizes=list(self.vocab_sizes),
                                tokens=self.tokens or ([4096, 16384, 32768] if cuda else [256, 1024]),
                                d_model=self.d_model, warmup=self.warmup, reps=self.reps or (10 if cuda else 3),
                                seed=self.seed)


def runnable_impls(device: torch.device) -> list[str]:
    """The paths this device can run: `cce` needs CUDA, both CCE paths need the package."""
    out = []
    for impl in IMPLS:
        try:
            if impl != "plain":
                resolve_impl(impl, device)
            out.append(impl)
        except RuntimeError:
            pass
    return out


def _loss_fn(impl: str):
    if impl == "plain":
        return plain_nll
    return lambda h, w, y: token_nll(h, w, y, impl)


def measure(impl: str, vocab: int, n_tokens: int, cfg: LossMemoryConfig, device: torch.device) -> dict[str, Any]:
    """Time and peak memory of forward + backward of one path at one (vocabulary, tokens) size."""
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # what training feeds the loss
    h = (torch.randn(n_tokens, cfg.d_model, generator=g) * 0.5).to(device, dtype).requires_grad_()  # (N, D)
    w = (torch.randn(vocab, cfg.d_model, generator=g) * 0.02).to(device).requires_grad_()  # (V, D) fp32 params
    y = torch.randint(0, vocab, (n_tokens,), generator=g).to(device)
    fn = _loss_fn(impl)
    out: dict[str, float] = {}

    def step():
        loss = fn(h, w, y).mean()
        grads = torch.autograd.grad(loss, [h, w])
        out["loss"] = loss
        return grads

    try:
        warm_up(step, device, cfg.warmup)  # never timed
        ms = time_ms(step, device, cfg.reps)
        peak, how = peak_memory(step, device)
        return {"ms_fwd_bwd": ms, "tokens_per_s": n_tokens / (ms / 1000), "peak_mem_bytes": peak, "mem_measure": how,
                "loss": float(out["loss"].detach()), "logits_bytes_fp32": 4 * n_tokens * vocab, "reps": cfg.reps,
                "warmup": cfg.warmup}
    finally:
        del h, w, y, out


def run(cfg: LossMemoryConfig, device: torch.device, out: Path | None = None, log=print) -> list[dict[str, Any]]:
    cfg = cfg.resolved(device)
    dtype = "bf16 hidden, fp32 classifier" if device.type == "cuda" else "fp32"
    rows = []
    for vocab in cfg.vocab_sizes:
        for n in cfg.tokens:
            for impl in cfg.impls:
                identity = {"impl": impl, "vocab_size": vocab, "n_tokens": n, "d_model": cfg.d_model, "dtype": dtype}
                # any failure (an OOM at this size) is a row that says so; smaller sizes still ran
                row = measured_row("loss_memory", device, identity, lambda: measure(impl, vocab, n, cfg, device), out)
                rows.append(row)
                if row["status"] == "ok":
                    mem = f"{row['peak_mem_bytes'] / 2**20:10.1f} MiB" if row["peak_mem_bytes"] is not None else "n/a"
                    log(f"  V={vocab:7d} N={n:6d} {impl:12s} {row['ms_fwd_bwd']:9.2f} ms  peak {mem}  loss {row['loss']:.5f}")
                else:
                    log(f"  V={vocab:7d} N={n:6d} {impl:12s} FAILED {row['error']}")
    return rows


def _ints(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".", help=f"root holding results/ (rows go to results/{RESULTS_NAME})")
    p.add_argument("--device", default="auto")
    p.add_argument("--impls", default="", help=f"comma-separated among {', '.join(IMPLS)} (default: all that run here)")
    p.add_argument("--vocab", default="8000,32000,100000", help="comma-separated vocabulary sizes")
    p.add_argument("--tokens", default="", help="comma-separated tokens per batch (default 4096,16384,32768 on CUDA; 256,1024 on CPU)")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--reps", type=int, default=0)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing, at every size")
    p.add_argument("--report", action="store_true", help="rebuild the reports afterwards")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    cfg = LossMemoryConfig(impls=[s.strip() for s in a.impls.split(",") if s.strip()], vocab_sizes=_ints(a.vocab),
                           tokens=_ints(a.tokens), d_model=a.d_model, reps=a.reps, warmup=a.warmup)
    return run_and_report("loss-memory", RESULTS_NAME, run, cfg, device, a.out, a.report)


if __name__ == "__main__":
    raise SystemExit(main())
