"""One cell on N local processes without torchrun: what a Ray task holding N GPUs runs (and the
tests, on CPU with gloo). Each process runs exactly what a torchrun rank runs: `init()` from the
environment, the cell's plan (data prepared by local rank 0 first), then `run_cell`; rank 0's row
comes back through a file, and rank 0's phases (`ctx.phase`) through a queue to `phase`, for the
driver's progress line.
"""
from __future__ import annotations

import json
import os
import queue
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch.multiprocessing as mp

from core.results import jsonable
from core.files import write_atomic
from harness import distributed as ddp
from harness.cell import Cell, run_cell
from harness.progress import PhaseReporter

PhaseFn = Callable[[str, float], None]


def spawn_cell(cell: Cell, spec, world_size: int, phase: PhaseFn | None = None) -> dict[str, Any]:
    """Run `cell` data-parallel on `world_size` local processes; return rank 0's row.

    `spec` builds each rank's RunContext (`executors.ContextSpec`: plain, picklable values). `phase`,
    if given, gets rank 0's (phase text, fraction) reports, here in this process (the other ranks run
    the same steps, so rank 0's phase is the cell's).
    """
    phases = mp.get_context("spawn").Queue() if phase else None
    with tempfile.TemporaryDirectory(prefix="wavebench-cell-") as tmp:
        out = Path(tmp) / "row.json"
        ranks = mp.start_processes(_spawned_rank, args=(world_size, ddp.free_port(), cell, spec, str(out), phases),
                                   nprocs=world_size, start_method="spawn", join=False)
        while not ranks.join(timeout=0.5):  # (raises if a rank failed, as join=True does)
            _forward(phases, phase)
        _forward(phases, phase)
        return json.loads(out.read_text(encoding="utf-8"))


def _forward(phases, phase: PhaseFn | None) -> None:
    """Every phase rank 0 queued so far, to `phase` (which is free to drop some: PhaseReporter)."""
    while phases is not None:
        try:
            text, frac = phases.get_nowait()
        except queue.Empty:
            return
        phase(text, frac)


def _spawned_rank(rank: int, world_size: int, port: int, cell: Cell, spec, out: str, phases=None) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env, device = ddp.init(spec.device)
    try:
        ctx = spec.build(env, device)
        if phases is not None and env.is_main:  # rate-limited here too: a step's report is not a queue put
            ctx.phase = PhaseReporter(lambda text, frac: phases.put_nowait((text, frac)))
        with env.local_main_first():  # as in run_matrix: rank 0 fills the tokenizer cache, the others reuse it
            plan = ctx.plan(cell)
        env.check_same(ddp.data_fingerprint(plan.data.train), "the tokenised training data")
        row = run_cell(cell, ctx)  # finds the cell's plan in ctx
        if row is not None:
            write_atomic(out, json.dumps(row, ensure_ascii=False, default=jsonable))
        env.barrier()
    finally:
        ddp.shutdown()
