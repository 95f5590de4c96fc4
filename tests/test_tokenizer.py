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
