"""Does a diffusion bound's reported Monte Carlo error match its spread over mask seeds? The final weights
of every cell with an estimated bound scored again at other seeds (docs/diffusion-noise.md).

    python -m benchmarks.bound_noise --data-dir ../shared/data/jsquad-v1.3 --quick \
        --budget tokens=1000000 --task-opt eval_limit=500 --task-opt extra_train=jaquad --objectives diffusion

A masked diffusion cell reports a perplexity bound that is itself a Monte Carlo estimate (`nll_samples`
mask samples a sequence, from the fixed `nll_seed`), and beside it `metrics.nll_mc_se`: the standard error
of its log, estimated from the same samples (`MaskedDiffusion.nll_with_variance`). The fixed seed makes
the number repeatable; it does not make it exact. This runs `run_matrix.py` with the arguments that follow
(every cell trains, is scored and writes its row as usual: the extra passes draw their masks from local
generators and leave the global RNG alone, so the rows are the same numbers) and, after a cell's bound,
scores the same weights on the same questions at each of `--mask-seeds` with the same estimator. One JSON
line per cell is appended to `--bench-out` (not under `results/`: reports read only grid and benchmark
rows there); at the end, and with `--summarize FILE` for a file already written, a table: the reported
error, the errors the other seeds report, the standard deviation of the log-bound over those seeds, their
ratio (1 when the reported error is right), how far the reported bound sits from the seeds' mean, and the
same sd again from the batches (each batch's sums over all the seeds: batches draw independently, so
their variances add up): the finer yardstick. An sd over a dozen seeds is itself uncertain by ~20%, and
every cell of a grid draws the same masks at a seed, so its cells' ratios err together: a low-spread set
of seeds once made the reported error look 1.3-1.4x too high in four cells at once (docs/diffusion-noise.md).

Cells must run in this process (the local executor, the default); cells whose perplexity is exact
(autoregressive) write nothing. Cost: one more bound evaluation per seed and cell.
"""
from __future__ import annotations

import itertools
import math
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import harness.cell
from benchmarks.common import noise_study_main, noting_cells, with_opts
from core import results
from core.env import device_name, git_commit

NO_RECORD = "No cell with an estimated bound (a masked diffusion cell) in the file."


@contextmanager
def scoring_the_bound_again(out: Path, command: str, mask_seeds: tuple[int, ...]) -> Iterator[None]:
    """Within the block, every cell whose bound comes with a Monte Carlo error appends one record to `out`:
    its reported NLL and error, and both again at each of `mask_seeds` other than its own `nll_seed`. The
    cell is noted by `noting_cells`; the bound is `harness.cell.eval_nll`."""
    eval_nll = harness.cell.eval_nll
    commit = git_commit()  # the code that runs (read once: the process keeps what it imported)

    def by_batch(model, objective, data, batch_size, device, progress=None):
        """`eval_nll` on a copy of `objective` whose bound notes each batch's summed NLL (nats): (`eval_nll`'s
        result, the batches' sums). The copy: the trainer's objective is left as it is."""
        sums, copy = [], with_opts(objective)

        def noted(model, batch):
            out = objective.nll_with_variance(model, batch)
            sums.append(float(out.total))  # (a host read a batch: a study, not a cell)
            return out

        copy.nll_with_variance = noted
        return eval_nll(model, copy, data, batch_size, device, progress=progress), sums

    def scored_again(model, objective, data, batch_size, device, progress=None):
        reported, own_sums = by_batch(model, objective, data, batch_size, device, progress=progress)
        nll, se = reported.nll, reported.se
        if se is None:  # an exact perplexity: nothing to check
            return reported
        t0, cell, own = time.perf_counter(), now["cell"], objective.opts.nll_seed
        others = [s for s in dict.fromkeys(mask_seeds) if s != own]  # the reported draw is not counted twice
        print(f"bound_noise: {cell.label()}: the bound again at {len(others)} mask seeds", file=sys.stderr, flush=True)
        scored = {str(s): by_batch(model, with_opts(objective, nll_seed=s), data, batch_size, device) for s in others}
        results.append_row(out, {
            "study": "bound_noise", "command": command, "key": cell.key(), "mixer": cell.mixer,
            "objective": cell.objective, "seed": cell.seed, "ppl_key": objective.ppl_key, "nll_seed": own,
            "samples": objective.opts.nll_samples, "eval_seqs": len(data), "nll": nll, "nll_mc_se": se,
            "seeds": {s: [v.nll, v.se] for s, (v, _) in scored.items()},
            "batch_nll": {str(own): own_sums, **{s: sums for s, (_, sums) in scored.items()}},
            "extra_s": round(time.perf_counter() - t0, 2), "device": device_name(str(device)), "git_commit": commit})
        return reported

    with noting_cells() as now:
        harness.cell.eval_nll = scored_again
        try:
            yield
        finally:
            harness.cell.eval_nll = eval_nll


def summarize(records: list[dict[str, Any]]) -> list[str]:
    """A markdown table, one line per cell (the last record of a cell and command wins: a rerun)."""
    cells = {(r["command"], r["key"]): r for r in records}
    if not cells:
        return [NO_RECORD]
    lines = ["| cell | eval sequences | samples a sequence | bound | reported error (nats) | other seeds' errors "
             "| sd over other seeds (nats) | reported error / sd | reported bound from the seeds' mean "
             "| sd from the batches (nats) | reported error / it |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    counts = set()
    for r in cells.values():
        nlls = [v[0] for v in r["seeds"].values()]
        errs = [v[1] for v in r["seeds"].values()]
        counts.add(len(nlls))
        sd = statistics.stdev(nlls) if len(nlls) >= 2 else math.nan
        spread = f"{min(errs):.4f}-{max(errs):.4f}"  # (every record has a seed: --mask-seeds holds two)
        ratio = f"{r['nll_mc_se'] / sd:.2f}" if sd > 0 else "-"
        z = f"{(r['nll'] - statistics.fmean(nlls)) / sd:+.1f} sd" if sd > 0 else "-"
        sd_b = batch_sd(r)
        ratio_b = f"{r['nll_mc_se'] / sd_b:.2f}" if sd_b > 0 else "-"
        lines.append(f"| {r['mixer']} x {r['objective']}, seed {r['seed']} | {r['eval_seqs']} | {r['samples']} | "
                     f"{math.exp(min(r['nll'], 50.0)):.1f} ± {100 * math.expm1(r['nll_mc_se']):.1f}% | "
                     f"{r['nll_mc_se']:.4f} | {spread} | {'-' if math.isnan(sd) else f'{sd:.4f}'} | {ratio} | {z} | "
                     f"{'-' if math.isnan(sd_b) else f'{sd_b:.4f}'} | {ratio_b} |")
    n = max(counts)
    lines += ["", f"- Errors and sd are of the log-bound (nats per target token); the bound's ± is exp(error) - 1. "
              f"An sd from {n} seeds is itself uncertain by about {100 / math.sqrt(2 * max(n - 1, 1)):.0f}% "
              f"(1 / sqrt(2 (n - 1))): a ratio within that of 1 says the reported error is right. Cells of one "
              f"grid draw the same masks at a seed, so their ratios err together: not independent checks.",
              "- Batches draw independently (each mixes its ids into the seed), so the bound's variance is also "
              "the sum over batches of each batch's variance over all the seeds, the cell's own included: "
              "`sd from the batches`, the same quantity known about sqrt(batches) times more finely."]
    return lines + _pairs(list(cells.values()))


def batch_sd(record: dict[str, Any]) -> float:
    """The log-bound's sd from its batches: sqrt(sum over batches of each batch's summed-NLL variance over the
    seeds) / target tokens (the count: the own seed's sums over its NLL); nan without two seeds' batches
    (records written before the study kept them)."""
    seeds = record.get("batch_nll") or {}
    if len(seeds) < 2 or record["nll"] <= 0:
        return math.nan
    count = sum(seeds[str(record["nll_seed"])]) / record["nll"]
    return math.sqrt(sum(statistics.variance(b) for b in zip(*seeds.values()))) / count


def _pairs(records: list[dict[str, Any]]) -> list[str]:
    """Cells of one grid are scored at the same seeds on the same questions, so one seed draws the same
    masks for both: a table of how much the difference of two cells' log-bounds moves over the seeds
    (paired), against what the two reported errors would say if the draws were independent."""
    lines = []
    for a, b in itertools.combinations(records, 2):
        shared = [s for s in a["seeds"] if s in b["seeds"]]
        if a["command"] != b["command"] or a["eval_seqs"] != b["eval_seqs"] or len(shared) < 2:
            continue
        diff = [a["seeds"][s][0] - b["seeds"][s][0] for s in shared]
        lines.append(f"| {a['mixer']} x {a['objective']}, seed {a['seed']} - {b['mixer']} x {b['objective']}, "
                     f"seed {b['seed']} | {a['nll'] - b['nll']:+.3f} | {statistics.stdev(diff):.4f} | "
                     f"{math.hypot(a['nll_mc_se'], b['nll_mc_se']):.4f} |")
    if not lines:
        return []
    return ["", "| difference of two cells (same grid, same questions) | difference of log-bounds (nats) "
            "| sd over the shared seeds, paired | the two reported errors combined |", "|---|---:|---:|---:|",
            *lines, "", "- The reported errors combined (sqrt(a² + b²)) are what the report's `bound ± (MC)` "
            "column says of a difference if draws were independent; the paired sd is how much it moves."]


def main(argv: list[str] | None = None) -> int:
    return noise_study_main(argv, doc=__doc__, name="bound_noise", per="cell",
                            seeds_default=",".join(str(s) for s in range(1, 13)),
                            seeds_help="the other mask seeds each bound is scored at, two or more",
                            scoring=scoring_the_bound_again, summarize=summarize, min_seeds=2)


if __name__ == "__main__":
    sys.exit(main())
