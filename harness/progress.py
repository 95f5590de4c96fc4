"""The grid's progress line: cells done, the running cell and its phase, and the time the grid has left.

    cells 5/12 [02:41, ~04:10 left] mamba x diffusion (seed 0): evaluate answers 128/500

One tqdm bar over the cells whose count advances *within* a cell too (training, then evaluation), so
the bar moves while a slow cell runs. The remaining time is not tqdm's constant-rate guess: cells of
different objectives cost very differently (masked diffusion samples its answers in many steps), so
each remaining cell is estimated by the mean wall time of finished cells of its objective (of all
finished cells when none of its objective has finished), the running one by that estimate minus its
elapsed time. Before the first cell ends there is no estimate ("?").
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any


def fmt_duration(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class GridProgress:
    """Drives one bar over `cells` (objects with `.objective` and `.label()`); `enabled=False`: silent."""

    def __init__(self, cells: list[Any], enabled: bool = True, clock=time.perf_counter):
        self.cells, self.clock = list(cells), clock
        self.walls: dict[str, list[float]] = defaultdict(list)  # objective -> wall seconds of finished cells
        self.done, self.current, self.started, self.text = 0, None, clock(), ""
        self.bar = None
        if enabled and self.cells:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(self.cells), desc="cells", unit="cell", dynamic_ncols=True,
                            bar_format="{desc} {n:.1f}/{total_fmt} |{bar:12}| [{elapsed}{postfix}")

    def start(self, cell: Any) -> None:
        self.current, self.cell_t0 = cell, self.clock()
        self.phase("start", 0.0)

    def phase(self, text: str, frac: float) -> None:
        """The running cell is at `text` with `frac` (0..1) of it done: redraw when the text changes."""
        if text == self.text or self.current is None:
            return
        self.text = text
        if self.bar is not None:
            self.bar.n = self.done + min(max(frac, 0.0), 0.999)
            self.bar.set_postfix_str(f"{self.eta_text()}] {self.current.label()}: {text}", refresh=True)

    def finish(self, cell: Any) -> None:
        self.walls[cell.objective].append(self.clock() - self.cell_t0)
        self.done += 1
        self.current, self.text = None, ""
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.set_postfix_str(f"{self.eta_text()}]", refresh=True)

    def estimate(self, cell: Any) -> float | None:
        """Expected wall seconds of `cell`, from finished cells (its objective's first)."""
        own = self.walls.get(cell.objective)
        every = [w for ws in self.walls.values() for w in ws]
        return statistics.mean(own) if own else statistics.mean(every) if every else None

    def remaining(self) -> float | None:
        """Seconds the grid has left, or None before any cell finished."""
        todo = self.cells[self.done + (self.current is not None):]
        total = 0.0
        for c in todo + ([self.current] if self.current is not None else []):
            est = self.estimate(c)
            if est is None:
                return None
            total += max(est - (self.clock() - self.cell_t0), 0.0) if c is self.current else est
        return total

    def eta_text(self) -> str:
        left = self.remaining()
        return "? left" if left is None else f"~{fmt_duration(left)} left"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
