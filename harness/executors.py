"""Executors: how a grid's cells are run.

- "local": one cell after another in this process (under torchrun: every cell data-parallel on the
  launched ranks, see harness/distributed.py). Needs nothing beyond the base install. With
  `--warm-compile J` it first runs the compiled cells' compilations J at a time in throwaway worker
  processes, so each cell then compiles from inductor's on-disk cache (harness/warm.py).
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

Progress under Ray: the driver makes a `PhaseBoard` actor (no CPU) and hands it to every task; a
task's `ctx.phase` is a `PhaseReporter` that posts (cell key, phase, fraction) to it fire-and-forget,
rate-limited. The driver drains the board while it waits for cells and draws a `PoolProgress` bar
(harness/progress.py). A multi-GPU task's phases come from its rank 0 through a queue (`spawn_cell`).
`--no-progress` makes no board: workers then report nothing.
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
from harness.progress import GridProgress, PhaseReporter, PoolProgress
from harness.spawn import spawn_cell
from harness.warm import TIMEOUT_S as WARM_TIMEOUT_S, warm_up
from core.env import pythonpath_with, resolve_device
from core.results import error_text

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ContextSpec:
    """A RunContext as plain, picklable values, rebuilt in worker processes (Ray tasks, spawned ranks)."""

    device: str  # "cpu" | "cuda" | "auto", resolved in the worker
    data_dir: str | None  # absolute: workers do not share the driver's working directory
    cache_dir: str
    grid: str
    profile: bool = False  # RunContext.profile

    @classmethod
    def of(cls, ctx: RunContext, device: str) -> "ContextSpec":
        """The spec of the driver's `ctx`, for workers on `device` (paths made absolute)."""
        return cls(device=device, data_dir=str(Path(ctx.data_dir).resolve()) if ctx.data_dir else None,
                   cache_dir=str(Path(ctx.cache_dir).resolve()), grid=ctx.grid, profile=ctx.profile)

    def build(self, dist: ddp.DistEnv | None = None, device: torch.device | None = None) -> RunContext:
        dist = dist or ddp.DistEnv()
        quiet = (lambda _msg: None) if not dist.is_main else print
        return RunContext(device=device or resolve_device(self.device),
                          data_dir=Path(self.data_dir) if self.data_dir else None, cache_dir=Path(self.cache_dir),
                          grid=self.grid, progress=False, log=quiet, dist=dist, profile=self.profile)


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
    g.add_argument("--warm-compile", type=int, default=0, metavar="J",
                   help="local executor: before the grid, compile every pending compiled cell's warm-up steps "
                        "J at a time in throwaway processes, so the cells then compile from inductor's cache "
                        "(default 0: off; harness/warm.py)")
    g.add_argument("--warm-timeout", type=float, default=WARM_TIMEOUT_S, metavar="S",
                   help="--warm-compile's phase ends after S seconds: workers still compiling are stopped and "
                        f"their cells compile on their own (default {WARM_TIMEOUT_S:.0f})")


def check_warm_compile(args: argparse.Namespace, dist: ddp.DistEnv, device: torch.device) -> None:
    """Refuse --warm-compile where it cannot work, in one line, before anything runs. Refused, not
    ignored: a flag that silently does nothing would leave a slow grid unexplained."""
    if not args.warm_compile:
        return
    if args.warm_compile < 0:
        raise ValueError(f"--warm-compile takes a number of worker processes >= 1 (0: off), got {args.warm_compile}")
    if args.executor != "local":
        raise ValueError(f"--warm-compile is for the local executor; under --executor {args.executor} every "
                         "worker compiles its own cells")
    if dist.active:
        raise ValueError("--warm-compile is not for torchrun: its ranks compile each cell together")
    if args.no_compile:
        raise ValueError("--warm-compile warms compilation, and --no-compile says not to compile; give one")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--warm-compile runs on cpu or cuda, not {device.type}")


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
        jobs = getattr(self.args, "warm_compile", 0)
        if jobs and not ctx.dist.active:  # (refused under torchrun: check_warm_compile)
            compiled = [c for c in cells if c.compiles(ctx.device)]
            ctx.warmed |= warm_up(compiled, ContextSpec.of(ctx, str(ctx.device)), jobs,
                                  getattr(self.args, "warm_timeout", WARM_TIMEOUT_S), say=lambda line: print(line, flush=True))
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
                if ctx.broken:  # (after its row is written) the device is lost to this process: a rerun resumes
                    raise RuntimeError(f"the GPU cannot run another cell in this process after {ctx.broken}; "
                                       "rerun the same command: finished cells are skipped")
                ctx.dist.barrier()  # [DDP] the other ranks wait here while rank 0 evaluates and writes
        finally:
            progress.close()


class RayExecutor(Executor):
    """Cells as Ray tasks; rows come back to this driver, which yields them as tasks finish."""

    POLL_S = 1.0  # how often the driver drains the phase board and redraws while cells run

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
        gpus = self.args.gpus_per_cell
        if gpus is None:  # one GPU per cell when there are GPUs (and --device does not say cpu)
            gpus = 1.0 if self.args.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        world = int(gpus) if gpus >= 2 and float(gpus).is_integer() else 1
        spec = ContextSpec.of(ctx, "cuda" if gpus > 0 else "cpu")
        # a GPU cell's worker exits after it (Ray's default for GPU tasks, stated: a cell that leaves the GPU
        # unusable in its process, a sticky CUDA error, must not hand that process to the next cell)
        task = ray.remote(num_gpus=gpus, num_cpus=self.args.cpus_per_cell, max_retries=0,
                          **({"max_calls": 1} if gpus > 0 else {}))(ray_cell)
        # the phase board: no CPU, so it never takes a cell's slot; none when nothing is shown
        board = ray.remote(num_cpus=0)(PhaseBoard).remote() if ctx.progress else None
        pending = {task.remote(cell, spec, world, board): cell for cell in cells}
        reader = BoardReader(ray, board)
        print(f"ray: {len(cells)} cells submitted ({gpus:g} GPU, {self.args.cpus_per_cell:g} CPU each"
              f"{f', {world} ranks per cell' if world > 1 else ''}); cluster: {_resources(ray)}")
        self.progress = PoolProgress({c.key(): c for c in cells}, _slots(ray, gpus, self.args.cpus_per_cell),
                                     enabled=ctx.progress)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=self.POLL_S if reader.board else None)
                reader.poll(self.progress)  # before the finishes: a cell's last phases first
                for ref in done:
                    cell = pending.pop(ref)
                    try:
                        row = ray.get(ref)
                    except Exception as e:  # the worker died (killed, out of host memory): a failed row
                        row = base_row(cell, ctx)
                        row["error"] = error_text(e)
                        row["traceback"] = str(e)[-2000:]
                    self.progress.finish(cell.key())
                    self.progress.draw()
                    yield cell, row
                self.progress.draw()  # the elapsed time and the running cells' phases move between finishes
        finally:
            self.progress.close()
            for ref in pending:  # interrupted: do not leave cells running on the cluster
                ray.cancel(ref, force=True)
            if board is not None:
                try:
                    ray.kill(board)
                except Exception:  # noqa: BLE001 (already gone)
                    pass


class PhaseBoard:
    """A Ray actor between the workers and the driver: workers post phases, the driver drains them.

    A queue, not a table of latest phases, so the driver sees every stage a cell reported, also the
    ones that a second later were overwritten."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, str, float]] = []

    def update(self, key: str, text: str, frac: float) -> None:
        self.updates.append((key, text, frac))

    def drain(self) -> list[tuple[str, str, float]]:
        out, self.updates = self.updates, []
        return out


class BoardReader:
    """The driver's side of the phase board: hands the board's queued phases to a PoolProgress.

    A slow answer is not a lost board: on a busy cluster (or while the actor process is still starting)
    a drain can take longer than one poll, so the same drain stays in flight and is asked for again at
    the next poll (a second one would only queue behind it). The board counts as lost when its actor
    died, or after `PATIENCE_S` without an answer; the grid then goes on without phases (its bar still
    counts finished cells). Before, a single drain slower than 10 s switched the phases off for good."""

    WAIT_S = 2.0  # longest a poll waits for the drain in flight (the driver's loop waits meanwhile)
    PATIENCE_S = 120.0

    def __init__(self, ray, board, clock: Callable[[], float] = time.monotonic):
        self.ray, self.board, self.clock = ray, board, clock
        self.ref, self.asked = None, 0.0  # the drain in flight, and when it was asked for

    def poll(self, progress: PoolProgress) -> None:
        if self.board is None:
            return
        if self.ref is None:
            self.ref, self.asked = self.board.drain.remote(), self.clock()
        try:
            updates = self.ray.get(self.ref, timeout=self.WAIT_S)
        except Exception as e:  # noqa: BLE001 (the board died or hangs: progress is not worth a grid)
            if _is_timeout(e) and self.clock() - self.asked < self.PATIENCE_S:
                return  # slow, not gone: the same drain again at the next poll
            why = f"no answer in {self.PATIENCE_S:.0f} s" if _is_timeout(e) else error_text(e)
            print(f"ray: phase board failed ({why}); showing finished cells only")
            self.board = self.ref = None
            return
        self.ref = None
        for key, text, frac in updates:
            progress.update(key, text, frac)


def _is_timeout(e: BaseException) -> bool:
    """Ray's GetTimeoutError (a TimeoutError in recent Ray; matched by name for older ones)."""
    return isinstance(e, TimeoutError) or type(e).__name__ == "GetTimeoutError"


def _slots(ray, gpus: float, cpus: float) -> int:
    """Cells the cluster can run at once, from its resources now (PoolProgress raises it when it sees
    more running: nodes can join)."""
    r = ray.cluster_resources()
    fits = [r.get("CPU", 0) / cpus] if cpus > 0 else []
    fits += [r.get("GPU", 0) / gpus] if gpus > 0 else []
    return max(int(min(fits) + 1e-9), 1) if fits else 1


def ray_runtime_env() -> dict[str, Any]:
    """Workers import this repository from the same path as the driver, whatever their working directory."""
    return {"env_vars": {"PYTHONPATH": pythonpath_with(ROOT)}}


_CONTEXTS: dict[ContextSpec, RunContext] = {}  # per worker process: prepared task data is reused


def ray_cell(cell: Cell, spec: ContextSpec, world_size: int = 1, board=None) -> dict[str, Any]:
    """The body of one Ray task (a plain function, so it also runs without Ray). `board`: the driver's
    PhaseBoard actor, or None (no progress shown): the cell's phases go there."""
    t0 = time.time()
    key = cell.key()  # (a hash of the cell: once, not at every report)
    report = PhaseReporter(lambda text, frac: board.update.remote(key, text, frac)) if board else None
    if world_size > 1:  # the phases of rank 0, forwarded by this process
        row = spawn_cell(cell, spec, world_size, phase=report)
    else:  # (Ray sets OMP_NUM_THREADS to the task's CPUs, so torch threads follow --cpus-per-cell)
        if spec not in _CONTEXTS:
            _CONTEXTS[spec] = spec.build()
        ctx = _CONTEXTS[spec]
        ctx.phase = report or (lambda _text, _frac: None)  # (a worker runs one task at a time)
        row = run_cell(cell, ctx)
    if report is not None and report.handle is not None and not report.broken:
        _settle(report.handle)
    row["executor"] = _where("ray", t0)
    return row


def _settle(ref, timeout: float = 1.0) -> None:
    """Wait (briefly) until the board has taken this cell's last phase: a worker's calls to an actor run
    in order, so the driver, which drains the board after the cell returned, has all of them. At most
    `timeout` seconds once per cell, and none if the board is gone (an error, ignored)."""
    import ray

    try:
        ray.get(ref, timeout=timeout)
    except Exception:  # noqa: BLE001 (the display's failure, never the cell's)
        pass


def _where(kind: str, t0: float) -> dict[str, Any]:
    """Where and when a cell ran (unix seconds), to see how a cluster was used."""
    return {"kind": kind, "host": socket.gethostname(), "pid": os.getpid(), "start": round(t0, 3),
            "end": round(time.time(), 3)}


def _resources(ray) -> str:
    r = ray.cluster_resources()
    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    return ", ".join(f"{r.get(k, 0):g} {k}" for k in ("GPU", "CPU")) + f", {alive} node(s)"


EXECUTORS: dict[str, Callable[[argparse.Namespace], Executor]] = {"local": LocalExecutor, "ray": RayExecutor}
