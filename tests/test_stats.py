"""Report statistics: intervals over seeds and the paired bootstrap, on planted data."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from reports import seeds, stats


def test_mean_ci_n1_has_no_interval_and_says_so():
    ci = stats.mean_ci([0.25])
    assert ci.n == 1 and ci.lo is None and ci.half is None
    assert ci.text() == "0.250 (n=1, no interval)"


def test_mean_ci_n3_is_the_student_t_interval():
    ci = stats.mean_ci([0.1, 0.2, 0.3])
    half = 4.303 * 0.1 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert ci.n == 3 and ci.mean == pytest.approx(0.2)
    assert (ci.lo, ci.hi) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert ci.text() == f"0.200 ± {half:.3f} (n=3)"
    assert stats.t975(1000) == pytest.approx(1.962, abs=2e-3)  # large df: close to the normal quantile


@pytest.mark.parametrize("df, t, tol", [(1, 12.706, 1e-4), (2, 4.303, 1e-4), (30, 2.042, 1e-4), (31, 2.039513, 5e-6),
                                        (40, 2.021075, 5e-6), (60, 2.000298, 5e-6), (120, 1.979930, 5e-6)])
def test_t975_matches_published_quantiles_at_both_edges_of_its_table(df, t, tol):
    """Seed intervals use t_{0.975, n-1}: df 1 (two seeds) and 30 end the table (3 decimals), 31 on use
    the expansion (published two-sided 95% values to 6 decimals; the third-order expansion is within
    2e-6 of them). A quantile read one row off, or a wrong expansion term, widens or narrows every
    interval in the reports."""
    assert stats.t975(df) == pytest.approx(t, abs=tol)


def test_paired_bootstrap_of_a_constant_difference_is_that_difference_in_every_resample():
    """Every resampled mean of a constant per-question difference is that constant, so the interval is a
    point: a resample left unfilled (the buffer is np.empty) would show as a bound off the constant."""
    a = np.full((2, 7), 0.75)
    d = stats.paired_bootstrap(a, a - 0.25, resamples=10)
    assert (d.diff, d.lo, d.hi) == (pytest.approx(0.25), pytest.approx(0.25), pytest.approx(0.25))
    assert d.significant and (d.n_questions, d.n_seeds, d.resamples) == (7, 2, 10)


def test_paired_bootstrap_resamples_every_question():
    """A difference carried by the first question alone: resampling that never drew it (an index range
    off by one) would put the whole interval at 0, below the observed mean difference 0.25."""
    d = stats.paired_bootstrap(np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(4), resamples=2000)
    assert d.diff == 0.25 and d.lo == 0.0 and d.hi >= 0.5


def test_paired_bootstrap_by_default_is_seeded_with_0_so_a_reports_interval_can_be_reproduced():
    """A report's intervals are the default call's: the same numbers as an explicit seed 0 (what the
    module's docstring promises a reader rerunning them), not another seed's."""
    a, b = _planted(np.random.default_rng(3), q=50, n_seeds=2, delta=0.02)
    d, d0, d1 = (stats.paired_bootstrap(a, b, resamples=500), stats.paired_bootstrap(a, b, resamples=500, seed=0),
                 stats.paired_bootstrap(a, b, resamples=500, seed=1))
    assert (d.lo, d.hi) == (d0.lo, d0.hi) and (d.lo, d.hi) != (d1.lo, d1.hi)


@pytest.mark.parametrize("q, resamples", [(3, 700_000), (3_000_000, 3)])
def test_paired_bootstrap_draws_its_resample_indices_in_blocks_of_at_most_2m(monkeypatch, q, resamples):
    """Memory stays bounded whatever the counts: indices are drawn at most 2,000,000 at a time (one
    resample, q indices, when q alone is more), and the blocks cover every resample exactly once.
    q = 3 sits where 2,000,000 // q rounds down (666,666 resamples a block, not 666,667)."""
    blocks = []

    def integers(lo, hi, size):  # records each block's (resamples, questions); the values do not matter here
        blocks.append(size)
        return np.zeros(size, dtype=np.int64)

    monkeypatch.setattr(stats.np.random, "default_rng", lambda seed: SimpleNamespace(integers=integers))
    stats.paired_bootstrap(np.ones(q), np.zeros(q), resamples=resamples)
    assert all(n * width <= max(width, 2_000_000) and width == q for n, width in blocks), blocks[:3]
    assert sum(n for n, _ in blocks) == resamples


def _planted(rng, q: int, n_seeds: int, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-question F1-like scores of two cells: shared question difficulty, independent noise, and a
    planted mean difference `delta` (a - b)."""
    difficulty = rng.uniform(0.0, 0.8, size=q)
    a = np.clip(difficulty + delta + rng.normal(0, 0.15, size=(n_seeds, q)), 0, 1)
    b = np.clip(difficulty + rng.normal(0, 0.15, size=(n_seeds, q)), 0, 1)
    return a, b


def test_paired_bootstrap_finds_a_planted_difference():
    a, b = _planted(np.random.default_rng(1), q=300, n_seeds=3, delta=0.05)
    d = stats.paired_bootstrap(a, b)
    assert d.significant and d.lo > 0 and d.lo < d.diff < d.hi
    assert d.diff == pytest.approx(0.05, abs=0.02)
    assert (d.n_questions, d.n_seeds, d.resamples, d.level) == (300, 3, 10_000, 0.95)
    assert not stats.paired_bootstrap(b, b).significant  # identical cells: difference exactly 0


def test_paired_bootstrap_interval_has_its_stated_level():
    """The interval labelled 95% is the 2.5%/97.5% percentiles of the resampled means: for 2000 questions
    with N(0, 1) differences its half-width is 1.96 sd / sqrt(q) (the mean's sampling spread) within a
    few percent; a 90% interval (1.645) would be 16% narrower. Seeded, so the same numbers every run."""
    q = 2000
    a = np.random.default_rng(1).normal(0.0, 1.0, size=q)
    se = a.std() / math.sqrt(q)
    d = stats.paired_bootstrap(a, np.zeros(q))
    assert d.level == 0.95 and d.diff == pytest.approx(a.mean())
    assert (d.hi - d.lo) / 2 == pytest.approx(1.959964 * se, rel=0.05)
    d90 = stats.paired_bootstrap(a, np.zeros(q), level=0.90)
    assert d90.level == 0.90 and (d90.hi - d90.lo) / 2 == pytest.approx(1.644854 * se, rel=0.05)


def test_paired_bootstrap_false_positive_rate_is_near_its_level():
    """200 planted null datasets (no difference): the test at 95% flags about 5% of them. With 200
    trials the count of false positives is Binomial(200, 0.05): mean 10, and 0..20 holds with
    probability > 0.999."""
    rng = np.random.default_rng(7)
    flagged = 0
    for i in range(200):
        a, b = _planted(rng, q=100, n_seeds=1, delta=0.0)
        flagged += stats.paired_bootstrap(a, b, resamples=1000, seed=i).significant
    assert 1 <= flagged <= 20, flagged


def _row(mixer: str, seed: int, f1: list[float], ids: list[str] | None = None, objective="autoregressive"):
    ids = ids or [f"q{i}" for i in range(len(f1))]
    return {"key": f"{mixer}{seed}{objective}", "mixer": mixer, "objective": objective, "seed": seed, "status": "ok",
            "norm": "pre", "metrics": {"f1": float(np.mean(f1)), "em": 0.0}, "train": {"lr": 1e-3},
            "per_question": {"id": ids, "em": [0] * len(f1), "f1": list(f1)}}


def test_aligned_scores_pairs_by_seed_and_question_id_and_explains_failures():
    a = [_row("m", 0, [0.1, 0.2], ["x", "y"]), _row("m", 1, [0.3, 0.4], ["x", "y"])]
    b = [_row("attention", 1, [0.5, 0.6], ["y", "x"]), _row("attention", 0, [0.7, 0.8], ["y", "x"])]
    xa, xb = stats.aligned_scores(a, b, "f1")
    assert xa.tolist() == [[0.1, 0.2], [0.3, 0.4]] and xb.tolist() == [[0.8, 0.7], [0.6, 0.5]]
    old = dict(a[0])
    del old["per_question"]
    assert "no per-question scores" in stats.aligned_scores([old], b, "f1")
    assert "same questions" in stats.aligned_scores([_row("m", 0, [0.1, 0.2], ["x", "z"])], b[1:], "f1")
    # one cell scored on more questions: not paired on the common part either (its mean is not comparable)
    assert "same questions" in stats.aligned_scores([_row("m", 0, [0.1], ["x"])], b[1:], "f1")
    assert "no seed in common" in stats.aligned_scores([_row("m", 5, [0.1, 0.2], ["x", "y"])], b, "f1")
    # one seed's two cells scored other questions, the other seed's the same: refused, whatever the union is
    a2 = [_row("m", 0, [0.1, 0.2], ["x", "y"]), _row("m", 1, [0.3, 0.4], ["x", "y"])]
    b2 = [_row("attention", 0, [0.5, 0.6], ["x", "z"]), _row("attention", 1, [0.7, 0.8], ["x", "y"])]
    assert "same questions" in stats.aligned_scores(a2, b2, "f1")


def test_seed_section_aggregates_n1_and_n3_and_marks_significance():
    rng = np.random.default_rng(3)
    rows = []
    for s in range(3):
        base = rng.uniform(0, 0.5, size=200)
        rows.append(_row("attention", s, list(base)))
        rows.append(_row("better", s, list(np.clip(base + 0.1, 0, 1))))
        rows.append(_row("same", s, list(base)))
    rows.append(_row("single", 0, [0.2] * 200))
    old = _row("old", 0, [0.2] * 200)
    del old["per_question"]
    rows.append(old)
    text = "\n".join(seeds.seed_section(rows, "f1"))
    line = {l.split(" | ")[0].strip("| "): l for l in text.splitlines() if l.startswith("| ")}
    assert "(n=3)" in line["better"] and "**yes**" in line["better"] and "+0.100" in line["better"]
    assert "(n=3)" in line["same"] and "**yes**" not in line["same"] and "+0.000" in line["same"]
    assert "n=1, no interval" in line["single"]
    assert "(reference)" in line["attention"]
    assert "n/a: no per-question scores" in line["old"]
    assert "10,000 resamples" in text and "95%" in text


def _lines_by_cell(rows, key="f1"):
    """seed_section's table lines by (mixer, objective): its first two columns."""
    text = "\n".join(seeds.seed_section(rows, key))
    return {tuple(c.strip() for c in l.strip("| ").split(" | ")[:2]): l for l in text.splitlines() if l.startswith("| ")}


def test_seed_section_compares_each_mixer_with_attention_of_its_own_objective():
    """Δ vs attention pairs a cell with the attention cell of the *same* objective: adding a diffusion
    attention cell with very different per-question scores leaves the autoregressive comparison as it
    was, and a diffusion mixer is measured against diffusion attention (-0.200), not the autoregressive
    one (about +0.4 here) - whichever order the cells come in."""
    rng = np.random.default_rng(5)
    ar, diff = [], []
    for s in range(3):
        base = rng.uniform(0, 0.5, size=200)
        ar += [_row("attention", s, list(base)), _row("better", s, list(base + 0.1))]
        dbase = rng.uniform(0.7, 1.0, size=200)
        diff += [_row("attention", s, list(dbase), objective="diffusion"),
                 _row("better", s, list(dbase - 0.2), objective="diffusion")]
    alone = _lines_by_cell(ar)[("better", "autoregressive")]
    for rows in (ar + diff, diff + ar):
        line = _lines_by_cell(rows)
        assert line[("better", "autoregressive")].split(" | ")[-1] == alone.split(" | ")[-1]
        assert "+0.100 [+0.100, +0.100] **yes**" in line[("better", "autoregressive")]
        assert "-0.200 [-0.200, -0.200] **yes**" in line[("better", "diffusion")]
        assert "(reference)" in line[("attention", "diffusion")] and "(reference)" in line[("attention", "autoregressive")]


@pytest.mark.parametrize("call, message", [
    (lambda: stats.t975(0), r"t quantile needs df >= 1"),
    (lambda: stats.mean_ci([]), r"mean_ci of no values"),
    (lambda: stats.mean_ci([None, float("nan")]), r"mean_ci of no values"),  # nothing finite is nothing
    (lambda: stats.paired_bootstrap(np.zeros((2, 3)), np.zeros((1, 3))),
     r"paired_bootstrap needs equal, non-empty shapes, got \(2, 3\) and \(1, 3\)"),
    (lambda: stats.paired_bootstrap([], []), r"needs equal, non-empty shapes, got \(1, 0\) and \(1, 0\)"),
], ids=["t975-df0", "mean_ci-empty", "mean_ci-nothing-finite", "bootstrap-shapes", "bootstrap-empty"])
def test_statistics_of_inputs_they_cannot_describe_are_errors(call, message):
    """No interval of zero values or of misaligned cells: a clear ValueError, not a NaN or an index
    error (a quantile of df 0 would read the table's last entry; unequal shapes would broadcast)."""
    with pytest.raises(ValueError, match=message):
        call()


def test_aligned_scores_refuses_per_question_scores_that_do_not_match_their_ids():
    """A row whose per-question scores are not one per question id cannot be paired: its cell's Δ says
    'malformed per-question scores' (zip would silently drop the unmatched questions)."""
    bad = _row("m", 0, [0.1, 0.2], ["x", "y"])
    bad["per_question"]["f1"] = [0.1]
    good = [_row("attention", 0, [0.5, 0.6], ["x", "y"])]
    assert stats.aligned_scores([bad], good, "f1") == "malformed per-question scores"
    assert stats.aligned_scores(good, [bad], "f1") == "malformed per-question scores"


def test_seed_section_lists_each_seeds_rate_when_a_sweep_chose_differently():
    """The seeds of one swept configuration may each choose a different rate: the lr column lists them
    by seed, not the first seed's rate as if all had trained at it."""
    rows = []
    for s, lr in ((2, 3e-3), (0, 1e-3), (1, 3e-3)):
        r = _row("attention", s, [0.2, 0.3])
        r["train"] = {"lr": lr}
        r["lr_sweep"] = {"rates": [1e-3, 3e-3], "frac": 0.25, "tokens": 1000, "seconds": 2.0}
        rows.append(r)
    line = _lines_by_cell(rows)[("attention", "autoregressive")]
    assert " | 3 | " in line and " | 0.001, 0.003, 0.003 | " in line


def _swept(row, lr, tokens, seconds):
    row["train"] = {"lr": lr}
    row["lr_sweep"] = {"tokens": tokens, "seconds": seconds, "table": []}
    return row


def test_seed_section_in_full_over_two_seeds():
    """The whole table for two mixers over two seeds, each number worked by hand: gated_context's F1 per
    seed 0.40 and 0.45, mean 0.425 ± t(0.975, 1) · 0.0354 / √2 = 0.318; its per-question differences from
    attention 0.1, 0.1 (seed 0) and 0.2, 0.1 (seed 1), mean +0.125, its interval from 0.1 (every question
    0.1) to 0.2 (seeds and questions both drawn: seed 1 twice and its first question twice, a chance of
    1/4 · 1/4 > 2.5%; with the questions alone resampled it would end at 0.15); attention's sweep cost, the mean over
    its seeds of 1,000 and 2,000 tokens, 2 and 4 s; gated_context ran no sweep. Sorted best first. A failed
    seed is no seed of its cell. A grid of one mixer has nothing to compare: no Δ column."""
    rows = []
    for s in (0, 1):
        rows += [_swept(_row("attention", s, [0.2, 0.4]), 1e-3, 1000 + 1000 * s, 2.0 + 2 * s),
                 {**_row("gated_context", s, [0.3 + 0.1 * s, 0.5]), "train": {"lr": 3e-3}}]
    rows.append({**_row("gated_context", 2, [0.0, 0.0]), "status": "failed"})
    text = seeds.seed_section(rows, "f1")
    assert "lr: the rate each cell trained at, chosen by its learning-rate sweep (below)" in text[-1]
    assert text[:4] == [
        "| mixer | objective | seeds | f1 | lr | LR sweep cost (per seed) | Δ f1 vs attention [95% CI] significant? |",
        "|---|---|---:|---:|---:|---:|---:|",
        "| gated_context | autoregressive | 2 | 0.425 ± 0.318 (n=2) | 0.003 (2/2 seeds) | — "
        "| +0.125 [+0.100, +0.200] **yes** (2 q, 2 seeds) |",
        "| attention | autoregressive | 2 | 0.300 ± 0.000 (n=2) | 0.001 (2/2 seeds) | 1.5k tok, 3 s | (reference) |"]
    alone = seeds.seed_section([r for r in rows if r["mixer"] == "attention"], "f1")
    assert alone[0] == "| mixer | objective | seeds | f1 | lr | LR sweep cost (per seed) |"


def test_seed_section_of_a_lower_is_better_metric_with_norms_and_sweep_points():
    """A task whose headline is lower-is-better (a miss rate): within each norm and sweep point the lowest
    comes first, and its header and format are the task's. Norm and sweep point get columns of their own,
    text left-aligned ('—': no sweep point); the perplexity and its bound join the metrics ('—' where a
    cell has none); one seed gives no interval, and the Δ names no seed count (mamba post: differences
    0.2 and 0.0, an interval that holds 0)."""
    decl = [{"key": "miss", "header": "miss rate", "better": "min", "headline": True, "fmt": ".2f"}]

    def row(mixer, norm, sweep, miss):
        return {"key": f"{mixer}{norm}", "mixer": mixer, "objective": "autoregressive", "seed": 0, "status": "ok",
                "norm": norm, "sweep": sweep, "task_metrics": decl,
                "metrics": {"miss": sum(miss) / 2, "ppl": 9.5}, "per_question": {"id": ["a", "b"], "miss": miss}}

    point = {"seq_len": 64, "d_model": 32}
    rows = [row("attention", "pre", point, [0.5, 0.3]), row("mamba", "pre", point, [0.1, 0.1]),
            row("attention", "post", None, [0.4, 0.4]), row("mamba", "post", None, [0.6, 0.4])]
    rows[3]["metrics"]["ppl_bound"] = 12.5
    rows[0]["train"] = {"lr": 1e-3}  # one seed's rate: no "(1/1 seeds)"
    one = "(n=1, no interval)"
    assert seeds.seed_section(rows, "miss")[:6] == [
        "| mixer | objective | norm | sweep | seeds | miss rate | ppl | ppl bound | lr "
        "| Δ miss rate vs attention [95% CI] significant? |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        f"| attention | autoregressive | post | — | 1 | 0.40 {one} | 9.50 {one} | — | — | (reference) |",
        f"| mamba | autoregressive | post | — | 1 | 0.50 {one} | 9.50 {one} | 12.50 {one} | — "
        "| +0.100 [+0.000, +0.200] no (2 q) |",
        f"| mamba | autoregressive | pre | d_model=32, seq_len=64 | 1 | 0.10 {one} | 9.50 {one} | — | — "
        "| -0.300 [-0.400, -0.200] **yes** (2 q) |",
        f"| attention | autoregressive | pre | d_model=32, seq_len=64 | 1 | 0.40 {one} | 9.50 {one} | — | 0.001 "
        "| (reference) |"]
    one_norm = seeds.seed_section([{**r, "norm": "pre"} for r in rows], "miss")  # sweep points alone
    assert one_norm[0].startswith("| mixer | objective | sweep | seeds |")
    assert one_norm[1].startswith("|---|---|---|---:|")


def test_seed_section_ranks_cells_by_their_mean_over_seeds():
    """Best first by the mean over a cell's seeds, whatever its number of seeds: one seed at 0.5 ranks
    above three at 0.3 (their sum, 0.9, would not)."""
    rows = [_row("three", s, [0.3]) for s in range(3)] + [_row("one", 0, [0.5])]
    table = [ln for ln in seeds.seed_section(rows, "f1") if ln.startswith("| ")][1:]
    assert [ln.split(" | ")[0] for ln in table] == ["| one", "| three"]


def test_lr_sweep_section_in_full():
    """Every swept ok cell, by objective then mixer: its short runs' dev losses under the union of the
    rates (a diverged run says so, a rate it did not try is '—'), the chosen one bold, its cost; then the
    cost of all sweeps against the full runs' tokens. A failed cell is not listed."""
    a = _row("attention", 1, [0.2])
    a["tokens_seen"] = 20000
    a["lr_sweep"] = {"table": [{"lr": 1e-3, "dev_loss": 5.1234}, {"lr": 3e-3, "dev_loss": float("nan")}],
                     "best_lr": 1e-3, "tokens": 3000, "seconds": 12.4, "short_budget": "tokens=1500", "frac": 0.25}
    b = _row("mamba", 0, [0.2], objective="diffusion")
    b["lr_sweep"] = {"table": [{"lr": 1e-3, "dev_loss": 6.0}, {"lr": 1e-2, "dev_loss": 5.5}], "best_lr": 1e-2,
                     "tokens": 2000, "seconds": 7.6, "short_budget": "tokens=1000", "frac": 0.5}
    failed = {**_row("gated_context", 0, [0.2]), "status": "failed", "lr_sweep": a["lr_sweep"]}
    assert seeds.lr_sweep_section([b, failed, a]) == [
        "Each cell first trained a short run at every rate (tokens=1500 each, 0.25 of the cell's budget), then its "
        "full budget at the rate with the lowest short-run dev loss (criterion: lowest dev loss). Dev loss in nats "
        "per target token; bold: the rate chosen.", "",
        "| mixer | objective | seed | lr 0.001 | lr 0.003 | lr 0.01 | chosen | sweep tokens | sweep s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        "| attention | autoregressive | 1 | **5.123** | diverged | — | 0.001 | 3,000 | 12 |",
        "| mamba | diffusion | 0 | 6.000 | — | **5.500** | 0.01 | 2,000 | 8 |", "",
        "The sweeps cost 5,000 training tokens (25% of the full runs' 20,000 tokens) and 20 s of wall time in all "
        "(dev evaluations included), on top of the per-cell budget."]


def test_weighted_paired_bootstrap_is_a_ratio_of_sums_over_the_resampled_questions():
    """With weights the statistic is sum(a - b) / sum(weights): differences proportional to the weights
    give the same ratio in every resample (interval [1, 1]), where the unweighted mean moves with the
    questions drawn (2 at the point, between 1 and 3)."""
    a, b, w = np.array([1.0, 3.0]), np.zeros(2), np.array([1.0, 3.0])
    d = stats.paired_bootstrap(a, b, resamples=500, weights=w)
    assert (d.diff, d.lo, d.hi) == pytest.approx((1.0, 1.0, 1.0)) and d.significant
    plain = stats.paired_bootstrap(a, b, resamples=500)
    assert plain.diff == 2.0 and plain.lo == 1.0 and plain.hi == 3.0
    for bad in ([1.0], [0.0, 0.0], [-1.0, 2.0]):  # one per question, none negative, not all 0
        with pytest.raises(ValueError, match="non-negative weights"):
            stats.paired_bootstrap(a, b, weights=np.array(bad))


@pytest.mark.parametrize("weighted", [False, True])
def test_paired_bootstrap_resamples_the_seeds_too_so_seeds_that_disagree_are_no_evidence(weighted):
    """Three seeds whose differences are +0.3, +0.1 and -0.1 on every question (times its weight, when
    weighted: a ratio of sums that is the seed's effect whatever questions are drawn). Averaged over the
    seeds every question says +0.1, so resampling the questions alone gives the point [0.1, 0.1],
    "significant". Drawing the seeds too, a resample's statistic is the mean effect of its three seeds;
    all three the -0.1 seed has a chance of 1/27 > 2.5%, so the interval runs from -0.1 to +0.3 exactly:
    no evidence, as the seeds' own spread says."""
    w = np.arange(1.0, 9.0) if weighted else None
    effect = np.array([[0.3], [0.1], [-0.1]])  # the extremes first and last: a draw skipping either shows
    a = effect * (w if weighted else np.ones(8))
    fixed = stats.paired_bootstrap(a, np.zeros_like(a), weights=w, resample_seeds=False)
    assert (fixed.diff, fixed.lo, fixed.hi) == pytest.approx((0.1, 0.1, 0.1)) and fixed.significant
    d = stats.paired_bootstrap(a, np.zeros_like(a), weights=w)
    assert (d.diff, d.lo, d.hi) == pytest.approx((0.1, -0.1, 0.3)) and not d.significant
    assert (d.n_questions, d.n_seeds) == (8, 3)


def test_paired_bootstrap_over_seeds_that_agree_or_one_seed_is_the_questions_bootstrap():
    """Resampling seeds adds nothing where there is nothing to add: seeds with the same differences give
    the questions-only interval (the same question draws), and a single seed gives it to the bit, over
    several blocks of draws (500 questions: blocks of 4,000), so a single seed's report is unchanged."""
    rng = np.random.default_rng(5)
    one = rng.normal(0.01, 0.1, size=(1, 500))
    alone = stats.paired_bootstrap(one, np.zeros_like(one))
    assert alone == stats.paired_bootstrap(one, np.zeros_like(one), resample_seeds=False)
    same = np.repeat(one[:, :100], 3, axis=0)
    both, fixed = (stats.paired_bootstrap(same, np.zeros_like(same), resample_seeds=r) for r in (True, False))
    assert (both.lo, both.hi) == pytest.approx((fixed.lo, fixed.hi), rel=1e-12) and both.n_seeds == 3


def _nll_row(mixer: str, seed: int, nll: list[float], targets: list[int], objective="diffusion"):
    r = _row(mixer, seed, [0.5] * len(nll), objective=objective)
    r["per_question"].update(nll=list(nll), targets=list(targets))
    return r


def test_seed_section_pairs_perplexities_by_question_as_a_ratio():
    """The perplexity column: exp(sum of the NLL differences / target tokens). One nat less on every
    target token is x e^-1 = x0.368 of attention's, whatever the questions drawn; noise that cancels on
    average is not significant; rows without per-question NLLs, or on other target tokens, say why not."""
    rng = np.random.default_rng(0)
    targets = rng.integers(1, 6, size=300)
    base = rng.uniform(1, 4, size=300) * targets  # summed NLL per question
    noise = rng.normal(0, 1, size=300)
    rows = [_nll_row("attention", 0, base, targets), _nll_row("better", 0, base - targets, targets),
            _nll_row("noisy", 0, base + noise - noise.mean(), targets),
            _nll_row("other", 0, base, targets + 1), _row("old", 0, [0.5] * 300, objective="diffusion")]
    text = "\n".join(seeds.seed_section(rows, "f1"))
    line = {l.split(" | ")[0].strip("| "): l for l in text.splitlines() if l.startswith("| ")}
    assert "ppl ÷ attention's [95% CI] significant?" in line["mixer"]
    assert "×0.368 [×0.368, ×0.368] **yes** (300 q)" in line["better"]
    assert "×1.000 [" in line["noisy"] and line["noisy"].endswith("no (300 q) |")
    assert "n/a: not scored on the same target tokens" in line["other"]
    assert "n/a: no per-question scores" in line["old"].split(" | ")[-1]
    assert line["attention"].endswith("(reference) | (reference) |")
    assert "paired by question" in text
    # two cells over two seeds: the column, its seeds named
    two = [_nll_row(m, sd, base - (targets if m == "better" else 0), targets) for m in ("attention", "better")
           for sd in (0, 1)]
    assert "×0.368 [×0.368, ×0.368] **yes** (300 q, 2 seeds)" in "\n".join(seeds.seed_section(two, "f1"))
    # one mixer: nothing to compare with; NLLs kept without their target counts: not paired
    assert "ppl ÷" not in "\n".join(seeds.seed_section(two[:2], "f1"))
    del two[2]["per_question"]["targets"], two[3]["per_question"]["targets"]
    assert "n/a: no per-question scores" in "\n".join(seeds.seed_section(two, "f1")).splitlines()[3]
    # rows without any per-question NLL (written before they were recorded): no such column
    for r in rows:
        r["per_question"].pop("nll", None) if "per_question" in r else None
    assert "ppl ÷" not in "\n".join(seeds.seed_section(rows, "f1"))


def test_an_interval_end_that_only_rounds_to_0_or_x1_shows_its_first_two_digits():
    """A significant interval must not print as if it touched 0 (x1 for a ratio): an end within the
    table's 3 decimals of it shows two significant digits of its distance; an exact 0 (x1) stays as is."""
    assert [seeds.num(x) for x in (0.0, 0.0123, -0.0123, -3.84e-5, 5.5e-6, 4e-4, -0.0004999)] == [
        "+0.000", "+0.012", "-0.012", "-0.000038", "+0.0000055", "+0.00040", "-0.00050"]
    assert [seeds.num(x, 1.0, "") for x in (1.0, 0.912, 0.99995, 1.0004)] == ["1.000", "0.912", "0.999950", "1.00040"]
    d = stats.PairedDiff(-0.004, -0.009, -3.84e-5, 500, 3, 10_000, 0.95)
    assert seeds.diff_text(d) == "-0.004 [-0.009, -0.000038] **yes** (500 q, 3 seeds)"
    r = stats.PairedDiff(math.log(1.2), math.log(1.00004), math.log(1.3), 500, 1, 10_000, 0.95)
    assert seeds.ratio_text(r) == "×1.200 [×1.000040, ×1.300] **yes** (500 q)"
