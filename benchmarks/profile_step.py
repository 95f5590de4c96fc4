"""Where a training step's time goes: host milliseconds and PyTorch operator calls per step.

    python -m benchmarks.profile_step --mixers attention,wave_interference,gated_context,mamba --preset small

Why this exists: on a GPU a 10M-parameter model's math takes a few milliseconds per step; what is
left is the host issuing operators one at a time (eager execution: ~10-20 us of launch overhead
each). On CPU the same host work is visible directly, so the operator count per step measured here
is what predicts the GPU's step time, without a GPU.

One fixed batch (random ids, `--batch` x `--seq-len`, seeded) through the real training step of
`harness.train` (autocast, objective loss, backward, gradient clipping, AdamW, zero_grad). Reported
per step: the median wall time over `--steps` timed steps after `--warmup` untimed ones, and the
number of `aten::` operator events (every nesting level, as torch.profiler counts them) in one
profiled step, and in its forward + loss + backward alone (on CPU, AdamW and gradient clipping loop
over parameters; on CUDA the trainer's fused AdamW and foreach clipping are a few kernels), and the
compiled graphs that step entered (forward and backward calls; 0 eager: each graph break adds some).
A measurement, not a test: CPU timings are noisy when other work shares the cores.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import mixers
from harness import objectives
from core.data import Batch, SpecialTokens
from core.env import resolve_device, sync
from harness.model import LM, matched_config
from core.presets import get_preset
from core.env import autocast
from core.registry import scoped_opts
from benchmarks.common import stub_triton_launches
from core.quiet import no_profiler_chatter
from harness.compiling import COMPILE_SCOPES, compile_for_training
from harness.step_profile import GRAPH_CALLS
from harness.train import TrainConfig, _optimizer

SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)


def fixed_batch(vocab: int, B: int, T: int, device: torch.device, seed: int = 0, answer_len: int = 0) -> Batch:
    """B full-length rows (no padding), the last `answer_len` tokens of each (0: the last quarter) marked
    as target (an 'answer'). `max_target` is filled as `SeqSet.batch` fills it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (B, T), generator=g)
    n = min(answer_len, T) if answer_len > 0 else -(-T // 4)
    target = torch.zeros(B, T, dtype=torch.bool)
    target[:, T - n :] = True
    return Batch(ids.to(device), torch.ones(B, T, dtype=torch.bool, device=device), target.to(device), B * T, n)


def make_step(mixer: str, objective: str, preset: str, B: int, T: int, device: torch.device, loss: str = "chunked",
              compile: bool = False, answer_len: int = 0, scope: str = "blocks", mixer_opts: dict | None = None):
    obj = objectives.build(objective, SPECIAL, loss)
    p = get_preset(preset)
    torch.manual_seed(0)
    model = LM(matched_config(p, mixer, obj.causal, p.vocab_size, mixer_opts)).to(device)
    opt = _optimizer(model, TrainConfig(), device)
    # what train() does: the model (each block, or all of it: `scope`) compiled, the loss eager
    fwd = compile_for_training(model, scope=scope)[0] if compile else model
    batch = fixed_batch(p.vocab_size, B, T, device, answer_len=answer_len)
    gen = torch.Generator(device=device).manual_seed(0)

    def forward_backward() -> torch.Tensor:
        with autocast(device):
            loss_t = obj.loss(fwd, batch, gen)
        loss_t.backward()
        return loss_t.detach()

    def step() -> torch.Tensor:
        loss_t = forward_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_t

    step.forward_backward = forward_backward
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

    counts, graphs = [], []
    for fn in (step, step.forward_backward):
        with no_profiler_chatter(), tprofile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
            sync(device)
        events = prof.key_averages()
        counts.append(sum(e.count for e in events if e.key.startswith("aten::")))
        graphs.append(sum(e.count for e in events if e.key in GRAPH_CALLS))
    return {"ms_per_step": statistics.median(times), "aten_ops_per_step": counts[0], "aten_ops_fwd_bwd": counts[1],
            "graph_calls": graphs[0]}  # the whole step's


def padding_table(data_dir: str, preset: str, epochs: int = 3) -> None:
    """Padding fraction of the training batches on the real JSQuAD training split: the old batching
    (32 rows per batch, lengths rounded up to 64 on CUDA, or not on CPU) versus the token budget, and the
    CUDA-graph modes' batches (lengths rounded to 64, and since 2026-12-01 fixed shapes), with the number
    of distinct batch shapes (under CUDA graphs, one recording each)."""
    from pathlib import Path

    import numpy as np

    import tasks
    from core.data import BatchSampler, padded_len
    from tasks import PrepareContext

    p = get_preset(preset)
    cache = Path.home() / ".cache" / "wavebench"
    data = tasks.build("jsquad").prepare(PrepareContext(Path(data_dir), cache, p.vocab_size, p.max_len, print))
    train, L = data.train, data.train.lengths
    print(f"training split: {len(L)} sequences, {int(L.sum()):,} tokens, mean length {L.mean():.1f} (preset {preset})")
    print("| batching | rows/batch (mean) | real tokens/batch (mean) | padding fraction | batch shapes |")
    print("|---|---:|---:|---:|---:|")
    for label, bs, bt, pad, fixed in (
            (f"old: {p.batch_size} rows, lengths rounded up to 64 (CUDA)", p.batch_size, 0, 64, False),
            (f"old: {p.batch_size} rows, no rounding (CPU)", p.batch_size, 0, 1, False),
            (f"new: token budget {p.batch_tokens}, no rounding (the default)", p.batch_size, p.batch_tokens, 1, False),
            ("CUDA graphs until 2026-12-01: token budget, lengths rounded up to 64", p.batch_size, p.batch_tokens, 64,
             False),
            (f"CUDA graphs: fixed shapes ({p.batch_tokens} // W rows, W a multiple of 64)", p.batch_size,
             p.batch_tokens, 64, True)):
        s = BatchSampler(train, bs, seed=0, pad_to=pad, batch_tokens=bt, fixed_shapes=fixed)
        plan = [bw for _ in range(epochs) for bw in s.epoch_plan()]
        batches = [b for b, _ in plan]
        widths = [w if w is not None else padded_len(int(L[b].max()), pad) for b, w in plan]
        real = sum(int(L[b].sum()) for b in batches)
        computed = sum(len(b) * w for b, w in zip(batches, widths))
        print(f"| {label} | {np.mean([len(b) for b in batches]):.1f} | {np.mean([L[b].sum() for b in batches]):,.0f} | "
              f"{100 * (1 - real / computed):.1f}% | {len({(len(b), w) for b, w in zip(batches, widths)})} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixers", default="attention,wave_interference,gated_context,mamba")
    ap.add_argument("--objective", default="autoregressive")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--loss", default="chunked")
    ap.add_argument("--answer-len", type=int, default=0,
                    help="target tokens at the end of each row (0: the last quarter); diffusion's output layer sees "
                         "only max(this, gen_length) columns per row")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model, as training on CUDA does")
    ap.add_argument("--compile-scope", default="blocks", choices=COMPILE_SCOPES,
                    help="with --compile: each block (the trainer's default) or the whole model")
    ap.add_argument("--mixer-opt", action="append", metavar="[MIXER.]KEY=VALUE",
                    help="mixer option, as run_matrix.py's (repeatable): e.g. gated_context.scan=triton")
    ap.add_argument("--stub-kernels", action="store_true",
                    help="run the mixers' Triton scans (scan=triton) with their launches stubbed out: exact host "
                         "operator counts around the kernels on CPU, garbage outputs (benchmarks.common)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: host time without thread contention)")
    ap.add_argument("--padding", metavar="DATA_DIR", default=None,
                    help="instead: the padding fraction of the training batches on this JSQuAD data")
    a = ap.parse_args(argv)
    if a.padding:
        padding_table(a.padding, a.preset)
        return 0
    names = [s.strip() for s in a.mixers.split(",") if s.strip()]
    opts = scoped_opts(a.mixer_opt, "--mixer-opt", names, mixers.REGISTRY)
    launches = stub_triton_launches() if a.stub_kernels else None
    device = resolve_device(a.device)
    torch.set_num_threads(a.threads)
    print(f"| mixer | host ms/step (median of {a.steps}) | aten ops/step | of which forward + loss + backward "
          "| compiled graph calls/step |")
    print("|---|---:|---:|---:|---:|")
    for m in names:
        r = profile(make_step(m, a.objective, a.preset, a.batch, a.seq_len, device, a.loss, a.compile, a.answer_len,
                              a.compile_scope, opts[m]),
                    device, a.warmup, a.steps)
        print(f"| {m} | {r['ms_per_step']:.1f} | {r['aten_ops_per_step']:,} | {r['aten_ops_fwd_bwd']:,} "
              f"| {r['graph_calls']} |", flush=True)
    if launches is not None:
        print(f"(Triton kernel launches stubbed out: {len(launches)} in all the steps above, warm-ups included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
