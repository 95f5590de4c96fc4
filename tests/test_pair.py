"""`python -m reports.pair A B`: two results files' shared cells paired by question and seed
(reports/pair.py): the hand-worked numbers, pairing across additions, and the refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.results import append_row
from reports import pair

F1 = [{"key": "f1", "header": "F1", "better": "max", "headline": True, "fmt": ".3f"}]


def _row(mixer: str, seed: int, f1: list[float], extra: str = "", lr: float = 1e-3, objective: str = "autoregressive",
         nll: list[float] | None = None, targets: list[int] | None = None, ids: list[str] | None = None,
         status: str = "ok", key: str | None = None) -> dict:
    ids = ids or [f"q{i}" for i in range(len(f1))]
    pq = {"id": ids, "em": [0] * len(f1), "f1": list(f1)}
    metrics = {"f1": sum(f1) / len(f1), "em": 0.0}
    if nll is not None:
        pq.update(nll=list(nll), targets=list(targets))
        metrics["ppl"] = 100.0 + seed
    return {"key": key or f"{mixer}{objective}{seed}{extra}{lr}", "task": "jsquad", "mixer": mixer,
            "objective": objective, "seed": seed, "status": status, "norm": "pre", "pretrain": None,
            "task_opts": {"eval_limit": "500", **({"extra_train": extra} if extra else {})},
            "task_metrics": F1, "metrics": metrics, "train": {"lr": lr}, "per_question": pq}


def _lines(text: list[str]) -> dict[str, str]:
    """The table's lines by (mixer | objective | added)."""
    return {" | ".join(ln.split(" | ")[:3]).strip("| "): ln for ln in text if ln.startswith("| ") and "---" not in ln}


def test_b_is_paired_against_a_by_question_and_seed():
    """attention in A: F1 per question 0.2, 0.4 on both seeds; in B 0.3, 0.5 (seed 0) and 0.4, 0.5 (seed 1):
    differences 0.1, 0.1 and 0.2, 0.1, mean +0.125, interval [+0.100, +0.200] (the seed section's
    hand-worked case). gated_context, one nat less per target token in B: ×e^-1 = ×0.368. A configuration
    in one file only is listed, not paired; a failed row is superseded by its cell's rerun."""
    nll, targets = [4.0, 9.0, 2.5], [2, 3, 1]
    a = [_row("attention", s, [0.2, 0.4]) for s in (0, 1)]
    a += [_row("gated_context", 0, [0.1] * 3, nll=nll, targets=targets), _row("mamba", 0, [0.5, 0.5])]
    b = [_row("attention", 0, [0.3, 0.5]), _row("attention", 1, [0.9, 0.9], status="failed"),
         _row("attention", 1, [0.4, 0.5]),  # the same key again: the rerun, ok
         _row("gated_context", 0, [0.1] * 3, nll=[x - t for x, t in zip(nll, targets)], targets=targets),
         _row("attention", 0, [0.6, 0.6], extra="jaquad")]
    text = pair.table(a, b)
    t = _lines(text)
    assert t["mixer | objective | added"].startswith("| mixer | objective | added | seeds (A, B) | F1 A | F1 B |")
    assert t["attention | autoregressive | —"] == (
        "| attention | autoregressive | — | 2, 2 | 0.300 | 0.425 | +0.125 [+0.100, +0.200] **yes** (2 q, 2 seeds) "
        "| — | — | n/a: no per-question scores in the rows (written before they were recorded) |")
    assert t["gated_context | autoregressive | —"].endswith(
        "| 1, 1 | 0.100 | 0.100 | +0.000 [+0.000, +0.000] no (3 q) | 100.0 | 100.0 | ×0.368 [×0.368, ×0.368] **yes** (3 q) |")
    assert len(t) == 3
    assert "\nOnly in A: mamba × autoregressive." in text
    assert "\nOnly in B: attention × autoregressive · extra_train=jaquad." in text
    assert "paired-bootstrap interval (10,000 resamples" in text[-1]


def test_one_files_addition_pairs_with_the_others_task_alone_when_asked():
    """`only`: B's JaQuAD cells against A's task-alone ones (the data-scaling question: a little of the
    task plus JaQuAD, or all of the task); every other addition of either file is left out."""
    a = [_row("attention", 0, [0.2, 0.4]), _row("attention", 0, [0.9, 0.9], extra="jaquad")]
    b = [_row("attention", 0, [0.3, 0.6], extra="jaquad"), _row("attention", 0, [0.0, 0.0])]
    t = _lines(pair.table(a, b, only=("", "extra_train=jaquad")))
    assert t["attention | autoregressive | — → extra_train=jaquad"].startswith(
        "| attention | autoregressive | — → extra_train=jaquad | 1, 1 | 0.300 | 0.450 | +0.150 [+0.100, +0.200] **yes** (2 q) |")
    assert len(t) == 2
    same = _lines(pair.table(a, b, only=("extra_train=jaquad", "extra_train=jaquad")))  # one name when both add the same
    assert "| attention | autoregressive | extra_train=jaquad | 1, 1 | 0.900 | 0.450 |" in same["attention | autoregressive | extra_train=jaquad"]
    assert _lines(pair.table(a, b))["attention | autoregressive | extra_train=jaquad"].startswith(  # by default: like with like
        "| attention | autoregressive | extra_train=jaquad | 1, 1 | 0.900 | 0.450 | -0.450")


def test_cells_of_other_questions_say_so_and_a_mixed_configuration_is_refused():
    """Two cells scored on other questions are listed with the reason, not a number. Rows of one mixer,
    objective and addition at two learning rates are two cells, not seeds: refused, naming the setting."""
    t = _lines(pair.table([_row("attention", 0, [0.2, 0.4])], [_row("attention", 0, [0.2, 0.4], ids=["x", "y"])]))
    assert "| n/a: not scored on the same questions |" in t["attention | autoregressive | —"]
    mixed = [_row("attention", 0, [0.2, 0.4]), _row("attention", 1, [0.2, 0.4], lr=3e-3)]
    with pytest.raises(pair.PairError, match=r"^A: attention × autoregressive holds cells of different settings "
                                             r"\(lr\): pair files of one cell per configuration$"):
        pair.table(mixed, [_row("attention", 0, [0.2, 0.4])])


def test_the_command_prints_the_table_or_one_line_of_error(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for r in (_row("attention", 0, [0.2, 0.4]), _row("attention", 0, [0.0, 0.0], extra="jaquad")):
        append_row(a, r)
    append_row(b, _row("attention", 0, [0.4, 0.4], extra="jaquad"))
    assert pair.main([str(a), str(b), "--a-added", "none", "--b-added", "extra_train=jaquad"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"A: {a}\nB: {b}\n") and "| attention | autoregressive | — → extra_train=jaquad | 1, 1 | 0.300 | 0.400 |" in out
    assert pair.main([str(a), str(tmp_path / "none.jsonl")]) == 2
    assert capsys.readouterr().err == f"error: no results file {tmp_path / 'none.jsonl'}\n"
    b.write_text(json.dumps({"key": "k"}) + "\n")
    assert pair.main([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {b}:1: row lacks") and err.count("\n") == 1
    append_row(a, _row("attention", 1, [0.2, 0.4], lr=3e-3))
    b.write_text("")
    assert pair.main([str(a), str(b)]) == 2
    assert "holds cells of different settings (lr)" in capsys.readouterr().err
    assert Path(a).is_file()


def test_the_table_names_norm_and_sweep_point_and_shows_the_perplexity_the_rows_have():
    """The header and its rule as markdown; a configuration's norm (when not the default pre-norm) and sweep
    point in its name; the perplexity column only where rows have one, of the bound for masked diffusion;
    nothing in common said so; a mixed configuration in B named as B's."""
    def swept(f1, norm="post"):
        return {**_row("mamba", 0, f1), "norm": norm, "sweep": {"seq_len": 64, "d_model": 32}}

    text = pair.table([swept([0.2, 0.4])], [swept([0.2, 0.6])])
    assert text[3:5] == ["| mixer | objective | added | seeds (A, B) | F1 A | F1 B | Δ F1 (B − A) [95% CI] significant? |",
                         "|---|---|---|---|---|---|---|"]  # no row has a perplexity: no column for one
    assert text[5].startswith("| mamba · norm post · d_model=32, seq_len=64 | autoregressive | — | 1, 1 | 0.300 | 0.400 |")
    nll, targets = [4.0, 9.0], [2, 3]
    diff = [_row("attention", 0, [0.1, 0.1], objective="diffusion", nll=nll, targets=targets) for _ in "ab"]
    for r in diff:
        r["metrics"]["ppl_bound"] = r["metrics"].pop("ppl")
    text = pair.table(diff[:1], diff[1:])
    assert text[3].endswith("| ppl bound A | ppl bound B | ppl bound B ÷ A [95% CI] significant? |")
    assert text[5].endswith("| 100.0 | 100.0 | ×1.000 [×1.000, ×1.000] no (2 q) |")
    assert "(no configuration in both files)" in pair.table([_row("attention", 0, [0.1])], [_row("mamba", 0, [0.1])])
    assert "(no configuration in both files)" not in text
    with pytest.raises(pair.PairError, match=r"^B: attention × autoregressive · extra_train=jaquad holds cells"):
        pair.table([], [_row("attention", 0, [0.1], extra="jaquad"), _row("attention", 1, [0.1], extra="jaquad", lr=0.1)])
