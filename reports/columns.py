"""The columns of a grid table: what they show, how they are formatted, which way is better.

A registry, in display order: a table shows a column when its rule says so (`always`; `any`: some
row carries a value; `varies`: rows differ), so the same code makes tables with several norms, seeds
or widths. The task's own metrics (EM/F1 for JSQuAD, accuracy for MQAR) are not listed here: each
row carries its task's declarations (`task_metrics`, core.schema.Metric) and `columns(rows)` makes a
column of each, so a task with a new metric needs no edit here. A metric every task shares (perplexity,
speed, memory) is one entry below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from core.schema import Metric, declared_metrics
from reports.load import finite, is_reference


def fmt_ppl(v: Any) -> str:
    return f"{v:.2f}" if v < 1000 else f"{v:,.0f}"


def fmt_bytes(v: Any) -> str:
    v = float(v)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v:.0f} B"


def fmt_count(v: Any) -> str:
    v = float(v)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.3g}{unit}"
    return f"{v:.0f}"


def fmt_rate(v: Any) -> str:
    return f"{v:,.0f}"


def fmt_ms(v: Any) -> str:
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def fmt_secs(v: Any) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def fmt_text(v: Any) -> str:
    return str(v)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    get: Callable[[dict[str, Any]], Any]  # the raw value of a row (None: nothing to show)
    fmt: Callable[[Any], str] = fmt_text
    better: str | None = None  # "max" | "min": the best model value is marked
    show: str = "any"  # "always" | "any" | "varies"
    doc: str = ""  # one line for the legend under the table
    numeric: bool = True
    speed: bool = False  # a speed: on a CPU (shared, noisy) shown as indicative (~) and never bolded


def _metric(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: finite((r.get("metrics") or {}).get(key))


def _sweep(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: (r.get("sweep") or {}).get(key)


def _field(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: r.get(key)


def _peak_mem(r: dict[str, Any]) -> Any:
    if is_reference(r) or r.get("status") != "ok":
        return None
    return (r.get("metrics") or {}).get("peak_mem_bytes")


def _eval_peak_mem(r: dict[str, Any]) -> Any:
    if is_reference(r) or r.get("status") != "ok":
        return None
    return (r.get("metrics") or {}).get("eval_peak_mem_bytes")


def _timing(*keys: str) -> Callable[[dict[str, Any]], Any]:
    """Seconds summed over phases of `row["timing"]` (None when the row has none of them)."""
    def get(r: dict[str, Any]) -> Any:
        vals = [v for v in ((r.get("timing") or {}).get(k) for k in keys) if isinstance(v, (int, float))]
        return sum(vals) if vals else None

    return get


def _train(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: finite((r.get("train") or {}).get(key))


def _compiled(r: dict[str, Any]) -> str | None:
    """'compiled', 'eager', 'eager (compile failed)' or 'compiled, partly eager (recompile limit)': a
    fallback's speed is not a compiled cell's."""
    t = r.get("train")
    if is_reference(r) or r.get("status") != "ok" or not t:
        return None
    if t.get("compile_error"):
        return "eager (compile failed)"
    if t.get("recompile_limit_hits"):  # dynamo left a function eager at its recompile limit
        return "compiled, partly eager (recompile limit)"
    return "compiled" if t.get("compile") else "eager"


def _pretrain_stage(r: dict[str, Any]) -> str | None:
    """The pretraining stage's tokens/s and passes over its text: '2,533,824 (151 epochs)'. A small corpus
    at a GPU's speed is seen many times over; rows from before 2026-12-01 record neither."""
    st = next((s for s in (r.get("train") or {}).get("stages") or [] if s.get("stage") == "pretrain"), None)
    tps = finite((st or {}).get("tokens_per_s"))
    if tps is None or is_reference(r):
        return None
    ep = finite(st.get("epochs"))
    return f"{tps:,.0f}" + (f" ({ep:.3g} epochs)" if ep is not None else "")


def _gpu_busy(r: dict[str, Any]) -> float | None:
    """The task stage's profiled step's `busy_frac` (harness/step_profile.py), None without one."""
    stages = (r.get("train") or {}).get("stages") or []
    return finite(((stages[-1] if stages else {}).get("profile") or {}).get("busy_frac"))


def fmt_pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if v < 0.1 else f"{100 * v:.1f}%"


def on_cpu(row: dict[str, Any]) -> bool:
    return str(row.get("device") or "").startswith("cpu")


def _model_only(get: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    return lambda r: None if is_reference(r) else get(r)


def metric_column(m: Metric) -> Column:
    """The column of a task's declared metric."""
    return Column(m.key, m.header, _metric(m.key), m.format, m.better, doc=m.doc)


def columns(rows: list[dict[str, Any]]) -> list[Column]:
    """Every candidate column of a table of `rows`, in display order: what distinguishes the cells, the
    task metrics the rows declare, then the registry's shared columns."""
    return LEAD_COLUMNS + [metric_column(m) for m in declared_metrics(rows)] + COLUMNS


LEAD_COLUMNS: list[Column] = [
    Column("norm", "norm", _field("norm"), show="varies", numeric=False, doc="norm placement (pre / post / hybrid)"),
    Column("seed", "seed", _field("seed"), show="varies", numeric=False),
    Column("seq_len", "seq len", _sweep("seq_len"), show="any", numeric=False, doc="sweep: sequence length"),
    Column("d_model", "width", _sweep("d_model"), show="any", numeric=False, doc="sweep: model width d_model"),
]
COLUMNS: list[Column] = [
    Column("lr", "lr (swept)", lambda r: (r.get("train") or {}).get("lr") if r.get("lr_sweep") else None,
           lambda v: f"{v:g}", show="any", numeric=False,
           doc="learning rate chosen by the cell's sweep (dev loss of short runs; see the sweep section)"),
    Column("ppl", "ppl", _metric("ppl"), fmt_ppl, "min",
           doc="perplexity of the gold answer given the prompt (autoregressive: exact)"),
    Column("ppl_bound", "ppl bound (diffusion)", _metric("ppl_bound"), fmt_ppl, "min",
           doc="perplexity *upper bound* of the gold answer (masked diffusion's ELBO): not comparable to ppl"),
    Column("bound_se", "bound ± (MC)", _metric("nll_mc_se"), lambda v: f"±{100 * math.expm1(v):.1f}%", show="any",
           doc="one Monte Carlo standard error of the ppl bound, estimated from its own mask samples: "
               "another mask seed moves the bound by about this much (measured 0.95-1.0x its spread over "
               "seeds); cells of one grid share their masks, so their differences move 6-12x less "
               "(docs/diffusion-noise.md). Rows written before commit e37f31c (2026-12-06) estimated it from "
               "successive differences, about 0.85-0.89x the spread; rows from before that day have none"),
    Column("vs_baseline", "vs best baseline", lambda r: r.get("_vs_baseline"), show="any", numeric=False,
           doc="primary metric minus the best non-neural baseline's, on the same evaluation items"),
    Column("peak_mem", "peak VRAM", _peak_mem, fmt_bytes, "min", show="always",
           doc="peak GPU memory in training (n/a: not measurable on CPU)"),
    Column("eval_peak_mem", "eval VRAM", _eval_peak_mem, fmt_bytes, "min", show="any",
           doc="peak GPU memory in the final evaluation (answers, perplexity, latency); rows from before "
               "2026-12-01 and CPU rows have none"),
    Column("tokens_per_s", "train tok/s", _model_only(_metric("tokens_per_s")), fmt_rate, "max", show="always",
           doc="training throughput, real tokens per second (steady state)", speed=True),
    Column("mfu", "MFU", _model_only(_metric("mfu")), fmt_pct, "max",
           doc="model FLOPs utilisation in training: FLOPs per token × train tok/s ÷ the GPU's dense bf16 peak "
               "(harness/flops.py; a lower bound where a mixer's sequence mixing is not counted: the row's "
               "`metrics.mfu_basis`); CPU rows have none", speed=True),
    Column("compiled", "compiled", _compiled, show="varies", numeric=False,
           doc="how the cell trained: torch.compile, eager, eager because compiling failed (the row's "
               "`train.compile_error`), or partly eager where dynamo hit its recompile limit "
               "(`train.recompile_limit_hits`): a fallback's speed is not a compiled cell's"),
    Column("gpu_busy", "GPU busy", _model_only(_gpu_busy), fmt_pct,
           doc="the share of the task stage's training time the GPU ran kernels, from one profiled step "
               "(`--profile-step`: its kernel time over the time its tokens took at the stage's clocked speed; "
               "the rest the GPU waited for the host); shown when a row has one, never on a CPU"),
    Column("pretrain_stage", "pretrain tok/s (epochs)", _pretrain_stage, numeric=False,
           doc="the pretraining stage's throughput and its passes over the pretraining text (train tok/s and MFU "
               "are the task stage's)"),
    Column("latency", "answer ms", _model_only(_metric("gen_latency_ms")), fmt_ms, "min", show="always",
           doc="time to generate one answer, batch 1, in milliseconds, on the decoding path listed below",
           speed=True),
    Column("state_floats", "state floats at T", _model_only(_metric("state_floats")), fmt_count, "min",
           doc="numbers the model carries about the past at the mean evaluation length T tokens (all layers)"),
    Column("params", "params", _model_only(_field("params")), fmt_count, show="always",
           doc="parameters (tied embedding counted once); cells of a preset are matched within ±5%"),
    Column("tokens_seen", "tokens seen", _model_only(_field("tokens_seen")), fmt_count, show="always",
           doc="training tokens consumed within the budget"),
    Column("train_s", "train s", _model_only(_train("seconds")), fmt_secs,
           doc="seconds on the budget's clock: the timed training steps (warm-up and compiling steps, dev checks "
               "and the evaluation are off it; wall seconds in the run details; a time budget also charges what "
               "the warm-up steps trained, at the clocked rate: `train.warm_charged_seconds` in the rows)"),
    Column("warm_s", "warm-up s", _model_only(_train("warm_seconds")), fmt_secs,
           doc="wall seconds of the steps off the budget's clock: each stage's first (compiling, when compiled), "
               "late compilations, CUDA graphs' recordings"),
    Column("eval_s", "eval s", _model_only(_timing("dev_s", "eval_s")), fmt_secs,
           doc="wall seconds of evaluation, outside the budget: dev checks during training (checkpoint "
               "selection) plus the final scoring (answers, perplexity, latency); split in the run details"),
    Column("eval_n", "eval n", _metric("eval_n"), lambda v: f"{v:.0f}", show="varies",
           doc="questions scored (rows with different n are not on the same items)"),
    Column("budget", "budget", _field("budget"), show="always", numeric=False),
    Column("device", "device", _model_only(_field("device")), show="always", numeric=False),
    Column("world_size", "GPUs", lambda r: r.get("world_size") if (r.get("world_size") or 1) != 1 else None,
           numeric=False, doc="data-parallel processes (—: one)"),
]
