from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from harness.results import ResultsFileError, append_row, done_keys, latest_by_key, read_rows


def _row(key, status="ok", **kw):
    return {"key": key, "status": status, "mixer": "attention", "objective": "autoregressive", **kw}


def test_append_and_read_back(tmp_path):
    p = tmp_path / "r.jsonl"
    append_row(p, _row("a", metrics={"em": 0.5, "ppl": float("nan")}))
    append_row(p, _row("b", status="failed", error="OutOfMemoryError: x"))
    rows = read_rows(p)
    assert [r["key"] for r in rows] == ["a", "b"]
    assert done_keys(p) == {"a"}


def test_rerun_of_failed_cell_supersedes_it(tmp_path):
    p = tmp_path / "r.jsonl"
    append_row(p, _row("a", status="failed"))
    append_row(p, _row("a", status="ok"))
    assert done_keys(p) == {"a"} and latest_by_key(read_rows(p))["a"]["status"] == "ok"


def test_malformed_line_is_named(tmp_path):
    p = tmp_path / "r.jsonl"
    append_row(p, _row("a"))
    with open(p, "a") as f:
        f.write('{"key": "b", "status": "ok", "mix')  # a torn line
    with pytest.raises(ResultsFileError, match=r"r\.jsonl:2: not a JSON object"):
        read_rows(p)
    p.write_text(json.dumps({"status": "ok"}) + "\n")
    with pytest.raises(ResultsFileError, match=r":1: row lacks key"):
        read_rows(p)


def _writer(path, n, tag):
    for i in range(n):
        append_row(path, _row(f"{tag}{i}", pad="x" * 20000))  # lines far larger than a pipe buffer


def test_concurrent_writers_never_interleave(tmp_path):
    p = tmp_path / "r.jsonl"
    procs = [mp.get_context("spawn").Process(target=_writer, args=(p, 20, t)) for t in "ab"]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
    rows = read_rows(p)
    assert len(rows) == 40 and len({r["key"] for r in rows}) == 40
