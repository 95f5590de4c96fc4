"""The Ray executor on a local 2-CPU Ray: cells run concurrently, one writer, resume, the workers' phases
reach the driver's progress line (skipped without Ray)."""
from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

import run_matrix  # noqa: E402
from harness import executors  # noqa: E402
from harness.cell import Cell  # noqa: E402
from harness.executors import BoardReader, ContextSpec, PhaseBoard, ray_cell, ray_runtime_env  # noqa: E402
from harness.progress import PoolProgress  # noqa: E402
from core.results import cell_rows, read_rows  # noqa: E402
from core.schema import GRID_KEYS, ROW_KEYS  # noqa: E402

REQUIRED = ROW_KEYS + GRID_KEYS + ("world_size",)  # what every grid row has (core/schema.py spells it once)


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=ray_runtime_env(), log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_grid_runs_cells_concurrently_writes_whole_rows_and_resumes(offline_dir, tmp_path, cache_dir, local_ray, capsys):
    out = tmp_path / "out"
    args = ["--executor", "ray", "--cpus-per-cell", "1", "--preset", "tiny", "--budget", "tokens=3000",
            "--data-dir", str(offline_dir), "--out", str(out), "--cache-dir", str(cache_dir), "--no-progress",
            "--grid", "t", "--mixers", "attention", "--objectives", "autoregressive", "--seeds", "0,1",
            "--task-opt", "latency_n=1"]
    assert run_matrix.main(args) == 0
    rows = cell_rows(read_rows(out / "results" / "t.jsonl"))  # parses line by line: no torn or interleaved line
    assert sorted(r["seed"] for r in rows) == [0, 1]
    for r in rows:
        assert r["status"] == "ok", r.get("error")
        assert all(k in r for k in REQUIRED) and r["world_size"] == 1
        assert r["tokens_seen"] >= 3000 and r["metrics"]["ppl"] > 1 and r["loss_curve"]
        assert r["executor"]["kind"] == "ray"
    a, b = (r["executor"] for r in rows)
    assert a["pid"] != b["pid"]  # two Ray workers ...
    assert max(a["start"], b["start"]) < min(a["end"], b["end"])  # ... each running its cell at the same time

    capsys.readouterr()
    assert run_matrix.main(args) == 0
    assert "2 cells (2 already done)" in capsys.readouterr().out
    assert len(cell_rows(read_rows(out / "results" / "t.jsonl"))) == 2  # nothing rerun, nothing appended


def test_ray_driver_sees_every_stage_of_every_cell_and_a_dead_board_fails_no_cell(
        offline_dir, tmp_path, cache_dir, local_ray, monkeypatch, capsys):
    made = []  # the executor run_matrix builds, to read what its progress line was fed
    build = executors.build
    monkeypatch.setattr(executors, "build", lambda args: made.append(build(args)) or made[-1])
    out = tmp_path / "out"
    args = ["--executor", "ray", "--cpus-per-cell", "1", "--preset", "tiny", "--budget", "tokens=3000",
            "--data-dir", str(offline_dir), "--out", str(out), "--cache-dir", str(cache_dir),
            "--grid", "t", "--mixers", "attention", "--objectives", "autoregressive", "--seeds", "0,1",
            "--task-opt", "latency_n=1"]  # progress on: the board exists
    assert run_matrix.main(args) == 0
    progress = made[0].progress
    rows = cell_rows(read_rows(out / "results" / "t.jsonl"))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert progress.done == 2 and not progress.running and progress.count() == 2
    for r in rows:  # every stage of every cell came from its worker, in order (rate limiting drops none)
        assert progress.stages[r["key"]] == ["prepare", "train", "evaluate answers", "evaluate ppl"]
        assert len(progress.walls["autoregressive"]) == 2  # each cell's wall, from its first phase seen
    assert "cells 2.0/2" in capsys.readouterr().err

    # the board is gone (killed, its node lost): the cell still runs to an ok row, the driver goes on
    board = ray.remote(num_cpus=0)(PhaseBoard).remote()
    ray.kill(board)
    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=3000",
                seed=2, task_opts={"latency_n": 1})
    spec = ContextSpec(device="cpu", data_dir=str(offline_dir), cache_dir=str(cache_dir), grid="t")
    row = ray.get(ray.remote(num_cpus=1, max_retries=0)(ray_cell).remote(cell, spec, 1, board))
    assert row["status"] == "ok", row.get("error")
    reader = BoardReader(ray, board)
    reader.poll(PoolProgress({}, slots=1, enabled=False))  # a dead actor: polling stops, no raise
    assert reader.board is None

