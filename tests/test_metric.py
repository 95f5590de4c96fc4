"""EM/F1 on hand-computed cases (JGLUE's JSQuAD definitions)."""
from __future__ import annotations

import math

import pytest

from tasks.jsquad_metric import corpus_scores, exact_match, f1, normalize_answer, score


def test_normalisation_order():
    assert normalize_answer("ＡＢＣ東京。。") == "ａｂｃ東京"  # lower() works on full-width too; trailing 。 stripped
    assert normalize_answer("  東京   駅 ") == "東京 駅"
    assert normalize_answer("東京、駅") == "東京、駅"  # punctuation is kept


def test_spaces_count_as_characters():
    assert f1("東京 駅", "東京駅") == pytest.approx(2 * 0.75 * 1 / 1.75)  # 0.857
    assert exact_match("東京 駅", "東京駅") == 0.0


def test_no_unicode_normalisation():
    em, f = score("１９６４年", ["1964年"])
    assert em == 0.0 and f == pytest.approx(0.2)


def test_trailing_maru_and_case():
    assert score("Tokyo駅。", ["tokyo駅"]) == (1.0, 1.0)


def test_max_over_golds_and_empty_handling():
    assert score("小笠原諸島", ["小笠原諸島を除く日本", "小笠原諸島"]) == (1.0, 1.0)
    assert score("", ["。"]) == (1.0, 1.0)  # empty gold after normalisation -> gold ""
    assert score("何か", ["。"]) == (0.0, 0.0)
    assert score("", ["東京"]) == (0.0, 0.0)


def test_golds_empty_after_normalisation_are_dropped_before_scoring():
    """JGLUE (transformers' squad_metrics) keeps only golds whose normalised text is non-empty, so a
    stray "。" or blank gold beside a real one cannot let an empty prediction match it; "" is the gold
    only when nothing else remains."""
    for blank in ("", "。", "。。", "  ", " 。", "\u3000"):
        assert score("", [blank, "東京"]) == (0.0, 0.0), repr(blank)  # not 1 via the blank gold
        assert score("", ["東京", blank]) == (0.0, 0.0), repr(blank)
        assert score("東京", [blank, "東京"]) == (1.0, 1.0), repr(blank)
        assert score("", [blank]) == (1.0, 1.0), repr(blank)  # nothing left: the gold is ""
    em, f = score("東", ["。", "東京"])  # scored against "東京" alone: P = 1, R = 1/2
    assert em == 0.0 and f == pytest.approx(2 / 3)
    assert corpus_scores(["", "東京"], [["。", "東京"], ["  ", "東京"]]) == {"em": 0.5, "f1": 0.5}


def test_partial_overlap_bag_of_characters():
    # pred 3 chars, gold 5 chars, 2 in common: P=2/3, R=2/5
    assert f1("京都府", "東京都庁舎") == pytest.approx(2 * (2 / 3) * (2 / 5) / ((2 / 3) + (2 / 5)))


def test_corpus_average():
    s = corpus_scores(["a", "b"], [["a"], ["c"]])
    assert s == {"em": 0.5, "f1": 0.5}
    with pytest.raises(ValueError):
        corpus_scores(["a"], [])


def test_no_questions_score_nan_not_zero():
    """An empty evaluation has no score: NaN under the usual keys, never a 0.0 a table would rank."""
    s = corpus_scores([], [])
    assert set(s) == {"em", "f1"} and all(math.isnan(v) for v in s.values())
