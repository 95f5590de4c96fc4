"""Results: one JSON object per line, appended atomically, never rewritten.

Every finished cell (ok or failed) appends one line. The write is a single `os.write` of the whole
line on an `O_APPEND` descriptor under an exclusive `flock`, followed by `fsync`: concurrent writers
(parallel cells) never interleave, and a kill leaves either the whole line or nothing. A reader
that still finds a torn last line (power loss) reports it with the file and line number.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterable

from core.files import write_atomic
from core.schema import ROW_KEYS, SchemaError, upgrade


class ResultsFileError(ValueError):
    pass


def error_text(e: BaseException, limit: int = 500, kind: str | None = None) -> str:
    """A row's `error`: one line, the exception's type (or `kind`) and the first line of its message."""
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{kind or type(e).__name__}: {first}"[:limit]


def append_row(path: Path | str, row: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, ensure_ascii=False, allow_nan=True, default=jsonable) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def jsonable(o: Any) -> Any:
    """What json.dumps writes for a value it cannot: a tensor or numpy scalar as a number, a set or tuple
    as a list, anything else as its text (`default=` of every results writer)."""
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def read_rows(path: Path | str) -> list[dict[str, Any]]:
    """All rows of one results file, each upgraded to the current schema (`core.schema.upgrade`: files
    written by older versions keep loading); a malformed line is an error naming the file and line."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResultsFileError(f"{path}:{n}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise ResultsFileError(f"{path}:{n}: not a JSON object")
            try:
                row = upgrade(row)
            except SchemaError as e:
                raise ResultsFileError(f"{path}:{n}: {e}") from None
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                raise ResultsFileError(f"{path}:{n}: row lacks {', '.join(missing)}")
            rows.append(row)
    return rows


def latest_by_key(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last row written for each cell key: a rerun of a failed cell supersedes its failure."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out[r["key"]] = r
    return out


def cell_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model-cell rows only: a grid file also holds the task's reference rows (baselines, ceilings),
    which carry a `reference` field (with the reference's `name`) and objective "none"."""
    return [r for r in rows if "reference" not in r]


def done_keys(path: Path | str) -> set[str]:
    """Keys of cells that finished with status ok (resume skips exactly these)."""
    path = Path(path)
    if not path.exists():
        return set()
    return {k for k, r in latest_by_key(read_rows(path)).items() if r["status"] == "ok"}


def expected_path(results: Path | str) -> Path:
    """`results/<grid>.jsonl` -> `results/<grid>.expected.json`: the cells the grid was asked to run."""
    results = Path(results)
    return results.with_name(results.stem + ".expected.json")


def write_expected(results: Path | str, cells: Iterable[Any]) -> Path:
    """Record, at grid start, every cell the grid expects (the union with earlier invocations of the
    same grid), so a report can list the cells that never wrote a row (killed, still to run). Written
    to a temporary file and renamed: a reader sees the old manifest or the new one, never half."""
    path = expected_path(results)
    known = {c["key"]: c for c in read_expected(path)}
    for c in cells:
        known.setdefault(c.key(), {"key": c.key(), "label": c.label(), "mixer": c.mixer, "objective": c.objective,
                                   "seed": c.seed, **({"sweep": c.sweep} if c.sweep else {})})
    return write_atomic(path, json.dumps({"cells": list(known.values())}, ensure_ascii=False, indent=1) + "\n")


def read_expected(path: Path | str) -> list[dict[str, Any]]:
    """The expected cells of a manifest ([] when there is none); a malformed one is a one-line error."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        if not all(isinstance(c, dict) and "key" in c for c in cells):
            raise ValueError("a cell without a key")
    except (ValueError, KeyError, TypeError) as e:
        raise ResultsFileError(f"{path}: not a grid manifest ({e})") from None
    return cells
