"""What a results row is: its version, its required keys, where it ran, what its task declared.

Three writers build rows (a model cell: harness/cell.py, a task's reference: harness/references.py,
a benchmark: benchmarks/common.py) and every one starts from `new_row`, so the version and the
provenance (device, package versions, git commit, start time) are spelled once. Every reader goes
through `core.results.read_rows`, which applies `upgrade` and checks the keys every row has
(`ROW_KEYS`); reports then check the rest (`missing_keys`): a report only ever sees rows of the
current version, and older files keep loading.

A row carries its task's declarations, so a report needs nothing but rows (it never imports a task):
- `task_metrics`: a list of `Metric` dicts (key, header, which way is better, which is the
  headline, legend text, number format), in display order;
- `protocol_text`: one sentence on what the data protocol trains and evaluates on.

Versions:
- 1: model and reference rows (`schema: 1`) and benchmark rows (no `schema` key). A reference's
  name was in `mixer`; no declarations.
- 2: a reference's name is `reference.name` and its `mixer` is null; rows carry `task_metrics` and
  `protocol_text`; benchmark rows carry `schema` too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from core.env import device_name, git_commit, versions

SCHEMA_VERSION = 2

# Keys every row has, model cell, reference or benchmark (`read_rows` refuses a row without one).
# `mixer` and `objective` are null where they mean nothing (a reference, a loss benchmark).
ROW_KEYS = ("key", "status", "mixer", "objective")
# Keys a grid row (model cell or reference) has beyond those: what a report relies on.
GRID_KEYS = ("task", "protocol", "seed", "preset", "budget", "error", "params", "tokens_seen", "device",
             "versions", "git_commit", "metrics", "loss_curve")
# ... and a benchmark row (told apart by its `bench` key).
BENCH_KEYS = ("bench", "device")
STATUSES = ("ok", "failed")
REFERENCE_OBJECTIVE = "none"  # a reference row's objective: it is no model


class SchemaError(ValueError):
    """A row this code cannot read (a newer schema, a required key missing)."""


@dataclass(frozen=True)
class Metric:
    """One metric a task reports, declared by the task and carried by every row it writes.

    `fmt` is a format spec (".3f"), not a function, so the declaration survives in JSON."""

    key: str  # the key in the row's `metrics`
    header: str  # table header and axis label
    better: str = "max"  # "max" | "min": which way is better (sorting, bold, differences)
    headline: bool = False  # the metric a table is sorted by and the figures draw (one per task)
    doc: str = ""  # one line for the report's legend
    fmt: str = ".3f"
    axis: str = ""  # a figure's axis label with its unit ("": the header)

    def __post_init__(self):
        if self.better not in ("max", "min"):
            raise ValueError(f"metric {self.key!r}: better must be 'max' or 'min', got {self.better!r}")

    def format(self, v: Any) -> str:
        return format(v, self.fmt)

    @property
    def label(self) -> str:
        return self.axis or self.header

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Metric":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def declared_metrics(rows: Iterable[dict[str, Any]]) -> list[Metric]:
    """The metrics the rows' tasks declared, first declaration of each key winning, in order."""
    out: dict[str, Metric] = {}
    for r in rows:
        for d in r.get("task_metrics") or []:
            if isinstance(d, dict) and d.get("key") and d["key"] not in out:
                out[d["key"]] = Metric.from_dict(d)
    return list(out.values())


def headline_metric(rows: list[dict[str, Any]]) -> Metric | None:
    """The declared headline metric (else the first declared one) that some row carries a value of."""
    decl = declared_metrics(rows)
    carried = [m for m in decl if any(isinstance((r.get("metrics") or {}).get(m.key), (int, float)) for r in rows)]
    heads = [m for m in carried if m.headline]
    return (heads or carried or [None])[0]


def provenance(device: str) -> dict[str, Any]:
    """Where and when a row was measured: device name, package versions, git commit, start time (UTC)."""
    return {"device": device_name(device), "versions": versions(), "git_commit": git_commit(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def new_row(key: str, device: str, *, mixer: str | None, objective: str | None, status: str = "failed",
            **fields: Any) -> dict[str, Any]:
    """A row of the current schema: its version, the keys every row has, `fields`, its provenance.
    A cell starts "failed" (error None) and says "ok" once it has finished."""
    return {"schema": SCHEMA_VERSION, "key": key, "mixer": mixer, "objective": objective, "status": status,
            "error": None, **fields, **provenance(device)}


def is_reference(row: dict[str, Any]) -> bool:
    return row.get("objective") == REFERENCE_OBJECTIVE and "bench" not in row


def row_name(row: dict[str, Any]) -> str:
    """What a row is called: its mixer, or a reference's name."""
    if is_reference(row):
        return str((row.get("reference") or {}).get("name") or row.get("mixer"))
    return str(row.get("mixer"))


def missing_keys(row: dict[str, Any]) -> list[str]:
    """Required keys the row lacks (the ones every row has first: a row without those is no row)."""
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        return missing
    return [k for k in (BENCH_KEYS if "bench" in row else GRID_KEYS) if k not in row]


# ----------------------------------------------------------------------------- upgrades of older rows

# What the tasks declared when rows of schema 1 were written, frozen: a later change to a task's
# declarations must not rewrite the meaning of rows written before it (so this is a copy, not an import).
_V1_METRICS = {
    "jsquad": [Metric("em", "EM", "max", False, "exact match (JGLUE normalisation), fraction of questions",
                      axis="EM (exact match, fraction)"),
               Metric("f1", "F1", "max", True, "character F1 (JGLUE), mean over questions",
                      axis="F1 (JGLUE character F1, fraction)")],
    "mqar": [Metric("accuracy", "accuracy", "max", True, "fraction of queries answered right",
                    axis="accuracy (fraction of queries)")],
}
_V1_PROTOCOLS = {
    "jsquad": "official JGLUE JSQuAD v1.3: train on `train` (minus a dev slice of whole articles for checkpoint "
              "selection), evaluate on `valid` (JGLUE's dev set, the split papers report)",
    "jsquad-offline": "JSQuAD v1.3 without its train split: train on `valid` (minus a dev slice of whole articles "
                      "for checkpoint selection), evaluate on `test` (disjoint articles). Not comparable to "
                      "published dev-set scores",
    "jsquad-offline+jaquad": "`jsquad-offline` plus JaQuAD v0.1.0 train + dev (CC BY-SA 3.0) as extra training data, "
                             "minus its articles sharing a title or paragraph with the held-out text; evaluate on "
                             "JSQuAD `test`",
    "jsquad+jaquad": "`jsquad` plus JaQuAD v0.1.0 train + dev (CC BY-SA 3.0) as extra training data, minus its "
                     "articles sharing a title or paragraph with the held-out text; evaluate on JSQuAD `valid`",
    "mqar": "synthetic multi-query associative recall (Zoology, arXiv 2312.04927): generated key-value "
            "sequences, accuracy on the queried values",
}


def _v1_to_v2(row: dict[str, Any]) -> dict[str, Any]:
    if "bench" in row:
        return row  # benchmark rows gained only the version key
    if row.get("objective") == REFERENCE_OBJECTIVE:  # the reference's name moves out of `mixer`
        row["reference"] = {"name": row.get("mixer"), **(row.get("reference") or {})}
        row["mixer"] = None
    task = row.get("task")
    if "task_metrics" not in row and task in _V1_METRICS:
        row["task_metrics"] = [m.to_dict() for m in _V1_METRICS[task]]
    if "protocol_text" not in row:
        text = _V1_PROTOCOLS.get(str(row.get("protocol"))) or _V1_PROTOCOLS.get(str(task))
        if text:
            row["protocol_text"] = text
    return row


UPGRADES = {1: _v1_to_v2}  # version -> the step to the next one


def upgrade(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of `row` in the current schema (the row itself when it already is); `upgraded_from` keeps
    the version it was written in. A row newer than this code is refused: it may mean something else."""
    v = row.get("schema", 1)  # benchmark rows of version 1 had no `schema` key
    if not isinstance(v, int) or v > SCHEMA_VERSION or v < 1:
        raise SchemaError(f"schema {v!r} is not one this code reads (1..{SCHEMA_VERSION}); update wavebench")
    if v == SCHEMA_VERSION:
        return row
    out = dict(row)
    while v < SCHEMA_VERSION:
        out = UPGRADES[v](out)
        v += 1
    out["schema"] = SCHEMA_VERSION
    out["upgraded_from"] = row.get("schema", 1)
    return out
