"""The Ray executor on a local 2-CPU Ray: cells run concurrently, one writer, resume (skipped without Ray)."""
from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

import run_matrix  # noqa: E402
from harness.executors import ray_runtime_env  # noqa: E402
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
