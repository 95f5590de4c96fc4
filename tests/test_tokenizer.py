from __future__ import annotations

import pytest

from fixtures.jsquad_mini import TRAIN_TEXTS
from tasks.tokenizer import TokenizerSettings, train_or_load


@pytest.mark.parametrize("text", [
    "東京駅は1914年に開業した。",
    "ＪＲ東日本の新幹線（Shinkansen）が発着する",  # full-width letters and brackets, ASCII inside
    "GPT-4 と BERT  を比べる。",  # ASCII words, single and double spaces
    " 先頭と末尾に空白 ",
    "未知の漢字：鬱躑躅\tタブ\n改行",  # characters never seen in training (byte fallback)
])
def test_round_trip_gives_back_original_characters(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text


def test_special_tokens_are_distinct_and_not_produced_from_text(tok):
    s = tok.special
    assert len({s.pad, s.unk, s.bos, s.eos, s.sep, s.mask}) == 6
    ids = tok.encode("<sep><mask></s>")
    assert s.sep not in ids and s.mask not in ids and s.eos not in ids
    assert tok.decode([s.bos, *tok.encode("東京"), s.sep, s.eos]) == "東京"


def test_pieces_do_not_cross_mecab_words(tok):
    """Every MeCab word boundary is also a piece boundary (pieces live inside words)."""
    text = "東京駅は千代田区にある鉄道駅で"
    ids = tok.encode(text)
    pieces = [tok.sp.decode([i]) for i in ids]
    assert "".join(pieces) == text  # every piece here is in the vocabulary (no byte fallback)
    piece_ends, pos = set(), 0
    for p in pieces:
        pos += len(p)
        piece_ends.add(pos)
    word_ends, pos = set(), 0
    for w in tok.words(text):
        pos += len(w)
        word_ends.add(pos)
    assert len(word_ends) > 3 and word_ends <= piece_ends


def test_cache_is_keyed_by_data_and_settings(tmp_path):
    a = train_or_load(TRAIN_TEXTS, TokenizerSettings(vocab_size=300), tmp_path)
    assert len(list(tmp_path.glob("spm-*.model"))) == 1
    b = train_or_load(TRAIN_TEXTS, TokenizerSettings(vocab_size=300), tmp_path)
    assert a.sp.serialized_model_proto() == b.sp.serialized_model_proto()
    train_or_load(TRAIN_TEXTS, TokenizerSettings(vocab_size=280), tmp_path)
    train_or_load(TRAIN_TEXTS + ["別の文"], TokenizerSettings(vocab_size=300), tmp_path)
    assert len(list(tmp_path.glob("spm-*.model"))) == 3


def test_nfkc_normaliser_rewrites_full_width(tmp_path):
    """Why identity is the default: NFKC changes answers the official metric compares verbatim."""
    nfkc = train_or_load(TRAIN_TEXTS, TokenizerSettings(vocab_size=300, normalization="nmt_nfkc"), tmp_path)
    assert nfkc.decode(nfkc.encode("ＪＲ東日本（１９６４年）")) == "JR東日本(1964年)"


def test_special_ids_are_the_documented_ones(tok):
    """0 <pad>, 1 <unk>, 2 <s> (BOS), 3 </s> (EOS), then the control symbols <sep> and <mask>."""
    s, sp = tok.special, tok.sp
    assert (s.pad, s.unk, s.bos, s.eos) == (0, 1, 2, 3)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert sp.id_to_piece(s.sep) == "<sep>" and sp.id_to_piece(s.mask) == "<mask>"
    assert min(s.sep, s.mask) >= 4 and sp.is_control(s.sep) and sp.is_control(s.mask)


def test_mecab_boundaries_hold_where_plain_sentencepiece_would_cross_them(tok):
    """"所長" is a piece (learned from the word 所長), but in 研究所長 MeCab splits 研究/所/長: encoding must
    go word by word (SentencePiece on the raw text would emit the piece 所長 across that boundary)."""
    text = "研究所長"
    assert tok.sp.piece_to_id("所長") != tok.sp.unk_id()  # preconditions of this case (fixture vocabulary)
    assert tok.words(text) == ["研究", "所", "長"]
    pieces = [tok.sp.id_to_piece(i) for i in tok.encode(text)]
    assert "所長" not in pieces and "".join(pieces) == text
    assert pieces == [p for w in tok.words(text) for p in tok.sp.encode(w, out_type=str)]


def test_unknown_normalization_is_a_clear_error(tmp_path):
    """A normaliser SentencePiece does not ship (a typo, or NFD) is named with the valid choices,
    and no model is cached under it."""
    with pytest.raises(ValueError, match=r"unknown normalization 'nfd'; choose from identity, nmt_nfkc, nfkc"):
        train_or_load(TRAIN_TEXTS, TokenizerSettings(vocab_size=300, normalization="nfd"), tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("texts", [[], ["", " \n\t　"]], ids=["none", "whitespace"])
def test_training_on_no_words_is_a_clear_error(tmp_path, texts):
    """No text, or only whitespace (MeCab finds no word), leaves nothing to learn pieces from: one
    clear error rather than a SentencePiece failure, and no model is cached."""
    with pytest.raises(ValueError, match="cannot train a tokenizer on empty text"):
        train_or_load(texts, TokenizerSettings(vocab_size=300), tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_cached_model_is_loaded_not_trained_again_and_its_folder_is_made(tmp_path, monkeypatch):
    import tasks.tokenizer as tk

    cache = tmp_path / "not" / "yet"  # a --cache-dir that does not exist yet, two levels deep
    a = train_or_load(TRAIN_TEXTS, TokenizerSettings(vocab_size=300), cache)
    assert len(list(cache.glob("spm-*.model"))) == 1

    def no_training(*args):
        raise AssertionError("trained again although the model is cached")

    monkeypatch.setattr(tk, "_train_proto", no_training)
    b = train_or_load(TRAIN_TEXTS, TokenizerSettings(vocab_size=300), cache)
    assert a.sp.serialized_model_proto() == b.sp.serialized_model_proto()


def _chars(*counts: int):
    from collections import Counter

    return Counter({chr(0x4E00 + i): c for i, c in enumerate(counts)})


def test_a_small_vocabulary_is_raised_to_the_characters_of_98_percent_plus_326():
    from tasks.tokenizer import _size_and_coverage

    # counts sorted high to low: 50, 80, 98 of 100 reach 98% at the 3rd character -> 3 + 6 + 256 + 64
    assert _size_and_coverage(_chars(1, 30, 50, 1, 18), 10) == (329, 1.0)
    assert _size_and_coverage(_chars(50, 30, 17, 2, 1), 10) == (330, 1.0)  # 50, 80, 97, 99: the 4th
    assert _size_and_coverage(_chars(50, 30, 18, 1, 1), 8000) == (8000, 1.0)  # a size that fits is kept


def test_character_coverage_keeps_half_the_vocabulary_of_characters_but_at_least_98_percent():
    from tasks.tokenizer import _size_and_coverage

    chars = _chars(*([100] * 400 + [1] * 600))  # 1,000 characters, 40,600 in all; 98% at the 398th
    size, coverage = _size_and_coverage(chars, 1800)  # keeps 900: 40,000 + 500 of 40,600
    assert size == 1800
    assert coverage < 40500 / 40600 and coverage == pytest.approx(40500 / 40600, abs=1e-8)  # just below
    assert _size_and_coverage(chars, 10) == (724, 0.98)  # keeps 362 (89%): SentencePiece's floor
    assert _size_and_coverage(chars, 2000) == (2000, 1.0)  # room for every character


def test_sentencepiece_is_trained_on_each_mecab_words_count(monkeypatch):
    """SentencePiece sees MeCab words with their counts (TSV `word<TAB>count`, most frequent first), not
    the raw text: the counts weigh which pieces it keeps, so each must be the word's true count."""
    import sentencepiece as spm

    import tasks.tokenizer as tk

    seen = {}

    def train(**kw):
        seen.update(kw, lines=list(kw.pop("sentence_iterator")))

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", train)
    tk._train_proto(["東京と東京。", "大阪"], TokenizerSettings(vocab_size=300))
    assert seen["lines"][0] == "東京\t2" and sorted(seen["lines"][1:]) == ["。\t1", "と\t1", "大阪\t1"]
    # 8 characters, 6 distinct: 98% needs all 6, so 300 is raised to 6 + 326; all 6 fit in half of it
    assert seen["input_format"] == "tsv" and seen["vocab_size"] == 332 and seen["character_coverage"] == 1.0
