"""Inference cost as the context grows: prefill time, per-token latency and memory of stateful decoding.

    python -m benchmarks.decode                                # every mixer, 256 ... 16384 on CUDA
    nice -n 10 python -m benchmarks.decode --contexts 256,512,1024,2048   # a CPU run

For every mixer, a causal LM of the preset (random weights: cost does not depend on them) reads a
prompt of `context` tokens (`LM.prefill`, timed) and then generates one token at a time (`LM.step`,
each step timed alone; the median over `--steps` steps and `--reps` prompts is `step_ms`). Batch 1
is the latency a user sees; `--batches` adds a throughput batch. Memory: `state_bytes` is what the
decoding state holds after the prefill (a KV cache is allocated with headroom: it grows by
doubling), `state_floats` what the mixer claims per sequence (`LM.state_floats`, all layers), and
`peak_mem_bytes` the extra memory one step needs (see benchmarks/common.py for how it is measured).
`rerun_ms` is the cost of one token on the prefix-rerun path (the whole `context + 1` tokens through
the model, as greedy decoding did before the state existed), and `speedup` = rerun_ms / step_ms.

Warm-up (one prefill and a few steps per configuration) is never timed. A mixer stops at its first
out-of-memory context. Rows go to `results/bench_decode.jsonl`; `python -m reports` draws them
(latency vs context, log-log). On a shared CPU, timings are noisy: run with `nice`, compare mixers
within one run, and read medians.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import mixers
from benchmarks.common import free, is_oom, measured_row, peak_memory, run_and_report, sync, time_ms
from benchmarks.scaling import default_lengths
from core.env import resolve_device
from harness.model import LM, matched_config
from core.presets import get_preset

RESULTS_NAME = "bench_decode.jsonl"


def tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor reachable in a decoding state (dataclasses, lists, tuples, dicts)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in tensors(getattr(obj, f.name))]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    return []


def tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors of a decoding state."""
    return sum(t.numel() * t.element_size() for t in tensors(obj))


@dataclasses.dataclass
class DecodeConfig:
    mixers: list[str]
    contexts: list[int]
    batches: list[int]
    preset: str
    steps: int  # timed decoding steps per prompt
    reps: int  # prompts per configuration (medians over reps x steps)
    rerun: bool  # also time the prefix-rerun path
    seed: int = 0


def measure(model: LM, T: int, B: int, cfg: DecodeConfig, device: torch.device) -> dict[str, Any]:
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    ids = torch.randint(10, model.cfg.vocab_size, (B, T + 1), generator=g).to(device)
    prompt, nxt = ids[:, :T], ids[:, T]
    with torch.no_grad():
        _, states = model.prefill(prompt)  # warm-up, untimed
        for _ in range(3):
            _, states = model.step(nxt, states)
        prefill_ms = time_ms(lambda: model.prefill(prompt), device, cfg.reps)
        step_times: list[float] = []
        state_bytes = 0
        for _ in range(cfg.reps):
            _, states = model.prefill(prompt)
            state_bytes = tensor_bytes(states)
            for _ in range(cfg.steps):
                sync(device)
                t0 = time.perf_counter()
                _, states = model.step(nxt, states)
                sync(device)
                step_times.append((time.perf_counter() - t0) * 1000)
        peak, how = peak_memory(lambda: model.step(nxt, states), device)
        rerun_ms = None
        if cfg.rerun:
            def rerun():
                h = model(ids, None)
                model.logits(h[:, -1]).argmax(-1)

            rerun()
            rerun_ms = time_ms(rerun, device, cfg.reps)
    step_ms = statistics.median(step_times)
    return {"prefill_ms": prefill_ms, "step_ms": step_ms, "step_ms_min": min(step_times),
            "tokens_per_s": B / step_ms * 1000, "rerun_ms": rerun_ms,
            "speedup": rerun_ms / step_ms if rerun_ms else None, "state_bytes": state_bytes,
            "state_floats": model.state_floats(T) * B, "peak_mem_bytes": peak, "mem_measure": how,
            "decode_path": ",".join(model.decode_paths()),
            "backend": ",".join(sorted({b.mixer.decode_backend for b in model.blocks}))}


def run(cfg: DecodeConfig, device: torch.device, out: Path | None, log=print) -> list[dict[str, Any]]:
    preset = get_preset(cfg.preset)
    rows = []
    for name in cfg.mixers:
        torch.manual_seed(cfg.seed)
        model = LM(matched_config(preset, name, True)).to(device).eval()
        for B in cfg.batches:
            for T in cfg.contexts:
                identity = {"mixer": name, "preset": cfg.preset, "d_model": model.cfg.d_model,
                            "n_layers": model.cfg.n_layers, "context": T, "batch": B, "dtype": "float32",
                            "threads": torch.get_num_threads()}
                row = measured_row("decode", device, identity, lambda: measure(model, T, B, cfg, device), out,
                                   keep=is_oom, steps=cfg.steps, reps=cfg.reps)
                rows.append(row)
                if row["status"] != "ok":
                    log(f"  {name:18s} B={B:3d} T={T:6d} FAILED {row['error']}")
                    break
                rr = f"{row['rerun_ms']:9.2f} ms rerun ({row['speedup']:.1f}x)" if row["rerun_ms"] else ""
                log(f"  {name:18s} B={B:3d} T={T:6d}  prefill {row['prefill_ms']:9.2f} ms  "
                    f"step {row['step_ms']:7.3f} ms  state {row['state_bytes'] / 2**20:8.2f} MiB  {rr}")
        del model
        free(device)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".", help=f"root holding results/ (rows go to results/{RESULTS_NAME})")
    p.add_argument("--device", default="auto")
    p.add_argument("--mixers", default="all", help="comma-separated mixer names, or 'all'")
    p.add_argument("--preset", default="", help="model size (default: small on CUDA, tiny on CPU)")
    p.add_argument("--contexts", default="", help="comma-separated (default 256 ... 16384 on CUDA, ... 2048 on CPU)")
    p.add_argument("--batches", default="", help="comma-separated batch sizes (default 1 and 32 on CUDA, 1 and 8 on CPU)")
    p.add_argument("--steps", type=int, default=16, help="timed steps per prompt")
    p.add_argument("--reps", type=int, default=3, help="prompts per configuration")
    p.add_argument("--no-rerun", action="store_true", help="skip timing the prefix-rerun path")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--report", action="store_true", help="rebuild the reports afterwards")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    device = resolve_device(a.device)
    cuda = device.type == "cuda"
    if a.threads:
        torch.set_num_threads(a.threads)
    names = mixers.names() if a.mixers in ("all", "") else [s.strip() for s in a.mixers.split(",") if s.strip()]
    for n in names:
        mixers.get(n)  # unknown names fail before anything runs
    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]  # noqa: E731
    cfg = DecodeConfig(mixers=names, contexts=ints(a.contexts) or default_lengths(16384 if cuda else 2048),
                       batches=ints(a.batches) or ([1, 32] if cuda else [1, 8]),
                       preset=a.preset or ("small" if cuda else "tiny"), steps=a.steps, reps=a.reps,
                       rerun=not a.no_rerun)
    label = f"decode ({cfg.preset} preset, {torch.get_num_threads()} threads)"
    return run_and_report(label, RESULTS_NAME, run, cfg, device, a.out, a.report)


if __name__ == "__main__":
    raise SystemExit(main())
