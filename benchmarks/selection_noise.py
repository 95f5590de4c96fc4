"""How noisy masked diffusion's checkpoint selection is: the weights of every dev check scored again by
other estimates of the same bound (docs/diffusion-noise.md, "Checkpoint selection").

    python -m benchmarks.selection_noise --bench-out runs/bench/selection_noise.jsonl \
        --data-dir ../shared/data/jsquad-v1.3 --quick --budget tokens=9000000 --task-opt eval_limit=500 \
        --task-opt extra_train=jaquad --mixers attention --objectives diffusion --seeds 0

A diffusion cell keeps the checkpoint whose dev loss is lowest, and that dev loss is itself a Monte
Carlo estimate: `dev_nll_samples` (2) mask samples from a fixed seed, on a sample of the dev slice
(`--dev-tokens`: 32,768 tokens, 4,096 under `--quick`). This runs `run_matrix.py` with the arguments
that follow (each cell trains, is scored and writes its row as usual: the extra scoring draws its masks
from local generators and leaves the global RNG alone, so training and rows are the same numbers) and,
at every dev check of a cell whose dev loss is an estimate, scores the same weights with each of:

- `logged`: the trainer's own estimate, as the loss curve logs it;
- `sample_k8`: the same dev sample with 8 mask samples;
- `sample_seeds`: the same sample and sample count at the trainer's mask seed and at `--mask-seeds`
  (what the fixed seed hides; the first equals `logged`);
- `sample32768`: the default dev sample (32,768 tokens), 2 samples;
- `full`: the whole dev slice, 2 samples;
- `ref_a`, `ref_b`: the whole dev slice, 8 samples, at two other seeds: the reference is their mean.

One JSON line per check is appended to `--bench-out` (not under `results/`: reports read only grid and
benchmark rows there). At the end, and with `--summarize FILE` for a file already written, a table per
training run (a cell's full run; each short run of a learning-rate sweep is a run of its own): for each
estimate, how far its differences between checkpoints stray from the reference's (RMS over pairs of
checks), the checkpoint it picks and its regret (reference nats above the reference's best); and how much
the differences vary over mask seeds. Cells must run in this process (the local executor, the default);
cells whose dev loss is exact (autoregressive) write nothing.
"""
from __future__ import annotations

import itertools
import math
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import harness.cell
import harness.train
from benchmarks.common import noise_study_main, noting_cells, with_opts
from core import results
from core.env import device_name, git_commit
from harness.evaluate import dev_loss, dev_sample

REF_SEEDS = (777, 888)  # the reference's two draws (any seeds other than the trainer's)
REF_SAMPLES = 8  # mask samples per draw: the reference averages 16 per sequence
MORE_SAMPLES = 8  # `sample_k8`: the trainer's dev sample with this many mask samples instead of its 2
DEFAULT_TOKENS = harness.train.TrainConfig.dev_tokens  # the default dev sample (run_matrix's --dev-tokens)
COMPARED = ("logged", "sample_k8", "sample32768", "full")  # the estimates the table ranks against the reference


def _estimate(model, objective, data, batch_size: int, device, samples: int, seed: int) -> float:
    """The checkpoint-selection estimate with `samples` masks a sequence from mask seed `seed` (a copy of
    the objective: the trainer's own is untouched)."""
    other = with_opts(objective, dev_nll_samples=samples, nll_seed=seed)
    return dev_loss(model, other, data, batch_size, device, selection=True)


def check_record(model, objective, sample, full, batch_size: int, device, mask_seeds: tuple[int, ...]) -> dict[str, Any]:
    """Every estimate of one dev check's weights (see the module docstring)."""
    k, seed = objective.opts.dev_nll_samples, objective.opts.nll_seed

    def est(data, samples: int, s: int) -> float:
        return _estimate(model, objective, data, batch_size, device, samples, s)

    default = dev_sample(full, DEFAULT_TOKENS)
    seeds = dict.fromkeys((seed, *mask_seeds))  # the trainer's first, no seed twice
    return {"sample_seeds": {str(s): est(sample, k, s) for s in seeds},
            "sample_k8": est(sample, MORE_SAMPLES, seed), "sample32768": est(default, k, seed), "full": est(full, k, seed),
            "ref_a": est(full, REF_SAMPLES, REF_SEEDS[0]), "ref_b": est(full, REF_SAMPLES, REF_SEEDS[1]),
            "seqs": {"sample": len(sample), "sample32768": len(default), "full": len(full)}}


@contextmanager
def scoring_every_check(out: Path, command: str, mask_seeds: tuple[int, ...]) -> Iterator[None]:
    """Within the block, every dev check of a cell whose objective estimates its dev loss appends one
    record to `out`. The whole dev slice is the one `train` samples from (`dev_sample`, looked up at call
    time); the cell is noted by `noting_cells`, which counts its training runs afresh."""
    sample, eval_point = harness.train.dev_sample, harness.train._Run.eval_point
    commit = git_commit()  # the code that runs (read once: the process keeps what it imported)

    def keeping_the_slice(dev, *args, **kwargs):  # once per call of `train`: one training run
        now["dev"], now["run"] = dev, now["run"] + 1
        return sample(dev, *args, **kwargs)  # (dev_sample's own defaults: a copy of them could drift)

    def scored_again(self, frac, stage):
        eval_point(self, frac, stage)
        if not hasattr(self.objective.opts, "dev_nll_samples"):  # an exact dev loss: nothing to estimate
            return
        t0 = time.perf_counter()
        rec = check_record(self.model, self.objective, self.dev_set, now["dev"], self.cfg.eval_batch_size,
                           self.device, mask_seeds)
        point, cell = self.res.loss_curve[-1], now["cell"]
        results.append_row(out, {
            "study": "selection_noise", "command": command, "key": cell.key(), "mixer": cell.mixer,
            "objective": cell.objective, "seed": cell.seed, "run": now["run"], "lr": self.cfg.lr,
            "stage": stage.name, "frac": point["frac"], "step": point["step"], "logged": point["dev_loss"],
            **rec, "extra_s": round(time.perf_counter() - t0, 2), "device": device_name(str(self.device)),
            "git_commit": commit})

    with noting_cells(run=0) as now:  # `now["dev"]`: the whole dev slice, once `train` has sampled it
        harness.train.dev_sample, harness.train._Run.eval_point = keeping_the_slice, scored_again
        try:
            yield
        finally:
            harness.train.dev_sample, harness.train._Run.eval_point = sample, eval_point


def _rms(pairs: list[tuple[int, int]], x: list[float], ref: list[float]) -> float:
    """RMS over pairs of checks of (x's difference between them - the reference's)."""
    return math.sqrt(sum(((x[i] - x[j]) - (ref[i] - ref[j])) ** 2 for i, j in pairs) / len(pairs))


def summarize(records: list[dict[str, Any]]) -> list[str]:
    """A markdown table per training run with at least two checks (see the module docstring)."""
    runs: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        runs[r["command"], r["key"], r["run"]].append(r)
    lines = ["| cell | run (lr) | checks | estimate | dev sequences | RMS error of differences | picks | regret |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    notes = []
    for (_, _, run), checks in runs.items():
        if len(checks) < 2:
            continue
        checks = sorted(checks, key=lambda r: r["step"])
        ref = [(r["ref_a"] + r["ref_b"]) / 2 for r in checks]
        best = min(ref)
        pairs = list(itertools.combinations(range(len(checks)), 2))
        name = f"{checks[0]['mixer']} x {checks[0]['objective']}, seed {checks[0]['seed']}"
        for est in COMPARED:
            x = [r[est] for r in checks]
            i = min(range(len(x)), key=x.__getitem__)
            seqs = checks[0]["seqs"]["sample" if est in ("logged", "sample_k8") else est]
            lines.append(f"| {name} | {run} ({checks[0]['lr']:g}) | {len(checks)} | {est} | {seqs} | "
                         f"{_rms(pairs, x, ref):.3f} | {checks[i]['frac']:.2f} | {ref[i] - best:.3f} |")
        seeds = list(checks[0]["sample_seeds"])
        spread = math.sqrt(sum(statistics.pvariance([checks[i]["sample_seeds"][s] - checks[j]["sample_seeds"][s]
                                                     for s in seeds]) for i, j in pairs) / len(pairs))
        own = _rms(pairs, [r["ref_a"] for r in checks], [r["ref_b"] for r in checks])
        notes.append(f"- {name}, run {run}: the reference's best check is {checks[ref.index(best)]['frac']:.2f}; "
                     f"the dev sample's differences vary by {spread:.3f} nats (RMS of their sd over mask seeds "
                     f"{', '.join(seeds)}); the reference's two draws differ by {own:.3f} (RMS over pairs).")
    if not notes:
        return ["No training run with two or more dev checks of an estimated dev loss."]
    return lines + [""] + notes


def main(argv: list[str] | None = None) -> int:
    return noise_study_main(argv, doc=__doc__, name="selection_noise", per="dev check", seeds_default="1,2,3,4,5",
                            seeds_help="other mask seeds the dev sample is scored at",
                            scoring=scoring_every_check, summarize=summarize)


if __name__ == "__main__":
    sys.exit(main())
