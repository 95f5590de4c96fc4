"""harness/spawn.py: what each spawned rank sets up and runs, and what comes back to the driver (rank 0's
row and its phases). The ranks run in this process with stand-ins for the process group, the context and
the cell (tests/test_distributed.py runs two real gloo ranks end to end)."""
from __future__ import annotations

import contextlib
import json
import os
import queue
import types
from pathlib import Path

import pytest
import torch

from core.files import temp_path
from harness import spawn
from harness.cell import TRAIN_SHARE, Cell, _train_config

CELL = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=6000")
ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_the_train_phase_ends_where_the_evaluation_starts_when_a_time_budget_overshoots():
    """A seconds= budget stops at the first step whose clock reaches it, so its last report is past 1
    (1.03 of the budget, say). The phase text stops at 100%; its fraction must stop at TRAIN_SHARE too,
    where 'evaluate answers' starts: past it, the spawned ranks' phases went backwards (0.503, then 0.5),
    as the two-rank test in tests/test_distributed.py saw under load."""
    from core.presets import get_preset

    sent: list[tuple[str, float]] = []
    ctx = type("Ctx", (), {"progress": False, "profile": False,
                           "phase": staticmethod(lambda text, frac: sent.append((text, frac)))})()
    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="seconds=1")
    tcfg = _train_config(cell, ctx, get_preset("tiny"), False)
    for f in (0.0, 0.5, 1.03):
        tcfg.report(f)
    assert tcfg.report(None) is True and len(sent) == 3  # the run's end reports nothing
    assert sent == [("train 0%", 0.0), ("train 50%", 0.5 * TRAIN_SHARE), ("train 100%", TRAIN_SHARE)]


class _Env:
    """A stand-in DistEnv that logs the collectives and the order of the rank's steps."""

    def __init__(self, log: list, rank: int, world_size: int):
        self.log, self.rank, self.world_size = log, rank, world_size
        self.is_main = rank == 0

    @contextlib.contextmanager
    def local_main_first(self):
        self.log.append("first: enter")
        yield
        self.log.append("first: exit")

    def check_same(self, value: str, what: str) -> None:
        self.log.append(f"check_same {value} ({what})")

    def barrier(self) -> None:
        self.log.append("barrier")


class _Spec:
    """A stand-in ContextSpec: its context plans the cell (logged) with training data named 'tokens'."""
    device = "cpu"

    def __init__(self, log: list):
        self.log = log

    def build(self, env, device):
        log = self.log

        class Ctx:
            phase = None

            def plan(self, cell):
                log.append(f"plan {cell.mixer}")
                return types.SimpleNamespace(data=types.SimpleNamespace(train="tokens"))
        return Ctx()


def _rank(monkeypatch, tmp_path: Path, rank: int, world_size: int, phases=None, fail: bool = False,
          log: list[str] | None = None):
    """Run `spawn._spawned_rank` in this process with the process group, the data hash and run_cell stood
    in for; returns (the environment init saw, the step log, what run_cell saw of the context)."""
    for key in ENV_KEYS:  # (the rank sets them in os.environ: restored after the test)
        monkeypatch.setenv(key, "unset")
    log = [] if log is None else log
    seen: dict = {}

    def init(device_arg):
        seen["env"] = {k: os.environ[k] for k in ENV_KEYS}
        seen["device_arg"] = device_arg
        return _Env(log, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])), torch.device("cpu")

    def run_cell(cell, ctx):
        log.append(f"run {cell.mixer}")
        seen["phase"] = ctx.phase
        if fail:
            raise RuntimeError("planted failure")
        return {"status": "ok", "rank": rank, "text": "日本語"} if rank == 0 else None

    monkeypatch.setattr(spawn.ddp, "init", init)
    monkeypatch.setattr(spawn.ddp, "shutdown", lambda: log.append("shutdown"))
    monkeypatch.setattr(spawn.ddp, "data_fingerprint", lambda data: f"hash({data})")
    monkeypatch.setattr(spawn, "run_cell", run_cell)
    spawn._spawned_rank(rank, world_size, 29517, CELL, _Spec(log), str(tmp_path / "row.json"), phases)
    return seen["env"], log, seen


@pytest.mark.parametrize("rank", [0, 2])
def test_a_spawned_rank_describes_itself_as_torchrun_would(monkeypatch, tmp_path, rank):
    """ddp.init reads the rank's place from the environment, as under torchrun: its own rank as both the
    global and the local rank (one node), the world size, and the driver's rendezvous on this host. A
    LOCAL_RANK other than its rank would put every rank on cuda:0 and have two ranks fill the
    tokenizer cache as local rank 0."""
    env, _, seen = _rank(monkeypatch, tmp_path, rank, 3)
    assert env == {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "3",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517"}
    assert seen["device_arg"] == "cpu"  # the spec's device


def test_a_spawned_rank_plans_first_on_local_rank_0_checks_the_data_and_waits_for_rank_0(monkeypatch, tmp_path):
    """The steps of a rank, in order: the plan inside local_main_first (local rank 0 fills the tokenizer
    cache, the others reuse it), every rank's training data compared (ranks on differently tokenised
    data would train on different batches), the cell, a barrier (no rank leaves while rank 0 writes the
    row) and the process group shut down. Rank 0's row comes back as JSON; the other ranks write none."""
    _, log, _ = _rank(monkeypatch, tmp_path, 0, 2)
    assert log == ["first: enter", "plan attention", "first: exit",
                   "check_same hash(tokens) (the tokenised training data)", "run attention", "barrier", "shutdown"]
    assert json.loads((tmp_path / "row.json").read_text(encoding="utf-8")) == {"status": "ok", "rank": 0,
                                                                                "text": "日本語"}
    assert not temp_path(tmp_path / "row.json").exists()  # written whole, then moved into place
    (tmp_path / "row.json").unlink()
    _, log, _ = _rank(monkeypatch, tmp_path, 1, 2)
    assert log[-2:] == ["barrier", "shutdown"] and not (tmp_path / "row.json").exists()


def test_a_failing_rank_still_leaves_the_process_group(monkeypatch, tmp_path):
    """A rank whose cell raises shuts its process group down on the way out (the error goes on to the
    driver's join), so a gloo or NCCL group is not left to time out."""
    log: list[str] = []
    with pytest.raises(RuntimeError, match="planted failure"):
        _rank(monkeypatch, tmp_path, 0, 2, fail=True, log=log)
    assert log[-2:] == ["run attention", "shutdown"] and not (tmp_path / "row.json").exists()


def test_only_rank_0_reports_its_phases(monkeypatch, tmp_path):
    """Rank 0's phases go to the driver's queue (rate-limited: a PhaseReporter); the other ranks run the
    same steps and report nothing, or the driver would see every phase world_size times, interleaved."""
    q: queue.Queue = queue.Queue()
    _, _, seen = _rank(monkeypatch, tmp_path, 0, 2, phases=q)
    seen["phase"]("train 10%", 0.05)
    assert q.get_nowait() == ("train 10%", 0.05)
    _, _, seen = _rank(monkeypatch, tmp_path, 1, 2, phases=q)
    assert seen["phase"] is None and q.empty()


class _Ranks:
    """What mp.start_processes returns, for a stand-in that runs no process: joined on the second try,
    when the ranks' last phases (put by then) are in the queue."""

    def __init__(self, args, last: list, on_last_join=lambda: None):
        self.args, self.last, self.joins, self.on_last_join = args, last, 0, on_last_join

    def join(self, timeout=None):
        self.joins += 1
        if self.joins < 2:
            return False
        self.on_last_join()
        for item in self.last:  # the ranks' final reports land as they exit
            self.args[5].put(item)
        return True


def test_spawn_cell_forwards_every_phase_and_returns_rank_0s_row(monkeypatch):
    """spawn_cell starts world_size ranks with their arguments, forwards rank 0's phases while they run
    and, once they are done, the phases that arrived at the end (the evaluation's last one among them),
    and returns the row rank 0 wrote. A phase is forwarded while the ranks run, not held until they end
    (the grid's progress line would stand still for the whole cell)."""
    started, got, while_running = {}, [], []

    def start_processes(fn, args, nprocs, start_method, join):
        started.update(fn=fn, args=args, nprocs=nprocs, start_method=start_method, join=join)
        Path(args[4]).write_text(json.dumps({"status": "ok", "key": CELL.key()}), encoding="utf-8")
        args[5].put(("prepare", 0.0))
        return _Ranks(args, [("evaluate answers 5/5", 0.8), ("evaluate ppl 5/5", 1.0)],
                      on_last_join=lambda: while_running.extend(got))

    monkeypatch.setattr(spawn, "mp", types.SimpleNamespace(get_context=lambda method: types.SimpleNamespace(
        Queue=queue.Queue), start_processes=start_processes))
    monkeypatch.setattr(spawn.ddp, "free_port", lambda: 29517)
    spec = object()
    row = spawn.spawn_cell(CELL, spec, 3, phase=lambda text, frac: got.append((text, frac)))
    assert row == {"status": "ok", "key": CELL.key()}
    assert while_running == [("prepare", 0.0)]
    assert got == [("prepare", 0.0), ("evaluate answers 5/5", 0.8), ("evaluate ppl 5/5", 1.0)]
    assert started["fn"] is spawn._spawned_rank and started["nprocs"] == 3 and started["start_method"] == "spawn"
    assert started["args"][:4] == (3, 29517, CELL, spec) and started["join"] is False
