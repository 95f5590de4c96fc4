"""One training step under torch.profiler: how busy the device was and which kernels took its time.

Why: a row's tokens/s says how fast a cell trained, not why. The first H200 run trained at ~1% MFU, and
the CPU analysis could only count operator calls (benchmarks/profile_step.py); whether a mixer's step on
a GPU is the math, launches or one slow kernel (cuDNN's attention planning a new shape, Mamba's scan)
needs the device's own timeline. With `--profile-step` the trainer takes one step of each stage under
the profiler, after that stage's warm-up and off the budget clock (charged like the warm-up steps: its
tokens at the stage's clocked rate), and the row's `train.stages[i].profile` keeps this summary:

- `kernel_ms`: the step's summed device kernel time (kernels of one stream never overlap, so this is the
  time the device was busy); `kernels`: how many ran; `by_kind_ms`: the same time by kind (`KINDS`);
  `top`: the longest kernels by name. None where the device reports no kernels (a CPU).
- `busy_frac` (added by the stage, `busy_fraction`): kernel time over what the step's tokens took at the
  stage's clocked rate. The profiled step's own wall time (`wall_ms`) is inflated by the profiler's
  per-launch recording, so it is kept but not used for this.
- `host_ops`: the `aten::` operator calls the host issued (every nesting level): on any device the count
  that predicts a launch-bound step's time.
- `graph_calls`: the compiled graphs the step entered, forward and backward (AOTAutograd's
  `CompiledFunction` and `CompiledFunctionBackward`): one pair per compiled block, and more for each graph
  break in it (the mixers' PyTorch scans run eagerly at one; their Triton scans, the CUDA path, are custom
  operators inside the graph: mixers/_ops.py), each a Python entry with its own guards. Under torch 2.13
  on CPU, at the tiny preset's two blocks: attention 6, gated_context 18, Mamba 22 (its break sits three
  calls deep, and each caller's frame is split around it: 5 graphs a block, each way).
"""
from __future__ import annotations

import re
import time
from typing import Any, Iterable

import torch

from core.quiet import no_profiler_chatter

# (kind, pattern on the kernel's name): the first that matches names the kind; none: "other"
KINDS: tuple[tuple[str, re.Pattern], ...] = tuple((k, re.compile(p, re.I)) for k, p in (
    # inductor's generated kernels: pointwise, reduction, persistent reduction, foreach (the fused code;
    # first, as their names repeat the ops they fuse: `triton_poi_fused__scaled_dot_product_..._attention`)
    ("compiled elementwise", r"^triton_(poi|red|per|for)_"),
    ("attention", r"flash|fmha|sdpa|attention|attn"),
    ("matmul", r"gemm|nvjet|cutlass|cublas|xmma|s\d+x\d+|triton_tem_|splitk|matmul|\bmm\b"),
    # the mixers' own Triton kernels: Mamba's (scan_fwd, scan_bwd, scan_carry) and gated_context's walk
    ("scan", r"^(scan_|walk_|carry$)"),
    ("optimizer", r"multi_tensor_apply|adam|foreach"),
    ("copy and fill", r"memcpy|memset|copy|fill|cat_?array"),
    ("eager elementwise", r"elementwise|vectorized|reduce_kernel|unrolled"),
))
TOP = 8  # kernels named in `top`


def kind_of(name: str) -> str:
    return next((k for k, p in KINDS if p.search(name)), "other")


def summarize(kernels: Iterable[tuple[str, float, int]] | None, host_ops: int, wall_ms: float,
              tokens: int, device: str, graph_calls: int = 0) -> dict[str, Any]:
    """The profile record of one step. `kernels`: (name, device microseconds, launches) per kernel name,
    None when the device reports no kernels."""
    out: dict[str, Any] = {"device": device, "tokens": int(tokens), "wall_ms": round(wall_ms, 3),
                           "host_ops": int(host_ops), "graph_calls": int(graph_calls), "kernels": None,
                           "kernel_ms": None, "by_kind_ms": None, "top": None}
    if kernels is None:
        return out
    # (name, kind, microseconds, launches), longest first
    ks = sorted(((n, kind_of(n), us, c) for n, us, c in kernels if c > 0), key=lambda k: -k[2])
    by_kind: dict[str, float] = {}
    for _, kind, us, _ in ks:
        by_kind[kind] = by_kind.get(kind, 0.0) + us / 1000
    out.update(kernels=sum(c for *_, c in ks), kernel_ms=round(sum(us for _, _, us, _ in ks) / 1000, 4),
               by_kind_ms={k: round(v, 4) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
               top=[{"name": n[:100], "kind": kind, "ms": round(us / 1000, 4), "calls": c}
                    for n, kind, us, c in ks[:TOP]])
    return out


def busy_fraction(profile: dict[str, Any], seconds_per_token: float | None) -> float | None:
    """Kernel time over the time the profiled step's tokens took at a clocked rate (seconds per token)."""
    if not profile or profile.get("kernel_ms") is None or not seconds_per_token or not profile.get("tokens"):
        return None
    return round(profile["kernel_ms"] / 1000 / (profile["tokens"] * seconds_per_token), 4)


class StepProfiler:
    """`start()` before the step, `stop(tokens)` after it has synced: the step's summary (`summarize`). A
    profiler that cannot start or stop (no CUPTI on a GPU machine, say) costs the cell nothing but its
    profile: the summary is then {"error": ...}, and the stage is not profiled again."""

    def __init__(self, device: torch.device):
        self.device, self.prof, self.error, self.t0 = device, None, None, 0.0

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        try:
            with no_profiler_chatter():  # (only the start and stop: the step's own stderr is never held back)
                prof = profile(activities=acts)
                prof.__enter__()
            self.prof = prof
        except Exception as e:  # noqa: BLE001 (whatever the profiler raised: the step trains unprofiled)
            self.error = f"the profiler did not start: {type(e).__name__}: {e}"[:300]
        self.t0 = time.perf_counter()

    def abandon(self) -> None:
        """Stop without a summary (the step failed). A profiler left running lets the next cell's start and
        record, and then the process crashed at exit (a segmentation fault, torch 2.13 on CPU)."""
        if self.prof is not None:
            with no_profiler_chatter():
                self.prof.__exit__(None, None, None)
            self.prof = None

    def stop(self, tokens: int) -> dict[str, Any]:
        wall_ms = (time.perf_counter() - self.t0) * 1000
        if self.prof is None:
            return self._failed(tokens)
        try:
            with no_profiler_chatter():
                self.prof.__exit__(None, None, None)
            counted = count_events(self.prof.profiler.kineto_results.events(), self.device)
        except Exception as e:  # noqa: BLE001
            self.error = f"the profiler's trace could not be read: {type(e).__name__}: {e}"[:300]
            return self._failed(tokens)
        finally:
            self.prof = None
        kernels, host_ops, graph_calls = counted
        return summarize(kernels, host_ops, wall_ms, tokens, self.device.type, graph_calls)

    def _failed(self, tokens: int) -> dict[str, Any]:
        """The record of a step the profiler could not summarise: what it trained, and why."""
        return {"device": self.device.type, "tokens": int(tokens), "error": self.error}


# AOTAutograd's profiler names for a compiled graph's forward and backward calls
GRAPH_CALLS = ("CompiledFunction", "CompiledFunctionBackward")


def count_events(events, device: torch.device) -> tuple[list[tuple[str, float, int]] | None, int, int]:
    """(kernels as `summarize` takes them, None off CUDA; the host's `aten::` calls; compiled graph calls)
    from the profiler's raw events. Raw, not `key_averages()`: that builds the whole event tree first, 0.4 s
    for one step of the small Mamba on CPU against 0.014 s, and a grid profiles two steps a cell. The tree
    also merges an op's inner call of the same name into it (a redispatch: `aten::div_` inside `aten::div_`),
    which this counts, so the count is about 1% above `benchmarks.profile_step`'s."""
    from torch.autograd import DeviceType

    host_ops, graph_calls, kernels = 0, 0, {}
    for e in events:
        name, where = e.name(), e.device_type()
        if where == DeviceType.CPU:
            host_ops += name.startswith("aten::")
            graph_calls += name in GRAPH_CALLS
        elif where == DeviceType.CUDA:
            k = kernels.setdefault(name, [0.0, 0])
            k[0] += e.duration_ns() / 1000
            k[1] += 1
    # on CUDA a step runs kernels: none recorded means no device timeline (CUPTI absent or refused), not an
    # idle GPU, so no kernel figures rather than a busy share of 0
    found = [(n, us, c) for n, (us, c) in kernels.items()]
    return (found if device.type == "cuda" and found else None), host_ops, graph_calls
