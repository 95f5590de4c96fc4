"""One cell on N local processes without torchrun: what a Ray task holding N GPUs runs (and the
tests, on CPU with gloo). Each process runs exactly what a torchrun rank runs: `init()` from the
environment, the cell's plan (data prepared by local rank 0 first), then `run_cell`; rank 0's row
comes back through a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from core.results import jsonable
from harness import distributed as ddp
from harness.cell import Cell, run_cell


def spawn_cell(cell: Cell, spec, world_size: int) -> dict[str, Any]:
    """Run `cell` data-parallel on `world_size` local processes; return rank 0's row.

    `spec` builds each rank's RunContext (`executors.ContextSpec`: plain, picklable values).
    """
    with tempfile.TemporaryDirectory(prefix="wavebench-cell-") as tmp:
        out = Path(tmp) / "row.json"
        mp.start_processes(_spawned_rank, args=(world_size, ddp.free_port(), cell, spec, str(out)),
                           nprocs=world_size, start_method="spawn", join=True)
        return json.loads(out.read_text(encoding="utf-8"))


def _spawned_rank(rank: int, world_size: int, port: int, cell: Cell, spec, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env, device = ddp.init(spec.device)
    try:
        ctx = spec.build(env, device)
        with env.local_main_first():  # as in run_matrix: rank 0 fills the tokenizer cache, the others reuse it
            plan = ctx.plan(cell)
        env.check_same(ddp.data_fingerprint(plan.data.train), "the tokenised training data")
        row = run_cell(cell, ctx)  # finds the cell's plan in ctx
        if row is not None:
            tmp = Path(out).with_suffix(".tmp")
            tmp.write_text(json.dumps(row, ensure_ascii=False, default=jsonable), encoding="utf-8")
            os.replace(tmp, out)
        env.barrier()
    finally:
        ddp.shutdown()
