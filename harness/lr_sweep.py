"""Per-cell learning-rate sweep: short runs at a few rates, judged on the dev slice, the best rate
then trained under the cell's full budget.

Why: one learning rate per preset favours whichever mixer it happens to suit (recurrent, wave and
attention mixers peak at different rates; Zoology sweeps every model over a log grid and keeps the
best). A fair grid gives every mixer its own best rate, chosen the same way for all of them.

How (one cell):
- each rate gets a *short run*: a fresh model (same seed, same init as the full run) trained with
  the same schedule (warmup, stable, decay) compressed into `frac` of the cell's budget, on the task
  alone even when the cell pretrains: short runs in the cell's stages (pretraining first) were measured
  and picked worse rates under diffusion (the task got a quarter of the budget, where larger rates win
  early; docs/learning-rate.md);
- the criterion is the short run's dev loss at its end (after its decay), on the first
  SHORT_DEV_SEQS sequences of the dev slice (never the evaluation split); a run that diverges
  (non-finite loss) loses; ties go to the first rate listed;
- the chosen rate is trained under the full budget from a fresh init. The short runs' tokens and
  seconds are *not* taken from the cell's budget: they are recorded beside it (`row["lr_sweep"]`:
  the table of rate, dev loss, tokens, seconds, and the totals), so a report can show the cost.

Resumable: a finished cell has an ok row and is skipped as a whole. Within a cell, each short run's
result is cached under `<cache>/lr_sweep/<cell key>.json` as soon as it finishes, so a cell that is
killed or fails after (or during) its sweep does not redo finished short runs when it is retried.

`auto` rates: the preset's rate and its neighbours on the log grid 1e-4, 3e-4, 1e-3, 3e-3, 1e-2,
3e-2 (e.g. tiny, lr 3e-3: 1e-3, 3e-3, 1e-2; small, lr 1e-3: 3e-4, 1e-3, 3e-3). The default short-run
length and whether a grid sweeps by default were chosen by measurement (docs/learning-rate.md).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.results import error_text
from core.files import write_atomic
from harness.budget import Budget, BudgetMeter
from harness.train import train

LOG_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
# Each short run: this fraction of the cell's budget. Measured (docs/learning-rate.md): at 0.1 and 0.25
# the short runs favoured the largest rate where the full budget preferred a smaller one (short-run
# bias); at 0.5 the pick matched the full-budget optimum.
DEFAULT_FRAC = 0.5
CRITERION = "lowest dev loss at the end of the short run (dev slice); diverged runs lose"


def auto_rates(preset_lr: float) -> list[float]:
    """The preset's rate snapped to LOG_GRID, with its grid neighbours below and above."""
    i = min(range(len(LOG_GRID)), key=lambda j: abs(math.log(LOG_GRID[j] / preset_lr)))
    lo, hi = max(0, i - 1), min(len(LOG_GRID), i + 2)
    return list(LOG_GRID[lo:hi])


def parse_rates(text: str, preset_lr: float) -> list[float]:
    """`auto` or comma-separated positive rates (duplicates dropped, order kept)."""
    if text.strip() == "auto":
        return auto_rates(preset_lr)
    try:
        rates = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--lr-sweep takes comma-separated learning rates or 'auto', got {text!r}") from None
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise ValueError(f"--lr-sweep rates must be positive numbers, got {text!r}")
    return list(dict.fromkeys(rates))


def short_budget(budget: Budget, frac: float) -> Budget:
    """The budget of one short run: `frac` of the cell's, same kind (tokens stay whole)."""
    if not 0 < frac <= 1:
        raise ValueError(f"--lr-sweep-frac must be in (0, 1], got {frac}")
    amount = budget.amount * frac
    return Budget(budget.kind, float(math.ceil(amount)) if budget.kind == "tokens" else amount)


@dataclass
class Trial:
    """One short run: its rate, the criterion, and what it cost."""

    lr: float
    dev_loss: float | None  # None: diverged (non-finite loss)
    tokens: int
    seconds: float  # wall seconds of the short run, its dev evaluations included (the real cost)
    train_seconds: float = 0.0  # the budgeted part (dev evaluations excluded)
    best_fraction: float | None = None
    error: str | None = None


TrialFn = Callable[[float, Budget], Trial]  # (rate, short budget) -> the trial


class TrialCache:
    """Finished short runs of one cell, in one small JSON file (rate -> trial), rewritten atomically."""

    def __init__(self, path: Path | None):
        self.path = path
        self.trials: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            try:
                self.trials = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):
                self.trials = {}  # a damaged cache only costs a rerun of the short runs

    @staticmethod
    def _k(lr: float, budget: Budget) -> str:
        return f"{lr!r}@{budget}@{PROTOCOL}"

    def get(self, lr: float, budget: Budget) -> Trial | None:
        t = self.trials.get(self._k(lr, budget))
        return Trial(**t) if t else None

    def put(self, trial: Trial, budget: Budget) -> None:
        self.trials[self._k(trial.lr, budget)] = dataclasses.asdict(trial)
        if self.path is None:
            return
        write_atomic(self.path, json.dumps(self.trials))


def best_trial(trials: list[Trial]) -> Trial:
    """The trial with the lowest dev loss (first on ties); an error when every run diverged."""
    finite = [t for t in trials if t.dev_loss is not None and math.isfinite(t.dev_loss)]
    if not finite:
        raise FloatingPointError(f"learning-rate sweep: every short run diverged (rates {[t.lr for t in trials]})")
    return min(finite, key=lambda t: t.dev_loss)


def run_sweep(rates: list[float], frac: float, budget: Budget, trial: TrialFn,
              cache: TrialCache | None = None, checks: int = 1) -> dict[str, Any]:
    """Short runs at every rate (cached ones reused); the row's `lr_sweep` record, `best_lr` included.
    `checks`: the dev checks each short run took (`short_checks`), which the record's criterion names."""
    if not rates:
        raise ValueError("learning-rate sweep: no rates")
    short = short_budget(budget, frac)
    cache = cache or TrialCache(None)
    trials, reused = [], 0
    for lr in rates:
        t = cache.get(lr, short)
        if t is None:
            t = trial(lr, short)
            cache.put(t, short)
        else:
            reused += 1
        trials.append(t)
    best = best_trial(trials)
    return {
        "rates": list(rates), "frac": frac, "short_budget": str(short), "criterion": criterion(checks),
        **({"short_checks": checks} if checks > 1 else {}),  # (a cell of many dev checks: judged by the best)
        "table": [{"lr": t.lr, "dev_loss": t.dev_loss, "tokens": t.tokens, "seconds": round(t.seconds, 2),
                   "train_seconds": round(t.train_seconds, 2), "best_fraction": t.best_fraction,
                   **({"error": t.error} if t.error else {})} for t in trials],
        "best_lr": best.lr, "best_dev_loss": best.dev_loss,
        "tokens": sum(t.tokens for t in trials), "seconds": round(sum(t.seconds for t in trials), 2),
        "reused": reused,  # short runs taken from the cache (a retried cell)
    }


# A short run is judged once, at its end (after its own decay): dev evaluations, not training, dominate
# the cost of short runs on small budgets (measured on CPU, tiny: 4 dev checks of the 406-question dev
# slice took ~50 of a 10k-token short run's ~60 s). The dev slice is capped for the same reason.
SHORT_EVAL_POINTS = 1
# ... unless the cell asks for many dev checks (`--dev-checks`, for a long budget on a small training set,
# which overfits early: docs/pretraining.md): there the end of a short run is past its optimum, and a rate
# judged there is judged on how much it overfitted. Such a cell's short runs take a tenth of its checks and
# are judged by their best (10 checks, the default, keep the one at the end)
SHORT_EVAL_SHARE = 10
CRITERION_BEST = "lowest dev loss of the short run's {n} dev checks (dev slice); diverged runs lose"
SHORT_DEV_SEQS = 128  # dev sequences a short run is judged on (the first ones: the same for every rate)
PROTOCOL = f"end-of-run dev loss, first {SHORT_DEV_SEQS} dev sequences"  # part of the cache key


def short_checks(eval_points: int) -> int:
    """How many dev checks a short run of a cell with `eval_points` checks takes (SHORT_EVAL_SHARE)."""
    return max(SHORT_EVAL_POINTS, eval_points // SHORT_EVAL_SHARE)


def criterion(checks: int) -> str:
    """What a sweep of short runs with `checks` dev checks judged the rates by (the row's `criterion`)."""
    return CRITERION if checks <= 1 else CRITERION_BEST.format(n=checks)


def train_trial(make_model: Callable[[], Any], objective, train_set, dev_set, cfg, device, dist=None,
                eval_points: int | None = None) -> TrialFn:
    """A TrialFn that really trains: a fresh model per rate, the cell's TrainConfig at that rate
    (fewer dev evaluations, `short_checks` of the cell's unless given; no progress bar)."""
    dev_set = dev_set.subset(np.arange(min(len(dev_set), SHORT_DEV_SEQS)))
    eval_points = short_checks(cfg.eval_points) if eval_points is None else eval_points

    def run(lr: float, budget: Budget | BudgetMeter) -> Trial:  # a meter: already checked against the data
        model = make_model()
        tcfg = dataclasses.replace(cfg, lr=lr, eval_points=min(cfg.eval_points, eval_points), progress=False,
                                   profile=False)  # (a short run is not the cell's training)
        t0 = time.perf_counter()
        try:
            res = train(model, objective, train_set, dev_set, budget, tcfg, device, dist=dist)
        except FloatingPointError as e:  # a diverged rate is a result of the sweep, not a failed cell
            return Trial(lr, None, 0, time.perf_counter() - t0, error=error_text(e))
        finally:
            del model
        return Trial(lr, res.best_dev_loss, res.tokens_seen, time.perf_counter() - t0, res.train_seconds,
                     res.best_fraction)

    return run
