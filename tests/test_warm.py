"""`run_matrix.py --warm-compile J` (harness/warm.py): a throwaway worker runs a compiled cell's warm-up
steps first, so the real cell, run after it in the grid's process, compiles from inductor's on-disk
cache; a warm-up that fails never stops the grid; the flag is refused where it cannot work; rows say
whether their cell was warmed, and the cell key does not change."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
from torch._functorch import config as aot_config

import run_matrix
from core.results import cell_rows, read_rows
from fixtures.jsquad_mini import EVAL_ARTICLES, TRAIN_ARTICLES, write_split
from harness import executors, warm
from harness.cell import Cell, RunContext, run_cell
from harness.compiling import major_minor
from harness.distributed import DistEnv
from harness.train import TrainConfig

GRID = ["--preset", "tiny", "--budget", "tokens=6000", "--task-opt", "eval_limit=2", "--dev-tokens", "256",
        "--no-progress", "--no-report", "--mixers", "wave_interference", "--objectives", "autoregressive"]


def _grid(offline_dir, cache_dir, out, *extra: str) -> list[dict]:
    assert run_matrix.main([*GRID, "--data-dir", str(offline_dir), "--cache-dir", str(cache_dir),
                            "--out", str(out), "--grid", "w", *extra]) == 0
    return cell_rows(read_rows(out / "results" / "w.jsonl"))


def _varied_dir(directory: Path) -> Path:
    """The offline fixture's articles six times over, each paragraph lengthened by a different amount:
    batches of different shapes, so a compiled cell recompiles at its second step (lengths dynamic),
    as on real data (the plain fixture's 12 questions make one batch shape)."""
    articles = [(f"{title}{i}", text + text[:(11 * i) % len(text)], qas)
                for i, (title, text, qas) in enumerate(TRAIN_ARTICLES * 6)]
    write_split(directory, "valid", articles, "v")
    write_split(directory, "test", EVAL_ARTICLES, "e")
    return directory


def test_a_warmed_cell_compiles_from_the_cache_the_worker_filled(tmp_path, monkeypatch, capsys):
    """A fresh inductor cache; the worker compiles the cell's warm-up steps (step 1's graphs, step 2's
    dynamic-length recompile) into it; the grid's cell then finds every graph there: FX-graph cache
    hits, no miss. A worker that warms anything else than the cell's own steps (one step, another
    scope, another thread count) leaves misses."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # read by inductor at each lookup
    counters.clear()
    data = _varied_dir(tmp_path / "jsquad")
    rows = _grid(data, tmp_path / "cache", tmp_path / "out", "--compile", "--warm-compile", "1")
    assert [r["status"] for r in rows] == ["ok"], [r.get("error") for r in rows]
    inductor, aot = counters["inductor"], counters["aot_autograd"]
    assert inductor["fxgraph_cache_hit"] > 0 and inductor["fxgraph_cache_miss"] == 0, dict(inductor)
    # AOTAutograd's cache hits too (it bypasses a graph holding an autograd Function: RMSNorm keeps its
    # Function out of traced code for that reason, mixers/_layers.py), so the cell skips AOT tracing;
    # torch 2.5 has that cache off by default (then only inductor's code generation is saved)
    # torch 2.7's cache fails on one of them (its reason in a TORCH_TRACE: KeyError 't2', a torch bug,
    # gone in 2.8); that graph is then traced anew at the cell's unbudgeted warm-up
    if aot_config.enable_autograd_cache:
        assert aot["autograd_cache_hit"] > 0 and aot["autograd_cache_miss"] == 0, dict(aot)
        assert aot["autograd_cache_bypass"] == 0 or major_minor(torch.__version__) < (2, 8), dict(aot)
    assert counters["frames"]["total"] >= 2 * 2  # (blocks and final norm) at steps 1 and 2: a recompile warmed too
    assert rows[0]["train"]["compile"] is True and rows[0]["train"]["compile_warmed"] is True
    assert (tmp_path / "inductor").is_dir()
    assert "warm [1/1] wave_interference x autoregressive (seed 0)" in capsys.readouterr().out


def test_a_warm_up_run_stops_after_each_stages_warm_up_steps(offline_dir, cache_dir, tmp_path, monkeypatch):
    """warm_only: the cell's path up to its warm-up steps (2 when compiled), no dev check, no
    evaluation; nothing is written (run_cell never writes, and the warm-up's row goes nowhere)."""
    monkeypatch.setattr(torch, "compile", lambda module, **_kw: module)  # compilation is not the point here
    import harness.cell as hc
    import harness.train as ht

    seen: list[TrainConfig] = []
    real_train = ht.train
    monkeypatch.setattr(hc, "train", lambda *a, **k: seen.append(a[5]) or _steps(real_train(*a, **k)))
    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=20000",
                compile=True, task_opts={"eval_limit": "2"}, lr_sweep={"rates": [1e-3, 3e-3], "frac": 0.1})
    ctx = RunContext(device=torch.device("cpu"), data_dir=offline_dir, cache_dir=tmp_path / "cache", grid="w",
                     progress=False)
    row = run_cell(cell, ctx, warm_only=True)
    assert row["status"] == "ok", row["error"]
    assert len(seen) == 1 and seen[0].warm_only  # one training run: the lr sweep's short runs are skipped
    assert _STEPS == [(2, 0)]  # the two warm-up steps (compile, recompile), then stop: no dev check
    assert row["metrics"] == {} and "train" not in row and "lr_sweep" not in row  # no evaluation
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("sweep", [False, True])
def test_a_warm_up_compiles_the_shapes_the_cell_compiles_first(offline_dir, cache_dir, tmp_path, monkeypatch, sweep):
    """The worker's graphs help only if the cell asks for the same ones. A pretraining cell compiles
    first for the packed rows, unless it sweeps learning rates: then its first training run is the
    sweep's first short run, on the task alone, and the warm-up must compile that run's first batch
    shape (it compiled the packed rows, a graph the cell never asked for: one cold compilation a cell)."""
    monkeypatch.setattr(torch, "compile", lambda module, **_kw: module)
    import harness.train as ht

    first: list[tuple[int, ...]] = []
    real = ht._Run._loss_backward

    def record(self, fn, stage, batch):
        if self.res.steps == 0:
            first.append(tuple(batch.ids.shape))
        return real(self, fn, stage, batch)

    monkeypatch.setattr(ht._Run, "_loss_backward", record)
    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=12000",
                compile=True, task_opts={"eval_limit": "1"}, pretrain={"sources": ["passages"], "frac": 0.5},
                **({"lr_sweep": {"rates": [1e-3, 3e-3], "frac": 0.2}} if sweep else {}))
    ctx = RunContext(device=torch.device("cpu"), data_dir=offline_dir, cache_dir=cache_dir, grid="w", progress=False)
    assert run_cell(cell, ctx, warm_only=True)["status"] == "ok"
    row = run_cell(cell, ctx)
    assert row["status"] == "ok", row.get("error")
    warm_first, cell_first = first[0], first[1]
    assert warm_first == cell_first
    packed = (ctx.plan(cell).corpus.data.ids.shape[1])
    assert (warm_first[1] == packed) is not sweep  # (the packed rows first, unless the cell sweeps)


_STEPS: list[tuple[int, int]] = []


def _steps(res):
    _STEPS.append((res.steps, len(res.loss_curve)))
    return res


def test_warm_up_stops_after_each_stage_when_the_cell_pretrains(monkeypatch):
    """With pretraining the run has two stages, each compiling its own graphs (another objective form,
    other shapes): the warm-up takes the pretraining stage's warm-up steps, jumps to the task stage,
    takes its warm-up steps, and stops."""
    from core.data import SeqSet, SpecialTokens
    from harness import objectives
    from harness import pretrain as pt
    from harness.budget import Budget
    from harness.model import LM, LMConfig
    from harness.train import train

    monkeypatch.setattr(torch, "compile", lambda module, **_kw: module)
    rng = np.random.default_rng(0)
    seqs = [[2] + rng.integers(6, 20, 10).tolist() + [3] for _ in range(32)]
    task = SeqSet.from_lists(seqs, [[i >= 9 for i in range(12)] for _ in seqs], 0)
    rows, _ = pt.pack(rng.integers(6, 20, 40 * 16), 16)
    special = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))
    obj = objectives.build("autoregressive", special, "chunked", loss_on="answer")
    cfg = TrainConfig(batch_size=4, progress=False, eval_points=4, compile=True, warm_only=True)
    res = train(model, obj, task, task, Budget.parse("tokens=1000"), cfg, torch.device("cpu"),
                pretrain=(pt.Corpus(rows, {"sources": [{"source": "toy"}]}), 0.6))
    assert [(s["stage"], s["steps"]) for s in res.stages] == [("pretrain", 2), ("task", 2)]
    assert res.loss_curve == []  # no dev check


def _worker(monkeypatch, code: str) -> None:
    """A stand-in warm-up worker (argv: job file, result file)."""
    monkeypatch.setattr(warm, "WORKER", [sys.executable, "-c", code])


def test_a_failed_warm_up_never_stops_the_grid(offline_dir, cache_dir, tmp_path, monkeypatch, capsys):
    """A worker that crashes (no result), one that reports the cell failed, one that hangs past its
    time limit: each is one line, and the real cells run, compile on their own and are ok."""
    monkeypatch.setattr(torch, "compile", lambda module, **_kw: module)  # the real cells' compilation: not the point
    _worker(monkeypatch, "raise MemoryError('planted crash')")
    rows = _grid(offline_dir, cache_dir, tmp_path / "a", "--compile", "--warm-compile", "2")
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["train"]["compile_warmed"] is False
    out = capsys.readouterr().out
    assert out.count("FAILED") == 1 and "MemoryError: planted crash" in out and "0/1 cells warmed" in out

    # the real worker, on a cell whose plan fails in it: the worker's own error, in one line
    cell = Cell(task="jsquad", mixer="no_such_mixer", objective="autoregressive", preset="tiny", budget="tokens=6000")
    spec = executors.ContextSpec(device="cpu", data_dir=str(offline_dir), cache_dir=str(cache_dir), grid="w")
    lines: list[str] = []
    monkeypatch.setattr(warm, "WORKER", [sys.executable, "-m", "harness.warm"])
    assert warm.warm_up([cell], spec, 1, say=lines.append) == set()
    assert any("FAILED" in line and "no_such_mixer" in line for line in lines), lines

    _worker(monkeypatch, "import time; time.sleep(60)")
    lines.clear()
    other = Cell(task="jsquad", mixer="attention", objective="diffusion", preset="tiny", budget="tokens=6000")
    t0 = time.perf_counter()
    assert warm.warm_up([cell, other], spec, 1, timeout_s=1.0, say=lines.append) == set()
    assert time.perf_counter() - t0 < 30  # the limit bounds the phase: not one worker's 60 s, nor two
    assert any("stopped at the warm phase's limit of 1 s" in line for line in lines), lines
    assert any("not warmed: attention x diffusion" in line for line in lines), lines  # never started


def test_rows_say_whether_their_cell_was_warmed_and_keys_do_not_change(offline_dir, cache_dir, tmp_path,
                                                                      monkeypatch, capsys):
    """A warmed cell's row says `compile_warmed: true`; the same cell unwarmed says false, an eager
    cell has no such field; the key (resume) is the same either way."""
    monkeypatch.setattr(torch, "compile", lambda module, **_kw: module)
    _worker(monkeypatch, "import json, sys; open(sys.argv[2], 'w').write(json.dumps({'status': 'ok', 'error': None}))")
    warmed = _grid(offline_dir, cache_dir, tmp_path / "a", "--compile", "--warm-compile", "1")
    cold = _grid(offline_dir, cache_dir, tmp_path / "b", "--compile")
    eager = _grid(offline_dir, cache_dir, tmp_path / "c")
    assert warmed[0]["train"]["compile_warmed"] is True and cold[0]["train"]["compile_warmed"] is False
    assert "compile_warmed" not in eager[0]["train"]
    assert warmed[0]["key"] == cold[0]["key"]
    capsys.readouterr()
    # resumed: a warm-compile rerun finds the cell done and warms nothing
    assert len(_grid(offline_dir, cache_dir, tmp_path / "a", "--compile", "--warm-compile", "1")) == 1
    assert "nothing to warm" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--executor", "ray"], "for the local executor"),
    (["--no-compile"], "--no-compile says not to compile"),
    (["--warm-compile", "-1"], ">= 1"),
])
def test_warm_compile_is_refused_where_it_cannot_work(offline_dir, cache_dir, tmp_path, extra, message):
    argv = [*GRID, "--data-dir", str(offline_dir), "--cache-dir", str(cache_dir), "--out", str(tmp_path),
            "--warm-compile", "2", *extra]
    with pytest.raises(ValueError, match=message):
        run_matrix.main(argv)
    assert not (tmp_path / "results").exists()  # refused before anything ran


def test_warm_compile_is_refused_under_torchrun():
    args = argparse.Namespace(warm_compile=2, executor="local", no_compile=False)
    ranks = DistEnv(rank=0, world_size=2, local_rank=0, backend="gloo")
    with pytest.raises(ValueError, match="torchrun"):
        executors.check_warm_compile(args, ranks, torch.device("cpu"))
    executors.check_warm_compile(args, DistEnv(), torch.device("cpu"))  # one process: fine


@pytest.mark.parametrize("device", ["meta", "mps", "xpu"])
def test_warm_compile_is_refused_on_a_device_other_than_cpu_or_cuda(device):
    """Its workers warm inductor's cpu or cuda cache only: on any other device the flag would do nothing
    and leave a slow grid unexplained, so it is refused in one line naming the device."""
    args = argparse.Namespace(warm_compile=2, executor="local", no_compile=False)
    with pytest.raises(ValueError, match=f"^--warm-compile runs on cpu or cuda, not {device}$"):
        executors.check_warm_compile(args, DistEnv(), torch.device(device))
    for fine in ("cpu", "cuda:0"):  # a cuda device object needs no GPU to be checked
        executors.check_warm_compile(args, DistEnv(), torch.device(fine))


class _NoContext:
    def build(self):
        return None


def test_a_worker_leaves_the_kernels_autotuning_to_the_real_cell(tmp_path, monkeypatch, torch_config):
    """J workers share one GPU: the Triton configs inductor benchmarks at a kernel's first launch would be
    timed under contention and cached for the timed cell. A worker runs its cell with inductor's autotune
    cache off (it is not part of the FX-graph cache key, so the graphs it writes still hit)."""
    import pickle

    import torch._inductor.config as inductor_config

    from harness import cell as cell_mod

    seen = []

    def run_cell(cell, ctx, warm_only=False):
        seen.append((warm_only, inductor_config.autotune_local_cache))
        return {"status": "ok", "error": None, "wall_s": 0.0}

    monkeypatch.setattr(cell_mod, "run_cell", run_cell)
    torch_config(inductor_config, "autotune_local_cache", True)  # the default; restored after the test
    monkeypatch.setattr(warm, "_exit_with_parent", lambda parent: None)
    job = tmp_path / "job.pkl"
    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=6000")
    job.write_bytes(pickle.dumps({"parent": os.getppid(), "threads": torch.get_num_threads(), "spec": _NoContext(),
                                  "cell": cell}))
    assert warm._worker(str(job), str(tmp_path / "out.json")) == 0
    assert seen == [(True, False)]
    assert "autotune_local_cache" in inductor_config._cache_config_ignore_prefix  # no FX-graph cache miss for it


def test_max_autotune_cells_are_warmed_one_at_a_time(tmp_path, monkeypatch):
    """max-autotune times its matmul templates while compiling and caches the choice for the timed cell:
    J workers sharing a GPU would choose under contention. Its cells are warmed one worker at a time."""
    _worker(monkeypatch, "import sys, json; open(sys.argv[2], 'w').write(json.dumps("
                         "{'status': 'ok', 'error': None, 'wall_s': 0.0}))")
    spec = executors.ContextSpec(device="cpu", data_dir=None, cache_dir=str(tmp_path), grid="w")
    for mode, at_a_time in (("default", 2), ("max-autotune", 1), ("max-autotune-no-cudagraphs", 1)):
        cells = [Cell(task="jsquad", mixer=m, objective="autoregressive", preset="tiny", budget="tokens=6000",
                      compile_mode=mode) for m in ("attention", "mamba")]
        lines: list[str] = []
        assert len(warm.warm_up(cells, spec, 2, say=lines.append)) == 2
        assert f"warm-compile: 2 cells, {at_a_time} at a time" in "\n".join(lines), (mode, lines)


def test_each_worker_gets_a_share_of_the_cpus_and_never_none(monkeypatch):
    """TORCHINDUCTOR_COMPILE_THREADS is the machine's CPUs shared among the J workers, at least one:
    more workers than CPUs must not ask inductor for a pool of 0 threads."""
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [warm.worker_threads(j) for j in (1, 2, 3, 16, 40)] == [16, 8, 5, 1, 1]
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # (os.cpu_count() may not know): one CPU assumed
    assert warm.worker_threads(4) == 1 and warm.worker_threads(1) == 1


class _FakeWorker:
    """A stand-in for a worker's Popen on a virtual clock: it 'runs' RUN_S seconds, then reads its job file
    (as late as a real worker may: after the next workers started) and writes an ok result."""
    RUN_S = 10.0

    def __init__(self, pool: "_FakePool", argv, cwd, env, stdout, stderr, stdin):
        self.pool, self.job, self.out, self.env = pool, Path(argv[-2]), Path(argv[-1]), env
        self.t0, self.returncode, self.killed = pool.clock[0], None, False
        pool.started.append(self)
        pool.most = max(pool.most, sum(w.returncode is None for w in pool.started))

    def poll(self):
        import json
        import pickle

        if self.returncode is None and self.pool.clock[0] - self.t0 >= self.RUN_S:
            job = pickle.loads(self.job.read_bytes())
            self.pool.jobs.append(job)
            self.out.write_text(json.dumps({"status": "ok", "error": None, "wall_s": 0.0}), encoding="utf-8")
            self.returncode = 0
        return self.returncode

    def kill(self):
        self.killed, self.returncode = True, -9

    def wait(self):
        return self.returncode


class _FakePool:
    """The workers warm_up starts (warm.subprocess.Popen and warm.time stood in for): a virtual clock that
    `time.sleep` advances, each worker's job as it read it, and the most workers alive at once."""

    def __init__(self, monkeypatch, sleep=None):
        import types

        self.clock, self.started, self.jobs, self.most = [0.0], [], [], 0

        def advance(s: float) -> None:
            self.clock[0] += s
        monkeypatch.setattr(warm, "time", types.SimpleNamespace(perf_counter=lambda: self.clock[0],
                                                                sleep=sleep or advance))
        monkeypatch.setattr(warm.subprocess, "Popen", lambda *a, **k: _FakeWorker(self, *a, **k))


def _cells(*modes: str) -> list[Cell]:
    """One cell per compile mode, each of another mixer (other keys)."""
    mixer_names = ("attention", "mamba", "wave_interference", "gated_context", "wave_modulation")
    return [Cell(task="jsquad", mixer=mixer_names[i], objective="autoregressive", preset="tiny",
                 budget="tokens=6000", compile_mode=mode) for i, mode in enumerate(modes)]


def test_warm_up_runs_j_workers_at_a_time_each_on_its_own_cell(monkeypatch):
    """Five cells, J = 2: never more than two workers alive at once (each starts a compile pool of its
    share of the CPUs), every cell warmed by a worker that read that cell's own job (two workers
    started together must not share a job file), each with the parent's torch threads and pid; the
    workers' environment is the grid's (TORCHINDUCTOR_CACHE_DIR: the cache the real cells read) plus
    their compile threads and the repository on PYTHONPATH."""
    pool = _FakePool(monkeypatch)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/the/grids/cache")
    monkeypatch.setattr(torch, "get_num_threads", lambda: warm.worker_threads(2) + 5)  # not the compile threads
    cells = _cells(*["default"] * 5)
    lines: list[str] = []
    assert warm.warm_up(cells, None, 2, say=lines.append) == {c.key() for c in cells}
    assert pool.most == 2 and len(pool.started) == 5
    assert sorted(j["cell"].key() for j in pool.jobs) == sorted(c.key() for c in cells)
    assert {(j["threads"], j["parent"]) for j in pool.jobs} == {(warm.worker_threads(2) + 5, os.getpid())}
    for w in pool.started:
        assert w.env["TORCHINDUCTOR_COMPILE_THREADS"] == str(warm.worker_threads(2))
        assert w.env["TORCHINDUCTOR_CACHE_DIR"] == "/the/grids/cache"
        assert w.env["PYTHONPATH"].split(os.pathsep)[0] == str(warm.ROOT)
    assert lines[-1].startswith("warm-compile: 5/5 cells warmed")


def test_one_max_autotune_cell_among_others_warms_them_one_at_a_time(monkeypatch):
    """max-autotune times its kernel choices while compiling: beside another worker it would time them
    under contention, whatever the other worker compiles. One such cell in the grid makes it one
    worker at a time."""
    pool = _FakePool(monkeypatch)
    cells = _cells("default", "max-autotune", "default")
    lines: list[str] = []
    assert len(warm.warm_up(cells, None, 2, say=lines.append)) == 3
    assert pool.most == 1 and "1 worker at a time, not 2" in lines[0]


def test_an_interrupted_warm_up_leaves_no_worker_running(monkeypatch):
    """Ctrl-C (KeyboardInterrupt, not an Exception) during the warm phase: it propagates, and every
    worker still running is killed first (a worker outliving the grid holds its CPUs and GPU memory)."""
    calls = []

    def interrupted(s: float) -> None:
        calls.append(s)
        if len(calls) == 2:
            raise KeyboardInterrupt
    pool = _FakePool(monkeypatch, sleep=interrupted)
    with pytest.raises(KeyboardInterrupt):
        warm.warm_up(_cells("default", "default", "default"), None, 2, say=lambda line: None)
    assert len(pool.started) == 2 and all(w.killed for w in pool.started)


def test_a_worker_runs_with_the_parents_torch_threads_and_watches_its_parent(tmp_path, monkeypatch, torch_config):
    """The worker sets the parent's torch thread count (part of the FX-graph cache key of CPU code: other
    threads, another key, a cache the real cell misses) and starts the watch that ends it with its
    parent, before it runs the cell."""
    import pickle

    import torch._inductor.config as inductor_config

    from harness import cell as cell_mod

    # (the worker turns inductor's autotune cache off: restored after the test)
    torch_config(inductor_config, "autotune_local_cache", inductor_config.autotune_local_cache)

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(warm, "_exit_with_parent", lambda parent: calls.append(("parent", parent)))
    monkeypatch.setattr(cell_mod, "run_cell", lambda cell, ctx, warm_only=False: calls.append(("run", warm_only))
                        or {"status": "ok", "error": None, "wall_s": 0.0})
    job = tmp_path / "job.pkl"
    cell = _cells("default")[0]
    job.write_bytes(pickle.dumps({"parent": 4242, "threads": 7, "spec": _NoContext(), "cell": cell}))
    assert warm._worker(str(job), str(tmp_path / "out.json")) == 0
    assert calls == [("parent", 4242), ("threads", 7), ("run", True)]
    # its one product for the parent: the result file, whole (written aside, then moved into place)
    assert json.loads((tmp_path / "out.json").read_text()) == {"status": "ok", "error": None, "wall_s": 0.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.pkl", "out.json"]


def test_a_stopped_worker_is_killed_and_reaped():
    """A worker stopped at the phase's limit is killed and waited for: no zombie process is left, and its
    exit code (killed: -9) is known."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    warm._stop(proc)
    assert proc.returncode == -9


def test_a_worker_ends_itself_when_its_parent_is_gone(monkeypatch):
    """The watch polls its parent's pid once a second and, when the parent is gone (the worker was
    re-parented), ends the whole process: os._exit from the watch thread (sys.exit would end the
    thread only, and the worker would compile on for a grid that no longer exists)."""
    import threading
    import types

    parent, exited, sleeps = 4242, threading.Event(), []
    codes: list[int] = []
    ppids = iter([parent, parent, 1])  # the parent dies after two polls: the worker now belongs to init
    monkeypatch.setattr(warm, "os", types.SimpleNamespace(getppid=lambda: next(ppids),
                                                          _exit=lambda code: codes.append(code) or exited.set()))
    monkeypatch.setattr(warm, "time", types.SimpleNamespace(sleep=sleeps.append))
    warm._exit_with_parent(parent)
    assert exited.wait(2.0), "the watch did not end the process"
    assert codes == [3] and sleeps == [1.0, 1.0]


def test_at_the_phases_limit_the_running_worker_is_killed_and_the_count_runs_on(monkeypatch):
    """Four cells, one worker at a time, 10 s each, a 15 s phase: the first is warmed, the second is
    killed at the limit (not left compiling beside the grid's cells), the last two are never started
    (named in one line); the lines count the cells as they are settled, 1 to 4, each with its own time."""
    pool = _FakePool(monkeypatch)
    cells = _cells("default", "default", "default", "default")
    lines: list[str] = []
    assert warm.warm_up(cells, None, 1, timeout_s=15.0, say=lines.append) == {cells[0].key()}
    assert len(pool.started) == 2 and not pool.started[0].killed and pool.started[1].killed
    assert [line.split(" ")[3] for line in lines[1:-1]] == ["[1/4]", "the", "[4/4]"], lines
    assert lines[1] == f"  warm [1/4] {cells[0].label()}: 10.2 s"  # its own wall time (polled every 0.2 s)
    assert lines[2].endswith(f"not warmed: {cells[2].label()}, {cells[3].label()} (they compile on their own)")
    assert lines[3].startswith(f"  warm [4/4] FAILED {cells[1].label()} after 5.2 s") and "limit of 15 s" in lines[3]


def test_one_worker_for_max_autotune_cells_is_not_news(monkeypatch):
    """With one worker already, a max-autotune cell changes nothing: no line about it."""
    _FakePool(monkeypatch)
    lines: list[str] = []
    assert len(warm.warm_up(_cells("max-autotune"), None, 1, say=lines.append)) == 1
    assert not any("worker at a time" in line for line in lines) and lines[0].startswith("warm-compile: 1 cells, 1 at")
