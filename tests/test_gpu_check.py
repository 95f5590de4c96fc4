"""The GPU check's plan and report (benchmarks/gpu_check.py), checked on CPU without running its parts:
the speed targets are measured first, every mixer is in the grid, the limits fit a lent GPU's command,
and a check split over two commands still reports every part and every grid's cells."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import mixers
from harness import objectives
from benchmarks import gpu_check as gc

FIXTURES = Path(__file__).parent / "fixtures"


def _argv(parts, name) -> list[str]:
    return next(p.argv for p in parts if p.name == name)


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_the_plan_measures_the_targets_first_and_fits_a_ten_minute_command(tmp_path):
    parts = gc.plan(tmp_path, tmp_path, dry=False, budget=None, eval_limit=None, cache_dir=tmp_path / "cache")
    names = [p.name for p in parts]
    # issue 14's figures first (a check cut short by its deadline has measured them), the comparisons last
    assert names == ["cuda_tests", "grid", "grid_base", "bench_scaling", "bench_loss_memory", "grid_resume",
                     "grid_sdpa_cudnn", "grid_graphs", "grid_model_scope", "bench_scan_stages"]
    assert gc.SPLIT[0] + gc.SPLIT[1] == names  # the two device commands run every part, in that order
    # the first measures every figure issue 14 asks for: a machine lost before the second loses no target
    assert {"cuda_tests", "grid", "grid_base", "bench_scaling", "bench_loss_memory"} <= set(gc.SPLIT[0])
    limit = {p.name: p.timeout_s for p in parts}
    for half in gc.SPLIT:  # each, with start-up, under a lent GPU's 10-minute command
        assert sum(limit[n] for n in half) <= 600 - 25
    # and the second within what a 15-minute device budget leaves after a machine start (60 s: 32 s on the first
    # GPU check) and the first command's 570 s deadline (grid_resume runs only when the first command's grid ran
    # out of time: then it spends the time the grid lacked, and the last parts are cut)
    assert sum(limit[n] for n in gc.SPLIT[1] if n != "grid_resume") <= 900 - 60 - 570
    assert [p.name for p in parts if p.elastic] == ["grid", "grid_resume"]  # only the grid grows into slack
    assert _argv(parts, "grid_resume") == _argv(parts, "grid")  # the same command: it resumes the same grid
    grid = _argv(parts, "grid")
    order = _after(grid, "--mixers").split(",")
    assert order[:2] == ["attention", "mamba"]  # issue 14's speed targets before the rest
    assert sorted(order) == sorted(mixers.names())  # and every registered mixer
    assert _after(grid, "--preset") == "small" and _after(grid, "--lr") == "preset"
    assert "--compile-mode" not in grid and "--no-compile" not in grid  # the default command's compile
    n_cells = len(order) * len(objectives.names())  # its cells' compilations warmed first, half the cores at a time
    assert _after(grid, "--warm-compile") == str(min(n_cells, max(1, (os.cpu_count() or 2) // 2)))
    base = _argv(parts, "grid_base")
    assert _after(base, "--preset") == "base" and _after(base, "--mixers") == "attention"
    assert _after(base, "--grid") != _after(grid, "--grid")  # its own results file and report
    graphs = _argv(parts, "grid_graphs")
    assert _after(graphs, "--compile-mode") == "reduce-overhead" and _after(graphs, "--preset") == "small"
    scope = _argv(parts, "grid_model_scope")
    assert _after(scope, "--compile-scope") == "model" and "--compile-scope" not in grid
    cudnn = _argv(parts, "grid_sdpa_cudnn")  # the default grid's attention cell, cuDNN's attention allowed
    assert "--sdpa-cudnn" in cudnn and "--sdpa-cudnn" not in grid and _after(cudnn, "--preset") == "small"
    assert _after(cudnn, "--mixers") == "attention" and _after(cudnn, "--objectives") == "autoregressive"
    assert len({_after(a, "--grid") for a in (grid, base, graphs, scope, cudnn)}) == 5  # each its own rows
    for argv in (grid, base, graphs, scope, cudnn):
        assert _after(argv, "--cache-dir") == str(tmp_path / "cache")
    dry = gc.plan(tmp_path, tmp_path, dry=True, budget=None, eval_limit=None)
    assert all(_after(p.argv, "--preset") == "tiny" for p in dry if p.name.startswith("grid"))
    assert all("--cache-dir" not in p.argv for p in dry)  # run_matrix's own default then
    assert _after(grid, "--warm-timeout") == str(gc.WARM_S) and gc.WARM_S <= limit["grid"] / 2  # cells keep most
    assert _after(_argv(dry, "grid"), "--warm-compile") == "2"  # the dry run takes the warm-up path too ...
    assert "--compile" in _argv(dry, "grid")  # ... compiled, as on CUDA (on CPU it must be asked for)
    assert all("--warm-compile" not in p.argv for p in parts + dry if p.name not in ("grid", "grid_resume"))
    scaling = _after(_argv(parts, "bench_scaling"), "--mixers").split(",")
    assert scaling[0] == "mamba" and sorted(scaling) == sorted(mixers.names())  # its target's rows first
    stages = _argv(parts, "bench_scan_stages")  # both walks, both chunking targets, at bench_scaling's shapes
    assert _after(stages, "--sweep-scans") == "triton,triton_bwd_1warp,triton_bwd_pipelined,triton_bwd_1warp_pipelined"
    assert _after(stages, "--d-model") == "256" and _after(stages, "--tokens") == "16384"
    assert _after(stages, "--out") == str(tmp_path / "results" / gc.STAGES_FILE)


def test_the_cuda_tests_part_runs_every_cuda_only_test():
    """A test that skips without CUDA runs nowhere but in the GPU check's `cuda_tests` part (`-k cuda` over
    its files): its file must be listed and its name must say cuda, or it would never run at all."""
    import ast

    argv = _argv(gc.plan(Path("out"), Path("data"), dry=False, budget=None, eval_limit=None), "cuda_tests")
    assert _after(argv, "-k") == "cuda"
    cuda_only = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        src = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and any(
                    "not torch.cuda.is_available()" in ast.get_source_segment(src, d) for d in node.decorator_list):
                cuda_only.append((f"tests/{path.name}", node.name))
    assert ("tests/test_linear_scan_triton.py", "test_linear_scan_equals_the_loop_on_cuda") in cuda_only
    assert [t for t in cuda_only if t[0] not in argv or "cuda" not in t[1]] == []


def _env():
    return {"device": "NVIDIA H200", "torch": "2.11", "cuda": "13.0", "python": "3.12", "git_commit": "abc",
            "missing_packages": []}


def test_a_check_split_over_two_commands_reports_every_part(tmp_path):
    first = [gc.Part("cuda_tests", [], 1, status="ok", seconds=40.0, note="6 passed"),
             gc.Part("grid", [], 1, status="timed out after 300 s", seconds=300.0)]
    gc.record_parts(tmp_path, first)
    second = [gc.Part("bench_scaling", [], 1, status="ok", seconds=20.0),
              gc.Part("grid", [], 1, status="ok", seconds=90.0)]  # the rerun resumed the grid
    merged = gc.record_parts(tmp_path, second)
    assert [p["name"] for p in merged] == ["cuda_tests", "grid", "bench_scaling"]  # the plan's order
    assert merged[1]["status"] == "ok" and merged[1]["seconds"] == 90.0  # a rerun replaces the record
    text = gc.summary(tmp_path, _env(), merged, dry=False, wall=110.0)
    assert "| cuda_tests | ok | 40.0 |" in text and "6 passed |" in text and "| bench_scaling | ok | 20.0 |" in text
    assert "timed out" not in text
    assert sorted(f.name for f in (tmp_path / "parts").iterdir()) == ["bench_scaling.json", "cuda_tests.json",
                                                                      "grid.json"]  # no temporary file left


def _machine(root: Path, name: str, parts: list, rows: dict[str, str]) -> Path:
    """A report folder as one device command leaves it (records, environment, rows, logs), packed the
    way scripts/device_gpu_check.sh packs it into $OUT."""
    import json
    import tarfile

    folder = root / name
    (folder / "results").mkdir(parents=True)
    (folder / "logs").mkdir()
    (folder / "environment.json").write_text(json.dumps({**_env(), "cuda_available": True}), encoding="utf-8")
    gc.record_parts(folder, parts)
    for p in parts:
        (folder / "logs" / f"{p.name}.log").write_text(p.note, encoding="utf-8")
    for fname, text in rows.items():
        (folder / "results" / fname).write_text(text, encoding="utf-8")
    (folder / "README.md").write_text(f"only {name}'s parts\n", encoding="utf-8")
    archive = root / f"{name}.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=".")
    return archive


def test_two_commands_on_two_machines_merge_into_one_report(tmp_path):
    """The lent machine went back between the two device commands: the second ran on a fresh machine,
    so its archive holds only its own parts. --merge joins both archives into one folder and one README."""
    v1 = (FIXTURES / "results_v1" / "g.jsonl").read_text(encoding="utf-8")
    first = _machine(tmp_path, "first", [gc.Part("cuda_tests", [], 1, status="ok", seconds=40.0, note="6 passed"),
                                         gc.Part("grid_base", [], 1, status="ok", seconds=50.0, note="1 cell")],
                     {"gpu_check_base.jsonl": v1})
    second = _machine(tmp_path, "second", [gc.Part("grid_graphs", [], 1, status="failed (exit 1)", seconds=9.0,
                                                   note="boom")], {})
    out = tmp_path / "gpu_check"
    assert gc.main(["--merge", str(first), str(second), "--out", str(out)]) == 0
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "(CPU dry run" not in text and "NVIDIA H200" in text  # the GPU's environment, not this machine's
    for row in ("| cuda_tests | ok | 40.0 |", "| grid_base | ok | 50.0 |", "| grid_graphs | failed (exit 1) | 9.0 |",
                "| gpu_check_base | attention | autoregressive | tiny | ok |"):
        assert row in text, row
    assert (out / "logs" / "cuda_tests.log").read_text(encoding="utf-8") == "6 passed"
    # the README alone, rewritten from the folder as it stands
    (out / "README.md").unlink()
    assert gc.main(["--report-only", "--out", str(out)]) == 0
    assert "| grid_graphs | failed (exit 1) |" in (out / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["README.md", "environment.json"])
def test_the_report_and_its_environment_are_written_whole_or_not_at_all(tmp_path, monkeypatch, name):
    """`--commit` commits the README, `--merge` reads environment.json back, and a device command may be
    killed at its limit mid-write: a failure at the rename (a full disk) leaves the file a run or a
    `--report-only` rewrite had, with no temporary file beside it."""
    import sys

    monkeypatch.setattr(gc, "plan", lambda *a, **k: [gc.Part("bench_scaling", [sys.executable, "-c", ""], 30)])
    monkeypatch.setattr(gc, "environment", _env)
    out = tmp_path / "check"
    args = ["--cpu-dry-run", "--data-dir", str(tmp_path), "--out", str(out)]
    assert gc.main(args) == 0
    before = (out / name).read_text(encoding="utf-8")
    real = os.replace

    def full_disk(a, b):
        if Path(b).name == name:
            raise OSError(28, "No space left on device")
        return real(a, b)

    monkeypatch.setattr(os, "replace", full_disk)
    monkeypatch.setattr(gc, "environment", lambda: {**_env(), "device": "NVIDIA H100"})  # what would be new
    with pytest.raises(OSError, match="No space left"):
        gc.main(args)
    if name == "README.md":  # the README alone, rewritten from the folder
        with pytest.raises(OSError, match="No space left"):
            gc.main(["--report-only", "--out", str(out)])
    assert (out / name).read_text(encoding="utf-8") == before and "NVIDIA H200" in before
    assert not [f for f in out.rglob("*") if f.name.endswith(".tmp")]


def test_merge_refuses_what_is_not_a_report(tmp_path, capsys):
    import io
    import tarfile

    out = tmp_path / "gpu_check"
    assert gc.main(["--report-only", "--out", str(out)]) == 2  # an empty folder: no check in it
    assert "holds no GPU check" in capsys.readouterr().err
    assert gc.main(["--merge", str(tmp_path / "missing.tgz"), "--out", str(out)]) == 2
    assert "no archive at" in capsys.readouterr().err
    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz") as tar:  # a member that would land beside the report, not in it
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    assert gc.main(["--merge", str(bad), "--out", str(out)]) == 2
    assert "refusing member '../escaped.txt'" in capsys.readouterr().err
    assert not (tmp_path / "escaped.txt").exists()


def test_the_summary_names_the_kernel_each_mixer_ran(tmp_path):
    """A Mamba or gated_context figure means one thing on the Triton kernels and another on a PyTorch
    fallback: the grid's cells and the mixers-alone rows say which ran."""
    import json

    (tmp_path / "results").mkdir()
    row = json.loads((FIXTURES / "results_v1" / "g.jsonl").read_text(encoding="utf-8").splitlines()[1])
    row["backend"] = {"mixer": ["triton_scan"], "loss": "cce"}  # as harness/cell.py writes it
    (tmp_path / "results" / "gpu_check.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    from benchmarks.common import bench_row

    bench = bench_row("scaling", torch.device("cpu"), {"mixer": "gated_context", "seq_len": 256},
                      backend="triton_scan", ms_per_step=1.5, tokens_per_s=1e7)
    (tmp_path / "results" / "bench_scaling.jsonl").write_text(json.dumps(bench) + "\n", encoding="utf-8")
    text = gc.summary(tmp_path, _env(), [], dry=False, wall=1.0)
    assert "| gpu_check | gated_context | autoregressive | tiny | ok |" in text
    assert "| cce | triton_scan |" in text
    assert "| mixer | backend | seq_len |" in text and "| gated_context | triton_scan | 256 |" in text


def test_the_cells_table_shows_the_pretraining_speed_and_the_memory_a_cell_started_with(tmp_path):
    """A grid cell's table row shows its packed pretraining stage's tokens/s (the row's own figure is its
    task stage's) and its training peak beside what was allocated when training began: more than the
    model's own there is what an earlier cell left on the GPU."""
    import json

    (tmp_path / "results").mkdir()
    row = json.loads((FIXTURES / "results_v1" / "g.jsonl").read_text(encoding="utf-8").splitlines()[1])
    row["metrics"]["peak_mem_bytes"] = 3 * 2**30
    row["train"] = {**(row.get("train") or {}), "padding_frac": 0.07, "start_mem_bytes": 200 * 2**20,
                    "stages": [{"stage": "pretrain", "tokens_per_s": 2_345_678.9, "epochs": 812.5},
                               {"stage": "task", "tokens_per_s": 1.0}]}
    (tmp_path / "results" / "gpu_check.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    text = gc.summary(tmp_path, _env(), [], dry=False, wall=1.0)
    assert "| pretraining tokens/s (epochs) | peak MiB (at start) |" in text
    assert "| 7.0% | 2,345,679 (812.5 epochs) | 3,072 (200) |" in text
    del row["train"]["start_mem_bytes"]  # (older rows): the peak alone
    (tmp_path / "results" / "gpu_check.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert "| 2,345,679 (812.5 epochs) | 3,072 |" in gc.summary(tmp_path, _env(), [], dry=False, wall=1.0)
    row["train"].update(compile=False, compile_error="BackendCompilerFailed: x")  # a fallback is named as one
    (tmp_path / "results" / "gpu_check.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert "| eager (compile failed) |" in gc.summary(tmp_path, _env(), [], dry=False, wall=1.0)


def test_the_summary_shows_where_each_profiled_steps_time_went(tmp_path):
    """Rows of a grid run with `--profile-step` (the check's grids) get a section: per cell and stage, how busy
    the GPU was, the step's kernels and host calls, its kernel time by kind and its longest kernel. Rows
    without a profile (older ones, a stage that ended before its profiled step) add nothing."""
    import json

    from harness.step_profile import busy_fraction, summarize

    (tmp_path / "results").mkdir()
    row = json.loads((FIXTURES / "results_v1" / "g.jsonl").read_text(encoding="utf-8").splitlines()[1])
    (tmp_path / "results" / "gpu_check.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert "Where the step's time went" not in gc.summary(tmp_path, _env(), [], dry=False, wall=1.0)
    prof = summarize([("scan_bwd", 3000.0, 8), ("nvjet_hsh_128x256", 1500.0, 40)], 612, 40.0, 8192, "cuda", 62)
    prof["busy_frac"] = busy_fraction(prof, 1e-6)  # 8,192 tokens at 1 us each: 8.192 ms, 4.5 of them busy
    row["train"] = {**(row.get("train") or {}), "stages": [{"stage": "pretrain"}, {"stage": "task", "profile": prof}]}
    (tmp_path / "results" / "gpu_check.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    text = gc.summary(tmp_path, _env(), [], dry=False, wall=1.0)
    assert "## Where the step's time went" in text
    assert ("| gpu_check | gated_context | autoregressive | task | 8,192 | 54.9% | 48 | 612 | 62 | 4.50 "
            "| scan 3.00; matmul 1.50 | `scan_bwd` (3.00, 8) |") in text
    row["train"]["stages"][1]["profile"] = {"device": "cuda", "tokens": 8192, "error": "the profiler did not start: X"}
    (tmp_path / "results" / "gpu_check.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert "| task | 8,192 |  |  |  |  |  | the profiler did not start: X |  |" in gc.summary(tmp_path, _env(), [], dry=False,
                                                                                       wall=1.0)


def test_the_cells_table_names_how_each_cell_compiled(tmp_path):
    """The compile column says what a speed figure was measured under: a compile mode other than the
    default, the whole LM compiled as one (not each block), the Triton scans at a graph break (not custom
    operators), compilations after the warm-up, and a recompile limit hit (dynamo then ran that function
    eagerly: training partly eager)."""
    import json

    (tmp_path / "results").mkdir()
    row = json.loads((FIXTURES / "results_v1" / "g.jsonl").read_text(encoding="utf-8").splitlines()[1])
    row["train"] = {**(row.get("train") or {}), "compile": True, "compile_mode": "reduce-overhead",
                    "compile_scope": "model", "late_compiles": 2, "recompile_limit_hits": ["forward", "step"]}

    def compile_cell() -> str:
        (tmp_path / "results" / "gpu_check.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
        table = gc.summary(tmp_path, _env(), [], dry=False, wall=1.0).split("## Grid cells")[1]
        header, *rows = [line for line in table.splitlines() if line.startswith("| ")]
        return rows[0].split(" | ")[header.split(" | ").index("compile")]

    assert compile_cell() == "reduce-overhead (whole model) (+2 late) (recompile limit: forward; step)"
    row["train"].update(compile_mode="default", compile_scope="blocks", late_compiles=0, recompile_limit_hits=[])
    assert compile_cell() == "True"
    row["train"]["scan_ops"] = False  # WAVEBENCH_SCAN_OPS=0 (mixers/_ops.py): said; True (the default): not
    assert compile_cell() == "True (scans at a graph break)"
    row["train"]["scan_ops"] = True
    assert compile_cell() == "True"


def test_the_check_refuses_to_start_without_cuda_or_without_data(tmp_path, monkeypatch, capsys):
    """On a machine without CUDA the check only runs as a dry run, and without JSQuAD data it does not
    start: exit 2 with one line saying what to do, no part run and no report folder made."""
    ran = []
    monkeypatch.setattr(gc, "run_part", lambda p, logs, cuda: ran.append(p.name))
    monkeypatch.setattr(gc, "environment", _env)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "check"
    assert gc.main(["--data-dir", str(tmp_path), "--out", str(out)]) == 2
    assert "no CUDA device here; run with --cpu-dry-run" in capsys.readouterr().err
    assert gc.main(["--cpu-dry-run", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert f"no JSQuAD data at {tmp_path / 'nowhere'}" in capsys.readouterr().err
    assert ran == [] and not out.exists()


def test_a_cuda_only_part_is_skipped_on_cpu_without_starting_it(tmp_path):
    """A dry run on CPU skips the CUDA-only parts (the CUDA tests, the scan-stage benchmark) and says why:
    the part's command never starts, so it writes no log."""
    marker = tmp_path / "ran"
    p = gc.Part("cuda_tests", ["touch", str(marker)], timeout_s=5, cuda_only=True)
    gc.run_part(p, tmp_path, cuda=False)
    assert p.status == "skipped" and "needs CUDA" in p.note
    assert not marker.exists() and not (tmp_path / "cuda_tests.log").exists()
    gc.run_part(p, tmp_path, cuda=True)  # on a GPU it runs
    assert p.status == "ok" and marker.exists()


def test_the_summary_reads_every_grids_rows_through_the_schema(tmp_path):
    (tmp_path / "results").mkdir()
    # an older (schema 1) row, as a check run at an older commit wrote it: upgraded on reading
    shutil.copy(FIXTURES / "results_v1" / "g.jsonl", tmp_path / "results" / "gpu_check_base.jsonl")
    text = gc.summary(tmp_path, _env(), [], dry=False, wall=1.0)
    assert "| gpu_check_base | attention | autoregressive | tiny | ok |" in text
    (tmp_path / "results" / "gpu_check.jsonl").write_text('{"key": "x"}\n', encoding="utf-8")
    try:
        gc.summary(tmp_path, _env(), [], dry=False, wall=1.0)
    except Exception as e:  # a malformed row is named, not silently dropped
        assert "gpu_check.jsonl:1" in str(e)
    else:
        raise AssertionError("a row without the schema's keys was accepted")


def _gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_part_out_of_time_is_stopped_with_its_children_and_a_deadline_leaves_a_report(tmp_path, monkeypatch,
                                                                                          capsys):
    """A lent GPU's command that outlives its limit brings nothing back, so with --deadline-at every part
    is cut to the time left, a part with too little left is not started (an earlier record of it stays),
    and the report is written after each part. A part stopped takes what it started with it (a grid's
    warm-up workers must not run on beside the next part)."""
    import sys
    import time

    pidfile = tmp_path / "grandchild.pid"
    spawn = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
             f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    parts = [gc.Part("grid", [sys.executable, "-c", spawn], 100), gc.Part("bench_scaling", [sys.executable, "-c", ""], 100)]
    monkeypatch.setattr(gc, "plan", lambda *a, **k: [gc.Part(p.name, p.argv, p.timeout_s) for p in parts])
    # seconds, not the GPU's: a part gets int(time left) and the next one then has under 1 s, so is not started
    monkeypatch.setattr(gc, "MIN_PART_S", 1)
    monkeypatch.setattr(gc, "environment", _env)  # not the seconds of importing every package
    out = tmp_path / "check"
    gc.record_parts(out, [gc.Part("bench_scaling", [], 1, status="ok", seconds=3.0)])  # an earlier command's
    t0 = time.time()
    rc = gc.main(["--cpu-dry-run", "--data-dir", str(tmp_path), "--out", str(out), "--deadline-at", str(t0 + 6)])
    assert rc == 1 and time.time() - t0 < 30
    recs = {r["name"]: r for r in gc.read_parts(out)}
    assert recs["grid"]["status"].startswith("timed out after")
    assert recs["bench_scaling"]["status"] == "ok" and recs["bench_scaling"]["seconds"] == 3.0  # kept, not "not run"
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "| grid | timed out after" in text and "| bench_scaling | ok | 3.0 |" in text
    assert "not started by the last command, too little time left before its deadline: bench_scaling" in text
    # the verdicts end the command's output (a device run returns its tail), as in the README
    printed = capsys.readouterr().out
    assert "## Issue 14's targets" in printed and "## The defaults against their alternatives" in printed
    assert "| every cell of the default grid ends `ok` | no grid rows | **not measured** |" in printed
    grandchild = int(pidfile.read_text())
    for _ in range(50):  # SIGKILL is delivered at once; its reaping by init may take a moment
        if _gone(grandchild):
            break
        time.sleep(0.1)
    assert _gone(grandchild), "the part's child outlived it"


def test_the_device_script_packs_a_report_that_merges_here(tmp_path):
    """scripts/device_gpu_check.sh as a lent GPU's `run` calls it (a CPU dry run of one quick part): it
    passes a deadline, packs the report folder into $OUT, and the archive merges into a folder here."""
    import subprocess
    import sys

    root = Path(gc.__file__).resolve().parents[1]
    out, dest = tmp_path / "OUT", tmp_path / "check"
    out.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "GPU_CHECK_DIR": str(dest),
           "GPU_CHECK_SECONDS": "300", "WAVEBENCH_WHEEL_SITE": str(tmp_path / "site")}  # (.whl/, if any: not here)
    proc = subprocess.run(["bash", "scripts/device_gpu_check.sh", "--cpu-dry-run", "--data-dir", str(tmp_path),
                           "--parts", "bench_loss_memory"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "(limit 300 s)" not in proc.stdout and "bench_loss_memory: ok" in proc.stdout  # cut to the deadline
    assert (out / "README.md").is_file()
    merged = tmp_path / "here"
    assert gc.main(["--merge", str(out / "gpu_check.tgz"), "--out", str(merged)]) == 0
    text = (merged / "README.md").read_text(encoding="utf-8")
    assert "| bench_loss_memory | ok |" in text and "| impl | vocab_size |" in text  # its record and its rows


def test_a_gpu_check_is_boxed_to_eight_minutes_unless_told_otherwise():
    """Issue 14: one command, under 8 minutes. The box counts from the check's start; the device script's
    absolute deadline (its command limit less time to pack) replaces it (`--minutes 0`); the earlier wins."""
    now = 1000.0
    assert gc.deadline_of(None, None, dry=False, now=now) == now + 480  # a GPU check, as a person runs it
    assert gc.deadline_of(None, None, dry=True, now=now) is None  # the CPU dry run is not boxed
    assert gc.deadline_of(0, None, dry=False, now=now) is None  # --minutes 0: no box
    assert gc.deadline_of(0, now + 570, dry=False, now=now) == now + 570  # the device script's command
    assert gc.deadline_of(None, now + 570, dry=False, now=now) == now + 480  # both: the earlier wins
    assert gc.deadline_of(2, now + 570, dry=True, now=now) == now + 120


def test_the_summary_shows_the_scan_stages_rows(tmp_path):
    import json

    (tmp_path / "results").mkdir()
    sweep = [{"scan": v, "length": L, "batch": 16384 // L, "tokens": 16384, "ms": ms, "tokens_per_s": round(16384 / ms * 1e3)}
             for v, L, ms in (("triton", 256, 4.0), ("triton", 8192, 5.0), ("triton_unpipelined", 256, 8.0),
                              ("triton_unpipelined", 8192, 12.0))]
    (tmp_path / "results" / gc.STAGES_FILE).write_text(json.dumps({"meta": {}, "compare": [], "sweep": sweep}))
    text = gc.summary(tmp_path, _env(), [], dry=False, wall=1.0)
    assert "| triton_unpipelined | 8192 | 2 | 12.0 | 1,365,333 |" in text
    assert "triton: tokens/s fastest / slowest length = 1.25" in text
    assert "triton_unpipelined: tokens/s fastest / slowest length = 1.50" in text


# --- issue 14's targets, read off the rows (benchmarks/gpu_targets.py) ---

H200 = "NVIDIA H200"
OBJECTIVES = ["autoregressive", "diffusion"]


def _grid_row(mixer, objective, tps, status="ok", preset="small", device=H200, kernel="sdpa", mfu=None, error=None):
    return {"mixer": mixer, "objective": objective, "status": status, "preset": preset, "device": device,
            "error": error, "metrics": {"tokens_per_s": tps, "mfu": mfu} if status == "ok" else None,
            "backend": {"mixer": [kernel], "loss": "cce"} if status == "ok" else None}


def _meeting_rows() -> tuple[list, list, list, list]:
    """A GPU check that meets every target, each figure just past its bound (the bounds are inclusive)."""
    speed = {"attention": 2_000_000, "mamba": 1_000_000}  # Mamba exactly 0.5x
    grid = [_grid_row(m, o, speed.get(m, 1_500_000), kernel="triton_scan" if m == "mamba" else "sdpa")
            for m in mixers.names() for o in OBJECTIVES]
    base = [_grid_row("attention", "autoregressive", 900_000, preset="base", mfu=0.21)]
    # Mamba alone: 0.70x and 1.30x of L = 256 are inside the band
    scaling = [{"mixer": "mamba", "seq_len": L, "status": "ok", "tokens_per_s": t, "device": H200,
                "backend": "triton_scan"}
               for L, t in ((256, 1e6), (512, 1.3e6), (1024, 1.1e6), (2048, 1e6), (4096, 0.8e6), (8192, 0.7e6))]
    scaling += [{"mixer": "attention", "seq_len": 8192, "status": "ok", "tokens_per_s": 1e3, "device": H200}]
    parts = [{"name": "cuda_tests", "status": "ok", "note": "37 passed in 81.20s"}]
    return grid, base, scaling, parts


def _verdicts(grid, base, scaling, parts) -> list:
    from benchmarks import gpu_targets

    return [v.verdict for v in gpu_targets.verdicts(grid, base, scaling, parts, mixers.names(), OBJECTIVES)]


def _judged(change) -> list[str]:
    """The verdicts of the meeting rows after `change(grid, base, scaling, parts)` edits them in place."""
    rows = _meeting_rows()  # fresh rows each call
    change(*rows)
    return _verdicts(*rows)


def test_rows_that_meet_issue_14s_targets_are_reported_met():
    """Every target at its bound is met: 12 cells ok, the CUDA tests ok, attention at 2,000,000 tokens/s,
    the base preset's MFU, Mamba at 0.5x attention in both objectives, Mamba alone within 0.70-1.30x."""
    assert _verdicts(*_meeting_rows()) == ["met"] * 6


def test_each_target_missed_is_reported_not_met():
    def slow(grid, mixer, objective, tps):
        next(r for r in grid if r["mixer"] == mixer and r["objective"] == objective)["metrics"]["tokens_per_s"] = tps

    # a failed cell, resumed and then ok, is ok: the newest row of a cell counts
    oom = _grid_row("wave_wavelet", "diffusion", None, status="failed", error="OutOfMemoryError: x")
    assert _judged(lambda g, b, s, p: g.insert(0, oom)) == ["met"] * 6
    assert _judged(lambda g, b, s, p: g.append(oom))[0] == "not met"
    assert _judged(lambda g, b, s, p: p[0].update(status="failed (exit 1)"))[1] == "not met"
    assert _judged(lambda g, b, s, p: slow(g, "attention", "autoregressive", 1_999_999))[2] == "not met"
    # Mamba at 0.4999x attention in one objective only (attention's diffusion speed is not the target's)
    assert _judged(lambda g, b, s, p: slow(g, "mamba", "diffusion", 999_999)) == ["met"] * 4 + ["not met", "met"]
    assert _judged(lambda g, b, s, p: s.append({**s[3], "tokens_per_s": 0.69e6}))[5] == "not met"  # L = 2048, newest
    assert _judged(lambda g, b, s, p: s.append({**s[1], "tokens_per_s": 1.31e6}))[5] == "not met"  # faster counts too


def test_a_target_the_rows_cannot_decide_is_reported_not_measured():
    """Missing rows, a CPU dry run, a preset other than the target's, Mamba on mamba-ssm: never `met`."""
    assert _verdicts([], [], [], []) == ["not measured"] * 6
    # a grid cut short by its time limit: no row for the last cell (and Mamba alone stopped before 8,192)
    assert _judged(lambda g, b, s, p: g.pop())[0] == "not measured"
    assert _judged(lambda g, b, s, p: s.pop(5))[5] == "not measured"
    assert _judged(lambda g, b, s, p: p[0].update(status="skipped"))[1] == "not measured"
    # the CPU dry run's rows: every figure target undecided (its cells ok say the command works)
    cpu = "cpu: AMD EPYC (2 threads)"
    assert _judged(lambda g, b, s, p: [r.update(device=cpu) for r in g + b + s]) == \
        ["not measured", "met", "not measured", "not measured", "not measured", "not measured"]
    assert _judged(lambda g, b, s, p: [r.update(preset="tiny") for r in g])[2::2] == ["not measured"] * 2
    assert _judged(lambda g, b, s, p: [r["backend"].update(mixer=["mamba_ssm"]) for r in g
                                       if r["mixer"] == "mamba"])[4] == "not measured"
    assert _judged(lambda g, b, s, p: b[0]["metrics"].update(mfu=None))[3] == "not measured"  # no known peak


def test_the_verdicts_hold_at_their_edges():
    """What a first GPU run could plausibly produce, and a verdict that would mislead its reader."""
    def part(name, status, note=""):
        return lambda g, b, s, p: p.append({"name": name, "status": status, "note": note})

    # the CUDA tests cut short by their limit decide nothing; all skipped (pytest exits 0) is no pass
    assert _judged(lambda g, b, s, p: p[0].update(status="timed out after 150 s"))[1] == "not measured"
    assert _judged(lambda g, b, s, p: p[0].update(note="37 skipped, 900 deselected in 2.1s"))[1] == "not measured"
    # a grid whose command died with cells missing fails; one that ran out of time (it resumes) does not decide
    died = part("grid", "failed (exit 1)", "RuntimeError: CUDA error")
    assert _judged(lambda g, b, s, p: (g.pop(), died(g, b, s, p)))[0] == "not met"
    assert _judged(lambda g, b, s, p: (g.pop(), part("grid", "timed out after 250 s")(g, b, s, p)))[0] == "not measured"
    assert _judged(died)[0] == "met"  # every cell's row ok: the rows decide
    resumed = part("grid_resume", "ok")  # the resume, when it ran, is the grid's last command
    assert _judged(lambda g, b, s, p: (g.pop(), died(g, b, s, p), resumed(g, b, s, p)))[0] == "not measured"
    # the attention bound is an H100/H200's; the base figure must come from the base preset
    assert _judged(lambda g, b, s, p: [r.update(device="NVIDIA A100-SXM4-80GB") for r in g])[2] == "not measured"
    assert _judged(lambda g, b, s, p: b[0].update(preset="small"))[3] == "not measured"
    # Mamba against attention in the same objective: attention's diffusion cell is slower here, so 0.8M is
    # 0.53x of it (met), where a division by attention x autoregressive (2M) would say 0.4x
    def diffusion(g, b, s, p):
        for r in g:
            if r["objective"] == "diffusion" and r["mixer"] in ("attention", "mamba"):
                r["metrics"]["tokens_per_s"] = 1_500_000 if r["mixer"] == "attention" else 800_000
    assert _judged(diffusion)[4] == "met"
    # Mamba alone: every length of the span, a failed length fails, mamba-ssm rows decide nothing
    assert _judged(lambda g, b, s, p: s.pop(2))[5] == "not measured"  # no L = 1,024
    assert _judged(lambda g, b, s, p: s[2].update(tokens_per_s=float("nan")))[5] == "not measured"
    oom = lambda g, b, s, p: s[4].update(status="failed", error="OutOfMemoryError: at 4096")  # noqa: E731
    assert _judged(oom)[5] == "not met"
    assert _judged(lambda g, b, s, p: [r.update(backend="mamba_ssm") for r in s])[5] == "not measured"


def test_each_verdict_shows_the_figures_it_rests_on():
    """A reader checks a verdict against the figures printed beside it: the count of ok cells, attention's
    MFU and its diffusion speed, each objective's Mamba ratio or why there is none, the scan's kernel, and a
    pretraining stage's figure without an MFU."""
    from benchmarks import gpu_targets as gt

    grid, base, scaling, parts = _meeting_rows()
    n = len(grid)
    ooms = [_grid_row(m, "diffusion", None, status="failed", error=f"OutOfMemoryError: {m}")
            for m in ("wave_wavelet", "wave_modulation")]
    cells = [r for r in grid if r["mixer"] != "gated_context"] + ooms
    v = gt.grid_cells(cells, [(r["mixer"], r["objective"]) for r in grid])
    assert v.verdict == "not met"
    assert v.measured == (f"{n - 4} of {n} cells ok; not ok: wave_modulation x diffusion (failed: "
                          "OutOfMemoryError: wave_modulation); wave_wavelet x diffusion (failed: OutOfMemoryError: "
                          "wave_wavelet); no row: gated_context x autoregressive, gated_context x diffusion")

    att = next(r for r in grid if (r["mixer"], r["objective"]) == ("attention", "autoregressive"))
    att["metrics"]["mfu"] = 0.153
    v = gt.attention_speed(grid)
    assert v.measured == "2,000,000 tokens/s (1.00x the target, MFU 15.3%) on NVIDIA H200; diffusion 2,000,000"
    att["train"] = {"stages": [{"stage": "pretrain", "tokens_per_s": 2_500_000.0}]}
    assert gt.attention_speed(grid).measured.endswith("(the pretraining stage's packed rows: 2,500,000); "
                                                      "diffusion 2,000,000")

    no_pair = [r for r in grid if (r["mixer"], r["objective"]) != ("mamba", "diffusion")]
    v = gt.mamba_speed(no_pair, OBJECTIVES)
    assert v.verdict == "not measured"
    assert v.measured == ("autoregressive 0.50x (1,000,000 / 2,000,000, kernel triton_scan); "
                          "diffusion: no ok pair of rows")

    for r in grid:
        if r["mixer"] == "mamba":
            r["backend"]["mixer"] = ["triton_scan", "causal_conv1d"]
    assert "kernel triton_scan, causal_conv1d" in gt.mamba_speed(grid, OBJECTIVES).measured

    failed = [{**r, "status": "failed", "error": f"OutOfMemoryError: {r['seq_len']}"} if r["seq_len"] in (2048, 4096)
              else r for r in scaling]
    assert gt.mamba_flat(failed).measured == ("failed at L = 2,048: failed OutOfMemoryError: 2048; "
                                              "4,096: failed OutOfMemoryError: 4096")
    gaps = [r for r in scaling if r["seq_len"] not in (1024, 2048)]
    assert gt.mamba_flat(gaps).measured.endswith("; no ok row at L = 1,024, 2,048")
    del scaling[0]["backend"]
    assert gt.mamba_flat(scaling).measured == ("256: 1.00x, 512: 1.30x, 1,024: 1.10x, 2,048: 1.00x, 4,096: 0.80x, "
                                               "8,192: 0.70x (L = 256: 1,000,000 tokens/s, ?; fastest / slowest "
                                               "length 1.86)")


def test_mamba_alone_is_judged_on_its_span_only():
    """Lengths outside 256..8,192 (a longer probe, a shorter warm-up) neither fail nor widen the target."""
    def outside(g, b, s, p):
        s.append({**s[0], "seq_len": 16_384, "status": "failed", "error": "OutOfMemoryError"})
        s.append({**s[0], "seq_len": 128, "tokens_per_s": 0.1e6})
    assert _judged(outside)[5] == "met"


def test_a_speed_of_zero_and_a_test_run_with_none_passed_decide_nothing():
    """0 tokens/s is no speed (a cell that trained no token): it would divide Mamba's ratio by zero or
    meet nothing honestly. "0 passed" is a CUDA test run in which nothing passed."""
    zero_attention = lambda g, b, s, p: [r["metrics"].update(tokens_per_s=0) for r in g  # noqa: E731
                                         if r["mixer"] == "attention"]
    assert _judged(zero_attention)[2::2] == ["not measured", "not measured"]
    assert _judged(lambda g, b, s, p: s[0].update(tokens_per_s=0.0))[5] == "not measured"
    assert _judged(lambda g, b, s, p: p[0].update(note="0 passed, 37 skipped in 2.1s"))[1] == "not measured"
    assert _judged(lambda g, b, s, p: p[0].update(note="1 passed, 36 skipped in 2.1s"))[1] == "met"


def test_an_alternative_exactly_at_the_margin_is_called_faster_and_only_the_chunking_shows_flatness():
    """The margin is inclusive both ways: 5% faster names the alternative, 5% slower the default. The
    pipelining comparison is per length only; the chunking one adds each variant's spread over lengths."""
    from benchmarks import gpu_targets as gt

    assert gt._faster(1.0, 1 + gt.MARGIN, "d", "a") == "a: 1.05x the default's speed"
    assert gt._faster(1 + gt.MARGIN, 1.0, "d", "a") == "d (the default): 1.05x the alternative's speed"
    sweep = [{"scan": v, "length": 256, "ms": 4.0} for v in ("triton", "triton_unpipelined", "triton_programs_256")]
    stages, chunking, bwd_shape, bwd_pipelined, bwd_both = gt.comparisons([], [], [], sweep)[3:]
    assert stages.measured == "unpipelined / pipelined, ms: 256: 1.00 (geometric mean 1.00)"
    assert chunking.measured.endswith("; slowest / fastest length: 1,024 programs 1.00, 256 programs 1.00")
    assert bwd_shape.answer == bwd_pipelined.answer == bwd_both.answer == "not measured"  # their variants never ran


def test_the_summary_opens_with_the_targets_verdicts(tmp_path):
    """The report's first table after the parts: the verdicts, from the folder's rows and records."""
    import json

    (tmp_path / "results").mkdir()
    grid, base, scaling, parts = _meeting_rows()
    row = json.loads((FIXTURES / "results_v1" / "g.jsonl").read_text(encoding="utf-8").splitlines()[1])
    for name, rows in (("gpu_check", grid), ("gpu_check_base", base)):
        text = "".join(json.dumps({**row, **r, "key": f"{name}-{i}"}) + "\n" for i, r in enumerate(rows))
        (tmp_path / "results" / f"{name}.jsonl").write_text(text, encoding="utf-8")
    from benchmarks.common import bench_row

    bench = [bench_row("scaling", torch.device("cpu"), {"mixer": r["mixer"], "seq_len": r["seq_len"]},
                       tokens_per_s=r["tokens_per_s"], backend=r.get("backend")) | {"device": H200} for r in scaling]
    (tmp_path / "results" / "bench_scaling.jsonl").write_text("".join(json.dumps(b) + "\n" for b in bench))
    text = gc.summary(tmp_path, _env(), [{**parts[0], "seconds": 81.2}], dry=False, wall=1.0)
    head = text.split("## Grid cells")[0]
    assert "## Issue 14's targets" in head
    assert head.count("| **met** |") == 6, head
    assert "| 2,000,000 tokens/s (1.00x the target) on NVIDIA H200" in head
    assert "autoregressive 0.50x (1,000,000 / 2,000,000, kernel triton_scan)" in head


def test_the_comparisons_name_the_faster_choice_beyond_a_margin():
    """The second command's comparisons, each a default against its alternative: faster means by more
    than 5%; CPU rows or a missing half decide nothing."""
    from benchmarks import gpu_targets as gt

    default = [_grid_row("attention", "autoregressive", 2_000_000)]
    answer = lambda tps: gt.comparisons(default, [_grid_row("attention", "autoregressive", tps)], [], [])[1].answer  # noqa: E731
    assert answer(2_200_000).startswith("reduce-overhead: 1.10x")
    assert answer(2_090_000).startswith("within 5%: keep the default")
    assert answer(1_800_000).startswith("the default compile mode (the default): 1.11x")
    scope = gt.comparisons(default, [], [_grid_row("attention", "autoregressive", 1e6)], [])[2]
    assert scope.answer.startswith("each block (the default): 2.00x")
    cpu = [_grid_row("attention", "autoregressive", 3e6, device="cpu: AMD EPYC (2 threads)")]
    assert gt.comparisons(default, cpu, [], [])[1].answer == "not measured"
    assert gt.comparisons(default, [], [], [])[2].answer == "not measured"
    # cuDNN's attention allowed: the first GPU check's default (torch's) ran attention's task stage at 115,490
    cudnn = gt.comparisons(default, [], [], [], [_grid_row("attention", "autoregressive", 115_490)])[0]
    assert cudnn.answer.startswith("without cuDNN (the default): 17.32x"), cudnn.answer
    assert gt.comparisons(default, [], [], [])[0].answer == "not measured"

    def stages(ms: dict) -> str:
        sweep = [{"scan": v, "length": L, "ms": t} for (v, L), t in ms.items()]
        return gt.comparisons([], [], [], sweep)[3].answer

    # unpipelined 2.0x and 2.4x slower: pipelined wins by their geometric mean; a length timed once is left out
    assert stages({("triton", 256): 4.0, ("triton_unpipelined", 256): 8.0, ("triton", 8192): 5.0,
                   ("triton_unpipelined", 8192): 12.0, ("triton", 1024): 1.0}).startswith("pipelined (the default): 2.19x")
    assert stages({("triton", 256): 8.0, ("triton_unpipelined", 256): 4.0}).startswith("unpipelined: 2.00x")
    assert stages({("triton", 256): 8.0}) == "not measured"

    def sweep_comparison(i: int):
        def answer_and_figures(ms: dict) -> tuple[str, str]:
            c = gt.comparisons([], [], [], [{"scan": v, "length": L, "ms": t} for (v, L), t in ms.items()])[i]
            return c.answer, c.measured
        return answer_and_figures

    chunking, bwd_shape, bwd_pipelined, bwd_both = (sweep_comparison(i) for i in (4, 5, 6, 7))

    # 256 programs: 0.8x and 0.5x the default's ms (faster by their geometric mean, 1.58x) and flatter
    answer, measured = chunking({("triton", 256): 4.0, ("triton_programs_256", 256): 3.2, ("triton", 8192): 8.0,
                                 ("triton_programs_256", 8192): 4.0, ("triton_unpipelined", 512): 1.0})
    assert answer.startswith("256 programs: 1.58x the default's speed"), answer
    assert "256: 0.80, 8,192: 0.50" in measured and "1,024 programs 2.00, 256 programs 1.25" in measured, measured
    assert chunking({("triton", 256): 4.0, ("triton_programs_256", 256): 4.1})[0].startswith("within 5%")
    assert chunking({("triton", 256): 4.0, ("triton_programs_256", 256): 6.0})[0].startswith(
        "1,024 programs (the default): 1.50x")
    assert chunking({("triton", 256): 4.0, ("triton_unpipelined", 256): 6.0})[0] == "not measured"

    # the backward on one warp of 8 channels: 0.5x and 0.8x the default's ms at the two lengths both ran
    answer, measured = bwd_shape({("triton", 256): 4.0, ("triton_bwd_1warp", 256): 2.0, ("triton", 8192): 5.0,
                                  ("triton_bwd_1warp", 8192): 4.0, ("triton_programs_256", 512): 1.0})
    assert answer.startswith("1 warp: 1.58x the default's speed"), answer
    assert measured == "1 warp / 4 warps, ms: 256: 0.50, 8,192: 0.80 (geometric mean 0.63)", measured
    assert bwd_shape({("triton", 256): 4.0, ("triton_bwd_1warp", 256): 6.0})[0].startswith("4 warps (the default): 1.50x")
    assert bwd_shape({("triton", 256): 4.0, ("triton_programs_256", 256): 2.0})[0] == "not measured"
    # the reverse walk pipelined: alone, and on one warp of 8; each against the default, not against each other
    ms = {("triton", 256): 4.0, ("triton_bwd_pipelined", 256): 3.0, ("triton_bwd_1warp_pipelined", 256): 5.0}
    assert bwd_pipelined(ms)[0].startswith("pipelined: 1.33x the default's speed"), bwd_pipelined(ms)
    assert bwd_both(ms)[0].startswith("unpipelined (the default): 1.25x"), bwd_both(ms)
    assert bwd_both(ms)[1] == "pipelined / unpipelined, ms: 256: 1.25 (geometric mean 1.25)"
    assert gt.comparisons([], [], [], [])[7].question.endswith(
        "pipelined on one warp of 8 (`--mixer-opt mamba.triton_bwd_stages=2 --mixer-opt mamba.triton_bwd_warps=1 "
        "--mixer-opt mamba.triton_bwd_block_d=8`)?")


def test_the_summary_shows_the_comparisons(tmp_path):
    import json

    (tmp_path / "results").mkdir()
    row = json.loads((FIXTURES / "results_v1" / "g.jsonl").read_text(encoding="utf-8").splitlines()[1])
    for name, tps in (("gpu_check", 2e6), ("gpu_check_graphs", 3e6), ("gpu_check_sdpa_cudnn", 1e5)):
        r = {**row, **_grid_row("attention", "autoregressive", tps), "key": name}
        (tmp_path / "results" / f"{name}.jsonl").write_text(json.dumps(r) + "\n", encoding="utf-8")
    text = gc.summary(tmp_path, _env(), [], dry=False, wall=1.0)
    assert "## The defaults against their alternatives" in text
    assert "| 3,000,000 against 2,000,000 train tokens/s" in text and "| reduce-overhead: 1.50x" in text
    assert "| 100,000 against 2,000,000 train tokens/s" in text and "| without cuDNN (the default): 20.00x" in text
    # beside the target, each variant's figure
    assert "on NVIDIA H200; with `--sdpa-cudnn`: 100,000; with `--compile-mode reduce-overhead`: 3,000,000 | **met** |" \
        in text


def test_the_attention_target_shows_what_a_compile_flag_reached_but_is_decided_by_the_default():
    """A default that misses the target stays `not met` when CUDA graphs would meet it: the verdict is the
    default command's, and the figure beside it says which flag to try. CPU or other-preset rows are not shown."""
    from benchmarks import gpu_targets as gt

    grid = [_grid_row("attention", "autoregressive", 1_500_000)]
    graphs = [_grid_row("attention", "autoregressive", 2_500_000)]
    v = gt.attention_speed(grid, {"graphs": graphs, "cpu": [_grid_row("attention", "autoregressive", 9e6, device="cpu: x")],
                                  "tiny": [_grid_row("attention", "autoregressive", 8e6, preset="tiny")]})
    assert v.verdict == "not met" and v.measured.endswith("; with graphs: 2,500,000")


def test_a_pretraining_rows_task_stage_decides_and_its_packed_rows_are_shown_beside():
    """The check's grid pretrains (as the README's main command does): the row's tokens/s is its task
    stage's, which the bound judges; the pretraining stage's packed full-length rows run faster and are
    shown beside, never judged (a cell's split between the stages would move the verdict)."""
    from benchmarks import gpu_targets as gt

    row = _grid_row("attention", "autoregressive", 1_800_000, mfu=0.13)
    row["train"] = {"stages": [{"stage": "pretrain", "tokens_per_s": 2_600_000.0, "mfu": 0.19},
                               {"stage": "task", "tokens_per_s": 1_800_000.0}]}
    row["pretrain"] = {"sources": ["passages"], "corpus": {"row_len": 512}}
    v = gt.attention_speed([row])
    assert v.verdict == "not met"  # 1.8M (the task stage), though the packed rows reached 2.6M
    assert "1,800,000 tokens/s" in v.measured
    assert "the pretraining stage's packed rows, T = 512: 2,600,000, MFU 19.0%" in v.measured
    del row["train"]
    assert "pretraining" not in gt.attention_speed([row]).measured


def test_the_grid_takes_the_time_earlier_parts_left_and_later_parts_do_not_need():
    """Under a deadline an elastic part (the grid) may run for what is left after the later parts' limits,
    when that is more than its own limit; every part is cut to the time left."""
    grid, later = gc.Part("grid", [], 300, elastic=True), [gc.Part("b", [], 60), gc.Part("c", [], 40)]
    assert gc.limit_for(grid, later, left=480.0) == 380  # CUDA tests took 30 s of their 100: the grid gets it
    assert gc.limit_for(grid, later, left=350.0) == 300  # never less than its own limit ...
    assert gc.limit_for(grid, later, left=200.0) == 200  # ... unless the deadline is nearer
    assert gc.limit_for(gc.Part("b", [], 60), later, left=480.0) == 60  # not elastic: its own limit
    assert gc.limit_for(gc.Part("b", [], 60), later, left=20.0) == 20
    assert gc.limit_for(grid, later, left=None) == 300  # no deadline (the dry run): the limits as planned


def test_grid_resume_runs_only_where_the_grid_has_rows_and_a_cell_is_not_ok(tmp_path):
    import json

    assert "fresh machine" in gc.grid_incomplete(tmp_path)  # no rows: it would start over, so it does not run
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "gpu_check.expected.json").write_text("{}", encoding="utf-8")
    assert gc.grid_incomplete(tmp_path) is None  # the grid started here but was stopped before its first row
    rows = [{**_grid_row(m, o, 1e6), "key": f"{m}-{o}"} for m in mixers.names() for o in objectives.names()]
    row = json.loads((FIXTURES / "results_v1" / "g.jsonl").read_text(encoding="utf-8").splitlines()[1])
    path = tmp_path / "results" / "gpu_check.jsonl"

    def write(rs):
        path.write_text("".join(json.dumps({**row, **r}) + "\n" for r in rs), encoding="utf-8")

    write(rows)
    assert gc.grid_incomplete(tmp_path) == "the grid is complete: every cell ok"
    write(rows[:-1])  # the first command ran out of time before the last cell
    assert gc.grid_incomplete(tmp_path) is None
    write(rows + [{**rows[0], "status": "failed", "error": "OutOfMemoryError: x", "metrics": None}])
    assert gc.grid_incomplete(tmp_path) is None  # a cell whose newest row failed is retried


def test_an_elastic_part_outlives_its_own_limit_a_skipped_part_says_why_and_each_part_is_packed(tmp_path, monkeypatch):
    """The main loop: the grid stand-in needs 3 s with a 1 s limit of its own and finishes, since the parts
    before it left time; a part whose skip_if gives a reason is recorded as skipped with it; and after the
    first part, indeed before it, the archive already exists (a command stopped later still returns it)."""
    import sys
    import tarfile
    import time

    archive = tmp_path / "OUT" / "gpu_check.tgz"
    archive.parent.mkdir()
    probe = f"import os, sys; sys.exit(0 if os.path.exists({str(archive)!r}) else 3)"
    parts = [gc.Part("cuda_tests", [sys.executable, "-c", probe], 100),  # packed before the first part, too
             gc.Part("grid", [sys.executable, "-c", "import time; time.sleep(3); " + probe], 1, elastic=True),
             gc.Part("grid_resume", [sys.executable, "-c", "raise SystemExit(5)"], 100, skip_if=lambda: "nothing to do"),
             gc.Part("bench_scaling", [sys.executable, "-c", ""], 2)]
    monkeypatch.setattr(gc, "plan", lambda *a, **k: [gc.Part(p.name, p.argv, p.timeout_s, elastic=p.elastic,
                                                             skip_if=p.skip_if) for p in parts])
    monkeypatch.setattr(gc, "environment", _env)
    out = tmp_path / "check"
    rc = gc.main(["--cpu-dry-run", "--data-dir", str(tmp_path), "--out", str(out), "--pack", str(archive),
                  "--deadline-at", str(time.time() + 150)])  # the grid may take 150 - 102 (the later limits)
    recs = {r["name"]: r for r in gc.read_parts(out)}
    assert recs["cuda_tests"]["status"] == "ok"  # it saw the archive made before it
    assert recs["grid"]["status"] == "ok", recs["grid"]  # it ran 3 s past its own 1 s limit, and saw the archive
    assert recs["grid_resume"]["status"] == "skipped" and recs["grid_resume"]["note"] == "nothing to do"
    assert recs["bench_scaling"]["status"] == "ok" and rc == 0
    with tarfile.open(archive) as tar:  # the last pack holds every part's record
        assert {f"./parts/{n}.json" for n in recs} <= set(tar.getnames())


def test_merge_lets_the_later_archive_replace_the_earlier_ones_part(tmp_path):
    """`--merge A B`: B is the later command (a rerun of a part), so its record of a part both ran wins."""
    first = _machine(tmp_path, "first", [gc.Part("grid", [], 1, status="timed out after 300 s", seconds=300.0,
                                                 note="cut")], {})
    second = _machine(tmp_path, "second", [gc.Part("grid", [], 1, status="ok", seconds=90.0, note="done")], {})
    out = tmp_path / "gpu_check"
    assert gc.main(["--merge", str(first), str(second), "--out", str(out)]) == 0
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "| grid | ok | 90.0 |" in text and "timed out after 300 s" not in text
    assert (out / "logs" / "grid.log").read_text(encoding="utf-8") == "done"


def test_parts_runs_the_named_parts_in_the_plans_order_and_refuses_an_unknown_one(tmp_path, monkeypatch):
    """`--parts` (the device's two commands): only the parts named, spaces allowed, in the plan's order
    whatever the order given; a misspelt name stops the command (exit 2) before any part runs."""
    ran: list[str] = []

    def fake_run(p, logs, cuda):
        ran.append(p.name)
        p.status = "ok"

    monkeypatch.setattr(gc, "run_part", fake_run)
    monkeypatch.setattr(gc, "environment", _env)
    args = ["--cpu-dry-run", "--data-dir", str(tmp_path), "--out", str(tmp_path / "check")]
    assert gc.main([*args, "--parts", "bench_loss_memory, grid_base,cuda_tests"]) == 0
    assert ran == ["cuda_tests", "grid_base", "bench_loss_memory"]
    assert [r["name"] for r in gc.read_parts(tmp_path / "check")] == ran
    ran.clear()
    assert gc.main([*args, "--parts", "cuda_tests,grid_bsae"]) == 2 and ran == []


def _fake_python(tmp_path: Path, pip_rc: int = 0) -> tuple[Path, Path]:
    """A copy of the three scripts in a tree of their own, with a wheel in its .whl/, and a `python` that logs
    each call (its arguments and PYTHONPATH) instead of installing or running anything."""
    import stat

    root = Path(gc.__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    for name in ("device_gpu_check.sh", "gpu_check.sh", "with_wheels.sh"):
        shutil.copy(root / "scripts" / name, tree / "scripts" / name)
    (tree / ".whl").mkdir()
    (tree / ".whl" / "fugashi-1.0-py3-none-any.whl").write_bytes(b"")
    log = tmp_path / "calls.log"
    py = tmp_path / "python"
    py.write_text("#!/usr/bin/env bash\n"
                  "IFS='|'\n"  # arguments joined by |: one with a space stays one
                  f'printf "%s\\n" "ARGS|$*" "PYTHONPATH ${{PYTHONPATH:-}}" >> {str(log)!r}\n'
                  f'if [ "$2" = pip ]; then exit {pip_rc}; fi\nexit 0\n')
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    return tree, py


def test_the_device_script_passes_its_deadline_and_arguments_and_installs_the_wheels(tmp_path):
    """scripts/device_gpu_check.sh's command line, checked with a stand-in python (nothing runs): the carried
    wheels are installed offline into the private site, which goes first on PYTHONPATH; the check runs with
    the 8-minute box off (--minutes 0), an absolute deadline GPU_CHECK_SECONDS from now, the archive in $OUT,
    and the caller's arguments last, as given."""
    import subprocess
    import time

    tree, py = _fake_python(tmp_path)
    out, site = tmp_path / "OUT", tmp_path / "site"
    out.mkdir()
    env = {**os.environ, "PYTHON": str(py), "OUT": str(out), "GPU_CHECK_DIR": str(tmp_path / "check"),
           "GPU_CHECK_SECONDS": "123", "WAVEBENCH_WHEEL_SITE": str(site), "PYTHONPATH": "/keep"}
    env.pop("WAVEBENCH_CHECK_STARTED", None)
    t0 = int(time.time())
    proc = subprocess.run(["bash", "scripts/device_gpu_check.sh", "--cpu-dry-run", "--parts", "a, b"], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=60)
    t1 = int(time.time())
    assert proc.returncode == 0, proc.stderr
    assert "deadline in 123 s" in proc.stdout
    lines = (tmp_path / "calls.log").read_text().splitlines()
    assert len(lines) == 4, lines  # pip, then the check
    pip, check = lines[0].split("|")[1:], lines[2].split("|")[1:]
    assert pip[:3] == ["-m", "pip", "install"] and "--no-index" in pip and "--no-deps" in pip
    assert _after(pip, "--target") == str(site) and pip[-1] == ".whl/fugashi-1.0-py3-none-any.whl"
    assert lines[3] == f"PYTHONPATH {site}:/keep"  # the wheels first, what was there kept
    assert check[:2] == ["-m", "benchmarks.gpu_check"] and _after(check, "--out") == str(tmp_path / "check")
    assert _after(check, "--minutes") == "0" and _after(check, "--pack") == str(out / "gpu_check.tgz")
    assert t0 + 123 <= int(_after(check, "--deadline-at")) <= t1 + 123
    assert check[-3:] == ["--cpu-dry-run", "--parts", "a, b"]  # the caller's, untouched (the space too)


def test_wheels_that_do_not_install_leave_the_path_alone_and_the_check_still_runs(tmp_path):
    """Wheels built for another Python: a warning, PYTHONPATH unchanged, and the check runs all the same;
    without $OUT or GPU_CHECK_SECONDS, no --pack and the 570 s default deadline."""
    import subprocess
    import time

    tree, py = _fake_python(tmp_path, pip_rc=1)
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_CHECK_SECONDS", "PYTHONPATH",
                                                            "WAVEBENCH_CHECK_STARTED")}
    env |= {"PYTHON": str(py), "GPU_CHECK_DIR": str(tmp_path / "check"), "WAVEBENCH_WHEEL_SITE": str(tmp_path / "site")}
    t0 = int(time.time())
    proc = subprocess.run(["bash", "scripts/device_gpu_check.sh"], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=60)
    t1 = int(time.time())
    assert proc.returncode == 0 and "did not install" in proc.stderr
    lines = (tmp_path / "calls.log").read_text().splitlines()
    check = lines[2].split("|")[1:]
    assert check[:2] == ["-m", "benchmarks.gpu_check"] and lines[3] == "PYTHONPATH "
    assert "--pack" not in check and t0 + 570 <= int(_after(check, "--deadline-at")) <= t1 + 570


def test_with_wheels_runs_any_command_with_the_carried_wheels_first_on_the_path(tmp_path):
    """scripts/with_wheels.sh (what gpu_check.sh installs the wheels with, and how a lent GPU runs a grid of
    its own, such as the JaQuAD twin, docs/gpu-check.md): the wheels installed offline into the private site,
    then the command as given, from the checkout's root, the site first on PYTHONPATH and its exit status
    passed on; no wheels in .whl/, no pip and the path as it was."""
    import subprocess

    tree, py = _fake_python(tmp_path)
    site = tmp_path / "site"
    env = {**os.environ, "PYTHON": str(py), "WAVEBENCH_WHEEL_SITE": str(site), "PYTHONPATH": "/keep"}
    cmd = ["bash", str(tree / "scripts" / "with_wheels.sh"), str(py), "run_matrix.py", "--grid", "a b", "--task-opt",
           "extra_train=jaquad"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "calls.log").read_text().splitlines()
    assert len(lines) == 4, lines
    pip, run = lines[0].split("|")[1:], lines[2].split("|")[1:]
    assert pip[:3] == ["-m", "pip", "install"] and "--no-index" in pip and _after(pip, "--target") == str(site)
    assert run == ["run_matrix.py", "--grid", "a b", "--task-opt", "extra_train=jaquad"]
    assert lines[3] == f"PYTHONPATH {site}:/keep"
    fail = subprocess.run(["bash", str(tree / "scripts" / "with_wheels.sh"), "bash", "-c", "pwd; exit 3"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert fail.returncode == 3 and fail.stdout.splitlines()[-1] == str(tree)  # its status; run from the root
    (tmp_path / "calls.log").unlink()
    shutil.rmtree(tree / ".whl")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and (tmp_path / "calls.log").read_text().splitlines() == \
        ["ARGS|run_matrix.py|--grid|a b|--task-opt|extra_train=jaquad", "PYTHONPATH /keep"]


def _git(repo: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_commit_adds_the_report_folder_alone_even_where_git_ignores_it(tmp_path, monkeypatch):
    """`--commit`: the report folder is committed to the current branch, under a message naming the device,
    though the default folder (runs/gpu_check) is git-ignored, and nothing else a person has staged goes
    into that commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.org")
    _git(repo, "config", "user.name", "t")
    (repo / ".gitignore").write_text("runs/\n")
    (repo / "notes.md").write_text("draft\n")
    _git(repo, "add", ".gitignore", "notes.md")
    _git(repo, "commit", "-q", "-m", "start")
    (repo / "notes.md").write_text("staged, not the report's\n")
    _git(repo, "add", "notes.md")
    out = repo / "runs" / "gpu_check"
    (out / "parts").mkdir(parents=True)
    (out / "README.md").write_text("# GPU check\n")
    (out / "parts" / "grid.json").write_text("{}\n")
    monkeypatch.setattr(gc, "ROOT", repo)
    gc.commit(out, {"device": "NVIDIA H200"})
    assert _git(repo, "log", "-1", "--format=%s").strip() == "GPU check report (NVIDIA H200)"
    assert sorted(_git(repo, "show", "--name-only", "--format=", "HEAD").split()) == [
        "runs/gpu_check/README.md", "runs/gpu_check/parts/grid.json"]
    assert _git(repo, "diff", "--cached", "--name-only").split() == ["notes.md"]  # still staged, not committed


def test_commit_is_asked_for_by_a_flag_after_a_run_and_after_a_merge(tmp_path, monkeypatch):
    committed = []
    monkeypatch.setattr(gc, "commit", lambda out, env: committed.append((out, env["device"])))
    monkeypatch.setattr(gc, "run_part", lambda p, logs, cuda: setattr(p, "status", "ok"))
    monkeypatch.setattr(gc, "environment", _env)
    out = tmp_path / "check"
    args = ["--cpu-dry-run", "--data-dir", str(tmp_path), "--out", str(out), "--parts", "cuda_tests"]
    assert gc.main(args) == 0 and committed == []
    assert gc.main([*args, "--commit"]) == 0 and committed == [(out.resolve(), "NVIDIA H200")]
    assert gc.main(["--report-only", "--out", str(out)]) == 0 and len(committed) == 1
    assert gc.main(["--report-only", "--out", str(out), "--commit"]) == 0
    assert committed[-1] == (out.resolve(), "NVIDIA H200") and len(committed) == 2


def test_a_parts_log_opens_with_its_command_and_its_note_is_the_last_lines_it_printed(tmp_path):
    """The log's first line is the command (written before the part starts, so the part's own output follows
    it); the note in the report is its last three lines that say something, the profiler's `USDT:` chatter
    left out, joined by ` / `, at most 300 characters; a part's exit code is its status."""
    import sys

    code = ("import sys; print('first'); print('second'); print(); print('third'); print('last'); "
            "print('USDT:2026 profiler_stop'); sys.exit(3)")
    p = gc.Part("grid", [sys.executable, "-c", code], 30)
    gc.run_part(p, tmp_path, cuda=False)
    lines = (tmp_path / "grid.log").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "$ " + " ".join(p.argv) and lines[1:3] == ["first", "second"]
    assert p.note == "second / third / last" and p.status == "failed (exit 3)" and 0 <= p.seconds < 60
    long = gc.Part("grid", [sys.executable, "-c", "print('a'); print('b'); print('x' * 400)"], 30)
    gc.run_part(long, tmp_path, cuda=False)
    assert long.note == ("a / b / " + "x" * 400)[:300] and long.status == "ok"


def test_commit_outside_a_git_checkout_does_not_stop_the_check(tmp_path, monkeypatch):
    """A rented machine may hold a copy without .git: `--commit` then commits nothing, and the check, whose
    report is already written, ends as its parts did rather than with git's error."""
    out = tmp_path / "gpu_check"
    out.mkdir()
    (out / "README.md").write_text("# GPU check\n")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path either
    monkeypatch.setattr(gc, "ROOT", tmp_path)
    gc.commit(out, {"device": "NVIDIA H200"})  # no exception
    assert (out / "README.md").read_text() == "# GPU check\n"


def test_every_parts_command_is_well_formed_in_both_plans():
    """No empty argument (an option without its value, a flag lost), every `-m` names a module that imports
    from the repository root, and a run_matrix part names the script that is there. The dry run's parts are
    the device's at CPU sizes: its benchmarks on CPU, one timed rep, the loss on the two paths that run there."""
    import importlib.util
    import sys

    assert (gc.ROOT / "run_matrix.py").is_file() and (gc.ROOT / "benchmarks" / "gpu_check.py").is_file()
    for dry in (False, True):
        parts = gc.plan(Path("out"), Path("data"), dry=dry, budget=None, eval_limit=None)
        for p in parts:
            assert all(isinstance(a, str) and a for a in p.argv), (p.name, p.argv)
            assert p.argv[0] == sys.executable
            if p.argv[1] == "-m":
                assert importlib.util.find_spec(p.argv[2]) is not None, p.argv[2]
            else:
                assert p.argv[1] == "run_matrix.py"
        # CUDA only: the CUDA tests and the Triton scan's stages; the rest run on CPU too
        assert {p.name for p in parts if p.cuda_only} == {"cuda_tests", "bench_scan_stages"}
        assert _argv(parts, "cuda_tests")[1:3] == ["-m", "pytest"]
    dry = gc.plan(Path("out"), Path("data"), dry=True, budget=None, eval_limit=None)
    scaling, loss = _argv(dry, "bench_scaling"), _argv(dry, "bench_loss_memory")
    assert [_after(scaling, f) for f in ("--device", "--lengths", "--tokens", "--reps", "--warmup")] == \
        ["cpu", "64,128", "128", "1", "1"]
    assert [_after(loss, f) for f in ("--device", "--impls", "--vocab", "--tokens", "--reps")] == \
        ["cpu", "chunked,plain", "1000", "64", "1"]
    grid = _argv(dry, "grid")
    assert [_after(grid, f) for f in ("--device", "--preset", "--budget")] == ["cpu", "tiny", "tokens=16000"]
    assert _after(_argv(gc.plan(Path("out"), Path("data"), dry=True, budget="tokens=5", eval_limit=None), "grid"),
                  "--budget") == "tokens=5"
    assert _after(_argv(gc.plan(Path("out"), Path("data"), dry=False, budget="tokens=5", eval_limit=None), "grid"),
                  "--budget") == "tokens=5"


def test_the_base_preset_grid_is_the_grid_but_for_its_preset():
    for dry in (False, True):
        parts = gc.plan(Path("out"), Path("data"), dry=dry, budget=None, eval_limit=None)
        grid, base = _argv(parts, "grid"), _argv(parts, "grid_base")
        i = base.index("--preset")
        assert base[i + 1] == ("tiny" if dry else "base")
        j = base.index("--grid")
        assert base[j + 1] == "gpu_check_base"
        assert base[j + 2:j + 6] == ["--mixers", "attention", "--objectives", "autoregressive"]
        # the grid's own size and flags, the preset replaced, nothing dropped or doubled
        start = grid.index("--device")
        size = grid[start:grid.index("--warm-compile")]
        k = size.index("--preset")
        assert base[j + 6:] == [*size[:k + 1], base[i + 1], *size[k + 2:], "--out", "out"]


def test_the_warm_up_compiles_half_the_cores_worth_of_cells_at_a_time(monkeypatch):
    """The GPU grid's warm-up workers: half the cores, at least 1, at most one per cell; the dry run 2."""
    import os

    n_cells = len(mixers.names()) * len(objectives.names())

    def warm(cpus, dry=False):
        monkeypatch.setattr(os, "cpu_count", lambda: cpus)
        return int(_after(_argv(gc.plan(Path("o"), Path("d"), dry=dry, budget=None, eval_limit=None), "grid"),
                          "--warm-compile"))

    assert warm(16) == min(8, n_cells) == 8
    assert warm(1) == 1 and warm(None) == 1  # os.cpu_count() may say None
    assert warm(4 * n_cells) == n_cells
    assert warm(64, dry=True) == 2


def test_the_data_folder_defaults_to_the_environment_then_the_checkouts_data_then_the_shared_one(tmp_path,
                                                                                                 monkeypatch):
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.setattr(gc, "ROOT", root)
    monkeypatch.delenv("WAVEBENCH_DATA_DIR", raising=False)
    assert gc.default_data_dir() == root / "data" / "jsquad-v1.3"  # none there: the place the error names
    shared = tmp_path / "shared" / "data" / "jsquad-v1.3"
    shared.mkdir(parents=True)
    assert gc.default_data_dir() == shared
    own = root / "data" / "jsquad-v1.3"
    own.mkdir(parents=True)
    assert gc.default_data_dir() == own
    monkeypatch.setenv("WAVEBENCH_DATA_DIR", str(tmp_path / "missing"))  # a folder that is not there is passed over
    assert gc.default_data_dir() == own
    env = tmp_path / "elsewhere"
    env.mkdir()
    monkeypatch.setenv("WAVEBENCH_DATA_DIR", str(env))
    assert gc.default_data_dir() == env


def test_the_environment_names_the_python_the_device_and_each_missing_package(monkeypatch):
    import platform

    monkeypatch.setattr(gc, "NEEDED", {"json": "json", "no_such_module_xyz": "no-such-dist"})
    env = gc.environment()
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["missing_packages"] == ["no-such-dist"]
    if not torch.cuda.is_available():
        assert env["device"] == "cpu" and env["cuda_available"] is False
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: asked.append(i) or "NVIDIA H200")
    env = gc.environment()
    assert env["device"] == "NVIDIA H200" and env["cuda_available"] is True and asked == [0]


def test_the_tables_render_every_cell_and_benchmark_row_even_a_failed_one(tmp_path):
    """A failed cell has no speed (nor a finite one): its tokens/s and MFU are blank, not an error; an ok one
    shows its MFU and every kernel its blocks ran. The benchmarks' rows are markdown tables, and each part's
    row says when it ran."""
    import json

    (tmp_path / "results").mkdir()
    base = json.loads((FIXTURES / "results_v1" / "g.jsonl").read_text(encoding="utf-8").splitlines()[1])
    ok = dict(base, metrics=dict(base.get("metrics") or {}, tokens_per_s=2.5e6, mfu=0.152),
              backend={"mixer": ["triton_scan", "torch_parallel_scan"], "loss": "cce"})
    failed = dict(base, mixer="mamba", status="failed", metrics={}, error="CUDA error: out of memory")
    inf = dict(base, mixer="attention", metrics=dict(base.get("metrics") or {}, tokens_per_s=float("inf")))
    (tmp_path / "results" / "gpu_check.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in (ok, failed, inf)), encoding="utf-8")
    from benchmarks.common import bench_row

    bench = bench_row("scaling", torch.device("cpu"), {"mixer": "mamba", "seq_len": 512}, backend="torch_parallel_scan",
                      ms_per_step=1.25, tokens_per_s=2e6)
    (tmp_path / "results" / "bench_scaling.jsonl").write_text(json.dumps(bench) + "\n", encoding="utf-8")
    parts = [{"name": "grid", "status": "ok", "seconds": 3.0, "note": "a | b", "ran": "2026-12-03T19:00:00+00:00"}]
    text = gc.summary(tmp_path, _env(), parts, dry=False, wall=1.0)
    assert text.endswith("|\n")
    assert "| grid | ok | 3.0 | 2026-12-03T19:00:00+00:00 | a / b |" in text  # a `|` in a note would split the cell
    lines = text.splitlines()
    row = next(ln for ln in lines if ln.startswith("| gpu_check | gated_context |"))
    assert "| 2,500,000 | 15.20% |" in row and "| cce | triton_scan, torch_parallel_scan |" in row
    row = next(ln for ln in lines if ln.startswith("| gpu_check | mamba |"))
    assert "| failed |  |  |" in row and row.endswith("| CUDA error: out of memory |")
    row = next(ln for ln in lines if ln.startswith("| gpu_check | attention |"))
    assert "| ok |  |" in row  # an infinite speed is no figure
    i = lines.index("| mixer | backend | seq_len | ms_per_step | tokens_per_s | status |")
    assert lines[i + 1] == "|---|---|---|---|---|---|"
    assert lines[i + 2] == "| mamba | torch_parallel_scan | 512 | 1.25 | 2,000,000.00 | ok |"


def test_a_merge_into_a_report_folder_that_exists_adds_to_it_and_a_folder_without_parts_is_refused(tmp_path, capsys):
    """Merging is done again and again into one folder (the device's archives as they come back); a folder
    holding an environment but no part record is no GPU check."""
    import json

    first = _machine(tmp_path, "first", [gc.Part("grid", [], 1, status="ok", seconds=90.0, note="done")], {})
    second = _machine(tmp_path, "second", [gc.Part("bench_scaling", [], 1, status="ok", seconds=9.0, note="ok")], {})
    out = tmp_path / "reports" / "gpu_check"  # made with its parents
    assert gc.main(["--merge", str(first), "--out", str(out)]) == 0
    assert gc.main(["--merge", str(second), "--out", str(out)]) == 0  # the folder exists by now
    assert [r["name"] for r in gc.read_parts(out)] == ["grid", "bench_scaling"]
    printed = capsys.readouterr().out
    assert "## Issue 14's targets" in printed and f"[gpu_check] report: {out / 'README.md'} (2 parts)" in printed
    assert any(t.startswith("| every cell of the default grid ends `ok` |") for t in printed.splitlines())  # a line each
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "environment.json").write_text(json.dumps(_env()), encoding="utf-8")
    assert gc.main(["--report-only", "--out", str(bare)]) == 2
    assert "holds no GPU check" in capsys.readouterr().err


def test_a_dry_run_reserves_time_for_the_later_parts_it_runs_and_prints_one_line_each(tmp_path, monkeypatch,
                                                                                       capsys):
    """Under a deadline the grid (elastic) gets what is left after the limits of the later parts this command
    will run: in a CPU dry run the CUDA-only parts are skipped, so their limits are not held back. The README
    gives the command's wall time (perf_counter's difference, a fake clock here); stdout has one line per
    part started, per part not started, and per verdict."""
    import types

    seen: dict[str, int] = {}

    now = [1_800_000_000.0]  # a fake wall clock: the deadline is 500 s after it; bench_scaling takes 480 s

    def fake_run(p, logs, cuda):
        seen[p.name] = p.timeout_s
        p.status, p.seconds = "ok", 1.0
        now[0] += 480.0 if p.name == "bench_scaling" else 0.0

    parts = [gc.Part("grid", [], 1, elastic=True), gc.Part("cuda_tests", [], 100, cuda_only=True),
             gc.Part("bench_scaling", [], 60), gc.Part("bench_loss_memory", [], 30)]
    monkeypatch.setattr(gc, "plan", lambda *a, **k: [gc.Part(p.name, p.argv, p.timeout_s, elastic=p.elastic,
                                                             cuda_only=p.cuda_only) for p in parts])
    monkeypatch.setattr(gc, "run_part", fake_run)
    monkeypatch.setattr(gc, "environment", _env)
    monkeypatch.setattr(gc, "MIN_PART_S", 45)  # the last part (30 s) is then left unstarted
    clock = iter([1000.0])
    monkeypatch.setattr(gc, "time", types.SimpleNamespace(time=lambda: now[0], perf_counter=lambda: next(clock, 1042.0)))
    monkeypatch.delenv("WAVEBENCH_CHECK_STARTED", raising=False)
    out = tmp_path / "check"
    rc = gc.main(["--cpu-dry-run", "--data-dir", str(tmp_path), "--out", str(out), "--deadline-at", str(now[0] + 500)])
    assert rc == 1  # a part not run is no success
    assert seen["grid"] == 500 - 60 - 30, seen  # bench_scaling's and bench_loss_memory's limits held back, not cuda_tests'
    assert seen["cuda_tests"] == 100 and "bench_loss_memory" not in seen
    assert "wall of the last command 42 s" in (out / "README.md").read_text(encoding="utf-8")
    lines = capsys.readouterr().out.splitlines()
    assert f"[gpu_check] grid (limit {seen['grid']} s) ..." in lines and "[gpu_check] grid: ok in 1.0 s" in lines
    assert any(t.startswith("[gpu_check] bench_loss_memory: not run (") and t.endswith(" s left before the deadline)")
               for t in lines)
    assert any(t.startswith("## Issue 14's targets") for t in lines) and "| every cell of the default grid ends `ok` | no grid rows | **not measured** |" in lines
