"""What the benchmarks share: timing, peak memory, OOM, rows, an objective under other options.

Benchmarks are measurements, not tests: they append rows to `results/bench_<name>.jsonl` (one per
configuration, ok or failed) and the report draws them. Every row names its device, package
versions and git commit, like a grid row.

Peak memory, by device (the row's `mem_measure` says which one was used):
- CUDA: `torch.cuda.max_memory_allocated` during one call, minus what was allocated before it (the
  inputs and parameters): the extra memory the call needs.
- CPU: torch has no allocator statistics, so one extra, untimed call runs under `torch.profiler`
  with `profile_memory=True`; the peak of the running sum of its allocation/free events is the
  extra memory torch's CPU allocator held. It counts torch tensors only (not Python, not MKL/oneDNN
  scratch) and is None when the profiler gives no events.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from core import results
from core.env import device_name, sync
from core.quiet import no_profiler_chatter
from core.schema import new_row

CUDA_MEASURE = "cuda max_memory_allocated above inputs"
CPU_MEASURE = "torch CPU allocator peak above inputs (torch.profiler memory events)"


def warm_up(fn: Callable[[], Any], device: torch.device, n: int) -> None:
    """Call `fn` n times untimed: CUDA context and library handles, kernel autotuning, the caching
    allocator and torch.compile all pay their one-off costs in the first calls, which a per-step
    figure must not include (issue 14: attention's first row took 5.5 s and ended its curve)."""
    for _ in range(n):
        fn()
    sync(device)


def time_ms(fn: Callable[[], Any], device: torch.device, reps: int, first: list[float] | None = None) -> float:
    """Median wall time of `reps` calls, in milliseconds (the caller has warmed `fn` up with `warm_up`);
    `first`: times already measured to include in the median."""
    times = list(first or [])
    for _ in range(max(reps, 0 if times else 1)):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int | None, str]:
    """(extra bytes held at the peak of one call of `fn`, how it was measured); see the module doc."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - before), CUDA_MEASURE
    return _cpu_peak(fn), CPU_MEASURE


def _cpu_peak(fn: Callable[[], Any]) -> int | None:
    from torch.profiler import ProfilerActivity, profile

    try:
        with no_profiler_chatter(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:  # the profiler's memory events are not a stable API: no number beats a wrong one
        return None
    if not events:
        return None
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        cur += e.nbytes()
        peak = max(peak, cur)
    return int(peak)


def is_oom(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's 'can't allocate memory' RuntimeError."""
    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def error_text(e: BaseException) -> str:
    return results.error_text(e, 300, "OutOfMemoryError" if is_oom(e) else None)


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def with_opts(objective, **opts):
    """A copy of `objective` with other options (the same model and special tokens): a benchmark scores
    one training again under other settings without touching the objective the trainer holds."""
    other = copy.copy(objective)
    other.opts = dataclasses.replace(objective.opts, **opts)
    return other


@contextmanager
def noting_cells(**fresh: Any) -> Iterator[dict[str, Any]]:
    """Within the block, the yielded dict's "cell" is the cell whose row `run_cell` is building: a study's
    patched function (an evaluation, a dev check) is not given the cell, so it is noted where `run_cell`
    starts its row (`harness.cell.base_row`, looked up at call time). `fresh`: other entries set again at
    every cell (a study's per-cell counters)."""
    import harness.cell  # (here: `benchmarks.common` serves benchmarks that never run a cell)

    base_row = harness.cell.base_row
    now: dict[str, Any] = {"cell": None, **fresh}

    def noting_the_cell(cell, ctx):
        now.update(cell=cell, **fresh)
        return base_row(cell, ctx)

    harness.cell.base_row = noting_the_cell
    try:
        yield now
    finally:
        harness.cell.base_row = base_row


def read_jsonl(path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file a study wrote (`--bench-out`); a bad line stops with its place."""
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"error: {path}:{n}: not a JSON line ({e.msg})") from None
    return records


def noise_study_main(argv: list[str] | None, *, doc: str, name: str, per: str, seeds_default: str, seeds_help: str,
                     scoring: Callable, summarize: Callable[[list[dict[str, Any]]], list[str]],
                     min_seeds: int = 0) -> int:
    """The command line of a study that runs the grid under `scoring(out, command, seeds)` (a context manager
    that appends one JSON line per `per` to `out`) and prints `summarize`'s tables of the file at the end:
    `benchmarks.selection_noise` and `benchmarks.bound_noise`. Its own options are `--bench-out`,
    `--mask-seeds` (integers, repeats dropped, at least `min_seeds`) and `--summarize FILE` (print, run
    nothing); every other argument goes to run_matrix.py."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Every other argument goes to run_matrix.py (python run_matrix.py --help).")
    ap.add_argument("--bench-out", type=Path, default=Path(f"runs/bench/{name}.jsonl"),
                    help=f"one JSON line per {per} is appended here (default: %(default)s)")
    ap.add_argument("--mask-seeds", default=seeds_default, help=f"{seeds_help} (default: %(default)s)")
    ap.add_argument("--summarize", type=Path, metavar="FILE",
                    help="print the table of a file this benchmark wrote, and run nothing")
    args, rest = ap.parse_known_args(argv)
    if args.summarize:
        if not args.summarize.is_file():
            ap.error(f"--summarize: no file {args.summarize}")
        print("\n".join(summarize(read_jsonl(args.summarize))))
        return 0
    try:
        seeds = tuple(dict.fromkeys(int(s) for s in args.mask_seeds.split(",") if s.strip()))
    except ValueError:
        ap.error(f"--mask-seeds takes integers separated by commas; got {args.mask_seeds!r}")
    if len(seeds) < min_seeds:
        ap.error(f"--mask-seeds needs {min_seeds} or more different seeds; got {args.mask_seeds!r}")
    import run_matrix  # (here: a benchmark module imports without the grid's CLI)

    with scoring(args.bench_out, " ".join(rest), seeds):
        rc = run_matrix.main(rest)
    if args.bench_out.is_file():
        print("\n".join(summarize(read_jsonl(args.bench_out))))
        print(f"wrote {args.bench_out}")
    return rc


def bench_row(bench: str, device: torch.device, identity: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A benchmark results row. `identity` (with the device name) is hashed into the key, so a rerun of
    the same configuration on the same device supersedes the old row in reports."""
    blob = json.dumps({"bench": bench, "device": device_name(str(device)), **identity}, sort_keys=True, default=str)
    key = f"{bench}-" + hashlib.sha1(blob.encode()).hexdigest()[:12]
    return new_row(key, str(device), **{"mixer": None, "objective": None, "status": "ok", "bench": bench,
                                        **identity, **fields})


def measured_row(bench: str, device: torch.device, identity: dict[str, Any], measure: Callable[[], dict[str, Any]],
                 out=None, keep: Callable[[BaseException], bool] = lambda e: True, **fields: Any) -> dict[str, Any]:
    """One configuration of a benchmark: its row with `measure()`'s fields, or status "failed" with the
    error when `keep(error)` says the failure is a result (an OOM at this size; smaller sizes still ran;
    any other error is raised); the device's memory freed after it, the row appended to `out` if given."""
    row = bench_row(bench, device, identity, **fields)
    try:
        row.update(measure())
    except Exception as e:
        if not keep(e):
            raise
        row.update(status="failed", error=error_text(e))
    free(device)
    if out is not None:
        results.append_row(out, row)
    return row


def run_and_report(label: str, name: str, run, cfg, device: torch.device, out_root, report: bool) -> int:
    """The end of every benchmark's `main`: run `cfg` into results/<name>, then (`--report`) redraw."""
    from pathlib import Path

    out = Path(out_root) / "results" / name
    print(f"{label} benchmark on {device}: rows -> {out}")
    run(cfg, device, out)
    if report:
        rebuild_reports(out_root)
    return 0


def rebuild_reports(out_root) -> None:
    """`--report`: regenerate every report under `out_root` so the new rows are drawn."""
    from pathlib import Path

    from reports import write_reports

    for path in write_reports(Path(out_root) / "results", Path(out_root) / "reports"):
        print(f"report: {path}")


class NoLaunch:
    """A Triton kernel whose launch does nothing but record (grid, keyword arguments) in `launches`:
    `kernel[grid](*args, **kw)` returns at once."""

    def __init__(self, launches: list):
        self.launches = launches

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launches.append((grid, kw))


def stub_triton_launches() -> list:
    """Count, on CPU, the PyTorch calls a GPU would issue around our Triton kernels (Mamba's scan,
    gated_context's walk): the kernels' launches become no-ops that record theirs in the returned
    list (`NoLaunch`), and the kernels' CPU path (Triton's interpreter) is chosen, so the mixers' `scan=triton` runs.
    The outputs are garbage; the counts do not depend on them. Running the kernels in the interpreter
    instead would add its own argument copies (tens of calls per launch) to the count."""
    import os

    import mixers._linear_scan_triton as lst
    import mixers._scan_triton as st

    os.environ["TRITON_INTERPRET"] = "1"  # read at each call (`available`), not at import
    launches: list = []
    stub = NoLaunch(launches)
    st._kernels = lst._kernels = lambda interpret: (stub, stub, stub)
    return launches
