"""Warm the compile cache: every pending compiled cell's compilation, J at a time, before the grid.

A grid runs its cells one after another in one process, and each compiled cell starts with a fresh
compiler (harness.cell.fresh_compiler), so a grid of N cells pays N cold compilations in a row, mostly
on one CPU core. With `run_matrix.py --warm-compile J`, before the local executor runs the pending
cells, each compiled cell's *warm-up* runs in a throwaway worker process, J at a time: the cell's own
path (`run_cell(..., warm_only=True)`: same model, seed, data order, trainer, compile mode and scope,
autocast and loss) stopped after each training stage's warm-up steps, with no dev check, no
evaluation and no row. Its only product is inductor's on-disk cache (FX graph, AOTAutograd and kernel
caches under $TORCHINDUCTOR_CACHE_DIR, which workers inherit): the real cell that follows, sequential
and timed as before, compiles from cache hits. Its row says `train.compile_warmed: true`, and its
`train.warm_seconds` (the steps off the clock) shows what the cache saved.

A warm-up's failure (an exception, a crashed or killed worker, a timeout) is never the grid's: it is
reported in one line and the real cell compiles on its own, as it would have.

Threads: each worker gets TORCHINDUCTOR_COMPILE_THREADS = cpu_count // J, so J workers do not each
start a compile pool the size of the machine. Its torch intra-op threads stay the parent's: inductor's
FX-graph cache key includes `torch.get_num_threads()` for graphs with CPU C++ code (torch 2.13,
torch/_inductor/codecache.py), so a worker with fewer threads would fill a cache the real cell misses.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from core.env import pythonpath_with
from core.files import write_atomic
from harness.cell import Cell

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900.0  # the warm phase's limit: then its workers are killed (their cells compile on their own)
POLL_S = 0.2
WORKER = [sys.executable, "-m", "harness.warm"]  # + job file, result file (tests stand in failing workers)


@dataclass
class _Worker:
    cell: Cell
    proc: subprocess.Popen
    out: Path  # the worker's result file
    log: Path  # what it printed
    t0: float


def worker_threads(jobs: int) -> int:
    """Compile threads per worker: the machine's CPUs shared among `jobs` workers."""
    return max(1, (os.cpu_count() or 1) // max(jobs, 1))


def warm_up(cells: list[Cell], spec: Any, jobs: int, timeout_s: float = TIMEOUT_S,
            say: Callable[[str], None] = print) -> set[str]:
    """Run the warm-up of each of `cells`, `jobs` worker processes at a time; the keys of those that
    finished. `spec`: an executors.ContextSpec (plain values) each worker builds its RunContext from.
    Never raises for a worker's failure: `say` gets one line per finished warm-up, ok or not.

    `timeout_s` bounds the whole phase, not each worker: a grid under a time limit (the GPU check's
    part) must keep most of it for the cells themselves. At the limit the running workers are killed
    and the cells not started are left to compile on their own."""
    if not cells:
        say("warm-compile: no pending cell compiles; nothing to warm")
        return set()
    if jobs > 1 and any(c.compile_mode.startswith("max-autotune") for c in cells):
        # max-autotune picks its matmul templates by timing them while compiling, and the choice goes into the
        # cached code the timed cell reuses: timed beside other workers on one GPU, it would be chosen under
        # contention. One worker at a time times them alone (the autotune-cache setting below covers only
        # the configs timed at a kernel's first launch)
        say(f"warm-compile: max-autotune times its kernel choices while compiling: 1 worker at a time, not {jobs}")
        jobs = 1
    threads = worker_threads(jobs)
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": str(threads), "PYTHONPATH": pythonpath_with(ROOT)}
    say(f"warm-compile: {len(cells)} cells, {jobs} at a time ({threads} compile thread{'s' * (threads > 1)} each)")
    t_start = time.perf_counter()
    todo, running, warmed, n = list(cells), [], set(), 0
    with tempfile.TemporaryDirectory(prefix="wavebench-warm-") as tmp:
        try:
            while todo or running:
                late = time.perf_counter() - t_start > timeout_s
                if late and todo:
                    n += len(todo)
                    say(f"  warm: the phase's {timeout_s:.0f} s are up; not warmed: "
                        + ", ".join(c.label() for c in todo) + " (they compile on their own)")
                    todo = []
                while todo and len(running) < jobs:
                    running.append(_start(todo.pop(0), spec, Path(tmp), len(cells) - len(todo), env))
                time.sleep(POLL_S)
                for w in [w for w in running if w.proc.poll() is not None or late]:
                    running.remove(w)
                    n += 1
                    error = _outcome(w, timeout_s)
                    secs = time.perf_counter() - w.t0
                    if error is None:
                        warmed.add(w.cell.key())
                        say(f"  warm [{n}/{len(cells)}] {w.cell.label()}: {secs:.1f} s")
                    else:
                        say(f"  warm [{n}/{len(cells)}] FAILED {w.cell.label()} after {secs:.1f} s: {error} "
                            "(the cell compiles on its own)")
        finally:  # interrupted (Ctrl-C, SIGTERM): no worker outlives the grid
            for w in running:
                _stop(w.proc)
    say(f"warm-compile: {len(warmed)}/{len(cells)} cells warmed in {time.perf_counter() - t_start:.1f} s")
    return warmed


def _start(cell: Cell, spec: Any, tmp: Path, i: int, env: dict[str, str]) -> _Worker:
    job, out, log = tmp / f"{i}.pkl", tmp / f"{i}.json", tmp / f"{i}.log"
    job.write_bytes(pickle.dumps({"cell": cell, "spec": spec, "threads": torch.get_num_threads(),
                                  "parent": os.getpid()}))
    with open(log, "wb") as f:  # the child holds its own copy of the descriptor
        proc = subprocess.Popen([*WORKER, str(job), str(out)], cwd=ROOT, env=env,
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return _Worker(cell, proc, out, log, time.perf_counter())


def _outcome(w: _Worker, timeout_s: float) -> str | None:
    """None when the worker warmed its cell, else why not (one line)."""
    if w.proc.poll() is None:
        _stop(w.proc)
        return f"stopped at the warm phase's limit of {timeout_s:.0f} s"
    if w.out.exists():
        result = json.loads(w.out.read_text(encoding="utf-8"))
        return None if result["status"] == "ok" else str(result["error"])
    lines = [t.strip() for t in w.log.read_text(encoding="utf-8", errors="replace").splitlines() if t.strip()]
    return f"worker exited with code {w.proc.returncode}" + (f": {lines[-1][:200]}" if lines else "")


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


# ----------------------------------------------------------------------------- in the worker process

def _exit_with_parent(parent: int) -> None:
    """End this worker when the grid's process is gone (killed by a time limit, say): a warm-up is
    worth nothing without the grid it warms, and must not hold a GPU or CPUs after it."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _worker(job_path: str, out_path: str) -> int:
    from harness.cell import run_cell

    import torch._inductor.config as inductor_config

    job = pickle.loads(Path(job_path).read_bytes())
    _exit_with_parent(job["parent"])
    torch.set_num_threads(job["threads"])  # the parent's: part of the cache key of CPU code
    # The Triton configs inductor benchmarks at a kernel's first launch are left to the real cell: J workers
    # share one GPU, and their timings, taken under contention, would be cached for the timed cell. The
    # autotune cache is not in the FX-graph cache key (torch 2.11 and 2.13), so the graphs still hit; the
    # kernels carry the setting, so the real cell benchmarks their configs in its own warm-up, off the clock
    inductor_config.autotune_local_cache = False
    ctx = job["spec"].build()
    row = run_cell(job["cell"], ctx, warm_only=True)
    result = {"status": row["status"], "error": row["error"], "wall_s": row.get("wall_s")}
    write_atomic(out_path, json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(*sys.argv[1:3]))
