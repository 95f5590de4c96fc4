"""Reference rows (harness/references.py): a reference whose scoring breaks is a failed row, like a cell,
and the task's other references are still scored and written."""
from __future__ import annotations

import pytest

import tasks
from core.results import done_keys, read_rows
from harness.references import reference_key, write_references


@pytest.fixture(scope="module")
def mqar(tmp_path_factory):
    """A small MQAR task and its data (seconds to build; no files needed)."""
    cache = tmp_path_factory.mktemp("ref-cache")
    task = tasks.build("mqar", train_tokens=640, dev_seqs=2, eval_seqs=2)
    ctx = tasks.PrepareContext(None, cache, 64, 64, log=lambda _m: None)
    return task, task.prepare(ctx), ctx


def _refs(broken: str | None) -> list[tasks.Reference]:
    """A floor, a middle reference whose `broken` scorer ("score" or "score_full") raises, and a ceiling."""
    def boom():
        raise RuntimeError("no answers to score\nsecond line of the message")

    def ok(value):
        return lambda: {"accuracy": value, "eval_n": 2}

    return [tasks.Reference("floor", "baseline", "always wrong", {"r": 1}, score=ok(0.0)),
            tasks.Reference("middle", "baseline", "half right", {"r": 2},
                            score=boom if broken == "score" else ok(0.5),
                            score_full=boom if broken == "score_full" else None),
            tasks.Reference("ceiling", "ceiling", "the gold answer", {"r": 3}, score=ok(1.0))]


@pytest.mark.parametrize("broken", ["score", "score_full"])
def test_a_reference_that_fails_to_score_is_a_failed_row_and_the_others_go_on(mqar, tmp_path, monkeypatch, broken):
    """A broken reference (its score, or its whole-split score, raises) is written as a failed row with
    the error's first line, and logged with it; the references after it are still scored and written ok.
    Its key is not done, so the grid's next run scores it again (and only it)."""
    task, data, ctx = mqar
    monkeypatch.setattr(task, "references", lambda data, ctx: _refs(broken))
    results, lines = tmp_path / "g.jsonl", []
    written = write_references(task, data, ctx, results, set(), "g", {}, log=lines.append)
    rows = read_rows(results)
    assert [r["reference"]["name"] for r in rows] == [r["reference"]["name"] for r in written] == [
        "floor", "middle", "ceiling"]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[1]["error"] == "RuntimeError: no answers to score"
    assert rows[0]["error"] is None and rows[2]["metrics"] == {"accuracy": 1.0, "eval_n": 2}
    assert len(lines) == 3 and "ref    ceiling: accuracy=1.000 on 2 items" in lines[2]
    # all or nothing: no figures from the half that ran, and the line says failed (not the half's figures)
    assert rows[1]["metrics"] == {} and "full_split" not in rows[1]["reference"]
    assert lines[1] == "  ref    middle: failed: RuntimeError: no answers to score"

    monkeypatch.setattr(task, "references", lambda data, ctx: _refs(None))  # fixed: the rerun scores it alone
    again = write_references(task, data, ctx, results, done_keys(results), "g", {}, log=lines.append)
    assert [r["reference"]["name"] for r in again] == ["middle"] and again[0]["status"] == "ok"
    assert done_keys(results) == {reference_key(r) for r in _refs(None)}


def test_a_reference_row_records_its_time_and_no_training(mqar, tmp_path, monkeypatch):
    """A reference trains nothing (no parameters, no tokens, one process) and its wall time is the time its
    scoring took, on the clock read around it; its log line names its setting and every float metric."""
    import harness.references as hr

    task, data, ctx = mqar
    clock = iter([100.0, 101.256])
    monkeypatch.setattr(hr.time, "perf_counter", lambda: next(clock))
    ref = tasks.Reference("floor", "baseline", "always wrong", {"r": 1}, setting="identity",
                          score=lambda: {"em": 0.25, "f1": 0.5, "eval_n": 4})
    monkeypatch.setattr(task, "references", lambda data, ctx: [ref])
    lines: list[str] = []
    (row,) = write_references(task, data, ctx, tmp_path / "g.jsonl", set(), "g", {}, log=lines.append)
    assert row["wall_s"] == 1.26
    assert (row["params"], row["tokens_seen"], row["world_size"], row["loss_curve"]) == (0, 0, 1, [])
    assert lines == ["  ref    floor (identity): em=0.250 f1=0.500 on 4 items"]
