"""The report section that pairs pretraining / extra-data cells with the same mixer on the task alone
(reports/additions.py): which cells pair, the hand-worked numbers, and when there is no such section."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from reports import additions

PASSAGES = {"sources": ["passages"], "frac": 0.5}
F1 = [{"key": "f1", "header": "F1", "better": "max", "headline": True, "fmt": ".3f"}]


def _row(mixer: str, seed: int, f1: list[float], pretrain=None, extra: str = "", lr: float = 1e-3,
         ids: list[str] | None = None, nll: list[float] | None = None, targets: list[int] | None = None):
    ids = ids or [f"q{i}" for i in range(len(f1))]
    pq = {"id": ids, "em": [0] * len(f1), "f1": list(f1)}
    if nll is not None:
        pq.update(nll=list(nll), targets=list(targets))
    return {"key": f"{mixer}{seed}{extra}{pretrain}{lr}", "task": "jsquad", "mixer": mixer,
            "objective": "autoregressive", "seed": seed, "status": "ok", "norm": "pre",
            "protocol": "jsquad-offline" + ("+jaquad" if extra else ""),
            "task_opts": {"eval_limit": "500", **({"extra_train": extra} if extra else {})},
            "pretrain": pretrain, "task_metrics": F1, "metrics": {"f1": float(np.mean(f1)), "em": 0.0, "ppl": 100.0 + seed},
            "train": {"lr": lr}, "per_question": pq}


def _table(rows) -> dict[str, str]:
    """The section's lines by (mixer, added) cells."""
    return {" | ".join(l.split(" | ")[i].strip("| ") for i in (0, 2)): l
            for l in additions.section(rows) if l.startswith("| ") and "---" not in l}


def test_each_addition_pairs_with_the_same_mixer_on_the_task_alone_across_protocols():
    """attention alone: F1 per question 0.2, 0.4 on both seeds; with passages pretraining 0.3, 0.5 (seed 0)
    and 0.4, 0.5 (seed 1): differences 0.1, 0.1 and 0.2, 0.1, mean +0.125, interval [+0.100, +0.200] (as
    in the seed section's hand-worked case: seed 1 twice and its first question twice has chance 1/16).
    With JaQuAD (another protocol, the same questions) the same scores as alone: +0.000, no. gated_context
    is compared with gated_context alone, not with attention: its pretraining costs -0.100 on every
    question, a one-seed interval of a point."""
    rows = []
    for s in (0, 1):
        rows += [_row("attention", s, [0.2, 0.4]), _row("attention", s, [0.3 + 0.1 * s, 0.5], PASSAGES),
                 _row("attention", s, [0.2, 0.4], extra="jaquad")]
    rows += [_row("gated_context", 0, [0.6, 0.6]), _row("gated_context", 0, [0.5, 0.5], PASSAGES)]
    text = additions.section(rows)
    assert text[:4] == ["## Pretraining and extra data against the task alone · jsquad", "",
                        "| mixer | objective | added to the task's data | seeds | F1 | ppl "
                        "| Δ F1 vs the task alone [95% CI] significant? |", "|---|---|---|---:|---:|---:|---:|"]
    t = _table(rows)
    assert t["attention | pretrain passages 0.5"].endswith(
        "| 0.425 ± 0.318 (n=2) | 100.50 ± 6.35 (n=2) | +0.125 [+0.100, +0.200] **yes** (2 q, 2 seeds) |")
    assert t["attention | extra_train=jaquad"].endswith("| +0.000 [+0.000, +0.000] no (2 q, 2 seeds) |")
    assert t["attention | — (the task alone)"].endswith("| (reference) |")
    assert t["gated_context | pretrain passages 0.5"].endswith(
        "| 0.500 (n=1, no interval) | 100.00 (n=1, no interval) | -0.100 [-0.100, -0.100] **yes** (2 q) |")
    order = [l.split(" | ")[2] for l in text if l.startswith("| attention")]
    assert order == ["pretrain passages 0.5", "— (the task alone)", "extra_train=jaquad"]  # best F1 first; ties: alone
    assert "paired by evaluation question and seed" in text[-2] and "ppl ÷" not in "\n".join(text)


def test_only_cells_that_differ_in_what_they_add_are_paired():
    """Another learning rate is another cell on the task alone: pretraining at lr 3e-3 pairs with the
    task alone at 3e-3 only (its block named by the rate), and a pretraining cell with no task-alone cell
    of its settings is not shown. Cells on other questions are not paired, and say so."""
    rows = [_row("attention", 0, [0.2, 0.4]), _row("attention", 0, [0.4, 0.4], PASSAGES),
            _row("attention", 0, [0.1, 0.1], lr=3e-3), _row("attention", 0, [0.1, 0.3], PASSAGES, lr=3e-3),
            _row("mamba", 0, [0.3, 0.3], PASSAGES), {**_row("attention", 0, [0.9, 0.9], PASSAGES), "task_opts": {}},
            _row("gated_context", 0, [0.1, 0.1]), _row("gated_context", 0, [0.1, 0.1], PASSAGES, ids=["x", "y"])]
    t = _table(rows)
    assert t["attention · lr 0.001 | pretrain passages 0.5"].endswith("| +0.100 [+0.000, +0.200] no (2 q) |")
    assert t["attention · lr 0.003 | pretrain passages 0.5"].endswith("| +0.100 [+0.000, +0.200] no (2 q) |")
    assert t["gated_context · lr 0.001 | pretrain passages 0.5"].endswith("| n/a: not scored on the same questions |")
    assert not any(k.startswith("mamba") for k in t)  # nothing on the task alone to compare with
    assert len(t) == 7 and "0.900" not in "\n".join(t.values())  # (6 lines and the header) nor the cell scored on all questions


def test_a_row_from_before_dev_checks_pairs_as_a_row_of_10():
    """Rows written before `--dev-checks` (2026-12-07) record no count (every cell then took 10): a grid
    resumed since pairs its new JaQuAD cell (its row records 10) with the old task-alone cell, under the
    mixer's plain name. Cells of 40 checks are another configuration: both blocks are then named."""
    def new(row, checks):
        return {**row, "key": row["key"] + str(checks), "train": {**row["train"], "dev_checks_bound": checks}}

    old_alone = _row("attention", 0, [0.2, 0.4])
    assert "dev_checks_bound" not in old_alone["train"]
    rows = [old_alone, new(_row("attention", 0, [0.3, 0.5], extra="jaquad"), 10)]
    t = _table(rows)
    assert sorted(t) == ["attention | extra_train=jaquad", "attention | — (the task alone)", "mixer | added to the task's data"]
    assert t["attention | extra_train=jaquad"].endswith("| +0.100 [+0.100, +0.100] **yes** (2 q) |")
    rows += [new(_row("attention", 0, [0.1, 0.1]), 40), new(_row("attention", 0, [0.2, 0.1], extra="jaquad"), 40)]
    t = _table(rows)
    assert t["attention · 10 dev checks | extra_train=jaquad"].endswith("| +0.100 [+0.100, +0.100] **yes** (2 q) |")
    assert t["attention · 40 dev checks | extra_train=jaquad"].endswith("| +0.050 [+0.000, +0.100] no (2 q) |")
    assert len(t) == 5


def test_perplexity_ratio_against_the_task_alone():
    """One nat less per target token with pretraining: ×e^-1 = ×0.368 of the task alone's perplexity."""
    targets = [2, 3, 1]
    nll = [4.0, 9.0, 2.5]
    rows = [_row("attention", 0, [0.1] * 3, nll=nll, targets=targets),
            _row("attention", 0, [0.1] * 3, PASSAGES, nll=[a - t for a, t in zip(nll, targets)], targets=targets)]
    text = additions.section(rows)
    assert text[2].endswith("| ppl ÷ the task alone's [95% CI] significant? |")
    assert _table(rows)["attention | pretrain passages 0.5"].endswith(
        "| +0.000 [+0.000, +0.000] no (3 q) | ×0.368 [×0.368, ×0.368] **yes** (3 q) |")
    assert _table(rows)["attention | — (the task alone)"].endswith("| (reference) | (reference) |")
    assert "ppl ÷, the perplexity ratio" in text[-2]


def test_no_section_without_a_cell_that_adds_to_a_task_alone_cell():
    """A grid of plain cells, a grid whose every cell adds the same thing (the 1M-token JaQuAD grid), a
    failed cell on the task alone and reference rows: nothing to pair."""
    plain = [_row("attention", 0, [0.2, 0.4]), _row("mamba", 0, [0.1, 0.4])]
    assert additions.section(plain) == []
    assert additions.section([_row(m, 0, [0.2, 0.4], extra="jaquad") for m in ("attention", "mamba")]) == []
    failed = {**_row("attention", 0, [0.2, 0.4]), "status": "failed"}
    ref = {**_row("overlap_span", 0, [0.5, 0.5]), "objective": "none", "reference": {"kind": "baseline"}}
    assert additions.section([failed, ref, _row("attention", 0, [0.2, 0.4], PASSAGES)]) == []


def test_added_names_extra_data_then_pretraining():
    assert additions.added(_row("attention", 0, [0.1])) == ""
    both = _row("attention", 0, [0.1], {"sources": ["passages", "dir:aozora"], "frac": 0.25, "max_chars": 2_000_000},
                extra="jaquad")
    assert additions.added(both) == "extra_train=jaquad · pretrain passages+dir:aozora 0.25 ≤2M chars"


def test_the_section_draws_its_figure_when_a_line_pairs(tmp_path):
    """Given an output folder the section draws the paired differences and links the PNG; lines that
    cannot be paired (no per-question scores) draw nothing and link nothing."""
    rows = [_row("attention", 0, [0.2, 0.4]), _row("attention", 0, [0.3, 0.4], PASSAGES)]
    text = additions.section(rows, tmp_path)
    assert text[-2] == "![pretraining and extra data against the task alone](jsquad_added_vs_alone.png)"
    assert (tmp_path / "jsquad_added_vs_alone.png").stat().st_size > 0
    for r in rows:
        del r["per_question"]
    out = tmp_path / "old"
    assert "n/a: no per-question scores" in "\n".join(additions.section(rows, out))
    assert not out.exists() and not any(".png" in line for line in additions.section(rows, out))


def test_lines_rank_best_first_by_their_mean_in_the_metrics_direction(monkeypatch):
    """Within a block the best mean first (a lower-is-better metric: the lowest), however many seeds a
    line has; ties: the task alone, then by name; a line without a value last, '—' in its columns. Blocks
    of two norms are named by their norm. The figure's title names every device."""
    miss = [{"key": "miss", "header": "miss rate", "better": "min", "headline": True, "fmt": ".2f"}]

    def row(seed, f1, pretrain=None, extra="", norm="pre", device="cpu: A"):
        r = _row("attention", seed, f1, pretrain, extra)
        r.update(task_metrics=miss, norm=norm, device=device, metrics={"miss": float(np.mean(f1))})
        r["per_question"]["miss"] = r["per_question"].pop("f1")
        return r

    rows = [row(0, [0.3, 0.3]), row(0, [0.2, 0.2], PASSAGES), row(1, [0.2, 0.2], PASSAGES, device="cpu: B"),
            row(0, [0.3, 0.3], extra="jaquad"), row(0, [0.4, 0.4], norm="post"),
            row(0, [0.4, 0.4], extra="jaquad", norm="post"), row(0, [0.4, 0.4], PASSAGES, norm="post"),
            {**row(0, [0.1, 0.1], {"sources": ["passages"], "frac": 0.8}, norm="post"), "metrics": {}}]
    titles = []
    monkeypatch.setattr(additions.figures, "added_vs_alone", lambda c, title, path: titles.append(title))
    text = additions.section(rows, Path("unused"))
    cells = [tuple(l.split(" | ")[i].strip("| ") for i in (0, 2, 4)) for l in text if l.startswith("| attention")]
    assert cells == [("attention · norm post", "— (the task alone)", "0.40 (n=1, no interval)"),
                     ("attention · norm post", "extra_train=jaquad", "0.40 (n=1, no interval)"),
                     ("attention · norm post", "pretrain passages 0.5", "0.40 (n=1, no interval)"),
                     ("attention · norm post", "pretrain passages 0.8", "—"),
                     ("attention · norm pre", "pretrain passages 0.5", "0.20 ± 0.00 (n=2)"),
                     ("attention · norm pre", "— (the task alone)", "0.30 (n=1, no interval)"),
                     ("attention · norm pre", "extra_train=jaquad", "0.30 (n=1, no interval)")]
    assert titles == ["jsquad · cpu: A / cpu: B"]


def test_a_grid_whose_rows_declare_no_metric_and_keep_no_nll_shows_the_cells_only():
    rows = [_row("attention", 0, [0.2, 0.4]), _row("attention", 0, [0.3, 0.4], PASSAGES)]
    for r in rows:
        r.pop("task_metrics")
    text = additions.section(rows)
    assert text[2] == "| mixer | objective | added to the task's data | seeds | ppl |"
    assert text[-2].endswith("paired by evaluation question and seed (cells that did not score the same "
                             "questions say so).")
