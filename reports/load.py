"""Reading results files for a report: every row checked, any problem named by file and line.

Two kinds of files live in `results/`:
- grid files (`<grid>.jsonl`): one row per model cell (`run_matrix.py`) and per reference (a task's
  baselines and ceilings, `objective` = "none", named by `reference.name`);
- benchmark files (`bench_<name>.jsonl`): rows with a `bench` field ("scaling", "loss_memory", "decode").
A report reads only these rows, through the schema (`core.schema`: rows of older versions are
upgraded on reading): it never opens a checkpoint or reruns a model, and never imports a task.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.results import ResultsFileError, expected_path, latest_by_key, read_expected, read_rows
from core.schema import STATUSES, declared_metrics, is_reference, missing_keys  # noqa: F401  (is_reference: for reports)

BENCH_KINDS = ("scaling", "loss_memory", "decode", "span_answers")
# metrics a report computes with beyond the task's declared ones: a row carrying one must carry a number (or null)
NUMERIC_METRICS = ("ppl", "ppl_bound", "tokens_per_s", "peak_mem_bytes", "eval_peak_mem_bytes", "gen_latency_ms",
                   "state_floats", "eval_n", "nll_mc_se")


@dataclass
class Results:
    grids: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # grid name -> latest row per key
    bench: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # bench kind -> latest row per key
    files: dict[str, Path] = field(default_factory=dict)  # grid name -> its file
    expected: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # grid -> cells it was asked to run
    every_grid: list[str] = field(default_factory=list)  # every grid file's name, also those `load(grid=...)` left out


def _line_numbers(path: Path) -> list[int]:
    """Line number of each row `read_rows` returns (it skips blank lines)."""
    with open(path, encoding="utf-8") as f:
        return [n for n, line in enumerate(f, 1) if line.strip()]


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def check_row(row: dict[str, Any], where: str) -> None:
    """What a report relies on beyond `read_rows`' checks; raises ResultsFileError naming `where`."""
    def bad(msg: str) -> ResultsFileError:
        return ResultsFileError(f"{where}: {msg}")

    if row["status"] not in STATUSES:
        raise bad(f"status must be one of {', '.join(STATUSES)}, got {row['status']!r}")
    missing = missing_keys(row)
    if missing:
        raise bad(f"{'benchmark ' if 'bench' in row else ''}row lacks {', '.join(missing)}")
    if "bench" in row:
        if row["bench"] not in BENCH_KINDS:
            raise bad(f"unknown bench {row['bench']!r} (known: {', '.join(BENCH_KINDS)})")
        return
    metrics = row.get("metrics", {})
    if not isinstance(metrics, dict):
        raise bad(f"metrics must be an object, got {type(metrics).__name__}")
    for k in [m.key for m in declared_metrics([row])] + list(NUMERIC_METRICS):
        if not _is_number(metrics.get(k)):
            raise bad(f"metric {k!r} is not a number: {metrics[k]!r}")
    curve = row.get("loss_curve", [])
    if not isinstance(curve, list) or not all(isinstance(p, dict) for p in curve):
        raise bad("loss_curve must be a list of objects")
    if row["status"] == "ok" and not metrics:
        raise bad("an ok row has no metrics")


def load(results_dir: Path | str, grid: str | None = None) -> Results:
    """Every `*.jsonl` in `results_dir` (or only grid `grid`, plus the benchmark files)."""
    out = Results()
    for path in sorted(Path(results_dir).glob("*.jsonl")):
        rows = read_rows(path)  # JSON and required keys, with file:line
        lines = _line_numbers(path)
        for row, n in zip(rows, lines):
            check_row(row, f"{path}:{n}")
        benches = {r.get("bench") for r in rows}
        if benches - {None} and None in benches:
            n = lines[next(i for i, r in enumerate(rows) if r.get("bench") is None)]
            raise ResultsFileError(f"{path}:{n}: a grid row in a benchmark file (rows with and without 'bench')")
        if None not in benches:  # a benchmark file
            for kind in benches:
                latest = latest_by_key(r for r in rows if r["bench"] == kind)
                out.bench.setdefault(kind, []).extend(latest.values())
        else:
            out.every_grid.append(path.stem)
            if grid is None or path.stem == grid:
                out.grids[path.stem] = list(latest_by_key(rows).values())
                out.files[path.stem] = path
                out.expected[path.stem] = read_expected(expected_path(path))
    return out


def finite(v: Any) -> float | None:
    """A metric as a float, None when absent, NaN or not a number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None
