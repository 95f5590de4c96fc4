"""Report figures (seaborn on matplotlib's Agg canvas: no display, no global backend switch).

Each function draws one PNG from results rows and returns its path, or None when the rows hold
nothing to draw. Colours are fixed per mixer (and per loss path) across figures, references are
grey horizontal lines, legends sit outside the data, axes carry units, and costs that span orders
of magnitude are on log scales.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from reports import seeds
from reports.columns import fmt_bytes, fmt_count
from reports.load import finite, is_reference
from reports.stats import PairedDiff, mean_ci
from core.schema import row_name
from reports.tables import declared, label, metric, reference_kind, variant

DPI = 130


def _axis(rows: list[dict[str, Any]], key: str) -> str:
    """The axis label of metric `key`, as the rows' task declared it."""
    return declared(rows, key).label


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (8.0, 4.5), **kw) -> tuple[Figure, Any]:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def palette(names: Sequence[str]) -> dict[str, Any]:
    names = sorted(set(names))
    colors = sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, colors))


def _style():
    return sns.axes_style("whitegrid")


def _ok_models(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not is_reference(r) and r["status"] == "ok"]


REF_DASHES = [(0, (6, 3)), (0, (2, 2)), (0, (6, 2, 1, 2)), (0, (10, 2)), (0, (1, 3))]


def _reference_lines(ax, rows: list[dict[str, Any]], key: str) -> None:
    """Baselines (dashed, one pattern each) and ceilings (dark dotted) as grey lines across the axis,
    named with their value in the legend."""
    refs = [r for r in rows if is_reference(r) and r["status"] == "ok" and metric(r, key) is not None]
    names = Counter(row_name(r) for r in refs)
    for i, r in enumerate(sorted(refs, key=lambda r: -metric(r, key))):
        v = metric(r, key)
        ceiling = reference_kind(r) == "ceiling"
        name = label(r) if names[row_name(r)] > 1 else row_name(r)  # settings only when needed to tell rows apart
        ax.axhline(v, color="0.15" if ceiling else "0.5", ls=":" if ceiling else REF_DASHES[i % len(REF_DASHES)],
                   lw=1.3, zorder=1, label=f"{reference_kind(r)}: {name} = {v:.3f}")


def _legend_outside(ax, title: str | None = None, axes: Sequence[Any] = ()) -> None:
    """One legend right of `ax`, naming what `ax` draws, or, given `axes`, everything any of those
    panels draws (first artist of each label): a name drawn only in another panel is still named."""
    handles: dict[str, Any] = {}
    for a in list(axes) or [ax]:
        for h, lab in zip(*a.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        ax.legend(list(handles.values()), list(handles), title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  frameon=False, fontsize="small", title_fontsize="small")


def _mark_failed(ax, failed: list[dict[str, Any]], x: str, name: str, y: float, colors: dict[str, Any]) -> None:
    """An x at height `y` (above the data) at each failed row's `x`, in its `name`'s colour, labelled OOM or
    failed: a configuration that did not fit is a result, not a missing point."""
    for r in failed:
        ax.plot([r[x]], [y], "x", ms=9, mew=2, color=colors[r[name]])
        ax.annotate("OOM" if str(r.get("error", "")).startswith("OutOfMemory") else "failed", (r[x], y),
                    textcoords="offset points", xytext=(4, 4), fontsize="x-small", color=colors[r[name]])


def _log_scale(ax, fmt, binary: bool = False, axis: str = "y") -> None:
    """Log axis (call after plotting) with readable labels: decades (or powers of 2/4/16 for
    `binary` quantities such as bytes) for wide ranges, 1-2-5 steps for narrower ones, a few rounded
    values when the data span less than 3x."""
    getattr(ax, f"set_{axis}scale")("log")
    lo, hi = getattr(ax, f"get_{axis}lim")()
    ratio = hi / lo
    target = ax.yaxis if axis == "y" else ax.xaxis
    if ratio <= 3:
        target.set_major_locator(FixedLocator(sorted({float(f"{v:.2g}") for v in np.geomspace(lo, hi, 5)[1:-1]})))
    elif binary:
        target.set_major_locator(LogLocator(base=2 if ratio <= 64 else 4 if ratio <= 4096 else 16))
    else:
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if ratio <= 30 else (1.0,)))
    target.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    target.set_minor_formatter(NullFormatter())


def _log_y(ax, fmt, binary: bool = False) -> None:
    _log_scale(ax, fmt, binary, "y")


def fmt_num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:.3g}"


def _log2_axis(ax, values: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(values)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


# ----------------------------------------------------------------------------- grid figures

def score_by_mixer(rows: list[dict[str, Any]], key: str, title: str, path: Path) -> Path | None:
    """Primary metric per mixer, one bar per objective (mean and 95% t-interval over seeds, as in the
    report's table), references as lines."""
    models = [r for r in _ok_models(rows) if metric(r, key) is not None and not r.get("sweep")]
    norms = len({r.get("norm") for r in models}) > 1  # norm variants get their own bars, never averaged
    data = pd.DataFrame([{"mixer": _bar_name(r) + (f"\n{r.get('norm')}-norm" if norms else ""),
                          "objective": r["objective"], key: metric(r, key)} for r in models])
    if data.empty:
        return None
    multi_seed = data.groupby(["mixer", "objective"]).size().max() > 1
    n_mix = data["mixer"].nunique()
    with _style():
        fig, axes = _figure(size=(max(9.0, 1.3 * n_mix + 6.0), 4.5))
        ax = axes[0, 0]
        sns.barplot(data=data, x="mixer", y=key, hue="objective", errorbar=_t_interval if multi_seed else None,
                    palette="Set2", ax=ax, order=sorted(data["mixer"].unique()), zorder=2)
        for cont in ax.containers:
            ax.bar_label(cont, fmt="%.3f", fontsize="x-small", padding=2)
        _reference_lines(ax, rows, key)
        top = max([data[key].max()] + [metric(r, key) or 0 for r in rows if is_reference(r)])
        ax.set_ylim(-0.02, max(0.05, top * 1.12))
        ax.set_ylabel(_axis(rows, key))
        ax.set_xlabel("token mixer")
        ax.set_title(f"{title}: {declared(rows, key).header} by mixer"
                     + (f" (bars: mean ± 95% t-interval over seeds, n={_n_text(data, key)})" if multi_seed else ""))
        _legend_outside(ax, "objective / reference")
    return _save(fig, path)


def ppl_ratio(rows: list[dict[str, Any]], title: str, path: Path, ratios: seeds.Ratios | None = None) -> Path | None:
    """Each configuration's perplexity (bound, for masked diffusion) over attention's of the same objective,
    paired by question (the table's `ppl ÷ attention's` column, `reports.seeds.ppl_ratio`), with its 95%
    bootstrap interval, on a log axis around 1; one colour per objective. None when no row pairs.
    `ratios`: `seeds.ppl_ratios(rows)` when the caller has them already."""
    ratios = seeds.ppl_ratios(rows) if ratios is None else ratios
    got = sorted(((r, d) for r, d in ratios.values() if not isinstance(d, str)),
                 key=lambda x: (x[0]["objective"], _bar_name(x[0])))
    if not got:
        return None
    colors = palette([r["objective"] for r, _ in got])
    with _style():
        fig, axes = _figure(size=(9.0, max(2.5, 0.45 * len(got) + 1.5)))
        ax = axes[0, 0]
        for i, (r, d) in enumerate(got):  # (the legend names each objective once: `_legend_outside`)
            mid, lo, hi = math.exp(d.diff), math.exp(d.lo), math.exp(d.hi)
            ax.errorbar([mid], [i], xerr=[[mid - lo], [hi - mid]], fmt="o", color=colors[r["objective"]], capsize=3,
                        label=r["objective"], zorder=2)
        ax.axvline(1.0, color="0.5", ls="--", lw=1.3, zorder=1)  # as good as attention
        ax.set_yticks(range(len(got)), [_bar_name(r).replace("\n", " ") for r, _ in got])
        ax.invert_yaxis()  # the first configuration on top, as in the table
        lo = min(math.exp(d.lo) for _, d in got)
        hi = max(math.exp(d.hi) for _, d in got)
        ax.set_xlim(min(lo, 1.0) / 1.1, max(hi, 1.0) * 1.1)
        _log_scale(ax, fmt_num, axis="x")
        ax.set_xlabel(f"perplexity ÷ {seeds.BASELINE_MIXER}'s (bound for diffusion), log scale; left of 1: lower")
        ax.set_title(f"{title}: perplexity against {seeds.BASELINE_MIXER}, paired by question (95% bootstrap interval)")
        _legend_outside(ax, "objective")
    return _save(fig, path)


def added_vs_alone(c: Any, title: str, path: Path) -> Path | None:
    """What pretraining or extra data changes for each mixer (`reports.additions.compare`: one task's
    `Comparison`): its Δ of the headline metric against the same mixer on the task alone (left) and its
    perplexity ratio (right, log axis around 1), each with its paired 95% bootstrap interval; one colour
    per mixer. None when no line pairs."""
    got = [x for x in c.lines if isinstance(x.delta, PairedDiff) or isinstance(x.ratio, PairedDiff)]
    if not got:  # (a line's difference is None on the task-alone line, a reason where it cannot pair)
        return None
    panels = [p for p in ("delta", "ratio") if any(isinstance(getattr(x, p), PairedDiff) for x in got)]
    colors = palette([x.name for x in got])
    ticks = [f"{x.name} · {x.objective}\n" + _short_sources(x.added) for x in got]
    with _style():
        fig, axes = _figure(ncols=len(panels), size=(5.0 * len(panels) + 3.0, max(2.5, 0.55 * len(got) + 1.5)),
                            sharey=True)
        for ax, panel in zip(axes[0], panels):
            ratio = panel == "ratio"
            for i, x in enumerate(got):
                d = getattr(x, panel)
                if not isinstance(d, PairedDiff):
                    continue
                mid, lo, hi = (math.exp(d.diff), math.exp(d.lo), math.exp(d.hi)) if ratio else (d.diff, d.lo, d.hi)
                ax.errorbar([mid], [i], xerr=[[mid - lo], [hi - mid]], fmt="o", color=colors[x.name], capsize=3,
                            label=x.name, zorder=2)
            ax.axvline(1.0 if ratio else 0.0, color="0.5", ls="--", lw=1.3, zorder=1)  # as on the task alone
            if ratio:
                ds = [x.ratio for x in got if isinstance(x.ratio, PairedDiff)]
                ax.set_xlim(min(min(math.exp(d.lo) for d in ds), 1.0) / 1.1, max(max(math.exp(d.hi) for d in ds), 1.0) * 1.1)
                _log_scale(ax, fmt_num, axis="x")
                ax.set_xlabel("perplexity ÷ the task alone's (bound for diffusion), log scale; left of 1: lower")
            else:
                better = "lower" if c.metric.better == "min" else "higher"
                ax.set_xlabel(f"Δ {c.metric.header} vs the task alone; right of 0: {better}")
        axes[0, 0].set_yticks(range(len(got)), ticks)
        axes[0, 0].invert_yaxis()  # the first line on top, as in the table
        fig.suptitle(f"{title}: pretraining and extra data against the same mixer on the task alone "
                     "(paired, 95% bootstrap interval)")
        _legend_outside(axes[0, -1], "mixer", axes=axes[0])
    return _save(fig, path)


def _bar_name(r: dict[str, Any]) -> str:
    """A bar's tick: the mixer, and its variant on a second line, a folder source by its name alone
    ('attention' / 'pretrain aozora-pd 0.5 ≤2M chars'): the table's full label overlaps its neighbours."""
    v = variant(r)
    if not v:
        return str(r["mixer"])
    return f"{r['mixer']}\n" + _short_sources(v).replace(" · ", "\n").replace(" ≤", "\n≤")


def _short_sources(text: str) -> str:
    """A folder pretraining source by its name alone: 'pretrain dir:../data/aozora-pd 0.5' -> 'pretrain aozora-pd 0.5'."""
    return re.sub(r"dir:(\S+)", lambda m: Path(m.group(1)).name, text)


def _t_interval(values) -> tuple[float, float]:
    """seaborn errorbar callable: the 95% Student-t interval of the mean (none for one value)."""
    ci = mean_ci(list(values))
    return (ci.lo, ci.hi) if ci.lo is not None else (ci.mean, ci.mean)


def _n_text(data: pd.DataFrame, key: str) -> str:
    ns = sorted(set(data.groupby(["mixer", "objective"])[key].size()))
    return "/".join(str(n) for n in ns)


def loss_curves(rows: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    """Dev loss at each evaluation point over the budget: one panel per objective, each on its own
    y axis (masked diffusion's loss is a bound on another scale: on one axis it squashes the others)."""
    cells = [r for r in _ok_models(rows) if any(finite(p.get("dev_loss")) is not None for p in r.get("loss_curve") or [])]
    if not cells:
        return None
    colors = palette([label(r) for r in cells])
    objectives = sorted({r["objective"] for r in cells})
    seeds = len({r.get("seed") for r in cells}) > 1
    norms = len({r.get("norm") for r in cells}) > 1
    variants = sorted({(str(r.get("seed")), str(r.get("norm"))) for r in cells})
    markers = dict(zip(variants, "os^Dvp*hX" * 4))  # seed / norm variants of one mixer differ by marker
    with _style():
        fig, axes = _figure(ncols=len(objectives), size=(4.6 * len(objectives) + 2.6, 4.8))
        for ax, objective in zip(axes[0], objectives):
            for r in sorted((r for r in cells if r["objective"] == objective),
                            key=lambda r: (label(r), str(r.get("seed")))):
                pts = [p for p in r["loss_curve"] if finite(p.get("dev_loss")) is not None]
                xs = [p.get("tokens") or p.get("frac") for p in pts]
                name = label(r) + (f" · seed {r.get('seed')}" if seeds else "") \
                    + (f" · {r.get('norm')}-norm" if norms else "") + (f" · {_sweep_label(r)}" if r.get("sweep") else "")
                ax.plot(xs, [p["dev_loss"] for p in pts], color=colors[label(r)],
                        marker=markers[(str(r.get("seed")), str(r.get("norm")))], ms=4, lw=1.5, label=name)
            ax.set_xlabel("training tokens seen")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_count(v)))
            bound = any(metric(r, "ppl_bound") is not None for r in cells if r["objective"] == objective)
            ax.set_ylabel("dev loss bound (nats / target token)" if bound else "dev loss (nats / target token)")
            ax.set_title(objective + (" (a bound: not comparable across panels)" if bound else ""), fontsize="medium")
        _legend_outside(axes[0, -1], "mixer", axes=axes[0])  # every mixer, whichever panel it is in
        fig.suptitle(f"{title}: dev loss over the budget, every cell (colour = mixer"
                     + (", marker = seed / norm" if seeds or norms else "") + ")", fontsize="medium")
    return _save(fig, path)


def quality_vs_speed(rows: list[dict[str, Any]], key: str, title: str, path: Path) -> Path | None:
    """Primary metric against training throughput: the trade-off each mixer offers. Speeds measured on
    different devices are not one population: with more than one device the marker names the device too."""
    models = [r for r in _ok_models(rows) if metric(r, key) is not None and metric(r, "tokens_per_s")]
    devices = len({r.get("device") for r in models}) > 1
    data = pd.DataFrame([{"mixer": label(r), key: metric(r, key), "tokens_per_s": metric(r, "tokens_per_s"),
                          "objective": r["objective"] + (f" · {r.get('device')}" if devices else "")}
                         for r in models])
    if data.empty:
        return None
    with _style():
        fig, axes = _figure(size=(10.0, 4.8))
        ax = axes[0, 0]
        sns.scatterplot(data=data, x="tokens_per_s", y=key, hue="mixer", style="objective", s=80,
                        palette=palette(data["mixer"]), ax=ax, zorder=3)
        _reference_lines(ax, rows, key)
        lo, hi = data["tokens_per_s"].min(), data["tokens_per_s"].max()
        ax.set_xlim(lo / 1.25, hi * 1.25)
        _log_scale(ax, fmt_count, axis="x")
        ax.set_xlabel("training throughput (tokens / s, log scale)")
        ax.set_ylabel(_axis(rows, key))
        top = max([data[key].max()] + [metric(r, key) or 0 for r in rows if is_reference(r)])
        ax.set_ylim(-0.02, max(0.05, top * 1.12))
        ax.set_title(f"{title}: quality vs speed (up and right is better)")
        _legend_outside(ax)
    return _save(fig, path)


def _sweep_label(r: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((r.get("sweep") or {}).items()))


def sweep_curves(rows: list[dict[str, Any]], key: str, x: str, facet: str, title: str, path: Path) -> Path | None:
    """The Zoology figure: metric against `x` (seq_len or d_model), one panel per `facet` value,
    one line per mixer, and per objective and variant when the rows hold several (mean over seeds)."""
    models = [r for r in _ok_models(rows)
              if r.get("sweep") and metric(r, key) is not None and r["sweep"].get(x) is not None]
    objectives = len({r["objective"] for r in models}) > 1
    pts = [{"mixer": label(r) + (f" · {r['objective']}" if objectives else ""), x: r["sweep"].get(x),
            facet: r["sweep"].get(facet), key: metric(r, key)} for r in models]
    if not pts:
        return None
    data = pd.DataFrame(pts).groupby(["mixer", x, facet], dropna=False, as_index=False)[key].mean()
    panels = sorted(data[facet].dropna().unique()) or [None]
    colors = palette(data["mixer"])
    names = {"seq_len": "sequence length (tokens)", "d_model": "model width d_model"}
    with _style():
        fig, axes = _figure(ncols=len(panels), size=(max(5.0, 3.6 * len(panels) + 2.0), 4.2), sharey=True)
        for ax, pv in zip(axes[0], panels):
            sub = data[data[facet] == pv] if pv is not None else data
            for mixer, line in sub.groupby("mixer"):
                line = line.sort_values(x)
                ax.plot(line[x].tolist(), line[key].tolist(), marker="o", color=colors[mixer], label=mixer)
            _log2_axis(ax, sub[x].tolist())
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(names.get(x, x))
            ax.set_ylabel(_axis(rows, key) if ax is axes[0, 0] else "")  # one shared y axis, labelled once
            ax.set_title(f"{facet} = {pv}" if pv is not None else "")
        _legend_outside(axes[0, -1], "mixer", axes=axes[0])  # a mixer missing from the last panel is still named
        fig.suptitle(f"{title}: {declared(rows, key).header} vs {names.get(x, x)}")
    return _save(fig, path)


# ----------------------------------------------------------------------------- benchmark figures

def scaling(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Cost vs sequence length per mixer, log-log: time per sequence (with O(N) and O(N^2) guides),
    throughput, peak memory; an x marks each mixer's first out-of-memory length."""
    ok = [r for r in rows if r["status"] == "ok" and finite(r.get("ms_per_seq"))]
    if not ok:
        return None
    colors = palette([r["mixer"] for r in rows])
    has_mem = any(r.get("peak_mem_bytes") is not None for r in ok)
    lengths = sorted({r["seq_len"] for r in rows})
    r0 = ok[0]
    with _style():
        fig, axes = _figure(ncols=3, size=(15.0, 4.6))
        a_time, a_tps, a_mem = axes[0]
        by_mixer: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in sorted(ok, key=lambda r: r["seq_len"]):
            by_mixer[r["mixer"]].append(r)
        for name, rs in sorted(by_mixer.items()):
            L = [r["seq_len"] for r in rs]
            a_time.plot(L, [r["ms_per_seq"] for r in rs], "o-", color=colors[name], label=name)
            a_tps.plot(L, [r["tokens_per_s"] for r in rs], "o-", color=colors[name], label=name)
            mem = [(r["seq_len"], r["peak_mem_bytes"]) for r in rs if r.get("peak_mem_bytes")]
            if mem:
                a_mem.plot(*zip(*mem), "o-", color=colors[name], label=name)
        # out-of-memory: an x at the length that failed, on top of the time panel
        _mark_failed(a_time, [r for r in rows if r["status"] != "ok"], "seq_len", "mixer",
                     max(x["ms_per_seq"] for x in ok) * 1.5, colors)
        # guides: slopes 1 and 2 through the cheapest mixer's shortest length
        L0 = min(lengths)
        y0 = min(r["ms_per_seq"] for r in ok if r["seq_len"] == min(x["seq_len"] for x in ok))
        grid = [L0 * 2**i for i in range(int(math.log2(max(lengths) / L0)) + 1)]
        a_time.plot(grid, [y0 * (L / L0) for L in grid], ":", color="0.5", lw=1, label="O(N) guide")
        a_time.plot(grid, [y0 * (L / L0) ** 2 for L in grid], "--", color="0.5", lw=1, label="O(N²) guide")
        for ax, f in ((a_time, fmt_num), (a_tps, fmt_count), (a_mem, fmt_bytes)):
            _log2_axis(ax, lengths)
            if ax is not a_mem or has_mem:
                _log_y(ax, f, binary=ax is a_mem)
            ax.set_xlabel("sequence length N (tokens)")
        a_time.set_ylabel("fwd+bwd time per sequence (ms, log)")
        a_time.set_title("time per sequence")
        a_tps.set_ylabel("tokens / s (log)")
        a_tps.set_title(f"throughput ({r0.get('tokens_per_step')} tokens per step)")
        a_mem.set_ylabel("peak memory of the step (log)")
        measure = next((r.get("mem_measure") for r in ok if r.get("peak_mem_bytes") is not None), None)
        a_mem.set_title("peak memory" + (f"\n({measure})" if measure else ": n/a on this device"), fontsize="small")
        if not has_mem:
            a_mem.text(0.5, 0.5, "n/a", transform=a_mem.transAxes, ha="center", va="center", fontsize="x-large")
        _legend_outside(a_mem if has_mem else a_tps, "mixer", axes=[a_tps])  # every mixer, with memory or not
        handles, labels = a_time.get_legend_handles_labels()
        guides = [(h, l) for h, l in zip(handles, labels) if "guide" in l]
        a_time.legend(*zip(*guides), loc="upper left", fontsize="x-small", frameon=False)
        fig.suptitle(f"Mixer cost vs sequence length: forward + backward, d_model={r0.get('d_model')}, "
                     f"{r0.get('dtype')}, {'causal' if r0.get('causal') else 'bidirectional'}; {r0['device']}")
    return _save(fig, path)


def loss_memory(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Peak memory and time of the output loss per path, against tokens per batch, one panel per
    vocabulary size; the fp32 logits size is drawn for scale, and an x marks a size a path failed at."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    vocabs = sorted({r["vocab_size"] for r in rows})
    impls = sorted({r["impl"] for r in rows})
    colors = dict(zip(impls, sns.color_palette("Set1", len(impls))))
    has_mem = any(r.get("peak_mem_bytes") for r in ok)
    nrows = 2 if has_mem else 1
    with _style():
        fig, axes = _figure(ncols=len(vocabs), nrows=nrows, size=(4.2 * len(vocabs) + 2.0, 3.6 * nrows), sharex="col")
        for j, V in enumerate(vocabs):
            sub = sorted((r for r in ok if r["vocab_size"] == V), key=lambda r: r["n_tokens"])
            tokens = sorted({r["n_tokens"] for r in rows if r["vocab_size"] == V})
            rows_axes = [("ms_fwd_bwd", axes[0, j])] + ([("peak_mem_bytes", axes[1, j])] if has_mem else [])
            for field, ax in rows_axes:
                for impl in impls:
                    pts = [(r["n_tokens"], r[field]) for r in sub if r["impl"] == impl and r.get(field)]
                    if pts:
                        ax.plot(*zip(*pts), "o-", color=colors[impl], label=impl)
                if field == "peak_mem_bytes":
                    ax.plot(tokens, [4 * n * V for n in tokens], ":", color="0.5", label="fp32 logits N×V")
                    ax.set_ylabel("peak memory (log)")
                else:
                    ax.set_ylabel("fwd+bwd time (ms, log)")
                    ax.set_title(f"vocabulary {V:,}")
                    top = max((r["ms_fwd_bwd"] for r in (sub or ok) if r.get("ms_fwd_bwd")), default=1.0)
                    _mark_failed(ax, [r for r in rows if r["vocab_size"] == V and r["status"] != "ok"], "n_tokens",
                                 "impl", top * 1.5, colors)  # a size that failed: an x above the times
                _log2_axis(ax, tokens)
                _log_y(ax, fmt_bytes if field == "peak_mem_bytes" else fmt_num, binary=field == "peak_mem_bytes")
                ax.set_xlabel("tokens per batch N")
        _legend_outside(axes[-1, -1], "loss path", axes=axes.ravel())  # a path that ran at one vocabulary only too
        measure = next((r.get("mem_measure") for r in ok if r.get("peak_mem_bytes") is not None), "n/a")
        fig.suptitle(f"Output loss: forward + backward, d_model={ok[0].get('d_model')}, {ok[0].get('dtype')}; "
                     f"{ok[0]['device']}\npeak memory: {measure}", fontsize="medium")
    return _save(fig, path)


def decode(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Stateful decoding vs context, log-log: per-token latency (solid: stateful step, dotted: the
    prefix-rerun path), prefill time, and the decoding state's memory; one colour per mixer, one
    marker per batch size."""
    ok = [r for r in rows if r["status"] == "ok" and finite(r.get("step_ms"))]
    if not ok:
        return None
    colors = palette([r["mixer"] for r in rows])
    contexts = sorted({r["context"] for r in ok})
    batches = sorted({r["batch"] for r in ok})
    markers = dict(zip(batches, "osD^v"))
    r0 = ok[0]
    with _style():
        fig, axes = _figure(ncols=3, size=(15.0, 4.6))
        a_step, a_pre, a_mem = axes[0]
        groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for r in sorted(ok, key=lambda r: r["context"]):
            groups[(r["mixer"], r["batch"])].append(r)
        for (name, B), rs in sorted(groups.items()):
            T = [r["context"] for r in rs]
            lab = f"{name} (batch {B})"
            a_step.plot(T, [r["step_ms"] for r in rs], marker=markers[B], ls="-", color=colors[name], label=lab)
            rerun = [(r["context"], r["rerun_ms"]) for r in rs if finite(r.get("rerun_ms"))]
            if rerun:
                a_step.plot(*zip(*rerun), marker=markers[B], ls=":", color=colors[name], alpha=0.5, ms=3)
            a_pre.plot(T, [r["prefill_ms"] for r in rs], marker=markers[B], ls="-", color=colors[name], label=lab)
            a_mem.plot(T, [r["state_bytes"] for r in rs], marker=markers[B], ls="-", color=colors[name], label=lab)
        for ax, f in ((a_step, fmt_num), (a_pre, fmt_num), (a_mem, fmt_bytes)):
            _log2_axis(ax, contexts)
            _log_y(ax, f, binary=ax is a_mem)
            ax.set_xlabel("context (tokens already read)")
        a_step.set_ylabel("ms per generated token (log)")
        a_step.set_title("per-token latency (solid: state, dotted: prefix rerun)", fontsize="small")
        a_pre.set_ylabel("prefill time (ms, log)")
        a_pre.set_title("prefill of the prompt")
        a_mem.set_ylabel("decoding state, all layers and rows (log)")
        a_mem.set_title("state memory (KV cache with doubling headroom)", fontsize="small")
        _legend_outside(a_mem, "mixer")
        fig.suptitle(f"Stateful decoding vs context: {r0.get('preset')} preset (d_model={r0.get('d_model')}, "
                     f"{r0.get('n_layers')} layers), {r0.get('dtype')}; {r0['device']}")
    return _save(fig, path)
