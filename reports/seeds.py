"""The report sections that need more than one row per number: cells aggregated over seeds (mean ±
95% interval, n shown), each mixer's difference from the attention cell with its significance, and
the learning-rate sweeps that chose each cell's rate. Statistics in reports/stats.py; rows only.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from core.schema import Metric, declared_metrics
from reports import stats
from reports.load import finite, is_reference
from reports.tables import declared, esc, label, metric, sign, variant

BASELINE_MIXER = "attention"  # the cell every mixer is compared with (same objective, norm, sweep point)
# aggregated beside the task's declared metrics: the objectives' perplexities (lower is better)
PERPLEXITIES = (Metric("ppl", "ppl", "min", fmt=".2f"), Metric("ppl_bound", "ppl bound", "min", fmt=".2f"))
# what a paired column's interval resamples, and so what it covers (stats.paired_bootstrap): said in the
# legend of every table that shows one (here and reports/additions.py)
HOW = (f"({stats.RESAMPLES:,} resamples, seed {stats.SEED}, each drawing the questions with replacement "
       "and, over several seeds, the seeds too, independently: a pigeonhole bootstrap)")
COVERS = ("With one seed the interval covers question sampling only; with several it also covers the "
          "seed-to-seed spread (coarsely with few seeds: 3 seeds make 10 distinct draws).")


def _groups(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """ok model rows by configuration (everything but the seed): (mixer, objective, norm, sweep point,
    variant: the pretraining and the settings the table's rows differ in, `tables.variant`)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if not is_reference(r) and r["status"] == "ok":
            sweep = tuple(sorted((r.get("sweep") or {}).items()))
            groups[(r["mixer"], r["objective"], r.get("norm"), sweep, variant(r))].append(r)
    return groups


def values(rs: list[dict[str, Any]], key: str) -> list[float]:
    """A cell's `key` in each of its seeds' rows that records it."""
    return [v for v in (metric(r, key) for r in rs) if v is not None]


def mean_text(rs: list[dict[str, Any]], key: str, spec: str) -> str:
    """A cell's `key` over its seeds as a table shows it: '0.061 ± 0.004 (n=3)', or '—' (no row has it)."""
    vals = values(rs, key)
    return stats.mean_ci(vals).text(spec) if vals else "—"


def _lr_text(rs: list[dict[str, Any]]) -> str:
    """The rate each seed trained at: '3e-3 (3/3 seeds)' or '1e-3, 3e-3, 3e-3' (by seed)."""
    lrs = [(r.get("train") or {}).get("lr") for r in sorted(rs, key=lambda r: str(r.get("seed")))]
    if any(lr is None for lr in lrs):
        return "—"
    if len(set(lrs)) == 1:
        return f"{lrs[0]:g}" + (f" ({len(lrs)}/{len(lrs)} seeds)" if len(lrs) > 1 else "")
    return ", ".join(f"{lr:g}" for lr in lrs)


def _sweep_cost(rs: list[dict[str, Any]]) -> str:
    sw = [r["lr_sweep"] for r in rs if r.get("lr_sweep")]
    if not sw:
        return "—"
    from reports.columns import fmt_count

    return f"{fmt_count(sum(s['tokens'] for s in sw) / len(sw))} tok, {sum(s['seconds'] for s in sw) / len(sw):.0f} s"


def paired_diff(rs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> stats.PairedDiff | str:
    """Cell `rs` minus cell `base` in per-question `key`, paired by question and seed
    (`stats.paired_bootstrap`), or why they cannot be paired (one line)."""
    got = stats.aligned_scores(rs, base, key)
    return got if isinstance(got, str) else stats.paired_bootstrap(*got)


def num(x: float, around: float = 0.0, sign: str = "+", places: int = 3) -> str:
    """`x` to `places` decimals; where it differs from `around` (0 for a difference, 1 for a ratio) by less
    than those decimals show, to the first two significant digits of that distance: '-0.000038', not
    '-0.000', so an interval end that excludes 0 (or x1) by a hair does not print as if it touched it."""
    gap = x - around
    if gap != 0 and float(f"{gap:.{places}f}") == 0:
        places = 1 - math.floor(math.log10(abs(gap)))
    return f"{x:{sign}.{places}f}"


def diff_text(d: stats.PairedDiff | str) -> str:
    """`paired_diff` as a table shows it: '+0.012 [+0.004, +0.020] **yes** (500 q)', '… no', or 'n/a: why'."""
    if isinstance(d, str):
        return f"n/a: {d}"
    return f"{num(d.diff)} [{num(d.lo)}, {num(d.hi)}] {_verdict(d)}"


def vs_baseline(rs: list[dict[str, Any]], base: list[dict[str, Any]] | None, key: str) -> str:
    """'+0.012 [+0.004, +0.020] **yes**', '… no', or 'n/a: why'."""
    if base is None:
        return f"n/a: no {BASELINE_MIXER} cell"
    return diff_text(paired_diff(rs, base, key))


def _verdict(d: stats.PairedDiff) -> str:
    """'**yes** (500 q)' or 'no (100 q, 3 seeds)': the paired difference's significance and what it rests on."""
    seeds = f", {d.n_seeds} seeds" if d.n_seeds > 1 else ""
    return f"{'**yes**' if d.significant else 'no'} ({d.n_questions} q{seeds})"


def ppl_ratio(rs: list[dict[str, Any]], base: list[dict[str, Any]] | None) -> stats.PairedDiff | str:
    """A cell's log perplexity (or bound) minus the `base` cell's (attention's in the seed table; the same
    mixer on the task alone in `reports.additions`), paired by question: sum(NLL - base's NLL) /
    sum(target tokens) over the questions (`per_question.nll`, `.targets`), bootstrapped over the
    questions and, with several seeds, the seeds (`stats.paired_bootstrap`); or why it cannot be paired
    (one line)."""
    if base is None:
        return f"no {BASELINE_MIXER} cell"
    got, n = stats.aligned_scores(rs, base, "nll"), stats.aligned_scores(rs, base, "targets")
    if isinstance(got, str) or isinstance(n, str):
        return got if isinstance(got, str) else n
    if not (n[0] == n[0][:1]).all() or not np.array_equal(n[0], n[1]):
        return "not scored on the same target tokens"
    return stats.paired_bootstrap(*got, weights=n[0][0])


def ratio_text(d: stats.PairedDiff | str) -> str:
    """`ppl_ratio` as the table shows it: '×0.912 [×0.898, ×0.927] **yes** (500 q)', '… no', or 'n/a: why'."""
    if isinstance(d, str):
        return f"n/a: {d}"
    lo, mid, hi = (num(math.exp(v), 1.0, "") for v in (d.lo, d.diff, d.hi))
    return f"×{mid} [×{lo}, ×{hi}] {_verdict(d)}"


def _bases(groups: dict[tuple, list[dict[str, Any]]]) -> dict[tuple, list[dict[str, Any]]]:
    """attention's cell of each objective, norm, sweep point and variant (a mixer's own options aside)."""
    return {(o, n, sw, rs[0].get("_shared_variant", v)): rs
            for (m, o, n, sw, v), rs in groups.items() if m == BASELINE_MIXER}


def _base_for(key: tuple, rs: list[dict[str, Any]], bases: dict[tuple, list[dict[str, Any]]]):
    mixer, obj, norm, sweep, var = key
    return bases.get((obj, norm, sweep, rs[0].get("_shared_variant", var)))


Ratios = dict[tuple, tuple[dict[str, Any], "stats.PairedDiff | str"]]


def ppl_ratios(rows: list[dict[str, Any]]) -> Ratios:
    """Every configuration but attention's, by its `_groups` key: (its first row, its perplexity against
    attention's, `ppl_ratio`, or why there is none). Computed once a report (each is a 10,000-resample
    bootstrap) for both the table's column and the figure."""
    groups = _groups(rows)
    bases = _bases(groups)
    return {key: (rs[0], ppl_ratio(rs, _base_for(key, rs, bases))) for key, rs in groups.items()
            if key[0] != BASELINE_MIXER}


def seed_section(rows: list[dict[str, Any]], key: str | None, ratios: Ratios | None = None) -> list[str]:
    """Aggregated table (one line per configuration) and its legend; [] when there are no ok models.
    `ratios`: `ppl_ratios(rows)` when the caller has them already (else computed here if needed)."""
    groups = _groups(rows)
    if not groups:
        return []
    task_metrics = declared_metrics(rows)
    if key and key not in {m.key for m in task_metrics}:
        task_metrics.append(declared(rows, key))
    metrics = [m for m in (*task_metrics, *PERPLEXITIES)
               if any(metric(r, m.key) is not None for rs in groups.values() for r in rs)]
    norms = len({k[2] for k in groups}) > 1
    sweeps = any(k[3] for k in groups)
    swept = any(r.get("lr_sweep") for rs in groups.values() for r in rs)
    compare = key is not None and len({k[0] for k in groups}) > 1  # the headline metric, per question
    # the perplexities, per question: rows that kept each question's NLL (`per_question.nll`)
    compare_ppl = len({k[0] for k in groups}) > 1 and any(
        "nll" in (r.get("per_question") or {}) for rs in groups.values() for r in rs)
    if compare_ppl and ratios is None:
        ratios = ppl_ratios(rows)
    name = declared(rows, key).header
    head = ["mixer", "objective", *(["norm"] if norms else []), *(["sweep"] if sweeps else []), "seeds",
            *(m.header for m in metrics), "lr", *(["LR sweep cost (per seed)"] if swept else []),
            *([f"Δ {name} vs {BASELINE_MIXER} [95% CI] significant?"] if compare else []),
            *([f"ppl ÷ {BASELINE_MIXER}'s [95% CI] significant?"] if compare_ppl else [])]
    n_text = 2 + norms + sweeps  # mixer, objective, norm, sweep: text, left-aligned; the numbers right
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i < n_text else "---:" for i in range(len(head))) + "|"]

    s = sign(rows, key)

    def order(item):
        (mixer, obj, norm, sweep, var), rs = item
        vals = values(rs, key) if key else []
        return (obj, str(norm), sweep, var, -s * (sum(vals) / len(vals)) if vals else 0.0, mixer)

    bases = _bases(groups)
    for (mixer, obj, norm, sweep, var), rs in sorted(groups.items(), key=order):
        cells = [esc(label(rs[0])), esc(obj), *([esc(norm)] if norms else []),
                 *([", ".join(f"{k}={v}" for k, v in sweep) or "—"] if sweeps else []), str(len(rs))]
        cells += [mean_text(rs, m.key, m.fmt) for m in metrics]
        cells.append(_lr_text(rs))
        if swept:
            cells.append(_sweep_cost(rs))
        gkey = (mixer, obj, norm, sweep, var)
        if compare:
            cells.append("(reference)" if mixer == BASELINE_MIXER else vs_baseline(rs, _base_for(gkey, rs, bases), key))
        if compare_ppl:
            cells.append("(reference)" if mixer == BASELINE_MIXER else ratio_text(ratios[gkey][1]))
        lines.append("| " + " | ".join(cells) + " |")
    legend = ["Each line: one configuration over its seeds. Values are the mean ± the half-width of a two-sided "
              "95% Student-t interval over seeds (n = seeds); *n=1, no interval* means a single run, whose "
              "seed-to-seed spread is unknown."]
    if compare:
        legend.append(f"Δ vs {BASELINE_MIXER}: the mean per-question {name} difference from the "
                      f"{BASELINE_MIXER} cell of the same objective and pretraining (same questions, same seeds), with its 95% "
                      f"paired-bootstrap interval {HOW}; "
                      f"**yes** = the interval excludes 0 (significant at the 5% level, two-sided). {COVERS}")
    if compare_ppl:
        legend.append(f"ppl ÷ {BASELINE_MIXER}'s: the cell's perplexity (for masked diffusion its bound) over the "
                      f"{BASELINE_MIXER} cell's of the same objective and pretraining, paired by question: the log of "
                      "the ratio is the summed per-question NLL difference over the target tokens, with its 95% "
                      f"paired-bootstrap interval {HOW}; **yes** = the interval excludes ×1. "
                      + ("" if compare else f"{COVERS} ")  # said once, under the Δ column's legend if there is one
                      + "A bound's cells draw the same masks for the same "
                      "questions, so most of its Monte Carlo error (the ± of `bound ± (MC)`) cancels in the ratio; "
                      "what is left is in the per-question differences the bootstrap resamples.")
    if swept:
        legend.append("lr: the rate each cell trained at, chosen by its learning-rate sweep (below); the sweep's cost "
                      "is not part of the budget.")
    return lines + [x for para in legend for x in ("", para)]  # one paragraph each


def lr_sweep_section(rows: list[dict[str, Any]]) -> list[str]:
    """Every cell's sweep: dev loss of the short run at each rate, the pick, and the cost."""
    swept = sorted((r for r in rows if not is_reference(r) and r["status"] == "ok" and r.get("lr_sweep")),
                   key=lambda r: (r["objective"], label(r), str(r.get("seed"))))
    if not swept:
        return []
    rates = sorted({t["lr"] for r in swept for t in r["lr_sweep"]["table"]})
    s0 = swept[0]["lr_sweep"]
    lines = [f"Each cell first trained a short run at every rate ({s0['short_budget']} each, {s0['frac']:g} of the "
             f"cell's budget), then its full budget at the rate with the lowest short-run dev loss "
             f"(criterion: {esc(s0.get('criterion', 'lowest dev loss'))}). Dev loss in nats per target token; "
             "bold: the rate chosen.", "",
             "| mixer | objective | seed | " + " | ".join(f"lr {lr:g}" for lr in rates)
             + " | chosen | sweep tokens | sweep s |",
             "|---|---|---|" + "---:|" * (len(rates) + 3)]
    total_tok = total_s = full_tok = 0.0
    for r in swept:
        sw = r["lr_sweep"]
        by = {t["lr"]: t for t in sw["table"]}
        cells = []
        for lr in rates:
            t = by.get(lr)
            v = finite(t.get("dev_loss")) if t else None
            text = "—" if t is None else ("diverged" if v is None else f"{v:.3f}")
            cells.append(f"**{text}**" if lr == sw["best_lr"] else text)
        lines.append(f"| {esc(label(r))} | {esc(r['objective'])} | {r.get('seed')} | " + " | ".join(cells)
                     + f" | {sw['best_lr']:g} | {sw['tokens']:,} | {sw['seconds']:.0f} |")
        total_tok += sw["tokens"]
        total_s += sw["seconds"]
        full_tok += r.get("tokens_seen") or 0
    share = f" ({total_tok / full_tok:.0%} of the full runs' {full_tok:,.0f} tokens)" if full_tok else ""
    lines += ["", f"The sweeps cost {total_tok:,.0f} training tokens{share} and {total_s:,.0f} s of wall time in all "
              "(dev evaluations included), on top of the per-cell budget."]
    return lines
