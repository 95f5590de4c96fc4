"""Where a training step's time goes: host milliseconds and PyTorch operator calls per step.

    python -m harness.profile_step --mixers attention,wave_interference,gated_context,mamba --preset small

Why this exists: on a GPU a 10M-parameter model's math takes a few milliseconds per step; what is
left is the host issuing operators one at a time (eager execution: ~10-20 us of launch overhead
each). On CPU the same host work is visible directly, so the operator count per step measured here
is what predicts the GPU's step time, without a GPU.

One fixed batch (random ids, `--batch` x `--seq-len`, seeded) through the real training step of
`harness.train` (autocast, objective loss, backward, gradient clipping, AdamW, zero_grad). Reported
per step: the median wall time over `--steps` timed steps after `--warmup` untimed ones, and the
number of `aten::` operator events (every nesting level, as torch.profiler counts them) in one
profiled step. A measurement, not a test: CPU timings are noisy when other work shares the cores.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness import objectives
from harness.data import Batch, SpecialTokens
from harness.env import resolve_device, sync
from harness.model import LM, get_preset, matched_config
from harness.train import TrainConfig, _optimizer, autocast

SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)


def fixed_batch(vocab: int, B: int, T: int, device: torch.device, seed: int = 0) -> Batch:
    """B full-length rows (no padding), the last quarter of each marked as target (an 'answer')."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (B, T), generator=g)
    target = torch.zeros(B, T, dtype=torch.bool)
    target[:, -T // 4 :] = True
    return Batch(ids.to(device), torch.ones(B, T, dtype=torch.bool, device=device), target.to(device), B * T)


def make_step(mixer: str, objective: str, preset: str, B: int, T: int, device: torch.device, loss: str = "chunked"):
    obj = objectives.build(objective, SPECIAL, loss)
    p = get_preset(preset)
    torch.manual_seed(0)
    model = LM(matched_config(p, mixer, obj.causal, p.vocab_size)).to(device)
    opt = _optimizer(model, TrainConfig(), device)
    batch = fixed_batch(p.vocab_size, B, T, device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> torch.Tensor:
        with autocast(device):
            loss_t = obj.loss(model, batch, gen)
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_t.detach()

    return step


def profile(step, device: torch.device, warmup: int, steps: int) -> dict[str, float]:
    for _ in range(warmup):  # warm-up: allocator, lazy init, compilation; never timed
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    from torch.profiler import ProfilerActivity, profile as tprofile

    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        sync(device)
    n_aten = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    return {"ms_per_step": statistics.median(times), "aten_ops_per_step": n_aten}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixers", default="attention,wave_interference,gated_context,mamba")
    ap.add_argument("--objective", default="autoregressive")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--loss", default="chunked")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: host time without thread contention)")
    a = ap.parse_args(argv)
    device = resolve_device(a.device)
    torch.set_num_threads(a.threads)
    print(f"| mixer | host ms/step (median of {a.steps}) | aten ops/step |")
    print("|---|---:|---:|")
    for m in [s.strip() for s in a.mixers.split(",") if s.strip()]:
        r = profile(make_step(m, a.objective, a.preset, a.batch, a.seq_len, device, a.loss), device, a.warmup, a.steps)
        print(f"| {m} | {r['ms_per_step']:.1f} | {r['aten_ops_per_step']:,} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
