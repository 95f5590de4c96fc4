"""The grid's progress line: the running cell's phase and the time the grid has left."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness.progress import GridProgress, fmt_duration


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
