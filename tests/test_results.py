from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from core.results import (ResultsFileError, append_row, cell_rows, done_keys, error_text, latest_by_key,
                          read_rows, write_expected)


def _row(key, status="ok", **kw):
    return {"key": key, "status": status, "mixer": "attention", "objective": "autoregressive", **kw}


def test_append_and_read_back(tmp_path):
    p = tmp_path / "r.jsonl"
    append_row(p, _row("a", metrics={"em": 0.5, "ppl": float("nan")}))
    append_row(p, _row("b", status="failed", error="OutOfMemoryError: x"))
    rows = read_rows(p)
    assert [r["key"] for r in rows] == ["a", "b"]
    assert done_keys(p) == {"a"}


def test_writers_make_their_folder_and_leave_no_file_open(tmp_path):
    """`--out` may name a folder that does not exist yet; a grid of hundreds of cells appends a row per
    cell and must not leak a file descriptor per row."""
    import os
    p = tmp_path / "new" / "results" / "r.jsonl"
    before = len(os.listdir("/proc/self/fd"))
    for i in range(20):
        append_row(p, _row(f"k{i}"))
    assert len(os.listdir("/proc/self/fd")) == before and len(read_rows(p)) == 20
    from harness.cell import Cell
    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=1")
    assert write_expected(tmp_path / "other" / "results" / "g.jsonl", [cell]).is_file()


def test_an_error_is_one_line_of_bounded_length_and_reference_rows_are_not_cells():
    assert error_text(ValueError("first line\nsecond line")) == "ValueError: first line"
    assert error_text(RuntimeError(""), kind="OOM") == "OOM: "
    assert len(error_text(ValueError("x" * 2000))) == 500
    rows = [_row("a"), {**_row("b"), "reference": {"name": "title"}, "objective": "none"}]
    assert [r["key"] for r in cell_rows(rows)] == ["a"]


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


def test_a_row_is_one_write_under_an_exclusive_lock(tmp_path, monkeypatch):
    """What makes appends atomic, checked call by call (the concurrent test above is timing-dependent: it
    passed with the lock removed and the line written in two parts): the file is opened O_APPEND, and the
    whole line, newline included, goes out in ONE os.write between flock(LOCK_EX) and flock(LOCK_UN),
    fsync'd before the unlock. So concurrent writers never interleave and a killed one leaves no half line."""
    import fcntl
    import os

    calls = []
    real_open, real_write, real_fsync, real_flock = os.open, os.write, os.fsync, fcntl.flock

    def rec(name, real):
        def f(*args, **kw):
            calls.append((name, *args))
            return real(*args, **kw)
        return f

    monkeypatch.setattr(os, "open", rec("open", real_open))
    monkeypatch.setattr(os, "write", rec("write", real_write))
    monkeypatch.setattr(os, "fsync", rec("fsync", real_fsync))
    monkeypatch.setattr(fcntl, "flock", rec("flock", real_flock))
    p = tmp_path / "r.jsonl"
    row = _row("a", pad="x" * 100_000)  # far larger than a pipe buffer or a page
    append_row(p, row)
    monkeypatch.undo()

    [(_, path, flags, *_)] = [c for c in calls if c[0] == "open"]
    assert os.fspath(path) == str(p) and flags & os.O_APPEND
    ops = [c for c in calls if c[0] != "open"]
    assert [c[0] for c in ops] == ["flock", "write", "fsync", "flock"]
    assert len({c[1] for c in ops}) == 1  # all on the one descriptor
    assert (ops[0][2], ops[-1][2]) == (fcntl.LOCK_EX, fcntl.LOCK_UN)
    line = bytes(ops[1][2])
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and json.loads(line) == row
    assert p.read_bytes() == line


def test_untracked_files_in_a_package_make_the_commit_dirty(tmp_path):
    """A new, uncommitted mixer file changes what runs: the row's commit must say +dirty, also when git
    quotes its name (a space in it). A new file outside the packages (a results file) does not; a change
    to a tracked file anywhere does."""
    import subprocess

    from core.env import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "mixers").mkdir()
    (tmp_path / "mixers" / "__init__.py").write_text("")
    (tmp_path / "run_matrix.py").write_text("")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert clean and not clean.endswith("+dirty")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "g.jsonl").write_text("{}\n")
    git_commit.cache_clear()
    assert git_commit(tmp_path) == clean
    (tmp_path / "mixers" / "my_mixer.py").write_text("x = 1\n")
    git_commit.cache_clear()
    assert git_commit(tmp_path) == clean + "+dirty"
    (tmp_path / "mixers" / "my_mixer.py").rename(tmp_path / "mixers" / "my mixer.py")  # ?? "mixers/my mixer.py"
    git_commit.cache_clear()
    assert git_commit(tmp_path) == clean + "+dirty"
    (tmp_path / "mixers" / "my mixer.py").unlink()
    (tmp_path / "run_matrix.py").write_text("x = 2\n")  # tracked, in no package
    git_commit.cache_clear()
    assert git_commit(tmp_path) == clean + "+dirty"
    git_commit.cache_clear()


def test_grid_manifest_is_a_union_written_whole(tmp_path):
    from harness.cell import Cell
    from core.results import expected_path, read_expected, write_expected

    results = tmp_path / "results" / "g.jsonl"
    a = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=1")
    b = Cell(task="jsquad", mixer="mamba", objective="diffusion", preset="tiny", budget="tokens=1")
    write_expected(results, [a])
    write_expected(results, [a, b])  # a second invocation of the same grid adds its cells
    cells = read_expected(expected_path(results))
    assert [c["key"] for c in cells] == [a.key(), b.key()] and cells[1]["label"] == b.label()
    assert [p.name for p in results.parent.iterdir()] == ["g.expected.json"]  # no temporary left behind
    expected_path(results).write_text("{not json")
    with pytest.raises(ResultsFileError, match="g.expected.json: not a grid manifest"):
        read_expected(expected_path(results))


def test_a_copy_without_git_records_the_declared_commit(tmp_path, monkeypatch):
    """A lent GPU machine gets the working tree without .git: its rows name the commit the session
    declared ($WAVEBENCH_COMMIT), marked as declared; with nothing declared, no commit (never a guess)."""
    from core.env import git_commit

    monkeypatch.delenv("WAVEBENCH_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path
    git_commit.cache_clear()
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("WAVEBENCH_COMMIT", "ad5ec21")
    git_commit.cache_clear()
    assert git_commit(tmp_path) == "ad5ec21 (declared)"
    git_commit.cache_clear()


def test_values_json_cannot_write_are_written_as_numbers_lists_or_text(tmp_path):
    """Rows carry tensors and numpy scalars (a metric straight from a model), sets, and objects such as
    paths: a tensor or numpy scalar is written as its number, a set or tuple as a list, anything else as
    its text, so a row never fails to be written at the end of a cell."""
    from pathlib import Path

    import numpy as np
    import torch

    from core.results import jsonable

    p = tmp_path / "r.jsonl"
    append_row(p, _row("a", metrics={"em": torch.tensor(0.5), "n": np.int64(7), "f1": np.float32(0.25)},
                       mixers={"mamba"}, where=Path("/data/x")))
    [row] = read_rows(p)
    assert row["metrics"] == {"em": 0.5, "n": 7, "f1": 0.25} and type(row["metrics"]["n"]) is int
    assert row["mixers"] == ["mamba"] and row["where"] == "/data/x"
    assert jsonable((1, 2)) == [1, 2] and jsonable(torch.tensor(3)) == 3


@pytest.mark.parametrize("line", ["[1, 2]", '"ok"', "3"])
def test_a_json_line_that_is_not_an_object_is_named(tmp_path, line):
    """Valid JSON that is not an object (a list, a string, a number) is no row: an error naming the file
    and line, not an AttributeError from the schema upgrade."""
    p = tmp_path / "r.jsonl"
    append_row(p, _row("a"))
    with open(p, "a") as f:
        f.write(line + "\n")
    with pytest.raises(ResultsFileError, match=r"r\.jsonl:2: not a JSON object$"):
        read_rows(p)


@pytest.mark.parametrize("cells", [[{"key": "a"}, {"label": "no key"}], [{"key": "a"}, "a"]])
def test_a_grid_manifest_with_a_cell_without_a_key_is_refused(tmp_path, cells):
    """A manifest cell without a key (or not an object) could never be matched with a row: the report
    would list it as missing forever. It is a one-line error naming the manifest."""
    from core.results import read_expected

    p = tmp_path / "g.expected.json"
    p.write_text(json.dumps({"cells": cells}))
    with pytest.raises(ResultsFileError, match=r"g\.expected\.json: not a grid manifest \(a cell without a key\)"):
        read_expected(p)


def test_results_files_are_readable_by_all_and_writable_by_their_owner(tmp_path):
    """A results file is shared (a report run by another user, a synced folder): mode 0644 under the
    process's umask, like any file a tool writes, never executable."""
    import os
    import stat

    mask = os.umask(0o022)
    try:
        append_row(tmp_path / "r.jsonl", _row("a"))
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "r.jsonl").st_mode) == 0o644


def test_a_rows_japanese_is_written_as_is(tmp_path):
    """A row's text (sample answers, an error from MeCab) stays UTF-8 as written, so `grep 東京 results/*`
    finds it, and it reads back the same."""
    append_row(tmp_path / "r.jsonl", _row("a", error="DataError: 東京"))
    assert "東京" in (tmp_path / "r.jsonl").read_text(encoding="utf-8")
    assert read_rows(tmp_path / "r.jsonl")[0]["error"] == "DataError: 東京"


def test_the_grid_manifest_is_text_a_person_can_read(tmp_path):
    """UTF-8 as written (a label in Japanese stays legible, not \\u escapes) and a final newline."""
    import types

    from core.results import expected_path

    cell = types.SimpleNamespace(key=lambda: "k1", label=lambda: "波 x autoregressive (seed 0)", mixer="波",
                                 objective="autoregressive", seed=0, sweep=None)
    write_expected(tmp_path / "g.jsonl", [cell])
    text = expected_path(tmp_path / "g.jsonl").read_text(encoding="utf-8")
    assert '"label": "波 x autoregressive (seed 0)"' in text and text.endswith("}\n")
