"""JSQuAD references: non-neural baselines, the tokenizer ceiling, and their rows in a grid."""
from __future__ import annotations

import unicodedata

import pytest

from fixtures.jsquad_mini import EVAL_ARTICLES, TRAIN_ARTICLES, TRAIN_TEXTS, to_jgle
from tasks import jsquad_baselines as jb
from tasks.jsquad import QAItem, parse_articles
from tasks.tokenizer import TokenizerSettings, train_or_load

ITEMS = parse_articles(to_jgle(TRAIN_ARTICLES + EVAL_ARTICLES, "x")["data"], "fixture")
# hand-made: the answer is the article's title; full-width letters and digits in the answers
TITLE_ITEM = QAItem("q1", "富士山", "富士山は日本で最も高い山である。", "日本で最も高い山は何か。", ["富士山"], [0])
FULL_WIDTH = [
    QAItem("f1", "ＡＩ研究所", "ＡＩ研究所は２０２０年に設立された。", "設立されたのは何年か。", ["２０２０年"], [6]),
    QAItem("f2", "ＡＩ研究所", "ＡＩ研究所は２０２０年に設立された。", "何が設立されたか。", ["ＡＩ研究所"], [0]),
]


def test_title_baseline_scores_em_1_when_the_answer_is_the_title():
    assert jb.title_answer(TITLE_ITEM) == "富士山"
    assert jb.score_baseline("title", [TITLE_ITEM]) == {"em": 1.0, "f1": 1.0, "eval_n": 1}
    assert jb.score_baseline("title", ITEMS)["em"] == 0.0  # no fixture answer is its title


@pytest.mark.parametrize("name", sorted(jb.BASELINES))
def test_baselines_are_deterministic_substrings_of_the_context(name):
    fn = jb.BASELINES[name]
    for it in ITEMS + FULL_WIDTH:
        a, b = fn(it), fn(it)
        assert a == b and a, (it.qid, a, b)
        assert a in f"{it.title} [SEP] {it.paragraph}", (it.qid, a)


def test_overlap_span_finds_the_gap_the_wh_word_leaves():
    by_q = {it.question: it for it in ITEMS}
    assert jb.overlap_span(by_q["東京駅が開業したのは何年か。"]) == "1914年"
    assert jb.overlap_span(by_q["東京駅の駅舎を設計したのは誰か。"]) == "辰野金吾"
    assert jb.overlap_span(by_q["富士山の標高は何メートルか。"]) == "3776メートル"  # keeps the asked counter
    assert jb.overlap_span(by_q["桜は何科の植物か。"]) == "バラ科"
    scores = jb.score_baseline("overlap_span", ITEMS)
    assert scores["em"] > jb.score_baseline("title", ITEMS)["em"] and scores["f1"] > 0.5


def test_roundtrip_ceiling_counts_what_normalisation_loses():
    """The ceiling's arithmetic, with a fake tokenizer: identity keeps 1.0, NFKC rewrites full width."""
    chars = lambda s: [ord(c) for c in s]  # noqa: E731
    identity = jb.roundtrip_scores(FULL_WIDTH, chars, lambda ids: "".join(map(chr, ids)), 24)
    assert identity["em"] == 1.0 and identity["f1"] == 1.0 and identity["questions_changed"] == 0
    nfkc = jb.roundtrip_scores(FULL_WIDTH, chars, lambda ids: unicodedata.normalize("NFKC", "".join(map(chr, ids))), 24)
    assert nfkc["em"] == 0.0 and nfkc["questions_changed"] == 2
    assert nfkc["f1"] == pytest.approx((1 / 5 + 3 / 5) / 2)  # only 年 survives, then only 研究所
    cut = jb.roundtrip_scores(FULL_WIDTH, chars, lambda ids: "".join(map(chr, ids)), 3)  # answer-token limit
    assert cut["em"] == 0.0 and cut["f1"] == pytest.approx(0.75)  # 3 of 5 characters: P 1, R 0.6


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tok")
    return {n: train_or_load(TRAIN_TEXTS, TokenizerSettings(vocab_size=300, normalization=n), cache)
            for n in ("identity", "nmt_nfkc")}


def test_tokenizer_ceiling_is_1_for_identity_and_drops_under_nfkc(toks):
    assert jb.tokenizer_ceiling(ITEMS + FULL_WIDTH, toks["identity"], 24)["em"] == 1.0
    assert jb.tokenizer_ceiling(ITEMS + FULL_WIDTH, toks["identity"], 24)["f1"] == 1.0
    nfkc = jb.tokenizer_ceiling(ITEMS + FULL_WIDTH, toks["nmt_nfkc"], 24)
    assert nfkc["em"] < 1.0 and nfkc["f1"] < 1.0 and nfkc["questions_changed"] >= 2
    assert jb.tokenizer_ceiling(ITEMS, toks["nmt_nfkc"], 24)["em"] == 1.0  # no full width: nothing lost


def test_grid_writes_reference_rows_once_and_reports_them(offline_dir, tmp_path, cache_dir):
    import run_matrix
    from core.results import read_rows

    out = tmp_path / "out"
    args = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--grid", "t", "--mixers", "attention",
            "--objectives", "autoregressive", "--task-opt", "eval_limit=3"]
    assert run_matrix.main(args) == 0
    rows = read_rows(out / "results" / "t.jsonl")
    refs = {r["reference"]["name"]: r for r in rows if r["objective"] == "none"}
    assert set(refs) == {*jb.BASELINES, "tokenizer_ceiling"}
    for r in refs.values():
        assert r["status"] == "ok" and r["params"] == 0 and r["protocol"] == "jsquad-offline" and r["mixer"] is None
        assert "upgraded_from" not in r and [m["key"] for m in r["task_metrics"]] == ["em", "f1"]  # written as v2
        assert r["metrics"]["eval_n"] == 3  # the models' sample ...
        assert r["reference"]["full_split"]["eval_n"] == 5  # ... and the whole evaluation split
    assert refs["tokenizer_ceiling"]["metrics"]["em"] == 1.0  # identity normalisation
    assert "identity" in refs["tokenizer_ceiling"]["reference"]["setting"]
    model = next(r for r in rows if r["objective"] != "none")
    report = (out / "reports" / "t" / "README.md").read_text()
    for name in refs:
        assert f"*{name}" in report
    assert "vs best baseline" in report and ("beats " in report or "below " in report)

    assert run_matrix.main(args) == 0  # resumed: neither the cell nor the references run again
    assert len(read_rows(out / "results" / "t.jsonl")) == len(rows)
    assert model["status"] == "ok"


def test_a_references_resume_key_is_its_name_and_everything_its_score_depends_on():
    """Two settings of one reference (another tokenizer, another split) are two rows, each computed once."""
    from harness.references import reference_key
    from tasks import Reference

    def ref(name, **identity):
        return Reference(name, "baseline", "rule", identity, score=lambda: {})

    a = reference_key(ref("overlap_span", protocol="p", eval_n=10))
    assert a == reference_key(ref("overlap_span", eval_n=10, protocol="p"))  # order-free, deterministic
    assert a.startswith("ref-")
    assert a != reference_key(ref("overlap_span", protocol="p", eval_n=11))
    assert a != reference_key(ref("overlap_span", protocol="q", eval_n=10))
    assert a != reference_key(ref("title", protocol="p", eval_n=10))


# ----------------------------------------------------------------------------- the rule, step by step
# Each case below is worked by hand from `overlap_span`'s docstring. With the question 東京は誰か the
# question's bigrams are {東京, 京は}: a candidate's `near` counts the characters of 東京 within 4
# positions of it. The report cites this baseline as the floor a model must beat, so its rule is held
# exactly, not only by its score on the fixture.

def _span(question: str, paragraph: str) -> str:
    return jb.overlap_span(QAItem("x", "t", paragraph, question, ["-"], [0]))


def test_describe_is_the_first_line_of_the_baselines_docstring():
    assert jb.describe("title") == "Always answer the article title (JSQuAD contexts start with it)."


def test_character_bigrams_skip_punctuation_and_end_at_the_last_pair():
    assert jb._bigrams("東京、大阪") == {"東京", "大阪"}
    assert jb._bigrams("東京駅") == {"東京", "京駅"}
    assert jb._bigrams("東") == set()


@pytest.mark.parametrize("wh", ["何", "誰", "いつ", "どこ", "どの", "どれ", "どう", "どんな", "いくつ", "いくら", "なぜ"])
def test_each_wh_word_is_masked_out_of_the_question_bigrams(wh):
    """The wh-word and both bigrams touching it go; its neighbours do not join into a new bigram."""
    assert jb._question_bigrams(f"東京は{wh}か") == {"東京", "京は"}


def test_overlap_sentence_answers_one_sentence_of_the_paragraph():
    it = QAItem("x", "t", "富士山は高い。東京駅は辰野金吾が設計した。大阪", "東京駅を設計したのは誰か。", ["-"], [0])
    assert jb.overlap_sentence(it) == "東京駅は辰野金吾が設計した。"


def test_overlap_span_reads_a_candidate_at_either_end_of_the_sentence():
    assert _span("東京駅を設計したのは誰か。", "辰野金吾が東京駅を設計した。") == "辰野金吾"  # from position 0
    assert _span("東京駅を設計したのは誰か。", "東京駅を設計したのは辰野金吾") == "辰野金吾"  # to the last character
    # every character covered (the last bigram too): no candidate, so the whole sentence
    assert _span("東京駅は何か。", "東京駅") == "東京駅"


def test_overlap_span_ties_go_to_the_leftmost_candidate():
    assert _span("東京は誰か。", "山田と東京と川口") == "山田"  # 山田 2, 川口 2


def test_a_hiragana_run_between_question_words_is_no_candidate():
    # とても (near 3) is all hiragana: dropped; 山田 (near 2) answers, not the whole sentence
    assert _span("東京は誰か。", "東京とても東京山田") == "山田"


def test_the_number_bonus_is_3_and_only_for_a_number_question():
    n = "東京は何年か。"  # 何 + a counter: a number question
    assert _span(n, "東京山田東京とかの1") == "山田"  # 山田 4, "1" 1 + 3: a tie, the leftmost wins
    assert _span(n, "東京山田東京と1") == "1"  # 山田 4, "1" 2 + 3
    assert _span("東京は誰か。", "山田東京とかの1") == "山田"  # not a number question: 山田 2, "1" 1, no bonus


def test_length_penalty_starts_past_8_characters():
    # 9 characters: 2 - 0.1 loses to 山田's 2; 8 characters: 2, a tie, the leftmost wins
    assert _span("東京は誰か。", "阿部伊藤宇野江藤尾東京山田。") == "山田"
    assert _span("東京は誰か。", "阿部伊藤宇野江藤東京山田。") == "阿部伊藤宇野江藤"


def test_near_counts_covered_characters_4_either_side_from_the_sentence_start():
    # 山田 counts 東京 at positions 0-1 (near 2) and ties 川口 (near 2) on the left
    assert _span("東京は誰か。", "東京山田、のののの川口東京") == "山田"
    # 山田's window ends 4 after it, short of 東 (near 0); 川口 sees 京 (near 1)
    assert _span("東京は誰か。", "山田のののの東京ののの川口") == "川口"


def test_the_ceiling_of_no_questions_is_nan_with_eval_n_0():
    import math

    r = jb.roundtrip_scores([], list, "".join, 3)
    assert set(r) == {"em", "f1", "eval_n"} and r["eval_n"] == 0
    assert math.isnan(r["em"]) and math.isnan(r["f1"])


def test_random_span_is_a_seeded_span_of_the_paragraph_of_1_to_12_characters():
    """Chance for span answers: the same question always gets the same span (in another process too: the
    seed is no `hash`), questions get different ones, and every length from 1 to the cap occurs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    spans = [jb.random_span(it) for it in ITEMS]
    assert all(a in it.paragraph and 1 <= len(a) <= jb.RANDOM_SPAN_MAX for it, a in zip(ITEMS, spans))
    assert len(set(spans)) > len(ITEMS) // 2  # not one span for all
    lengths = {len(jb.random_span(QAItem(f"q{i}", "t", "あ" * 100, "q", ["a"], [0]))) for i in range(400)}
    assert lengths == set(range(1, jb.RANDOM_SPAN_MAX + 1))
    item = "QAItem('q7', 't', 'あいうえおかきくけこさしすせそ' * 5, 'q', ['a'], [0])"
    code = f"from tasks import jsquad_baselines as jb; from tasks.jsquad_files import QAItem; print(jb.random_span({item}))"
    root = Path(__file__).resolve().parents[1]
    outs = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert outs == {jb.random_span(eval(item)) + "\n"}
    assert jb.random_span(QAItem("q8", "t", "", "q", ["a"], [0])) == ""  # no paragraph: no span (no crash)
