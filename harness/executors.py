"""Executors: how a grid's cells are run.

- "local": one cell after another in this process (under torchrun: every cell data-parallel on the
  launched ranks, see harness/distributed.py). Needs nothing beyond the base install.
- "ray":   every cell is a Ray task holding `--gpus-per-cell` GPUs (default: 1 when the cluster has
  GPUs, else 0) and `--cpus-per-cell` CPUs, so a machine with 8 GPUs runs 8 cells at once and every
  node that joins the cluster (`ray start --address=...`) adds its GPUs with no code change. A task
  holding G > 1 GPUs trains its cell data-parallel on G local ranks (`spawn.spawn_cell`).
  Ray is an optional extra: `pip install -r requirements-ray.txt`.

Both yield `(cell, row)` as cells finish; the caller (run_matrix.py) is the only writer of results
rows, so parallel cells never interleave lines, and resume (skipping done keys before anything is
submitted) is the same for both. Ray workers prepare task data themselves (the tokenizer is cached
under --cache-dir), so --data-dir and --cache-dir must be paths every node can read, e.g. on a shared
file system; the repository must sit at the same path on every node (or be shipped with
`ray job submit --working-dir`).
"""
from __future__ import annotations

import argparse
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from harness import distributed as ddp
from harness.cell import Cell, RunContext, base_row, run_cell
from harness.progress import GridProgress
from harness.spawn import spawn_cell
from core.env import resolve_device
from core.results import error_text

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ContextSpec:
    """A RunContext as plain, picklable values, rebuilt in worker processes (Ray tasks, spawned ranks)."""

    device: str  # "cpu" | "cuda" | "auto", resolved in the worker
    data_dir: str | None  # absolute: workers do not share the driver's working directory
    cache_dir: str
    grid: str

    def build(self, dist: ddp.DistEnv | None = None, device: torch.device | None = None) -> RunContext:
        dist = dist or ddp.DistEnv()
        quiet = (lambda _msg: None) if not dist.is_main else print
        return RunContext(device=device or resolve_device(self.device),
                          data_dir=Path(self.data_dir) if self.data_dir else None, cache_dir=Path(self.cache_dir),
                          grid=self.grid, progress=False, log=quiet, dist=dist)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The executor flags of run_matrix.py."""
    g = p.add_argument_group("executor (see harness/executors.py)")
    g.add_argument("--executor", default="local", choices=list(EXECUTORS),
                   help="local: cells one after another (data-parallel under torchrun); ray: cells as Ray tasks")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join ('auto' = the one `ray start` made here; default: $RAY_ADDRESS "
                        "or a new local Ray)")
    g.add_argument("--gpus-per-cell", type=float, default=None,
                   help="GPUs each Ray task holds (default: 1 if the cluster has GPUs, else 0); an integer "
                        "G > 1 trains each cell data-parallel on G ranks; a fraction packs cells onto a GPU")
    g.add_argument("--cpus-per-cell", type=float, default=1.0, help="CPUs each Ray task holds (default: 1)")


def build(args: argparse.Namespace) -> "Executor":
    return EXECUTORS[args.executor](args)


class Executor:
    def __init__(self, args: argparse.Namespace):
        self.args = args

    def run(self, cells: list[Cell], ctx: RunContext) -> Iterator[tuple[Cell, dict[str, Any]]]:
        raise NotImplementedError


class LocalExecutor(Executor):
    """Cells one after another in this process; under torchrun every rank runs this same loop."""

    def run(self, cells: list[Cell], ctx: RunContext) -> Iterator[tuple[Cell, dict[str, Any]]]:
        progress = GridProgress(cells, enabled=ctx.progress)  # the running cell's phase, the grid's time left
        ctx.phase = progress.phase
        try:
            for cell in cells:
                t0 = time.time()
                progress.start(cell)
                row = run_cell(cell, ctx)
                progress.finish(cell)
                if row is not None:  # None: a non-zero rank of a data-parallel cell
                    row["executor"] = _where("torchrun" if ctx.dist.active else "local", t0)
                    yield cell, row
                ctx.dist.barrier()  # [DDP] the other ranks wait here while rank 0 evaluates and writes
        finally:
            progress.close()


class RayExecutor(Executor):
    """Cells as Ray tasks; rows come back to this driver, which yields them as tasks finish."""

    def run(self, cells: list[Cell], ctx: RunContext) -> Iterator[tuple[Cell, dict[str, Any]]]:
        if not cells:
            return
        if ctx.dist.active:
            raise ValueError("--executor ray is not launched with torchrun: Ray places the ranks (--gpus-per-cell)")
        try:
            import ray
        except ImportError:
            raise RuntimeError("--executor ray needs Ray: pip install -r requirements-ray.txt") from None

        started = not ray.is_initialized()
        if started:
            ray.init(address=self.args.ray_address, runtime_env=ray_runtime_env(), log_to_driver=not self.args.no_progress)
        try:
            yield from self._run(ray, cells, ctx)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, cells: list[Cell], ctx: RunContext) -> Iterator[tuple[Cell, dict[str, Any]]]:
        from tqdm.auto import tqdm

        gpus = self.args.gpus_per_cell
        if gpus is None:  # one GPU per cell when there are GPUs (and --device does not say cpu)
            gpus = 1.0 if self.args.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        world = int(gpus) if gpus >= 2 and float(gpus).is_integer() else 1
        spec = ContextSpec(device="cuda" if gpus > 0 else "cpu",
                           data_dir=str(Path(ctx.data_dir).resolve()) if ctx.data_dir else None,
                           cache_dir=str(Path(ctx.cache_dir).resolve()), grid=ctx.grid)
        task = ray.remote(num_gpus=gpus, num_cpus=self.args.cpus_per_cell, max_retries=0)(ray_cell)
        pending = {task.remote(cell, spec, world): cell for cell in cells}
        print(f"ray: {len(cells)} cells submitted ({gpus:g} GPU, {self.args.cpus_per_cell:g} CPU each"
              f"{f', {world} ranks per cell' if world > 1 else ''}); cluster: {_resources(ray)}")
        bar = tqdm(total=len(cells), desc="cells", unit="cell", disable=not ctx.progress)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(done[0])
                try:
                    row = ray.get(done[0])
                except Exception as e:  # the worker died (killed, out of host memory): a failed row
                    row = base_row(cell, ctx)
                    row["error"] = error_text(e)
                    row["traceback"] = str(e)[-2000:]
                bar.update(1)
                yield cell, row
        finally:
            bar.close()
            for ref in pending:  # interrupted: do not leave cells running on the cluster
                ray.cancel(ref, force=True)


def ray_runtime_env() -> dict[str, Any]:
    """Workers import this repository from the same path as the driver, whatever their working directory."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


_CONTEXTS: dict[ContextSpec, RunContext] = {}  # per worker process: prepared task data is reused


def ray_cell(cell: Cell, spec: ContextSpec, world_size: int = 1) -> dict[str, Any]:
    """The body of one Ray task (a plain function, so it also runs without Ray)."""
    t0 = time.time()
    if world_size > 1:
        row = spawn_cell(cell, spec, world_size)
    else:  # (Ray sets OMP_NUM_THREADS to the task's CPUs, so torch threads follow --cpus-per-cell)
        if spec not in _CONTEXTS:
            _CONTEXTS[spec] = spec.build()
        ctx = _CONTEXTS[spec]
        row = run_cell(cell, ctx)
    row["executor"] = _where("ray", t0)
    return row


def _where(kind: str, t0: float) -> dict[str, Any]:
    """Where and when a cell ran (unix seconds), to see how a cluster was used."""
    return {"kind": kind, "host": socket.gethostname(), "pid": os.getpid(), "start": round(t0, 3),
            "end": round(time.time(), 3)}


def _resources(ray) -> str:
    r = ray.cluster_resources()
    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    return ", ".join(f"{r.get(k, 0):g} {k}" for k in ("GPU", "CPU")) + f", {alive} node(s)"


EXECUTORS: dict[str, Callable[[argparse.Namespace], Executor]] = {"local": LocalExecutor, "ray": RayExecutor}
