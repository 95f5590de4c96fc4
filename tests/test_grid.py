"""End to end: run_matrix.py on the hand-made fixture: rows, resume, failures, clear errors."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import run_matrix
from core.results import cell_rows, read_rows
from core.schema import GRID_KEYS, ROW_KEYS
from tasks import DataError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ROW_KEYS + GRID_KEYS  # what every grid row has (core/schema.py spells it once)


def _cells(path):
    """Model-cell rows (the grid file also holds the task's reference rows)."""
    return cell_rows(read_rows(path))


def _args(data_dir, out, cache, *extra):
    return ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(data_dir), "--out", str(out),
            "--cache-dir", str(cache), "--no-progress", "--grid", "t", *extra]


def test_smoke_grid_writes_complete_rows_and_resumes(offline_dir, tmp_path, cache_dir, capsys):
    """Every mixer x every objective; each row carries its objective's perplexity key only."""
    out = tmp_path / "out"
    assert run_matrix.main(_args(offline_dir, out, cache_dir)) == 0
    rows = _cells(out / "results" / "t.jsonl")
    import mixers
    from harness import objectives

    assert len(rows) == len(mixers.names()) * len(objectives.names())
    assert {r["objective"] for r in rows} >= {"autoregressive", "diffusion"}
    for r in rows:
        assert r["status"] == "ok", r.get("error")
        assert all(k in r for k in REQUIRED)
        assert r["protocol"] == "jsquad-offline"
        m = r["metrics"]
        ppl, other = ("ppl_bound", "ppl") if r["objective"] == "diffusion" else ("ppl", "ppl_bound")
        for k in ("em", "f1", ppl, "tokens_per_s", "gen_latency_ms"):
            assert isinstance(m[k], float) and m[k] == m[k], k
        assert 0 <= m["em"] <= 1 and 0 <= m["f1"] <= 1 and m[ppl] > 1 and other not in m
        if r["objective"] == "diffusion":
            assert {"steps", "gen_length"} <= set(r["objective_info"])
            # the bound's Monte Carlo error beside it (nats per target token); an exact ppl has none
            assert isinstance(m["nll_mc_se"], float) and 0 < m["nll_mc_se"] < math.log(m[ppl])
        else:
            assert "nll_mc_se" not in m
        assert m["peak_mem_bytes"] is None  # CPU
        assert r["params"] > 0 and r["tokens_seen"] >= 3000 and r["loss_curve"]
        # each question's NLL beside its scores, in the same id order: together they are the perplexity
        pq = r["per_question"]
        assert len(pq["nll"]) == len(pq["targets"]) == len(pq["f1"]) == m["eval_n"] and min(pq["targets"]) > 0
        assert math.exp(sum(pq["nll"]) / sum(pq["targets"])) == pytest.approx(m[ppl], rel=1e-4)
    assert (out / "reports" / "t" / "README.md").exists()
    report = (out / "reports" / "t" / "README.md").read_text()
    assert "ppl ÷ attention's" in report and "_ppl_ratio.png)" in report  # the column and its figure

    capsys.readouterr()
    assert run_matrix.main(_args(offline_dir, out, cache_dir)) == 0
    assert "already done" in capsys.readouterr().out
    assert len(_cells(out / "results" / "t.jsonl")) == len(rows)  # nothing rerun


def test_a_failing_cell_does_not_stop_the_grid(offline_dir, tmp_path, cache_dir, monkeypatch):
    import torch

    import harness.cell as cell_mod

    real_train = cell_mod.train

    from torch._dynamo.exc import BackendCompilerFailed

    def flaky(model, objective, *a, **k):
        if torch.initial_seed() == 1:  # an OOM in inductor's autotuning: dynamo hides it `from None`
            try:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            except torch.cuda.OutOfMemoryError as oom:
                raise BackendCompilerFailed(lambda *a: None, oom, None) from None
        return real_train(model, objective, *a, **k)

    monkeypatch.setattr(cell_mod, "train", flaky)
    out = tmp_path / "out"
    args = _args(offline_dir, out, cache_dir, "--mixers", "attention", "--objectives", "autoregressive", "--seeds", "1,2")
    assert run_matrix.main(args) == 0
    rows = {r["seed"]: r for r in _cells(out / "results" / "t.jsonl")}
    assert rows[1]["status"] == "failed"
    assert rows[1]["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"
    assert rows[2]["status"] == "ok"
    report = (out / "reports" / "t" / "README.md").read_text()
    assert "OutOfMemoryError" in report

    monkeypatch.setattr(cell_mod, "train", real_train)
    assert run_matrix.main(args) == 0  # the failed cell is retried, the ok one skipped
    rows = _cells(out / "results" / "t.jsonl")
    assert [(r["seed"], r["status"]) for r in rows] == [(1, "failed"), (2, "ok"), (1, "ok")]


def test_checkpoints_are_chosen_on_the_dev_slice_and_a_row_is_ok_only_once_evaluated(offline_dir, tmp_path, cache_dir,
                                                                                     monkeypatch):
    """The trainer's dev checks (checkpoint selection) read the dev slice of the training file, never the
    evaluation split. And a cell that trained but failed in its evaluation (here the perplexity pass runs
    out of memory) is a failed row with no metrics, retried by a rerun: never an ok row of half a result."""
    import torch

    import harness.cell as cell_mod

    seen = {}
    real_train, real_eval_nll = cell_mod.train, cell_mod.eval_nll

    def rows_of(seqs):  # each sequence's real tokens, as a set: no order, no padding
        return {tuple(r[:n].tolist()) for r, n in zip(seqs.ids, seqs.lengths)}

    def train(model, objective, train_set, dev_set, *a, **k):
        seen["train"], seen["dev"] = rows_of(train_set), rows_of(dev_set)
        return real_train(model, objective, train_set, dev_set, *a, **k)

    def eval_nll(model, objective, data, *a, **k):  # the cell's own call: the perplexity on the evaluation split
        seen["eval"] = rows_of(data)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")

    monkeypatch.setattr(cell_mod, "train", train)
    monkeypatch.setattr(cell_mod, "eval_nll", eval_nll)
    out = tmp_path / "out"
    args = _args(offline_dir, out, cache_dir, "--mixers", "attention", "--objectives", "autoregressive")
    assert run_matrix.main(args) == 0
    [row] = _cells(out / "results" / "t.jsonl")
    assert row["status"] == "failed" and row["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 1 GiB"
    assert not row.get("metrics")
    dev = seen["dev"]
    assert len(dev) == row["data"]["dev_questions"] and dev.isdisjoint(seen["eval"]) and dev.isdisjoint(seen["train"])

    monkeypatch.setattr(cell_mod, "eval_nll", real_eval_nll)
    assert run_matrix.main(args) == 0  # retried
    assert [r["status"] for r in _cells(out / "results" / "t.jsonl")] == ["failed", "ok"]


def test_a_cell_that_leaves_the_gpu_unusable_is_written_and_stops_the_grid(offline_dir, tmp_path, cache_dir,
                                                                           monkeypatch):
    """A device-side assert or an illegal address is sticky: every later CUDA call in the process fails,
    the cache release after the cell included (it raised in the cell's cleanup: the grid died and the
    cell's row was lost). The cell's row is written, failed with the error, and the grid stops with one
    line saying a rerun resumes, instead of failing every later cell for this one's error. The device's
    release is stood in for (on a CPU it cannot fail)."""
    import harness.cell as cell_mod

    calls = []

    def release(device):
        calls.append(device)
        return "RuntimeError: CUDA error: an illegal memory access was encountered" if len(calls) == 1 else None

    monkeypatch.setattr(cell_mod, "release", release)
    out = tmp_path / "out"
    args = _args(offline_dir, out, cache_dir, "--mixers", "attention", "--objectives", "autoregressive", "--seeds", "1,2")
    with pytest.raises(RuntimeError, match=r"the GPU cannot run another cell in this process after attention .*"
                                           r"illegal memory access.*rerun the same command"):
        run_matrix.main(args)
    rows = _cells(out / "results" / "t.jsonl")
    assert [(r["seed"], r["status"]) for r in rows] == [(1, "failed")] and "illegal memory" in rows[0]["error"]
    assert len(calls) == 1  # the second cell never started
    monkeypatch.setattr(cell_mod, "release", lambda device: None)
    assert run_matrix.main(args) == 0  # a rerun (a fresh process) resumes
    assert [(r["seed"], r["status"]) for r in _cells(out / "results" / "t.jsonl")] == [(1, "failed"), (1, "ok"), (2, "ok")]


def test_rows_record_the_evaluations_own_peak_memory_and_the_report_shows_it(offline_dir, tmp_path, cache_dir,
                                                                             monkeypatch):
    """`peak_mem_bytes` is training's; decoding's caches and a prefill's scan states may need more, and an
    OOM there fails a trained cell. The evaluation's peak is measured on its own (the peak reset when it
    starts, read when it ends) and reported beside training's. The GPU's probes are stood in (a CPU has
    none): the reset must come after training, the reading after the evaluation."""
    import harness.cell as cell_mod

    events = []
    real_evaluate = cell_mod.eval_nll
    monkeypatch.setattr(cell_mod, "reset_peak_memory", lambda device: events.append("reset"))
    monkeypatch.setattr(cell_mod, "peak_memory", lambda device: events.append("read") or 3 * 2**30)
    monkeypatch.setattr(cell_mod, "eval_nll", lambda *a, **k: events.append("ppl") or real_evaluate(*a, **k))
    out = tmp_path / "out"
    assert run_matrix.main(_args(offline_dir, out, cache_dir, "--mixers", "attention", "--objectives",
                                 "autoregressive")) == 0
    row = _cells(out / "results" / "t.jsonl")[0]
    assert row["metrics"]["eval_peak_mem_bytes"] == 3 * 2**30
    assert events == ["reset", "ppl", "read"]  # (the dev checks in training call the trainer's own dev_loss)
    report = (out / "reports" / "t" / "README.md").read_text()
    assert "eval VRAM" in report and "3.0 GiB" in report


def test_resume_after_a_kill(offline_dir, tmp_path, cache_dir):
    """Kill the grid mid-way: every line on disk is whole, and a rerun completes only what is missing."""
    out = tmp_path / "out"
    results = out / "results" / "t.jsonl"
    cmd = [sys.executable, str(ROOT / "run_matrix.py"),
           *_args(offline_dir, out, cache_dir, "--mixers", "attention", "--objectives", "autoregressive",
                  "--seeds", "0,1,2", "--no-report")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (results.exists() and results.read_text().count("\n") >= 1):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first = _cells(results)  # parses: no torn line
    assert 1 <= len(first) < 3, "the kill should land mid-grid"
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)
    rows = _cells(results)
    assert sorted(r["seed"] for r in rows) == [0, 1, 2]
    assert rows[: len(first)] == first  # finished cells were kept, not rerun


def _cli(args):
    return subprocess.run([sys.executable, str(ROOT / "run_matrix.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "WAVEBENCH_DATA_DIR": ""})


@pytest.mark.parametrize("extra, match", [
    (["--mixers", "nope"], "error: unknown mixer 'nope'; registered:"),
    (["--objectives", "sgd"], "error: unknown objective 'sgd'"),
    (["--budget", "epochs=3"], "error: budget must look like"),
    (["--budget", "tokens=5"], "error: budget tokens=5 is smaller than one batch"),
    (["--mixer-opt", "bogus=1"], "error: --mixer-opt bogus=1: no selected entry has option 'bogus'"),
    # a bad option *value* stops before the grid (every cell's model is built on the meta device first)
    (["--mixer-opt", "attention.head_dim=-3"], "error: attention x autoregressive (seed 0): ValueError: attention: head_dim must be a positive even"),
    (["--task-opt", "eval_limit=-5"], "error: jsquad: eval_limit must be >= 0"),
    (["--seeds", "a"], "error: --seeds takes comma-separated integers, got 'a'"),
    (["--dev-tokens", "-1"], "error: --dev-tokens must be >= 0"),
    (["--dev-checks", "0"], "error: --dev-checks must be >= 1 (the last is at the end of the budget); got 0"),
])
def test_bad_input_is_one_clear_line(offline_dir, tmp_path, cache_dir, extra, match):
    r = _cli([*_args(offline_dir, tmp_path, cache_dir), *extra])
    assert r.returncode == 2
    assert r.stderr.strip().startswith(match), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_missing_data_dir_is_one_clear_line(tmp_path, cache_dir):
    r = _cli(_args(tmp_path / "absent", tmp_path, cache_dir))
    assert r.returncode == 2 and "data directory not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_no_arguments_and_no_network_says_how_to_point_at_data(monkeypatch, capsys, tmp_path):
    import socket

    def no_dns(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.delenv("WAVEBENCH_DATA_DIR", raising=False)
    monkeypatch.setattr(sys, "argv", ["run_matrix.py", "--cache-dir", str(tmp_path), "--out", str(tmp_path)])
    assert run_matrix.cli() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach") and "--data-dir" in err and len(err.splitlines()) == 1


def test_list_shows_registries(capsys):
    assert run_matrix.main(["--list"]) == 0
    out = capsys.readouterr().out
    for word in ("tasks:", "jsquad", "mixers:", "attention", "head_dim=32", "objectives:", "autoregressive", "presets:", "tiny"):
        assert word in out


def test_rows_carry_no_dataset_text(offline_dir, tmp_path, cache_dir):
    """Results may be committed: sample predictions are kept by question id, never with the
    dataset's questions or gold answers (JSQuAD rows must not be copied into the repository)."""
    from fixtures.jsquad_mini import EVAL_ARTICLES

    out = tmp_path / "out"
    assert run_matrix.main(_args(offline_dir, out, cache_dir, "--mixers", "attention", "--objectives", "autoregressive")) == 0
    text = (out / "results" / "t.jsonl").read_text(encoding="utf-8")
    [row] = _cells(out / "results" / "t.jsonl")
    assert row["samples"] and {"qid", "pred", "em", "f1"} == set(row["samples"][0])
    for _, paragraph, qas in EVAL_ARTICLES:
        assert paragraph not in text
        for question, _ in qas:
            assert question not in text


def test_sigterm_leaves_a_resume_hint(monkeypatch, capsys):
    """A scheduler's SIGTERM unwinds like Ctrl-C (past a cell's error handling) and says how to resume."""
    def killed(argv=None):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this returns
        return 0

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(run_matrix, "main", killed)
    assert run_matrix.cli() == 143
    err = capsys.readouterr().err.strip()
    assert err == "terminated (SIGTERM): finished cells are saved; rerun the same command to resume"
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is ours only while the grid runs


def test_quick_sets_the_smoke_defaults_and_explicit_flags_win(offline_dir, tmp_path, cache_dir):
    out = tmp_path / "out"
    args = ["--quick", "--budget", "tokens=3000", "--task-opt", "eval_limit=3", "--mixers", "attention",
            "--objectives", "autoregressive", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--no-report", "--grid", "q"]
    assert run_matrix.main(args) == 0
    [row] = _cells(out / "results" / "q.jsonl")
    assert row["preset"] == run_matrix.QUICK["preset"] and row["budget"] == "tokens=3000"
    assert row["task_opts"] == {"eval_limit": "3"} and row["metrics"]["eval_n"] == 3
    assert 0 < row["train"]["dev_tokens"] <= run_matrix.QUICK["dev_tokens"]
    # TrainConfig's 10 dev checks, at most one per step (this budget is 4 steps)
    assert row["train"]["dev_checks"] == len(row["loss_curve"]) == min(10, row["train"]["steps"]) == 4
    assert row["train"]["dev_checks_bound"] == 10  # the setting, not the count
    assert {"prepare_s", "train_s", "dev_s", "eval_s"} <= set(row["timing"])
    t = row["train"]  # the warm-up steps' training, and what a time budget would charge for it
    assert t["warm_tokens"] == sum(s["warm_tokens"] for s in t["stages"]) > 0 and t["warm_charged_seconds"] > 0


@pytest.mark.parametrize("flags, noted", [
    (["--budget", "tokens=2000000"], True), (["--budget", "seconds=600"], True), (["--budget", "a100_seconds=60"], True),
    (["--budget", "tokens=999999"], False), ([], False),  # --quick's own budget
    (["--budget", "tokens=1000000"], True), (["--budget", "seconds=60"], True), (["--budget", "seconds=59"], False),
    (["--budget", "tokens=2000000", "--dev-tokens", "4096"], False),  # the small sample chosen explicitly
    (["--budget", "tokens=2000000", "--dev-tokens", "32768"], False)])
def test_quick_with_a_long_budget_says_its_dev_sample_is_small(flags, noted, tmp_path, capsys):
    """--quick's 4,096 dev tokens rank checkpoints noisily on a long budget (docs/diffusion-noise.md):
    the grid says so, once, on stderr, and still runs what it was given."""
    args = run_matrix.parser().parse_args(["--quick", *flags])
    notes = run_matrix.apply_defaults(args)
    assert args.dev_tokens == (int(flags[flags.index("--dev-tokens") + 1]) if "--dev-tokens" in flags
                               else run_matrix.QUICK["dev_tokens"])  # a notice, not a changed setting
    assert len(notes) == noted and all("--dev-tokens 32768" in n for n in notes)
    with pytest.raises(DataError):  # main prints it before anything else can stop the grid
        run_matrix.main(["--quick", *flags, "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path),
                         "--no-progress", "--no-report"])
    err = capsys.readouterr().err
    assert err.count("note: --quick scores dev checks on 4,096 tokens") == noted


def test_quick_trains_at_the_preset_rate_unless_lr_is_given(offline_dir, tmp_path, cache_dir, monkeypatch):
    """--quick skips the learning-rate sweep (it would cost 1.5x the training again); an explicit --lr
    still wins, and without --quick the default stays the sweep."""
    monkeypatch.delenv("WAVEBENCH_LR", raising=False)
    out = tmp_path / "out"
    base = ["--quick", "--budget", "tokens=3000", "--task-opt", "eval_limit=2", "--mixers", "attention",
            "--objectives", "autoregressive", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--no-report"]
    assert run_matrix.main(base + ["--grid", "q"]) == 0
    [row] = _cells(out / "results" / "q.jsonl")
    assert not row.get("lr_sweep") and row["train"]["lr"] == run_matrix.get_preset("tiny").lr
    assert run_matrix.main(base + ["--grid", "q2", "--lr", "2e-3"]) == 0
    [row] = _cells(out / "results" / "q2.jsonl")
    assert row["train"]["lr"] == 2e-3
    assert run_matrix.DEFAULT_LR == "auto"


def test_a_gpu_grids_default_name_names_its_gpu(monkeypatch):
    """DESIGN.md: GPU runs are named by device. Without it the README's CPU command run on a GPU finds the
    committed CPU grid's rows under the same cell keys, reports every cell done, and trains nothing."""
    from types import SimpleNamespace

    import torch

    import core.env

    # (core.env's own cached device_name is left alone: a real GPU's name must not be replaced for later tests)
    monkeypatch.setattr(core.env, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert run_matrix.device_slug(torch.device("cpu")) == ""
    assert run_matrix.device_slug(torch.device("cuda")) == "_h100-80gb-hbm3"
    ranks = SimpleNamespace(active=True, world_size=8)
    assert run_matrix.device_slug(torch.device("cuda:0"), ranks) == "_h100-80gb-hbm3x8"


def test_the_default_grid_name_ends_with_the_device_slug(offline_dir, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(run_matrix, "device_slug", lambda device, dist=None: "_h200")  # the GPU's, stood in
    out = tmp_path / "out"
    args = [a for a in _args(offline_dir, out, cache_dir, "--mixers", "attention", "--objectives", "autoregressive",
                             "--no-report", "--task-opt", "latency_n=1") if a not in ("--grid", "t")]
    assert run_matrix.main(args) == 0
    assert [p.name for p in (out / "results").glob("*.jsonl")] == ["jsquad-offline_tiny_tokens-3000_h200.jsonl"]


def test_a_resumed_a100_seconds_grid_meters_its_new_cells_with_the_factor_its_first_cells_had(
        offline_dir, tmp_path, cache_dir, capsys, monkeypatch):
    """The a100 factor sets every cell's wall-clock budget; a rerun (the grid's resume) measured it again, so
    cells trained after a resume (a cold or a hot GPU) had another budget than those before it."""
    import json

    import harness.budget as hb

    out = tmp_path / "out"
    base = _args(offline_dir, out, cache_dir, "--mixers", "attention", "--objectives", "autoregressive",
                 "--no-report", "--task-opt", "latency_n=1")
    base[base.index("--budget") + 1] = "a100_seconds=0.0003"
    assert run_matrix.main([*base, "--seeds", "0"]) == 0
    path = out / "results" / "t.jsonl"
    first = _cells(path)[0]
    recorded = {**first["budget_info"]["speed"], "a100_factor": 1.25e-4}  # as if measured on a slower day
    first["budget_info"]["speed"] = recorded
    path.write_text(json.dumps(first) + "\n")
    monkeypatch.setattr(hb, "_FACTOR_CACHE", {})  # a new process: it measures again (and later tests too)
    assert run_matrix.main([*base, "--seeds", "0,1"]) == 0
    assert "a100 speed factor 0.000125 as in the grid's earlier rows (measured now: " in capsys.readouterr().out
    new = [r for r in _cells(path) if r["seed"] == 1][0]
    assert new["status"] == "ok" and new["budget_info"]["speed"]["a100_factor"] == 1.25e-4
    assert new["budget_info"]["speed"]["measured_now"] != 1.25e-4


def test_a_resumed_grid_adopts_only_a_factor_its_own_device_and_budget_measured():
    """The factor a resume adopts is an ok row's on this device under this budget: another GPU's (a --grid
    reused on an H100 after an H200), another budget's or a failed row's would meter the new cells wrong."""
    from harness.budget import Budget, recorded_speed

    budget = Budget.parse("a100_seconds=60")

    def row(factor, device="cuda: NVIDIA H200", status="ok", b="a100_seconds=60"):
        return {"status": status, "device": device, "budget": b,
                "budget_info": {"budget": b, "speed": {"a100_factor": factor, "basis": "matmul"}}}

    others = [row(1.0, device="cuda: NVIDIA H100"), row(2.0, b="a100_seconds=30"), row(3.0, status="failed"),
              {"status": "ok", "device": "cuda: NVIDIA H200", "budget": "a100_seconds=60", "budget_info": {}}]
    assert recorded_speed(others, "cuda: NVIDIA H200", budget) is None
    assert recorded_speed([*others, row(0.4), row(0.5)], "cuda: NVIDIA H200", budget)["a100_factor"] == 0.4


def test_a_cells_row_lists_the_functions_dynamo_left_eager_also_when_its_sweep_hit_the_limit(
        offline_dir, tmp_path, cache_dir, monkeypatch):
    """Dynamo warns once per function at its recompile limit, then runs it eagerly. The sweep's short runs
    share the cell's dynamo caches: a limit a short run hits leaves the full run eager, unannounced. The
    row lists the cell's hits, sweep included. Dynamo's warning (its format in torch 2.11 and 2.13) is
    logged at the end of the first cell's first short run; the full runs log none."""
    import logging

    import harness.compiling as hc
    import harness.lr_sweep as ls

    real, calls = ls.train, []

    def short_run(*a, **k):
        res = real(*a, **k)
        calls.append(1)
        if len(calls) == 1:  # the first cell's first short run hits the limit
            logging.getLogger(hc.LIMIT_LOGGER).warning(
                "torch._dynamo hit config.%s (%s)\n   function: %s\n   last reason: %s", "recompile_limit", 8,
                "'forward' (mixers/attention.py:80)", "0/7: tensor 'x' size mismatch")
        return res

    monkeypatch.setattr(ls, "train", short_run)
    hc.clear_recompile_limit_hits()
    out = tmp_path / "out"
    args = _args(offline_dir, out, cache_dir, "--mixers", "attention", "--objectives", "autoregressive",
                 "--no-report", "--task-opt", "latency_n=1", "--lr-sweep", "1e-3,3e-3", "--seeds", "0,1")
    assert run_matrix.main(args) == 0
    rows = _cells(out / "results" / "t.jsonl")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    # the first cell's row lists the hit of its sweep; the second cell's never carries an earlier cell's
    assert [r["train"]["recompile_limit_hits"] for r in rows] == [
        ["recompile_limit (8): 'forward' (mixers/attention.py:80)"], []]
    hc.clear_recompile_limit_hits()


def test_a_cell_that_ran_out_of_memory_leaves_nothing_alive_for_its_cleanup(offline_dir, tmp_path, cache_dir,
                                                                             monkeypatch):
    """The cleanup after a failed cell (release: on a GPU the allocator's cache emptied before the next cell)
    can free the failed run's model only if nothing holds the exception: its traceback's frames hold the
    model, the optimizer and the activations. Labelling the OOM must keep no reference to it."""
    import gc
    import weakref

    import torch
    from torch._dynamo.exc import BackendCompilerFailed

    import harness.cell as cell_mod

    seen: list = []

    def oom(model, *a, **k):
        seen.append(weakref.ref(model))
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        except torch.cuda.OutOfMemoryError as e:
            raise BackendCompilerFailed(lambda *a: None, e, None) from None

    real_release = cell_mod.release

    def release(device):
        gc.collect()
        seen.append(seen[0]() is None)  # the model, at the cleanup: freed?
        return real_release(device)

    monkeypatch.setattr(cell_mod, "train", oom)
    monkeypatch.setattr(cell_mod, "release", release)
    args = _args(offline_dir, tmp_path / "out", cache_dir, "--mixers", "attention", "--objectives",
                 "autoregressive", "--no-report")
    assert run_matrix.main(args) == 0
    [row] = _cells(tmp_path / "out" / "results" / "t.jsonl")
    assert row["error"].startswith("OutOfMemoryError") and seen[1:] == [True]


def test_report_only_rebuilds_the_report_from_the_rows_and_runs_no_cell(tmp_path, capsys, monkeypatch):
    """`--report-only` writes the grid's report from the rows already in results/ and stops: no data is
    loaded and no cell runs (a report rebuilt after a code change must never append rows)."""
    import shutil

    from harness import executors
    from reports import figures

    def no_cells(args):
        raise AssertionError("--report-only ran cells")

    monkeypatch.setattr(executors, "build", no_cells)
    monkeypatch.setattr(figures, "_save", lambda fig, path: path)  # drawn, not encoded (test_reports checks PNGs)
    out = tmp_path / "out"
    shutil.copytree(ROOT / "tests" / "fixtures" / "results_v1", out / "results")
    before = (out / "results" / "g.jsonl").read_bytes()
    # a data directory that is not there: --report-only reads none (a cell would stop on it)
    assert run_matrix.main(["--report-only", "--grid", "g", "--out", str(out), "--data-dir", str(tmp_path / "absent"),
                            "--cache-dir", str(tmp_path / "cache")]) == 0
    report = out / "reports" / "g" / "README.md"
    assert f"report: {report}" in capsys.readouterr().out
    text = report.read_text()
    assert "| gated_context |" in text and "| attention |" in text  # the fixture's model rows
    assert (out / "results" / "g.jsonl").read_bytes() == before  # no row appended
    assert sorted(p.name for p in (out / "results").iterdir()) == ["bench_decode.jsonl", "g.jsonl"]
    assert not (tmp_path / "cache").exists()  # no tokenizer trained, nothing downloaded


@pytest.mark.parametrize("extra, match", [
    (["--seeds", ""], "error: --seeds needs at least one integer, e.g. --seeds 0,1,2"),
    (["--seeds", " , "], "error: --seeds needs at least one integer, e.g. --seeds 0,1,2"),
    (["--task", "mqar", "--sweep", "--sweep-lengths", ""],
     "error: --sweep needs at least one length (--sweep-lengths) and one width (--sweep-widths)"),
    (["--task", "mqar", "--sweep", "--sweep-widths", ","],
     "error: --sweep needs at least one length (--sweep-lengths) and one width (--sweep-widths)"),
], ids=["no-seeds", "blank-seeds", "no-lengths", "no-widths"])
def test_an_empty_list_flag_is_one_clear_line(tmp_path, cache_dir, monkeypatch, capsys, extra, match):
    """A list flag given but empty (`--seeds ''`, a sweep with no lengths or no widths) would make a grid of
    no cells that reports success having done nothing: it is refused in one line, before anything runs.
    In this process (cli() as the script runs it): the checks come before any data is read."""
    monkeypatch.setattr(sys, "argv", ["run_matrix.py", *_args(tmp_path / "absent", tmp_path / "out", cache_dir),
                                      "--mixers", "attention", *extra])
    assert run_matrix.cli() == 2
    err = capsys.readouterr().err.strip()
    assert err == match
    assert not (tmp_path / "out").exists()


def test_profile_step_profiles_a_step_of_each_cell_and_is_no_cell_setting(offline_dir, tmp_path, cache_dir):
    """`--profile-step` puts a profiled step in the task stage of each row (harness/step_profile.py); it names
    no other cell, so a grid run without it resumes the profiled rows instead of training them again."""
    args = _args(offline_dir, tmp_path / "out", cache_dir, "--mixers", "attention", "--objectives",
                 "autoregressive,diffusion", "--task-opt", "eval_limit=1")
    assert run_matrix.main([*args, "--profile-step"]) == 0
    rows = _cells(tmp_path / "out" / "results" / "t.jsonl")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        p = r["train"]["stages"][-1]["profile"]
        assert p["device"] == "cpu" and p["host_ops"] > 0 and p["tokens"] > 0 and p["kernel_ms"] is None
    assert run_matrix.main(args) == 0
    assert len(_cells(tmp_path / "out" / "results" / "t.jsonl")) == 2  # resumed: no new rows


def test_sdpa_cudnn_is_a_cell_setting_each_cell_asks_for(offline_dir, tmp_path, cache_dir, monkeypatch):
    """`--sdpa-cudnn` reaches the cell, which asks for it (without the flag it asks for no cuDNN attention),
    and it names another cell: the grid without it does not resume the one with it."""
    import harness.cell as hc

    asked = []
    monkeypatch.setattr(hc, "allow_cudnn_attention", lambda device, allowed: asked.append(allowed) or None)
    args = _args(offline_dir, tmp_path / "out", cache_dir, "--mixers", "attention", "--objectives", "autoregressive",
                 "--task-opt", "eval_limit=1")
    assert run_matrix.main([*args, "--sdpa-cudnn"]) == 0
    assert run_matrix.main(args) == 0
    assert asked == [True, False]
    assert [r["status"] for r in _cells(tmp_path / "out" / "results" / "t.jsonl")] == ["ok", "ok"]


def test_dev_checks_sets_how_many_dev_checks_pick_the_checkpoint(offline_dir, tmp_path, cache_dir):
    """`--dev-checks N`: N dev checks evenly over the budget (the last at its end), in the row's loss curve and
    its `train.dev_checks`; the cell is another cell (its own key), so a grid with it does not resume one
    without it."""
    out = tmp_path / "out"
    args = ["--quick", "--budget", "tokens=6000", "--task-opt", "eval_limit=2", "--mixers", "attention",
            "--objectives", "autoregressive", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--no-report", "--grid", "d"]
    assert run_matrix.main([*args, "--dev-checks", "3"]) == 0
    [row] = _cells(out / "results" / "d.jsonl")
    assert row["train"]["dev_checks"] == len(row["loss_curve"]) == 3 == row["train"]["dev_checks_bound"]
    fracs = [p["frac"] for p in row["loss_curve"]]
    assert fracs[-1] == 1.0 and all(abs(f - (i + 1) / 3) < 0.2 for i, f in enumerate(fracs)), fracs
    assert run_matrix.main(args) == 0  # the default: another cell, trained, not resumed
    rows = _cells(out / "results" / "d.jsonl")
    assert rows[1]["train"]["steps"] == 7 and rows[0]["key"] != rows[1]["key"]
    assert [len(r["loss_curve"]) for r in rows] == [3, 7]  # the default's 10 checks: one per step of 7
    one = run_matrix.parser().parse_args(["--dev-checks", "1"])  # the least allowed: one check, at the end
    run_matrix.apply_defaults(one)
    assert one.dev_checks == 1
