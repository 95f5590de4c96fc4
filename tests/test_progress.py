"""The grid's progress line: the running cell's phase and the time the grid has left; for cells running
concurrently (Ray), the running cells' phases as workers report them (PoolProgress, PhaseReporter)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness.progress import GridProgress, PhaseReporter, PoolProgress, fmt_duration, stage


@dataclass(eq=False)
class FakeCell:
    objective: str
    name: str

    def label(self) -> str:
        return self.name


def test_remaining_time_comes_from_finished_cells_of_the_same_objective():
    now = [0.0]
    cells = [FakeCell("autoregressive", "a"), FakeCell("diffusion", "b"), FakeCell("autoregressive", "c"),
             FakeCell("diffusion", "d")]
    p = GridProgress(cells, enabled=False, clock=lambda: now[0])
    p.start(cells[0])
    assert p.remaining() is None and p.eta_text() == "? left"  # nothing finished: no guess
    now[0] = 10.0
    p.finish(cells[0])
    assert p.remaining() == pytest.approx(30.0)  # every cell guessed at the only mean there is: 10 s
    p.start(cells[1])
    now[0] = 50.0
    p.finish(cells[1])  # a diffusion cell took 40 s
    p.start(cells[2])
    now[0] = 54.0
    # running AR cell: 10 - 4 s left; the diffusion cell after it: 40 s
    assert p.remaining() == pytest.approx(6.0 + 40.0)
    p.phase("train 50%", 0.25)
    assert p.text == "train 50%"
    now[0] = 80.0  # overran its estimate: the running cell counts 0, not a negative time
    assert p.remaining() == pytest.approx(40.0)
    p.close()


def test_phases_show_in_the_bar(capsys):
    cells = [FakeCell("autoregressive", "attention x autoregressive (seed 0)")]
    p = GridProgress(cells, enabled=True)
    p.start(cells[0])
    p.phase("evaluate answers 32/100", 0.6)
    assert p.bar.n == pytest.approx(0.6)
    assert "attention x autoregressive (seed 0): evaluate answers 32/100" in str(p.bar)
    p.finish(cells[0])
    p.close()


def test_durations_read_like_a_clock():
    assert fmt_duration(75) == "01:15" and fmt_duration(3725) == "1:02:05" and fmt_duration(-3) == "00:00"


def test_pool_bar_counts_running_fractions_and_lists_running_phases():
    now = [0.0]
    cells = {k: FakeCell("autoregressive", f"attention x ar (seed {k})") for k in "abc"}
    p = PoolProgress(cells, slots=2, enabled=False, clock=lambda: now[0])
    assert p.postfix() == "? left]" and p.count() == 0
    p.update("a", "prepare", 0.0)
    p.update("b", "train 40%", 0.2)
    p.update("a", "train 5%", 0.025)
    p.update("a", "train 10%", 0.05)  # (the same stage again: on record once)
    assert p.count() == pytest.approx(0.25)
    assert p.postfix() == "? left] 2 running: attention x ar (seed a): train 10%; attention x ar (seed b): train 40%"
    p.update("b", "evaluate answers 3/4", 1.0)  # a running cell never counts whole: only its finish does
    assert p.count() == pytest.approx(0.05 + 0.999)
    now[0] = 10.0
    p.finish("b")
    p.update("b", "evaluate ppl 4/4", 0.99)  # a late update of a finished cell changes nothing shown
    assert p.count() == pytest.approx(1.05) and "seed b" not in p.postfix()
    assert p.stages["b"] == ["train", "evaluate answers", "evaluate ppl"]  # ... but its stage is on record
    assert p.stages["a"] == ["prepare", "train"]
    p.update("zzz", "train 1%", 0.0)  # a key not of this grid: ignored
    assert "zzz" not in p.stages and len(p.running) == 1


def _pool_after_a_10s_cell(keys: str) -> tuple[PoolProgress, list[float]]:
    """A 2-slot pool of autoregressive cells `keys`, of which a and b started at 0 s and a finished at
    10 s (so a cell takes 10 s); returns the pool and its clock."""
    now = [0.0]
    p = PoolProgress({k: FakeCell("autoregressive", k) for k in keys}, slots=2, enabled=False, clock=lambda: now[0])
    p.update("a", "prepare", 0.0)
    p.update("b", "prepare", 0.0)
    now[0] = 10.0
    p.finish("a")
    return p, now


def test_pool_eta_plays_the_queue_forward_on_the_slots():
    p, now = _pool_after_a_10s_cell("abcdef")  # 10 s per cell; b has run 10 s (0 left); c, d, e, f wait for 2 slots
    assert p.remaining() == pytest.approx(20.0)  # 4 cells x 10 s / 2 slots, not 4 x 10 s
    p.finish("b")
    for k in "cde":
        p.update(k, "train 0%", 0.0)  # 3 running: a node joined, the slots follow
    assert p.slots == 3
    now[0] = 14.0  # c, d, e have 6 s left each; f takes the first free slot: 6 + 10
    assert p.remaining() == pytest.approx(16.0)
    now[0] = 20.0  # each took 10 s
    p.finish("c"), p.finish("d"), p.finish("e")
    p.update("f", "train 50%", 0.25)
    now[0] = 23.0  # the tail: one cell left on 3 slots, 10 - 3 s, not (10 - 3) / 3
    assert p.remaining() == pytest.approx(7.0)
    assert p.postfix().startswith("~00:07 left] 1 running: f: train 50%")
    now[0] = 40.0
    p.finish("f")
    assert p.remaining() == 0.0 and p.count() == 6


def test_pool_eta_per_objective_and_many_running_are_summarised():
    now = [0.0]
    cells = {"a": FakeCell("autoregressive", "a"), "d": FakeCell("diffusion", "d"),
             **{str(i): FakeCell("diffusion", f"x{i}") for i in range(6)}}
    p = PoolProgress(cells, slots=1, enabled=False, clock=lambda: now[0])
    p.update("a", "prepare", 0.0)
    now[0] = 5.0
    p.finish("a")
    p.update("d", "prepare", 0.0)
    assert p.remaining() == pytest.approx(6 * 5.0 + 5.0)  # no diffusion cell finished: every cell's mean
    now[0] = 45.0
    p.finish("d")  # diffusion: 40 s
    assert p.remaining() == pytest.approx(6 * 40.0)
    for i in range(6):
        p.update(str(i), "prepare", 0.0)
    assert p.postfix().endswith("6 running: x0: prepare; x1: prepare; x2: prepare; x3: prepare; +2 more")


def test_pool_cell_never_seen_running_still_counts_done():
    p = PoolProgress({"a": FakeCell("autoregressive", "a")}, slots=4, enabled=False, clock=lambda: 0.0)
    p.finish("a")  # no update came (the board failed): done, but no wall time learnt from it
    assert p.count() == 1 and p.remaining() == 0.0 and not p.walls


def test_pool_phases_show_in_the_bar():
    p = PoolProgress({"a": FakeCell("autoregressive", "attention x ar (seed 0)")}, slots=1, enabled=True)
    p.update("a", "evaluate answers 32/100", 0.6)
    p.draw()
    assert p.bar.n == pytest.approx(0.6) and "1 running: attention x ar (seed 0): evaluate answers 32/100" in str(p.bar)
    p.close()


def test_stage_drops_the_counts():
    assert [stage(t) for t in ("prepare", "train 40%", "evaluate answers 32/100", "evaluate ppl 1/8")] == \
        ["prepare", "train", "evaluate answers", "evaluate ppl"]


def test_reporter_sends_each_stage_at_once_and_the_rest_rate_limited():
    now, sent = [0.0], []
    r = PhaseReporter(lambda text, frac: sent.append(text), interval=1.0, clock=lambda: now[0])
    for i in range(100):  # a fast cell: 100 step reports in 0.1 s
        now[0] = i / 1000
        r(f"train {i}%", i / 200)
    r("evaluate answers 1/4", 0.6)
    r("evaluate answers 2/4", 0.7)
    now[0] = 1.2
    r("evaluate answers 3/4", 0.8)
    r("evaluate ppl 1/2", 0.9)
    assert sent == ["train 0%", "evaluate answers 1/4", "evaluate answers 3/4", "evaluate ppl 1/2"]


def test_reporter_failure_never_reaches_the_cell():
    calls = []

    def gone(text, frac):  # the board is dead or Ray is down
        calls.append(text)
        raise RuntimeError("actor died")

    r = PhaseReporter(gone)
    r("prepare", 0.0)  # no exception: the cell goes on
    r("train 1%", 0.0)
    assert r.broken and calls == ["prepare"]  # and it stops trying


class SlowBoardRay:
    """A stand-in for `ray` and a board actor whose drains answer only after `late` polls, or never
    (`dies`: the actor is gone). Counts the drains asked for."""

    class GetTimeoutError(TimeoutError):
        pass

    def __init__(self, batches: list[list[tuple[str, str, float]]], late: int, dies: bool = False):
        self.batches, self.late, self.dies, self.asked, self.gets = list(batches), late, dies, 0, 0
        board = self

        class Drain:
            @staticmethod
            def remote():
                board.asked += 1
                return board.asked

        self.drain = Drain()

    def get(self, ref, timeout=None):
        self.gets += 1
        if self.dies:
            raise RuntimeError("ActorDiedError: the actor died unexpectedly")
        if self.gets <= self.late:
            raise self.GetTimeoutError("Get timed out: some object(s) not ready.")
        return self.batches.pop(0) if self.batches else []


def test_a_slow_phase_board_keeps_its_drain_and_is_read_when_it_answers(capsys):
    from harness.executors import BoardReader

    now = [0.0]
    cells = {"a": FakeCell("autoregressive", "attention x ar (seed 0)")}
    p = PoolProgress(cells, slots=1, enabled=False, clock=lambda: now[0])
    fake = SlowBoardRay([[("a", "prepare", 0.0), ("a", "train 10%", 0.05)], [("a", "evaluate ppl 1/2", 0.9)]], late=3)
    reader = BoardReader(fake, fake, clock=lambda: now[0])
    for _ in range(3):  # a busy cluster: three polls without an answer (the board is slow, not lost)
        now[0] += 2.0
        reader.poll(p)
        assert reader.board is fake and p.stages["a"] == []
    assert fake.asked == 1  # the one drain in flight is asked for again, not a second queued behind it
    reader.poll(p)
    assert p.stages["a"] == ["prepare", "train"] and fake.asked == 1
    reader.poll(p)  # the next poll asks for a new drain
    assert fake.asked == 2 and p.stages["a"] == ["prepare", "train", "evaluate ppl"]
    assert "failed" not in capsys.readouterr().out


def test_a_phase_board_that_died_or_never_answers_is_dropped_with_one_line(capsys):
    from harness.executors import BoardReader

    p = PoolProgress({"a": FakeCell("autoregressive", "x")}, slots=1, enabled=False)
    dead = SlowBoardRay([], late=0, dies=True)
    reader = BoardReader(dead, dead)
    reader.poll(p)
    assert reader.board is None and "phase board failed (RuntimeError: ActorDiedError" in capsys.readouterr().out
    reader.poll(p)  # then polling is a no-op
    assert dead.gets == 1

    now = [0.0]
    mute = SlowBoardRay([], late=10**9)
    reader = BoardReader(mute, mute, clock=lambda: now[0])
    while reader.board is not None and now[0] < 1000:
        reader.poll(p)
        now[0] += 10.0
    assert now[0] == BoardReader.PATIENCE_S + 10.0  # dropped at the first poll past its patience, not before
    assert f"no answer in {BoardReader.PATIENCE_S:.0f} s" in capsys.readouterr().out


def test_durations_round_to_the_nearest_second():
    """59.6 s reads 01:00, not 00:59: the bar's estimate is rounded, never cut down."""
    assert fmt_duration(59.6) == "01:00" and fmt_duration(89.4) == "01:29" and fmt_duration(3599.7) == "1:00:00"


def test_a_cells_estimate_is_the_mean_of_its_objectives_walls():
    """The expected wall of a cell is the mean of the finished walls (10, 10 and 40 s: 20 s), not their
    median (10 s) nor the last: one slow cell raises the estimate for the cells still to come."""
    now = [0.0]
    cells = [FakeCell("autoregressive", k) for k in "abcd"]
    p = GridProgress(cells, enabled=False, clock=lambda: now[0])
    for cell, wall in zip(cells, (10.0, 10.0, 40.0)):
        p.start(cell)
        now[0] += wall
        p.finish(cell)
    assert p.remaining() == pytest.approx(20.0)


def test_a_running_cell_never_fills_the_bar_before_it_finishes(capsys):
    """A phase at fraction 1 (the last evaluation batch) leaves the running cell just short of whole, and
    a negative fraction counts 0: only finish() moves the count to the next cell."""
    cells = [FakeCell("autoregressive", "a"), FakeCell("autoregressive", "b")]
    p = GridProgress(cells, enabled=True)
    p.start(cells[0])
    p.phase("evaluate ppl 8/8", 1.0)
    assert p.bar.n == pytest.approx(0.999)
    p.phase("prepare", -0.5)
    assert p.bar.n == 0.0
    p.finish(cells[0])
    assert p.bar.n == 1
    p.close()


def test_reporter_sends_a_steady_stream_once_per_interval():
    """Reports every 0.5 s within one stage go out once a second (at 0, 1 and 2 s): the interval runs from
    the last update *sent*, so a stream of skipped reports never holds the next one back for ever."""
    now, sent = [0.0], []
    r = PhaseReporter(lambda text, frac: sent.append(text), interval=1.0, clock=lambda: now[0])
    for i in range(5):
        now[0] = 0.5 * i
        r(f"train {10 * i}%", i / 10)
    assert sent == ["train 0%", "train 20%", "train 40%"]


def test_pool_eta_frees_the_slot_of_a_cell_that_overran_its_estimate_now_not_in_the_past():
    """b was expected to take 10 s and has run 25: its slot frees at once (0 s from now), not 15 s ago, so
    the waiting c still needs its full 10 s."""
    p, now = _pool_after_a_10s_cell("abc")  # 10 s per cell
    now[0] = 25.0
    assert p.remaining() == pytest.approx(10.0)


def test_pool_eta_gives_a_waiting_cell_the_slot_that_frees_first_whatever_order_the_cells_started_in():
    """The running cells' slots free at 40 s (a diffusion cell, seen first) and 10 s (an AR cell, seen
    second); the waiting AR cell takes the one free at 10 s, so the grid ends at 40 s, not 50 s."""
    now = [0.0]
    cells = {"p": FakeCell("autoregressive", "p"), "q": FakeCell("diffusion", "q"), "b": FakeCell("diffusion", "b"),
             "a": FakeCell("autoregressive", "a"), "c": FakeCell("autoregressive", "c")}
    p = PoolProgress(cells, slots=2, enabled=False, clock=lambda: now[0])
    p.update("p", "prepare", 0.0)
    p.update("q", "prepare", 0.0)
    now[0] = 10.0
    p.finish("p")  # AR: 10 s
    now[0] = 40.0
    p.finish("q")  # diffusion: 40 s
    p.update("b", "prepare", 0.0)
    p.update("a", "prepare", 0.0)
    assert p.remaining() == pytest.approx(40.0)


def test_a_training_run_outside_the_grid_draws_a_bar_redrawn_once_per_percent(monkeypatch):
    """`train(..., TrainConfig(progress=True))` called directly (a notebook, a script) gets a tqdm bar over
    the budget's fraction: redrawn only when the whole percent changes (a redraw per step would cost more
    than a small model's step), never past 100% (a time budget's last step overshoots), closed at the end."""
    import tqdm.auto

    from harness.train import _progress

    class Bar:
        def __init__(self, **kw):
            self.kw, self.n, self.drawn, self.closed = kw, 0, [], False

        def refresh(self):
            self.drawn.append(self.n)

        def close(self):
            self.closed = True

    bars = []
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda **kw: bars.append(Bar(**kw)) or bars[-1])
    update = _progress(True)
    for frac in (0.001, 0.004, 0.25, 0.253, 0.5, 1.07):
        update(frac)
    (bar,) = bars
    assert bar.kw["total"] == 100 and bar.drawn == [25, 50, 100] and not bar.closed
    assert bar.kw["unit"] == "%" and bar.kw["leave"] is False  # gone when the run ends: the grid's lines stay
    update(None)
    assert bar.closed
    assert _progress(False)(0.5) is None and len(bars) == 1  # off: no bar at all


def test_the_bar_redraws_each_change_at_once_and_closes(capsys):
    """The grid's bar is written the moment a cell starts, changes phase or finishes (a slow cell's new phase
    must show as it begins, not at the next tqdm tick); the same phase text again is no change (its count
    stays); a phase with no cell running is ignored; close() ends the bar. On by default, it follows the
    terminal's width."""
    cells = [FakeCell("autoregressive", "attention x ar (seed 0)"), FakeCell("autoregressive", "b")]
    p = GridProgress(cells)
    assert p.bar is not None and p.bar.dynamic_ncols
    capsys.readouterr()
    p.start(cells[0])
    assert "attention x ar (seed 0): start" in capsys.readouterr().err
    p.phase("train 10%", 0.1)
    assert "attention x ar (seed 0): train 10%" in capsys.readouterr().err
    p.phase("train 10%", 0.5)
    assert p.bar.n == pytest.approx(0.1) and capsys.readouterr().err == ""
    p.finish(cells[0])
    err = capsys.readouterr().err
    assert "left]" in err and "train" not in err and "train" not in str(p.bar)
    p.phase("evaluate answers 1/4", 0.5)
    assert p.text == "" and p.bar.n == 1 and capsys.readouterr().err == ""
    p.close()
    assert p.bar.disable


def test_no_bar_when_disabled_or_when_there_are_no_cells():
    cell = FakeCell("autoregressive", "a")
    assert GridProgress([cell], enabled=False).bar is None and GridProgress([], enabled=True).bar is None
    assert PoolProgress({"a": cell}, slots=1, enabled=False).bar is None
    assert PoolProgress({}, slots=1, enabled=True).bar is None


def test_the_pool_bar_is_on_by_default_draws_at_once_and_closes(capsys):
    p = PoolProgress({"a": FakeCell("autoregressive", "attention x ar (seed 0)")}, slots=1)
    assert p.bar is not None
    capsys.readouterr()
    p.update("a", "train 40%", 0.4)
    p.draw()
    assert "1 running: attention x ar (seed 0): train 40%" in capsys.readouterr().err
    p.close()
    assert p.bar.disable
