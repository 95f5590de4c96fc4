"""Reference rows: a task's floors (non-neural baselines) and ceilings as ordinary results rows.

They go into the grid's results file beside the model cells (`objective` = "none", `params` = 0),
so a report shows them in the same table. A reference is named by `reference.name`; its `mixer` is
null (present, not absent: every row keeps the keys `core.schema.ROW_KEYS` requires, and a reader
that groups rows by mixer never mistakes a baseline for a model). It carries its task's metric and
protocol declarations like a model row, so a report can show a grid of references alone. Each reference has its own resume key (a hash of what
its score depends on): a rerun of the grid computes only the missing ones.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from core.results import append_row, error_text
from core.schema import REFERENCE_OBJECTIVE, new_row
from tasks import PrepareContext, Reference, Task, TaskData


def reference_key(ref: Reference) -> str:
    blob = json.dumps({"reference": ref.name, **ref.identity}, sort_keys=True, default=str)
    return "ref-" + hashlib.sha1(blob.encode()).hexdigest()[:12]


def reference_row(ref: Reference, task: Task, data: TaskData, grid: str, task_opts: dict[str, Any]) -> dict[str, Any]:
    """Score one reference (on the models' items, and on the whole split if they are a sample)."""
    t0 = time.perf_counter()
    row = new_row(
        reference_key(ref), "cpu", mixer=None, objective=REFERENCE_OBJECTIVE, grid=grid, task=task.name,
        protocol=data.protocol, **task.declarations(data.protocol), seed=None, preset=None, budget=None, norm=None,
        task_opts=task_opts, params=0, tokens_seen=0, metrics={}, loss_curve=[], world_size=1, data=data.info,
        reference={"name": ref.name, "kind": ref.kind, "rule": ref.rule, "setting": ref.setting,
                   "identity": ref.identity},
    )
    try:  # all or nothing: a failed row holds no figures of the half that ran
        metrics = ref.score()
        full = ref.score_full() if ref.score_full is not None else None
        row["metrics"] = metrics
        if full is not None:
            row["reference"]["full_split"] = full
        row["status"] = "ok"
    except Exception as e:  # a broken reference is shown as failed, like a cell; the grid goes on
        row["error"] = error_text(e)
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    return row


def write_references(task: Task, data: TaskData, ctx: PrepareContext, results: Path | str, done: set[str],
                     grid: str, task_opts: dict[str, Any], log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Append the task's missing reference rows to `results`; returns the rows written."""
    written = []
    for ref in task.references(data, ctx):
        if reference_key(ref) in done:
            continue
        row = reference_row(ref, task, data, grid, task_opts)
        append_row(results, row)
        written.append(row)
        m, name = row["metrics"], f"{ref.name}{' (' + ref.setting + ')' if ref.setting else ''}"
        if row["status"] != "ok":
            log(f"  ref    {name}: failed: {row['error']}")
            continue
        shown = " ".join(f"{k}={v:.3f}" for k, v in m.items() if isinstance(v, float))
        log(f"  ref    {name}: {shown} on {m.get('eval_n', '?')} items")
    return written
