"""The results schema: one row constructor for every writer, one set of required keys, and older rows
(schema 1, benchmark rows without a version) upgraded on reading so their reports still build."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from core.results import ResultsFileError, append_row, latest_by_key, read_rows
from core.schema import (BENCH_KEYS, GRID_KEYS, ROW_KEYS, SCHEMA_VERSION, Metric, declared_metrics, headline_metric,
                         missing_keys, upgrade)
from reports import write_reports
from fixtures.markdown import table

ROOT = Path(__file__).resolve().parents[1]
V1 = Path(__file__).resolve().parent / "fixtures" / "results_v1"


def test_v1_rows_are_upgraded_on_reading():
    raw = [json.loads(line) for line in (V1 / "g.jsonl").read_text().splitlines()]
    rows = read_rows(V1 / "g.jsonl")
    assert all(r["schema"] == SCHEMA_VERSION and r["upgraded_from"] == 1 for r in rows)
    refs = [r for r in rows if r["objective"] == "none"]
    assert [r["reference"]["name"] for r in refs] == ["overlap_span", "tokenizer_ceiling"]
    assert all(r["mixer"] is None for r in refs)
    assert refs[0]["reference"]["kind"] == "baseline" and refs[0]["reference"]["full_split"]["eval_n"] == 4420
    models = [r for r in rows if r["objective"] != "none"]
    assert [r["mixer"] for r in models] == ["attention", "gated_context", "attention"]
    qa, mqar = models[0], models[2]
    assert [(m["key"], m["headline"]) for m in qa["task_metrics"]] == [("em", False), ("f1", True)]
    assert [(m["key"], m["headline"]) for m in mqar["task_metrics"]] == [("accuracy", True)]
    assert "evaluate on `test`" in qa["protocol_text"] and "associative recall" in mqar["protocol_text"]
    assert [r["metrics"] for r in rows] == [r["metrics"] for r in raw]  # numbers untouched
    assert raw[2]["mixer"] == "overlap_span" and "name" not in raw[2]["reference"]  # the fixture is literal v1
    # a benchmark row written with no `schema` key is version 1
    [bench] = read_rows(V1 / "bench_decode.jsonl")
    assert bench["schema"] == SCHEMA_VERSION and bench["upgraded_from"] == 1 and bench["mixer"] == "attention"
    # a current row is returned as it is
    assert upgrade(rows[0]) is rows[0]


def test_a_row_is_upgraded_through_every_version_between_its_own_and_the_codes(monkeypatch):
    """The day a version 3 is added, a version-1 row must take both steps, 1 -> 2 -> 3, in order, and a
    version-2 row only the last: with one step registered today, skipping a version goes unseen."""
    from core import schema

    raw = json.loads((V1 / "g.jsonl").read_text().splitlines()[0])
    to_v3 = lambda r: {**r, "v3_saw": r.get("protocol_text") is not None}  # noqa: E731  (after 1 -> 2's field)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(schema.UPGRADES, SCHEMA_VERSION, to_v3)
    v3 = schema.upgrade(raw)
    assert v3["schema"] == SCHEMA_VERSION + 1 and v3["upgraded_from"] == 1 and v3["v3_saw"] is True
    v2 = schema.upgrade({**raw, "schema": SCHEMA_VERSION})
    assert v2["upgraded_from"] == SCHEMA_VERSION and v2["v3_saw"] is False  # not upgraded as if it were v1


def test_v1_fixture_builds_the_report_with_references_named(tmp_path, no_png):
    shutil.copytree(V1, tmp_path / "results")
    write_reports(tmp_path / "results", tmp_path / "reports")
    text = (tmp_path / "reports" / "g" / "README.md").read_text()
    head, rows = table(text, "## jsquad · jsquad-offline")
    assert head[:4] == ["mixer", "objective", "EM", "F1"]
    assert [r["mixer"] for r in rows] == ["*tokenizer_ceiling (identity, vocab 4000, ≤24 answer tokens)*",
                                         "*overlap_span*", "gated_context", "attention"]  # by F1, best first
    assert rows[2]["vs best baseline"] == "below overlap_span (F1 -0.412)"
    assert "- *overlap_span* (baseline): Gap filling" in text and "None" not in text.split("## mqar")[0]
    assert "`jsquad-offline`: JSQuAD v1.3 without its train split" in text
    _, mq = table(text, "## mqar")
    assert mq[0]["accuracy"].strip("*") == "0.812"
    assert "`mqar-T64-kv4-V1024`: synthetic multi-query associative recall" in text


def test_rows_newer_than_the_code_and_rows_without_keys_are_refused(tmp_path):
    p = tmp_path / "r.jsonl"
    row = json.loads((V1 / "g.jsonl").read_text().splitlines()[0])
    append_row(p, row)
    append_row(p, {**row, "schema": SCHEMA_VERSION + 1})
    with pytest.raises(ResultsFileError, match=rf"r\.jsonl:2: schema {SCHEMA_VERSION + 1} is not one this code reads"):
        read_rows(p)
    p.write_text(json.dumps({k: v for k, v in row.items() if k != "objective"}) + "\n")
    with pytest.raises(ResultsFileError, match=r"r\.jsonl:1: row lacks objective"):
        read_rows(p)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "g.jsonl").write_text(json.dumps({k: v for k, v in row.items() if k != "budget"}) + "\n")
    with pytest.raises(ResultsFileError, match=r"g\.jsonl:1: row lacks budget"):
        write_reports(tmp_path / "results", tmp_path / "reports")


def _headline_numbers(rows: list[dict]) -> list[tuple[str, str]]:
    """(name, F1 as the report prints it) for every ok row of the raw file, read without the upgrade code:
    a schema-1 reference row kept its name as its `mixer`, a schema-2 one in `reference.name`."""
    out = []
    for r in latest_by_key(rows).values():
        if r["status"] == "ok" and isinstance(r["metrics"].get("f1"), float):
            name = r["mixer"]
            if r["objective"] == "none" and r.get("schema", 1) >= 2:
                name = r["reference"]["name"]
            if r["objective"] == "none" and r["reference"].get("setting"):
                name = f"{name} ({r['reference']['setting']})"
            out.append((name, f"{r['metrics']['f1']:.3f}"))
    return sorted(out)


@pytest.fixture
def no_png(monkeypatch):
    """Figures are drawn but not encoded as PNG (most of a report's seconds; tests/test_reports.py checks them)."""
    from reports import figures

    monkeypatch.setattr(figures, "_save", lambda fig, path: path)


def test_committed_results_still_build_their_reports_with_the_same_numbers(tmp_path, no_png):
    """The repository's results files, some written before schema 2 (upgraded as they are read: the decoding
    benchmark's, and the schema-1 fixture grid beside them), some since: copies of them build every report,
    with the F1 of every model and reference the grid rows hold, sorted by it."""
    from core.schema import SCHEMA_VERSION
    res = tmp_path / "results"
    shutil.copytree(ROOT / "results", res)
    shutil.copy(V1 / "g.jsonl", res / "v1_fixture.jsonl")  # a grid of schema-1 model and reference rows too
    grids = sorted(p.stem for p in res.glob("*.jsonl") if not p.stem.startswith("bench_"))
    assert len(grids) >= 3
    written = write_reports(res, tmp_path / "reports")
    assert (tmp_path / "reports" / "benchmarks" / "README.md") in written
    versions = set()
    for grid in grids:
        raw = [json.loads(line) for line in (res / f"{grid}.jsonl").read_text().splitlines() if line.strip()]
        versions |= {r.get("schema") for r in raw}
        text = (tmp_path / "reports" / grid / "README.md").read_text()
        shown = []
        for heading in re.findall(r"^## jsquad · .*$", text, flags=re.M):
            head, rows = table(text, heading)
            assert [h for h in head if h in ("EM", "F1")] == ["EM", "F1"]
            f1 = [r["F1"].strip("*") for r in rows if r["status"] == "ok" or r["status"].startswith("reference")]
            assert f1 == sorted(f1, key=float, reverse=True)  # sorted by the headline, best first
            shown += [(re.sub(r" \(pretrain .*\)$", "", r["mixer"].strip("*")), r["F1"].strip("*"))
                      for r in rows if r["F1"] != "—"]
        # every ok row's F1, under its mixer or its reference name (pretraining rows labelled apart)
        assert set(shown) == set(_headline_numbers(raw)), grid
        assert "| None |" not in text and "*None" not in text
    for bench in res.glob("bench_*.jsonl"):  # (a benchmark row of version 1 has no `schema` key)
        versions |= {json.loads(line).get("schema", 1) for line in bench.read_text().splitlines() if line.strip()}
    # old rows among them, what this is about: since 2026-12-07 (the pretraining study rerun) every
    # committed grid's rows are of version 2, so the schema-1 fixture grid joins them; the decoding
    # benchmark's rows are still of version 1
    assert 1 in versions and versions <= set(range(1, SCHEMA_VERSION + 1))


def test_every_writer_builds_rows_through_the_schema(tmp_path):
    """A model cell's, a reference's and a benchmark's row: current version, the required keys, provenance."""
    from benchmarks.common import bench_row
    from harness.cell import Cell, RunContext, base_row
    from harness.references import reference_row
    import tasks

    cell = Cell(task="mqar", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=1")
    ctx = RunContext(device=torch.device("cpu"), data_dir=None, cache_dir=tmp_path, grid="g", progress=False)
    task = tasks.build("mqar", train_tokens=640, dev_seqs=2, eval_seqs=2)
    data = task.prepare(tasks.PrepareContext(None, tmp_path, 64, 64, log=lambda _m: None))
    ref = tasks.Reference("floor", "baseline", "always wrong", {"x": 1}, score=lambda: {"accuracy": 0.0, "eval_n": 2})
    cell_row, ref_row = base_row(cell, ctx), reference_row(ref, task, data, "g", {})
    b_row = bench_row("decode", torch.device("cpu"), {"mixer": "attention", "context": 8})
    for r in (cell_row, ref_row, b_row):
        assert r["schema"] == SCHEMA_VERSION and r["device"].startswith("cpu") and r["started_at"]
        assert set(r["versions"]) >= {"python", "torch"} and "git_commit" in r
        assert not missing_keys(r), missing_keys(r)
    assert set(ROW_KEYS + GRID_KEYS) <= set(cell_row) and set(ROW_KEYS + BENCH_KEYS) <= set(b_row)
    assert ref_row["mixer"] is None and ref_row["reference"]["name"] == "floor" and ref_row["status"] == "ok"
    assert [m["key"] for m in ref_row["task_metrics"]] == ["accuracy"] and "recall" in ref_row["protocol_text"]
    assert b_row["bench"] == "decode" and b_row["mixer"] == "attention" and b_row["status"] == "ok"


def test_metric_declarations_round_trip_and_pick_the_headline():
    m = Metric("miss", "miss rate", "min", headline=True, doc="d", fmt=".2%")
    assert Metric.from_dict(m.to_dict()) == m and m.format(0.125) == "12.50%" and m.label == "miss rate"
    with pytest.raises(ValueError, match="better must be"):
        Metric("x", "x", "up")
    rows = [{"task_metrics": [Metric("a", "A").to_dict(), m.to_dict()], "metrics": {"a": 0.5}}]
    assert headline_metric(rows).key == "a"  # the headline is not carried: the first carried one
    rows.append({"task_metrics": rows[0]["task_metrics"], "metrics": {"miss": 0.1}})
    assert headline_metric(rows).key == "miss"
    assert headline_metric([{"metrics": {"f1": 0.3}}]) is None  # nothing declared: no headline


def test_declared_metrics_keep_each_keys_first_declaration_and_skip_what_is_no_declaration():
    """Rows of one grid may carry different declarations of a metric (a task's wording changed between
    runs): the first row's wins, so every table and figure of the report uses one header and one
    direction. A declaration that is no object, or has no key, is no metric."""
    f1_new, f1_old = Metric("f1", "F1", doc="new"), Metric("f1", "F1 (old)", "min")
    rows = [{"task_metrics": [f1_new.to_dict()]},
            {"task_metrics": ["f1", {"header": "no key"}, {"key": "", "header": "empty"}, f1_old.to_dict(),
                              Metric("em", "EM").to_dict()]},
            {}]
    assert declared_metrics(rows) == [f1_new, Metric("em", "EM")]


def test_a_schema_below_1_is_refused_naming_file_and_line(tmp_path):
    p = tmp_path / "r.jsonl"
    row = json.loads((V1 / "g.jsonl").read_text().splitlines()[0])
    append_row(p, row)
    append_row(p, {**row, "schema": 0})
    with pytest.raises(ResultsFileError, match=r"r\.jsonl:2: schema 0 is not one this code reads"):
        read_rows(p)


def test_read_errors_count_blank_lines_in_the_line_number(tmp_path):
    """The line number is the file's (an editor's), blank lines included."""
    p = tmp_path / "r.jsonl"
    row = json.loads((V1 / "g.jsonl").read_text().splitlines()[0])
    p.write_text(json.dumps(row) + "\n\n\n" + '{"torn": \n', encoding="utf-8")
    with pytest.raises(ResultsFileError, match=r"r\.jsonl:4: not a JSON object"):
        read_rows(p)


def test_done_keys_follow_each_cells_latest_row(tmp_path):
    """Resume skips a cell whose *latest* row is ok: a rerun that failed after an ok makes it pending
    again, a rerun that succeeded after a failure makes it done; latest_by_key keeps the last row."""
    from core.results import done_keys

    p = tmp_path / "r.jsonl"
    assert done_keys(p) == set()  # no file yet
    base = {"mixer": "m", "objective": "o", "schema": SCHEMA_VERSION}
    for key, status in (("a", "ok"), ("b", "failed"), ("a", "failed"), ("b", "ok"), ("c", "failed")):
        append_row(p, {**base, "key": key, "status": status, "n": len(key)})
    assert done_keys(p) == {"b"}
    latest = latest_by_key(read_rows(p))
    assert {k: r["status"] for k, r in latest.items()} == {"a": "failed", "b": "ok", "c": "failed"}


def test_missing_keys_names_the_keys_every_row_has_first():
    """A row without the keys every row has is no row: `missing_keys` names those, not the grid keys a
    row of no known kind would also lack (which would send the reader after the wrong fields)."""
    assert missing_keys({"key": "k", "status": "ok"}) == ["mixer", "objective"]
    assert missing_keys({"key": "k", "status": "ok", "mixer": None, "objective": None, "bench": "decode"}) == ["device"]
