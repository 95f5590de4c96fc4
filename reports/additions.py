"""Pretraining and extra training data against the task alone: a grid section that pairs each
configuration that *adds* something to a mixer's training (`--pretrain SOURCE`, the first share of its
budget on other text; `--task-opt extra_train=...`, more QA data) with the same mixer, objective and
settings trained on the task's own training split only, under the same budget.

Why its own section: the per-protocol tables compare every mixer with attention *within* one training
recipe; the question a pretraining study asks is the other way round, whether a recipe helps a given
mixer. The recipe may change the protocol (extra data makes `jsquad-offline+jaquad`), so the pairing
spans the grid's protocol sections: rows pair by seed and evaluation-question id
(`stats.aligned_scores`), which refuses cells that did not score the same questions. The Δ and ratio
are the seed section's (`seeds.paired_diff`, `seeds.ppl_ratio`: paired bootstrap over the questions
and, with several seeds, the seeds). Rows only, like every report.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.schema import Metric
from reports import bench, figures, seeds, stats
from reports.load import is_reference
from reports.tables import declared, esc, metric, primary_metric, settings, sign

# task options that add training data (JSQuAD's `extra_train=jaquad` and where that data lives): a cell
# with them is the one without them plus data
ADDED_DATA_OPTS = ("extra_train", "jaquad_dir")
ALONE = "— (the task alone)"


def added(row: dict[str, Any]) -> str:
    """What a model row trains on beyond its task's own data: 'extra_train=jaquad · pretrain passages 0.5',
    or '' (the task alone)."""
    opts = row.get("task_opts") or {}
    parts = [f"extra_train={opts['extra_train']}"] if opts.get("extra_train") else []
    pretrain = settings(row).get("pretrain")
    return " · ".join(parts + ([pretrain] if pretrain else []))


def _alone(row: dict[str, Any]) -> dict[str, str]:
    """The row's settings as if it had trained on the task alone: its other settings (rate, budget,
    options, ...) must match the cell it is compared with."""
    opts = {k: v for k, v in (row.get("task_opts") or {}).items() if k not in ADDED_DATA_OPTS}
    return settings({**row, "pretrain": None, "task_opts": opts})


def _blocks(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, list[dict[str, Any]]]]:
    """ok model rows by the cell they would be on the task alone (objective, norm, sweep point, mixer,
    other settings), then by what they add; only blocks with a task-alone cell and something added."""
    blocks: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if is_reference(r) or r.get("status") != "ok":
            continue
        sweep = tuple(sorted((r.get("sweep") or {}).items()))
        key = (r["objective"], str(r.get("norm")), sweep, r["mixer"], tuple(sorted(_alone(r).items())))
        blocks[key][added(r)].append(r)
    return {k: v for k, v in blocks.items() if "" in v and len(v) > 1}


@dataclass
class Line:
    """One configuration of a block: its name (the mixer, and what sets its block apart from the
    others), what it adds ('' on the task-alone line), its rows, and its paired differences from the
    task-alone line (None on that line itself; a one-line reason where they cannot be paired)."""
    name: str
    objective: str
    added: str
    rows: list[dict[str, Any]]
    delta: stats.PairedDiff | str | None
    ratio: stats.PairedDiff | str | None


@dataclass
class Comparison:
    """One task's table: its headline metric (None: its rows declare none), whether rows keep
    per-question NLLs (the ratio column), and its lines, block by block, best first within a block."""
    task: str
    metric: Metric | None
    ppl: bool
    lines: list[Line]


def compare(rows: list[dict[str, Any]]) -> list[Comparison]:
    """Every task of the grid with something to pair, its paired differences computed once (each a
    10,000-resample bootstrap) for the table and the figure."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_task[str(r.get("task"))].append(r)
    out = []
    for task, rs in sorted(by_task.items()):
        blocks = _blocks(rs)
        if not blocks:
            continue
        key = primary_metric(rs)
        s = sign(rs, key)
        models = [r for b in blocks.values() for g in b.values() for r in g]
        ppl = any("nll" in (r.get("per_question") or {}) for r in models)
        # settings beyond mixer and objective that differ between blocks name them apart (e.g. two rates)
        every = {k for b in blocks for k, _ in b[4]}
        varying = {k for k in every if len({dict(b[4]).get(k) for b in blocks}) > 1}
        norms = len({b[1] for b in blocks}) > 1
        lines = []
        for bkey in sorted(blocks):
            obj, norm, sweep, mixer, other = bkey
            base = blocks[bkey][""]
            name = " · ".join([mixer, *(v for k, v in other if k in varying and v),
                               *(f"{k}={v}" for k, v in sweep), *([f"norm {norm}"] if norms else [])])

            def order(item):  # best first, lines without a value last; on a tie by name ('': the task alone first)
                vals = [metric(r, key) for r in item[1] if metric(r, key) is not None]
                return (not vals, -s * sum(vals) / len(vals) if vals else 0.0, item[0])

            for what, g in sorted(blocks[bkey].items(), key=order):
                delta = None if not what or key is None else seeds.paired_diff(g, base, key)
                ratio = None if not what or not ppl else seeds.ppl_ratio(g, base)
                lines.append(Line(name, obj, what, g, delta, ratio))
        out.append(Comparison(task, declared(rs, key) if key else None, ppl, lines))
    return out


def section(rows: list[dict[str, Any]], out_dir: Path | None = None) -> list[str]:
    """One table per task that has something to pair (its headline metric's Δ, and the perplexity ratio
    where rows keep per-question NLLs), its legend, and, given `out_dir`, its figure; [] when nothing in
    the grid adds to a task-alone cell."""
    out: list[str] = []
    for c in compare(rows):
        m = c.metric
        models = [r for line in c.lines for r in line.rows]
        ppls = [p for p in seeds.PERPLEXITIES if any(metric(r, p.key) is not None for r in models)]
        head = ["mixer", "objective", "added to the task's data", "seeds",
                *([m.header] if m else []), *(p.header for p in ppls),
                *([f"Δ {m.header} vs the task alone [95% CI] significant?"] if m else []),
                *(["ppl ÷ the task alone's [95% CI] significant?"] if c.ppl else [])]
        lines = [f"## Pretraining and extra data against the task alone · {esc(c.task)}", "",
                 "| " + " | ".join(head) + " |",
                 "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
        for line in c.lines:
            cells = [esc(line.name), esc(line.objective), esc(line.added) if line.added else ALONE,
                     str(len(line.rows)), *([seeds.mean_text(line.rows, m.key, m.fmt)] if m else []),
                     *(seeds.mean_text(line.rows, p.key, p.fmt) for p in ppls)]
            if m:
                cells.append("(reference)" if line.delta is None else seeds.diff_text(line.delta))
            if c.ppl:
                cells.append("(reference)" if line.ratio is None else seeds.ratio_text(line.ratio))
            lines.append("| " + " | ".join(cells) + " |")
        what = " and ".join([*([f"Δ, the mean per-question {esc(m.header)} difference"] if m else []),
                             *(["ppl ÷, the perplexity ratio (for masked diffusion, of its bound): the summed "
                                "per-question NLL differences over the target tokens"] if c.ppl else [])])
        lines += ["", "Each line: one configuration over its seeds (mean ± 95% Student-t interval over seeds). "
                  "*added*: what the cell trained on beyond the task's own training split, inside the same "
                  "budget: `pretrain SOURCES F` spent the first share F of it on that text (`--pretrain`), "
                  "`extra_train=...` trained on more QA data (`--task-opt extra_train=`, its own protocol). "
                  "Each block compares its lines with the line marked *the task alone*: the same mixer, "
                  "objective and settings without them, paired by evaluation question and seed (cells that "
                  "did not score the same questions say so)"
                  + (f": {what}, each with its 95% paired-bootstrap interval {seeds.HOW}; **yes** = the "
                     f"interval excludes 0 (×1). {seeds.COVERS}" if what else "."), ""]
        devices = sorted({str(r["device"]) for r in models if r.get("device")})
        title = f"{c.task} · " + " / ".join(devices) if devices else c.task  # every figure names its device(s)
        path = None if out_dir is None else figures.added_vs_alone(
            c, title, Path(out_dir) / f"{bench.slug(c.task)}_added_vs_alone.png")
        if path is not None:
            lines += [f"![pretraining and extra data against the task alone]({path.name})", ""]
        out += lines
    return out
