"""Statistics a report states with its numbers: intervals over seeds, and paired differences.

- `mean_ci`: mean over seeds with a two-sided 95% Student-t interval (n >= 2); with n = 1 there is
  no interval, and the report says so instead of showing a bare number as if it were settled.
- `paired_bootstrap`: is mixer A's score different from mixer B's *on the same questions and the
  same seeds*? The per-question score differences are resampled with replacement (10,000 resamples,
  seeded) and the percentile interval of the mean difference is read off. "Significant at 95%" means
  that interval excludes 0. Pairing removes the questions' own difficulty from the comparison, which is
  why it can resolve differences that the overlapping seed intervals cannot. With several seeds each
  resample also draws the seeds with replacement, independently of the questions (the pigeonhole
  bootstrap: Owen, Ann. Appl. Stat. 1(2), 2007; mildly conservative for a mean over a crossed design),
  so the interval covers the seed-to-seed spread too: two cells whose ranking flips from seed to seed
  are not called different because their questions, averaged over those seeds, happen to agree. With
  one seed it covers question sampling only; with few seeds the seed part is coarse (3 seeds: 10
  distinct draws).

Kept free of scipy (not a dependency): the t quantiles for 95% are tabulated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0
# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30; above 30 a Cornish-Fisher expansion in 1/df
# to the third order (within 2e-6 of the published quantiles from df = 31 on)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("t quantile needs df >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class MeanCI:
    mean: float
    lo: float | None  # None when n = 1: no interval
    hi: float | None
    n: int

    @property
    def half(self) -> float | None:
        return None if self.lo is None else (self.hi - self.lo) / 2

    def text(self, spec: str = ".3f", signed: bool = False) -> str:
        """'0.061 ± 0.004 (n=3)', or '0.061 (n=1, no interval)'; `signed` for a difference: '+0.061 ± 0.004
        (n=3)' (the sign on the mean only)."""
        mean = f"{self.mean:{'+' if signed else ''}{spec}}"
        if self.half is None:
            return f"{mean} (n=1, no interval)"
        return f"{mean} ± {self.half:{spec}} (n={self.n})"


def mean_ci(values: Sequence[float]) -> MeanCI:
    """Mean and 95% t-interval of independent values (e.g. one score per seed)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        raise ValueError("mean_ci of no values")
    m = float(v.mean())
    if v.size == 1:
        return MeanCI(m, None, None, 1)
    half = t975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return MeanCI(m, m - half, m + half, int(v.size))


@dataclass(frozen=True)
class PairedDiff:
    diff: float  # mean over questions (and seeds) of a - b
    lo: float
    hi: float
    n_questions: int
    n_seeds: int
    resamples: int
    level: float

    @property
    def significant(self) -> bool:
        return self.lo > 0 or self.hi < 0


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL,
                     seed: int = SEED, weights: np.ndarray | None = None,
                     resample_seeds: bool = True) -> PairedDiff:
    """Percentile bootstrap of mean(a - b); `a`, `b`: (seeds, questions) or (questions,) arrays of
    per-question scores, aligned (same questions, same seeds, same order). Each resample draws the
    questions with replacement and, with more than one seed and `resample_seeds`, the seeds too
    (independently: a pigeonhole bootstrap); `resample_seeds=False` averages over the seeds first and
    resamples the questions only (the seeds run taken as fixed). `weights` (questions,): the statistic
    is sum(a - b) / sum(weights) over the resampled questions instead (each seed's questions weigh the
    same), e.g. summed NLLs over target tokens: a difference of log-perplexities, whose questions weigh
    by their length."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(f"paired_bootstrap needs equal, non-empty shapes, got {a.shape} and {b.shape}")
    diffs = a - b  # (S, Q)
    n_seeds, q = diffs.shape
    d = diffs.mean(axis=0)  # (Q,): per-question difference, averaged over seeds
    w = None if weights is None else np.asarray(weights, float)
    if w is not None and (w.shape != (q,) or not np.all(w >= 0) or w.sum() <= 0):
        raise ValueError(f"paired_bootstrap needs {q} non-negative weights with a positive sum")
    crossed = resample_seeds and n_seeds > 1
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // q)  # bounded memory: resample indices in blocks
    for s in range(0, resamples, chunk):
        n = min(chunk, resamples - s)
        idx = rng.integers(0, q, size=(n, q))
        if crossed:  # each resample's own seeds: (n, S) draw counts, then its seed-averaged differences (n, Q)
            draws = rng.integers(0, n_seeds, size=(n, n_seeds, 1))
            counts = (draws == np.arange(n_seeds)).sum(axis=1)  # (n, S): how often each seed was drawn
            picked = np.take_along_axis(counts @ diffs / n_seeds, idx, axis=1)
        else:
            picked = d[idx]
        # (a resample of only weightless questions, e.g. NLLs over no target token, all 0: 0 / tiny = 0)
        means[s:s + n] = picked.mean(axis=1) if w is None else picked.sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1e-300)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    point = d.mean() if w is None else d.sum() / w.sum()
    return PairedDiff(float(point), float(lo), float(hi), q, a.shape[0], resamples, level)


def aligned_scores(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], metric: str
                   ) -> tuple[np.ndarray, np.ndarray] | str:
    """Per-question `metric` of two cells' rows, paired by seed and question id: two (seeds, questions)
    arrays, or the reason they cannot be paired (one line, shown in the report)."""
    def per_seed(rows: list[dict[str, Any]]) -> dict[Any, dict[str, float]] | str:
        out = {}
        for r in rows:
            pq = r.get("per_question")
            if not pq or metric not in pq or "id" not in pq:
                return "no per-question scores in the rows (written before they were recorded)"
            if len(pq["id"]) != len(pq[metric]):
                return "malformed per-question scores"
            out[r.get("seed")] = dict(zip(pq["id"], pq[metric]))
        return out

    sa, sb = per_seed(rows_a), per_seed(rows_b)
    for s in (sa, sb):
        if isinstance(s, str):
            return s
    seeds = sorted(set(sa) & set(sb), key=str)
    if not seeds:
        return "no seed in common"
    ids = sorted(set.intersection(*(set(sa[s]) & set(sb[s]) for s in seeds)))
    if not ids or any(len(sa[s]) != len(ids) or len(sb[s]) != len(ids) for s in seeds):
        return "not scored on the same questions"
    return (np.array([[sa[s][i] for i in ids] for s in seeds]), np.array([[sb[s][i] for i in ids] for s in seeds]))
