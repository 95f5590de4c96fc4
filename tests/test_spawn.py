"""harness/spawn.py: what each spawned rank sets up and runs, and what comes back to the driver (rank 0's
row and its phases). The ranks run in this process with stand-ins for the process group, the context and
the cell (tests/test_distributed.py runs two real gloo ranks end to end)."""
from __future__ import annotations

import torch

from harness.cell import TRAIN_SHARE, Cell, _train_config


def test_the_train_phase_ends_where_the_evaluation_starts_when_a_time_budget_overshoots():
    """A seconds= budget stops at the first step whose clock reaches it, so its last report is past 1
    (1.03 of the budget, say). The phase text stops at 100%; its fraction must stop at TRAIN_SHARE too,
    where 'evaluate answers' starts: past it, the spawned ranks' phases went backwards (0.503, then 0.5),
    as the two-rank test in tests/test_distributed.py saw under load."""
    from core.presets import get_preset

    sent: list[tuple[str, float]] = []
    ctx = type("Ctx", (), {"progress": False, "phase": staticmethod(lambda text, frac: sent.append((text, frac)))})()
    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="seconds=1")
    tcfg = _train_config(cell, ctx, get_preset("tiny"), False)
    for f in (0.0, 0.5, 1.03):
        tcfg.report(f)
    assert tcfg.report(None) is True and len(sent) == 3  # the run's end reports nothing
    assert sent == [("train 0%", 0.0), ("train 50%", 0.5 * TRAIN_SHARE), ("train 100%", TRAIN_SHARE)]
