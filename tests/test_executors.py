"""The executors' pieces that need no cluster: the resources a Ray task asks for, how many cells a
cluster runs at once, where a row says it ran, the context a worker rebuilds, and the local loop's
answers to a lost GPU. A stand-in for Ray records what the driver asks of it (no Ray needed: these run
where Ray is not installed; tests/test_ray.py runs the real thing)."""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness import executors
from harness.cell import Cell
from harness.distributed import DistEnv
from harness.executors import ContextSpec, LocalExecutor, RayExecutor, _resources, _slots, _where
from harness.warm import TIMEOUT_S
from core.schema import GRID_KEYS, ROW_KEYS


def _cells(n: int = 2) -> list[Cell]:
    return [Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=3000",
                 seed=s) for s in range(n)]


class _Ref:
    def __init__(self, cell):
        self.cell = cell


class _Board:
    """A board actor's handle: `drain.remote()` gives a reference that `get` answers with no phases."""

    def __init__(self, name: str):
        self.name = name
        self.drain = SimpleNamespace(remote=lambda: "drain")

    def __eq__(self, other):
        return isinstance(other, _Board) and other.name == self.name


class _RecordingRay:
    """What RayExecutor._run asks of Ray, recorded: each `ray.remote(...)` call's options, each task's
    arguments. Tasks finish in submission order; a cell whose seed is in `fail` raises `fail[seed]`."""

    def __init__(self, resources: dict[str, float], fail: dict[int, BaseException] | None = None):
        self.resources, self.fail = resources, fail or {}
        self.options: list[dict] = []
        self.submitted: list[tuple] = []
        self.killed: list = []
        self.cancelled: list = []
        self.phases: list[list] = []  # what successive drains of the board return

    def remote(self, **kw):
        self.options.append(kw)

        def wrap(target):
            ray = self
            if isinstance(target, type):  # the phase board actor: drained empty
                class _Actor:
                    @staticmethod
                    def remote():
                        return _Board(target.__name__)
                return _Actor

            class _Task:
                @staticmethod
                def remote(cell, *args):
                    ray.submitted.append((cell, *args))
                    return _Ref(cell)
            return _Task
        return wrap

    def cluster_resources(self):
        return dict(self.resources)

    def nodes(self):
        return [{"Alive": True}]

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref, timeout=None):
        if ref == "drain":
            return self.phases.pop(0) if self.phases else []
        if ref.cell.seed in self.fail:
            raise self.fail[ref.cell.seed]
        return {"key": ref.cell.key(), "status": "ok", "error": None}

    def cancel(self, ref, force=False):
        self.cancelled.append((ref.cell.seed, force))

    def kill(self, actor):
        self.killed.append(actor)


def _ctx(tmp_path: Path, progress: bool = False) -> SimpleNamespace:
    return SimpleNamespace(device="cpu", data_dir=None, cache_dir=Path(tmp_path), grid="t", progress=progress,
                           profile=False, dist=DistEnv())


def _args(**kw) -> SimpleNamespace:
    base = dict(gpus_per_cell=None, cpus_per_cell=1.0, device="auto", no_progress=True)
    return SimpleNamespace(**{**base, **kw})


def _run(ray, tmp_path, progress: bool = False, **kw):
    ex = RayExecutor(_args(**kw))
    return ex, list(ex._run(ray, _cells(), _ctx(tmp_path, progress)))


@pytest.mark.parametrize("gpus", [8, 1])
def test_a_cluster_with_gpus_gives_each_cell_one_gpu_in_a_process_of_its_own(tmp_path, capsys, gpus):
    """Default --gpus-per-cell on a cluster with GPUs (one is enough): 1 GPU a cell, on CUDA, one rank, no
    retry, and a worker that exits after its cell (`max_calls=1`: a sticky CUDA error must not reach the
    next cell)."""
    ray = _RecordingRay({"CPU": 16.0, "GPU": float(gpus)})
    _, out = _run(ray, tmp_path)
    assert [r["status"] for _, r in out] == ["ok", "ok"]
    assert ray.options[0] == {"num_gpus": 1.0, "num_cpus": 1.0, "max_retries": 0, "max_calls": 1}
    spec, world, board = ray.submitted[0][1:]
    assert spec.device == "cuda" and world == 1 and board is None  # no progress shown: no board
    assert len(ray.options) == 1  # ... and no actor made for it
    line = capsys.readouterr().out
    assert f"ray: 2 cells submitted (1 GPU, 1 CPU each); cluster: {gpus} GPU, 16 CPU, 1 node(s)" in line


@pytest.mark.parametrize("device, resources", [("cpu", {"CPU": 4.0, "GPU": 2.0}), ("auto", {"CPU": 4.0})])
def test_cells_hold_no_gpu_when_the_device_says_cpu_or_the_cluster_has_none(tmp_path, device, resources):
    """`--device cpu` keeps cells off a cluster's GPUs; a cluster without GPUs runs CPU cells. A CPU task's
    worker is reused (no `max_calls`): its prepared task data serves the next cell."""
    ray = _RecordingRay(resources)
    _run(ray, tmp_path, device=device, cpus_per_cell=2.0)
    assert ray.options[0] == {"num_gpus": 0.0, "num_cpus": 2.0, "max_retries": 0}
    assert ray.submitted[0][1].device == "cpu" and ray.submitted[0][2] == 1


@pytest.mark.parametrize("gpus, world", [(2.0, 2), (4.0, 4), (1.0, 1), (0.5, 1), (2.5, 1)])
def test_a_whole_number_of_gpus_above_one_trains_the_cell_on_that_many_ranks(tmp_path, gpus, world):
    """G >= 2 whole GPUs: data-parallel on G ranks; one GPU, a fraction (cells packed onto a GPU) or a
    non-integer above 2: one rank."""
    ray = _RecordingRay({"CPU": 16.0, "GPU": 8.0})
    _run(ray, tmp_path, gpus_per_cell=gpus)
    assert ray.options[0]["num_gpus"] == gpus and ray.options[0]["max_calls"] == 1
    assert [s[2] for s in ray.submitted] == [world, world] and ray.submitted[0][1].device == "cuda"


def test_ranks_per_cell_are_named_in_the_submit_line(tmp_path, capsys):
    _run(_RecordingRay({"CPU": 16.0, "GPU": 8.0}), tmp_path, gpus_per_cell=2.0)
    assert "(2 GPU, 1 CPU each, 2 ranks per cell)" in capsys.readouterr().out


def test_the_phase_board_takes_no_cpu_and_is_killed_when_the_grid_ends(tmp_path):
    """The board is an actor with `num_cpus=0` (it never takes a cell's slot), handed to every task, and
    killed after the last cell (it would outlive the grid on a long-running cluster)."""
    ray = _RecordingRay({"CPU": 2.0})
    _run(ray, tmp_path, progress=True)
    assert ray.options[1] == {"num_cpus": 0}
    assert [s[3] for s in ray.submitted] == [_Board("PhaseBoard")] * 2
    assert ray.killed == [_Board("PhaseBoard")]


def test_a_cell_whose_ray_worker_died_gets_one_failed_row_and_the_grid_goes_on(tmp_path):
    """A worker that died (killed, out of host memory) makes `ray.get` raise: its cell gets one whole failed
    row, the other cells their own, and nothing is left pending. The row's error is the message's first
    line; its traceback the last 2,000 characters, where a long Ray error names the cause."""
    message = "The worker died unexpectedly while executing this task (SIGKILL)\n" + "x" * 3000 + " the cause"
    ray = _RecordingRay({"CPU": 2.0}, fail={1: RuntimeError(message)})
    cells = _cells(3)
    out = list(RayExecutor(_args(device="cpu"))._run(ray, cells, _ctx(tmp_path)))
    assert [c.seed for c, _ in out] == [0, 1, 2]  # one row per cell, the dead one's included
    rows = {c.seed: r for c, r in out}
    assert rows[0]["status"] == rows[2]["status"] == "ok"
    dead = rows[1]
    assert dead["status"] == "failed" and dead["key"] == cells[1].key() and dead["seed"] == 1
    assert dead["error"] == "RuntimeError: The worker died unexpectedly while executing this task (SIGKILL)"
    assert dead["traceback"] == message[-2000:] and len(dead["traceback"]) == 2000
    assert all(k in dead for k in ROW_KEYS + GRID_KEYS + ("world_size",))  # a whole grid row, like any other
    assert ray.cancelled == []  # nothing left pending


@pytest.mark.parametrize("resources, gpus, cpus, slots", [
    ({"CPU": 16.0, "GPU": 8.0}, 1.0, 1.0, 8),  # the scarcer resource decides
    ({"CPU": 4.0, "GPU": 8.0}, 1.0, 1.0, 4),
    ({"CPU": 16.0, "GPU": 8.0}, 0.0, 2.0, 8),  # a CPU cell: CPUs alone
    ({"CPU": 16.0, "GPU": 0.6}, 0.2, 0.0, 3),  # 0.6 / 0.2 = 2.9999999999999996: three, not two
    ({"CPU": 1.0}, 0.0, 2.0, 1),  # none fits now: one (nodes can join; PoolProgress raises it)
    ({"CPU": 8.0}, 0.0, 0.0, 1),  # nothing held: one
    ({"GPU": 4.0}, 1.0, 0.5, 1),  # a kind the cluster does not list, it has none of
    ({"CPU": 8.0}, 0.25, 1.0, 1),
])
def test_slots_are_the_cells_the_cluster_fits_at_once(resources, gpus, cpus, slots):
    assert _slots(SimpleNamespace(cluster_resources=lambda: resources), gpus, cpus) == slots


def test_the_cluster_line_counts_gpus_cpus_and_live_nodes():
    ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 12.0, "GPU": 0.5},
                          nodes=lambda: [{"Alive": True}, {"Alive": False}, {"Alive": True}, {}])
    assert _resources(ray) == "0.5 GPU, 12 CPU, 2 node(s)"


def test_a_rows_executor_field_says_where_and_when_it_ran(monkeypatch):
    monkeypatch.setattr(executors.time, "time", lambda: 1700000123.45678)
    assert _where("local", 1700000000.12345) == {"kind": "local", "host": socket.gethostname(),
                                                 "pid": os.getpid(), "start": 1700000000.123,
                                                 "end": 1700000123.457}


def test_a_workers_context_has_absolute_paths_no_bar_and_logs_on_rank_0_only(tmp_path, monkeypatch, capsys):
    """Workers do not share the driver's working directory (paths absolute); a worker shows no bar of
    its own; a non-zero rank of a data-parallel cell prints nothing (one log, not one per rank). A profiled
    grid (`--profile-step`) profiles in its workers too."""
    monkeypatch.chdir(tmp_path)
    ctx = SimpleNamespace(data_dir="data", cache_dir="cache", grid="g", profile=True)
    spec = ContextSpec.of(ctx, "cpu")
    assert spec == ContextSpec(device="cpu", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"),
                               grid="g", profile=True)
    no_data = SimpleNamespace(data_dir=None, cache_dir="c", grid="g", profile=False)
    assert ContextSpec.of(no_data, "cpu").data_dir is None
    built = spec.build()
    assert built.profile is True
    assert built.device == torch.device("cpu") and built.data_dir == tmp_path / "data"
    assert built.cache_dir == tmp_path / "cache" and built.grid == "g" and built.progress is False
    built.log("rank 0 speaks")
    assert spec.build(device=torch.device("meta")).device == torch.device("meta")
    other = spec.build(DistEnv(rank=1, world_size=2, local_rank=1))
    other.log("rank 1 is quiet")
    out = capsys.readouterr().out
    assert "rank 0 speaks" in out and "rank 1 is quiet" not in out


def test_the_ray_executor_refuses_torchrun_and_runs_nothing_for_no_cells(tmp_path):
    ctx = _ctx(tmp_path)
    assert list(RayExecutor(_args()).run([], ctx)) == []
    ctx.dist = DistEnv(rank=0, world_size=2, local_rank=0)
    with pytest.raises(ValueError, match="not launched with torchrun"):
        list(RayExecutor(_args()).run(_cells(), ctx))


def test_a_lost_gpu_stops_the_local_grid_after_that_cells_row(tmp_path, monkeypatch):
    """A cell that leaves the device unusable in this process (ctx.broken) still yields its row (it is
    written); the grid then stops with a one-line 'rerun' error instead of failing every later cell."""
    ran = []

    def cell_run(cell, ctx):
        ran.append(cell.seed)
        ctx.broken = "CUDA error: an illegal memory access"
        return {"key": cell.key(), "status": "failed"}

    monkeypatch.setattr(executors, "run_cell", cell_run)
    monkeypatch.setattr(executors, "warm_up", lambda *a, **k: pytest.fail("args without --warm-compile warm nothing"))
    ctx = SimpleNamespace(device=torch.device("cpu"), progress=False, dist=DistEnv(), broken=None, phase=None)
    gen = LocalExecutor(SimpleNamespace()).run(_cells(3), ctx)  # (args built by hand: no executor flags)
    cell, row = next(gen)
    assert cell.seed == 0 and row["executor"]["kind"] == "local"
    with pytest.raises(RuntimeError, match=r"after CUDA error: an illegal memory access; rerun the same command"):
        next(gen)
    assert ran == [0]


def test_the_executor_flags_parse_with_their_defaults_and_metavars():
    p = argparse.ArgumentParser()
    executors.add_arguments(p)
    a = p.parse_args([])
    assert (a.executor, a.ray_address, a.gpus_per_cell, a.cpus_per_cell, a.warm_compile, a.warm_timeout) == \
        ("local", None, None, 1.0, 0, TIMEOUT_S)
    a = p.parse_args(["--executor", "ray", "--ray-address", "auto", "--gpus-per-cell", "0.5", "--cpus-per-cell", "4",
                      "--warm-compile", "3", "--warm-timeout", "90"])
    assert (a.executor, a.ray_address, a.gpus_per_cell, a.cpus_per_cell, a.warm_compile, a.warm_timeout) == \
        ("ray", "auto", 0.5, 4.0, 3, 90.0)
    with pytest.raises(SystemExit):
        p.parse_args(["--executor", "dask"])
    text = " ".join(p.format_help().split())
    assert "--warm-compile J" in text and "--warm-timeout S" in text


def test_ray_workers_import_this_repository_first():
    first = executors.ray_runtime_env()["env_vars"]["PYTHONPATH"].split(os.pathsep)[0]
    assert (Path(first) / "harness" / "executors.py").resolve() == Path(executors.__file__).resolve()


class _FakeRayModule:
    """`import ray` inside the executor: records init/shutdown and the gets `_settle` makes."""

    def __init__(self, initialized: bool = False, get_raises: BaseException | None = None):
        self.initialized, self.get_raises = initialized, get_raises
        self.inits: list[dict] = []
        self.shutdowns = 0
        self.gets: list[tuple] = []

    def is_initialized(self):
        return self.initialized

    def init(self, **kw):
        self.inits.append(kw)

    def shutdown(self):
        self.shutdowns += 1

    def get(self, ref, timeout=None):
        self.gets.append((ref, timeout))
        if self.get_raises is not None:
            raise self.get_raises


@pytest.mark.parametrize("initialized", [False, True])
def test_the_ray_executor_starts_and_stops_only_a_ray_it_started(tmp_path, monkeypatch, initialized):
    """No cluster yet: it joins `--ray-address` with the repository on the workers' path, forwards the
    workers' logs unless --no-progress asks for a quiet run, and shuts Ray down after the grid. A Ray
    the caller started (a notebook, tests/test_ray.py) is left running."""
    fake = _FakeRayModule(initialized)
    monkeypatch.setitem(sys.modules, "ray", fake)
    seen = []
    monkeypatch.setattr(RayExecutor, "_run", lambda self, ray, cells, ctx: iter(seen.append(ray) or [(cells[0], {})]))
    ex = RayExecutor(_args(ray_address="auto", no_progress=False))
    assert [c for c, _ in ex.run(_cells(1), _ctx(tmp_path))] == _cells(1) and seen == [fake]
    if initialized:
        assert fake.inits == [] and fake.shutdowns == 0
    else:
        assert fake.inits == [{"address": "auto", "runtime_env": executors.ray_runtime_env(), "log_to_driver": True}]
        assert fake.shutdowns == 1
        list(RayExecutor(_args(ray_address=None, no_progress=True)).run(_cells(1), _ctx(tmp_path)))
        assert fake.inits[1] == {"address": None, "runtime_env": executors.ray_runtime_env(), "log_to_driver": False}


def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RuntimeError, match=r"needs Ray: pip install -r requirements-ray.txt"):
        list(RayExecutor(_args()).run(_cells(), _ctx(tmp_path)))


@pytest.mark.parametrize("exc, timeout", [
    (TimeoutError("late"), True),
    (type("GetTimeoutError", (Exception,), {})("late"), True),  # older Ray's, not a TimeoutError
    (RuntimeError("ActorDiedError"), False),
])
def test_a_timeout_is_told_from_a_lost_board(exc, timeout):
    assert executors._is_timeout(exc) is timeout


@pytest.fixture
def worker(monkeypatch):
    """ray_cell's surroundings: a fresh context cache, `import ray` answered by a recording stand-in, a
    cell body that reports two phases, and a board whose `update.remote` records what it is sent."""
    fake = _FakeRayModule(initialized=True)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(executors, "_CONTEXTS", {})
    contexts, spawned, sent = [], [], []

    def body(cell, ctx):
        contexts.append(ctx)
        ctx.phase("prepare", 0.0)
        ctx.phase("train 10%", 0.1)
        return {"key": cell.key(), "status": "ok"}

    monkeypatch.setattr(executors, "run_cell", body)
    monkeypatch.setattr(executors, "spawn_cell",
                        lambda cell, spec, world, phase=None: spawned.append((cell, spec, world, phase)) or {})
    board = SimpleNamespace(update=SimpleNamespace(remote=lambda *a: sent.append(a) or f"handle {len(sent)}"))
    return SimpleNamespace(ray=fake, contexts=contexts, spawned=spawned, sent=sent, board=board)


def test_a_one_rank_ray_task_runs_its_cell_here_and_waits_for_its_last_phase(worker, tmp_path):
    """One rank (the default): the cell runs in the task's process, on a context built once per worker
    and reused by its next cell; its phases go to the board, and before returning the task waits (at most
    1 s) for the board to have taken the last one, so the driver, draining after the row, sees it."""
    spec = ContextSpec(device="cpu", data_dir=None, cache_dir=str(tmp_path), grid="t")
    cell = _cells(1)[0]
    row = executors.ray_cell(cell, spec, board=worker.board)
    assert row["status"] == "ok" and row["executor"]["kind"] == "ray" and worker.spawned == []
    assert worker.sent == [(cell.key(), "prepare", 0.0), (cell.key(), "train 10%", 0.1)]
    assert worker.ray.gets == [("handle 2", 1.0)]
    executors.ray_cell(cell, spec, 1)  # no board: phases go nowhere, nothing to wait for
    assert worker.contexts[0] is worker.contexts[1] and len(worker.sent) == 2 and len(worker.ray.gets) == 1


def test_a_ray_task_whose_board_broke_does_not_wait_for_it(worker, tmp_path):
    def gone(*_a):
        raise RuntimeError("ActorDiedError")

    spec = ContextSpec(device="cpu", data_dir=None, cache_dir=str(tmp_path), grid="t")
    row = executors.ray_cell(_cells(1)[0], spec, 1, SimpleNamespace(update=SimpleNamespace(remote=gone)))
    assert row["status"] == "ok" and worker.ray.gets == []


def test_a_multi_gpu_ray_task_spawns_its_ranks_and_forwards_rank_0s_phases(worker, tmp_path):
    spec = ContextSpec(device="cuda", data_dir=None, cache_dir=str(tmp_path), grid="t")
    cell = _cells(1)[0]
    row = executors.ray_cell(cell, spec, 2, worker.board)
    (got_cell, got_spec, world, phase), = worker.spawned
    assert (got_cell, got_spec, world) == (cell, spec, 2) and worker.contexts == []
    assert isinstance(phase, executors.PhaseReporter) and row["executor"]["kind"] == "ray"


def test_waiting_for_the_board_never_fails_the_cell(monkeypatch):
    fake = _FakeRayModule(get_raises=RuntimeError("ActorDiedError"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    executors._settle("ref")
    assert fake.gets == [("ref", 1.0)]


class _Rank:
    """A data-parallel rank's DistEnv stand-in that counts its barriers."""

    def __init__(self, rank: int):
        self.rank, self.active, self.barriers = rank, True, 0

    def barrier(self):
        self.barriers += 1


class _Bar:
    """GridProgress's stand-in: what the local loop tells its bar, in order."""

    calls: list = []

    def __init__(self, cells, enabled=True):
        self.calls = _Bar.calls = [("new", len(cells), enabled)]

    def start(self, cell):
        self.calls.append(("start", cell.seed))

    def finish(self, cell):
        self.calls.append(("finish", cell.seed))

    def phase(self, text, frac):
        pass

    def close(self):
        self.calls.append(("close",))


@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_every_rank_runs_each_cell_then_waits_and_rank_0_alone_yields_rows(monkeypatch, rank):
    """The other ranks wait at a barrier after each cell while rank 0 evaluates and writes; a non-zero
    rank's run_cell returns None and it yields nothing (one writer). The bar starts and finishes each
    cell, and closes."""
    monkeypatch.setattr(executors, "GridProgress", _Bar)
    monkeypatch.setattr(executors, "run_cell",
                        lambda cell, ctx: {"key": cell.key(), "status": "ok"} if ctx.dist.rank == 0 else None)
    dist = _Rank(rank)
    ctx = SimpleNamespace(device=torch.device("cpu"), progress=True, dist=dist, broken=None, phase=None)
    out = list(LocalExecutor(SimpleNamespace(warm_compile=0)).run(_cells(2), ctx))
    assert dist.barriers == 2
    if rank == 0:
        assert [c.seed for c, _ in out] == [0, 1] and {r["executor"]["kind"] for _, r in out} == {"torchrun"}
    else:
        assert out == []
    assert _Bar.calls == [("new", 2, True), ("start", 0), ("finish", 0), ("start", 1), ("finish", 1), ("close",)]


def test_the_local_bar_closes_when_a_cell_raises(monkeypatch):
    monkeypatch.setattr(executors, "GridProgress", _Bar)

    def boom(cell, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(executors, "run_cell", boom)
    ctx = SimpleNamespace(device=torch.device("cpu"), progress=False, dist=DistEnv(), broken=None, phase=None)
    with pytest.raises(KeyboardInterrupt):
        list(LocalExecutor(SimpleNamespace(warm_compile=0)).run(_cells(2), ctx))
    assert _Bar.calls == [("new", 2, False), ("start", 0), ("close",)]


@pytest.mark.parametrize("jobs, active, warms", [(2, False, True), (0, False, False), (2, True, False)])
def test_the_local_grid_warms_its_compiled_cells_first(monkeypatch, jobs, active, warms):
    """`--warm-compile J` (one process only: refused under torchrun) hands the cells that compile to
    warm_up with J workers and --warm-timeout, adds what it warmed to what the context already had, and
    prints its lines flushed (they show while the workers compile, also when stdout is a log file)."""
    calls, printed = [], []

    def warm(cells, spec, j, timeout, say):
        calls.append(([c.seed for c in cells], spec, j, timeout))
        say("warm: 1 compiled")
        return {"k1"}

    monkeypatch.setattr(executors, "warm_up", warm)
    monkeypatch.setattr(executors, "print", lambda *a, **k: printed.append((a, k)), raising=False)
    monkeypatch.setattr(executors, "run_cell", lambda cell, ctx: {"key": cell.key()})
    monkeypatch.setattr(Cell, "compiles", lambda self, device: self.seed != 1)
    dist = _Rank(0) if active else DistEnv()
    ctx = SimpleNamespace(device=torch.device("cpu"), progress=False, dist=dist, broken=None, phase=None,
                          warmed={"k0"}, data_dir=None, cache_dir="c", grid="g", profile=False)
    list(LocalExecutor(SimpleNamespace(warm_compile=jobs, warm_timeout=42.0)).run(_cells(3), ctx))
    if not warms:
        assert calls == [] and ctx.warmed == {"k0"}
        return
    (seeds, spec, j, timeout), = calls
    assert seeds == [0, 2] and spec.device == "cpu" and (j, timeout) == (2, 42.0)
    assert ctx.warmed == {"k0", "k1"} and printed == [(("warm: 1 compiled",), {"flush": True})]


@pytest.mark.parametrize("jobs, refused", [(1, False), (0, False), (-1, True)])
def test_one_warm_up_worker_is_a_valid_warm_compile(jobs, refused):
    """`--warm-compile 1` (one worker, compilations one after another) is the smallest valid value; 0 is
    off; a negative count is refused in one line naming it."""
    args = argparse.Namespace(warm_compile=jobs, executor="local", no_compile=False)
    if refused:
        with pytest.raises(ValueError, match=r"^--warm-compile takes a number of worker processes >= 1 \(0: off\), "
                                             r"got -1$"):
            executors.check_warm_compile(args, DistEnv(), torch.device("cpu"))
    else:
        executors.check_warm_compile(args, DistEnv(), torch.device("cpu"))


class _Pool:
    """PoolProgress's stand-in: what the Ray driver tells its bar, in order."""

    def __init__(self, cells, slots, enabled=True):
        self.calls = [("new", len(cells), slots)]

    def update(self, key, text, frac):
        self.calls.append(("update", key, text))

    def finish(self, key):
        self.calls.append(("finish", key))

    def draw(self):
        self.calls.append(("draw",))

    def close(self):
        self.calls.append(("close",))


def test_the_ray_driver_feeds_phases_before_finishes_and_redraws_between_them(tmp_path, monkeypatch):
    """A cell's last phases reach the bar before its finish; the bar is redrawn after each finish and
    after each wait (elapsed time moves), and closed at the end."""
    monkeypatch.setattr(executors, "PoolProgress", _Pool)
    ray = _RecordingRay({"CPU": 2.0})
    k0, k1 = (c.key() for c in _cells())
    ray.phases = [[(k0, "evaluate ppl", 0.95)]]
    ex, out = _run(ray, tmp_path, progress=True)
    assert len(out) == 2 and ex.progress.calls == [
        ("new", 2, 2), ("update", k0, "evaluate ppl"), ("finish", k0), ("draw",), ("draw",),
        ("finish", k1), ("draw",), ("draw",), ("close",)]


def test_an_interrupted_ray_grid_cancels_its_pending_cells_and_kills_the_board(tmp_path, monkeypatch):
    """Ctrl-C (the generator closed at a yield): the cells still pending are cancelled with force (they
    would run on, unobserved, on a shared cluster), the board killed and the bar closed."""
    monkeypatch.setattr(executors, "PoolProgress", _Pool)
    ray = _RecordingRay({"CPU": 2.0})
    ex = RayExecutor(_args())
    gen = ex._run(ray, _cells(3), _ctx(tmp_path, progress=True))
    cell, _ = next(gen)
    gen.close()
    assert cell.seed == 0 and ray.cancelled == [(1, True), (2, True)]
    assert ray.killed == [_Board("PhaseBoard")] and ex.progress.calls[-1] == ("close",)
