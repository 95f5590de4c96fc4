"""The grid's progress line: cells done, the running cell and its phase, and the time the grid has left.

    cells 5/12 [02:41, ~04:10 left] mamba x diffusion (seed 0): evaluate answers 128/500

One tqdm bar over the cells whose count advances *within* a cell too (training, then evaluation), so
the bar moves while a slow cell runs. The remaining time is not tqdm's constant-rate guess: cells of
different objectives cost very differently (masked diffusion samples its answers in many steps), so
each remaining cell is estimated by the mean wall time of finished cells of its objective (of all
finished cells when none of its objective has finished), the running one by that estimate minus its
elapsed time. Before the first cell ends there is no estimate ("?").

Cells running concurrently elsewhere (Ray workers) have `PoolProgress` instead: the same bar, advanced
by every running cell's fraction, its postfix listing the running cells' phases, fed by `(key, phase
text, fraction)` updates that the workers' `PhaseReporter`s send (harness/executors.py carries them).
Both classes are pure (a clock is injected), so tests drive them without Ray or a terminal.
"""
from __future__ import annotations

import heapq
import re
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable


def fmt_duration(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def fmt_left(seconds: float | None) -> str:
    """The bar's time left: '~MM:SS left', or '? left' before any estimate."""
    return "? left" if seconds is None else f"~{fmt_duration(seconds)} left"


def _bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="cells", unit="cell", dynamic_ncols=True,
                bar_format="{desc} {n:.1f}/{total_fmt} |{bar:12}| [{elapsed}{postfix}")


class WallEstimates:
    """A cell's expected wall time from the finished cells: its objective's mean, else every cell's."""

    def __init__(self) -> None:
        self.walls: dict[str, list[float]] = defaultdict(list)  # objective -> wall seconds of finished cells

    def estimate(self, cell: Any) -> float | None:
        """Expected wall seconds of `cell`, from finished cells (its objective's first)."""
        own = self.walls.get(cell.objective)
        every = [w for ws in self.walls.values() for w in ws]
        return statistics.mean(own) if own else statistics.mean(every) if every else None


class GridProgress(WallEstimates):
    """Drives one bar over `cells` (objects with `.objective` and `.label()`); `enabled=False`: silent."""

    def __init__(self, cells: list[Any], enabled: bool = True, clock=time.perf_counter):
        super().__init__()
        self.cells, self.clock = list(cells), clock
        self.done, self.current, self.started, self.text = 0, None, clock(), ""
        self.bar = _bar(len(self.cells)) if enabled and self.cells else None

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
        return fmt_left(self.remaining())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def stage(text: str) -> str:
    """A phase text without its counts: "evaluate answers 32/100" -> "evaluate answers"."""
    return re.sub(r"\s*[\d.]+(?:%|/\d+)?", "", text).strip()


class PhaseReporter:
    """`ctx.phase` in a worker: forwards (phase text, fraction) through `send`, cheaply and never fatally.

    A cell calls `ctx.phase` at every training step report and evaluation batch; sending each would
    cost the cell time and flood the driver, so an update goes out when the phase's stage changes
    ("prepare" -> "train" -> "evaluate answers" -> "evaluate ppl": always, so the driver sees every
    stage of even a short cell) and otherwise at most every `interval` seconds. `send` is a
    fire-and-forget call (a Ray actor's `.remote`); if it raises (the board is gone), reporting stops
    and the cell goes on: progress display must never fail a cell."""

    def __init__(self, send: Callable[[str, float], Any], interval: float = 1.0, clock=time.monotonic):
        self.send, self.interval, self.clock = send, interval, clock
        self.sent_stage, self.sent_t = None, float("-inf")
        self.handle: Any = None  # what the last send returned (a Ray ObjectRef): a flush waits on it
        self.broken = False

    def __call__(self, text: str, frac: float) -> None:
        if self.broken:
            return
        now, st = self.clock(), stage(text)
        if st == self.sent_stage and now - self.sent_t < self.interval:
            return
        try:
            self.handle = self.send(text, frac)
        except Exception:  # noqa: BLE001 (any failure of the display, never the cell's)
            self.broken = True
            return
        self.sent_stage, self.sent_t = st, now


@dataclass
class Running:
    """A cell seen running: its latest phase, and when the driver first saw it (the driver's clock:
    workers on other machines have other clocks)."""

    text: str
    frac: float
    t0: float


class PoolProgress(WallEstimates):
    """One bar over cells that run concurrently elsewhere, on `slots` concurrent slots.

        cells 3.6/12 |███      | [04:10, ~06:30 left] 2 running: attention x ar (seed 1): train 40%; ...

    Fed by `update(key, text, frac)` (a cell's phase, as a worker reported it) and `finish(key)`.
    `cells` maps each cell's key to the cell (an object with `.objective` and `.label()`), in the
    order they were submitted. The bar's count is the finished cells plus every running cell's
    fraction. The remaining time plays the queue forward (a list schedule): every slot is free when
    its running cell's estimate minus its elapsed time has passed, then each waiting cell, in
    submission order, takes the slot that frees first, for its estimate (`WallEstimates`, from the
    finished cells' walls, which already include the slowdown of running side by side). This is
    "remaining work / slots" while the queue is long, and, unlike it, the longest running cell at the
    grid's tail, where fewer cells than slots are left. The slot count is the driver's guess from the
    cluster's resources, raised to the most cells ever seen running at once (a node joined)."""

    SHOWN = 4  # running cells listed in the postfix; the rest as "+N more"

    def __init__(self, cells: dict[str, Any], slots: int, enabled: bool = True, clock=time.perf_counter):
        super().__init__()
        self.cells, self.clock = dict(cells), clock
        self.todo = dict(self.cells)  # submitted, not seen running yet (submission order)
        self.running: dict[str, Running] = {}  # seen running, in the order first seen
        self.stages: dict[str, list[str]] = defaultdict(list)  # key -> the stages reported, in order
        self.slots, self.done = max(int(slots), 1), 0
        self.bar = _bar(len(self.cells)) if enabled and self.cells else None

    def update(self, key: str, text: str, frac: float) -> None:
        """A worker's report: cell `key` is at `text`, `frac` (0..1) of it done."""
        if key not in self.cells:
            return
        st = stage(text)
        if not self.stages[key] or self.stages[key][-1] != st:
            self.stages[key].append(st)
        if key in self.todo:  # first sight
            del self.todo[key]
            self.running[key] = Running(text, frac, self.clock())
            self.slots = max(self.slots, len(self.running))
        elif key in self.running:  # (a late update of a finished cell changes nothing)
            self.running[key].text, self.running[key].frac = text, frac

    def finish(self, key: str) -> None:
        """Cell `key` returned (its row, or a failure)."""
        run = self.running.pop(key, None)
        self.todo.pop(key, None)
        if run is not None:  # never seen running (no update came): no wall time to learn from
            self.walls[self.cells[key].objective].append(self.clock() - run.t0)
        self.done += 1

    def count(self) -> float:
        """The bar's count: finished cells and the running ones' fractions (a running cell < 1)."""
        return self.done + sum(min(max(r.frac, 0.0), 0.999) for r in self.running.values())

    def remaining(self) -> float | None:
        """Seconds the grid has left (the list schedule above), or None before any cell finished."""
        now = self.clock()
        free = []  # when each slot frees up, seconds from now
        for key, run in self.running.items():
            est = self.estimate(self.cells[key])
            if est is None:
                return None
            free.append(max(est - (now - run.t0), 0.0))
        free += [0.0] * (self.slots - len(free))
        heapq.heapify(free)
        for cell in self.todo.values():
            est = self.estimate(cell)
            if est is None:
                return None
            heapq.heappush(free, heapq.heappop(free) + est)
        return max(free) if self.running or self.todo else 0.0

    def postfix(self) -> str:
        """ "~MM:SS left] N running: label: phase; ..." (the bar's text after its elapsed time)."""
        text = fmt_left(self.remaining()) + "]"
        if self.running:
            shown = [f"{self.cells[k].label()}: {r.text}" for k, r in list(self.running.items())[: self.SHOWN]]
            more = len(self.running) - len(shown)
            text += f" {len(self.running)} running: " + "; ".join(shown) + (f"; +{more} more" if more else "")
        return text

    def draw(self) -> None:
        if self.bar is not None:
            self.bar.n = self.count()
            self.bar.set_postfix_str(self.postfix(), refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
