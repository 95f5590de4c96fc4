"""Reference rows: a task's floors (non-neural baselines) and ceilings as ordinary results rows.

They go into the grid's results file beside the model cells (`objective` = "none", `params` = 0),
so a report shows them in the same table. Each reference has its own resume key (a hash of what
its score depends on): a rerun of the grid computes only the missing ones.
"""
from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from harness.cell import SCHEMA_VERSION
from core.env import device_name, git_commit, versions
from core.results import append_row, error_text
from tasks import PrepareContext, Reference, Task, TaskData

REFERENCE_OBJECTIVE = "none"


def reference_key(ref: Reference) -> str:
    blob = json.dumps({"reference": ref.name, **ref.identity}, sort_keys=True, default=str)
    return "ref-" + hashlib.sha1(blob.encode()).hexdigest()[:12]


def reference_row(ref: Reference, task: str, data: TaskData, grid: str, task_opts: dict[str, Any]) -> dict[str, Any]:
    """Score one reference (on the models' items, and on the whole split if they are a sample)."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "key": reference_key(ref), "grid": grid, "task": task, "protocol": data.protocol,
        "mixer": ref.name, "objective": REFERENCE_OBJECTIVE, "seed": None, "preset": None, "budget": None,
        "norm": None, "task_opts": task_opts, "status": "failed", "error": None, "params": 0, "tokens_seen": 0,
        "device": device_name("cpu"), "versions": versions(), "git_commit": git_commit(), "metrics": {},
        "loss_curve": [], "world_size": 1, "data": data.info,
        "reference": {"kind": ref.kind, "rule": ref.rule, "setting": ref.setting, "identity": ref.identity},
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        row["metrics"] = ref.score()
        if ref.score_full is not None:
            row["reference"]["full_split"] = ref.score_full()
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
        row = reference_row(ref, task.name, data, grid, task_opts)
        append_row(results, row)
        written.append(row)
        m = row["metrics"]
        shown = " ".join(f"{k}={v:.3f}" for k, v in m.items() if isinstance(v, float))
        log(f"  ref    {ref.name}{' (' + ref.setting + ')' if ref.setting else ''}: "
            f"{shown or row['error']} on {m.get('eval_n', '?')} items")
    return written
