"""How JSQuAD questions become token sequences (tasks/jsquad.py `_Encoder`): the two prompt layouts,
the evaluation prompt's length limit, and the training window around the answer, with the questions
it has to drop."""
from __future__ import annotations

import pytest

import tasks
from core.data import SpecialTokens
from fixtures.jsquad_mini import TRAIN_ARTICLES, write_split
from tasks import DataError, PrepareContext
from tasks import jsquad as jsq
from tasks.jsquad_files import QAItem

FUJI, TOKYO = TRAIN_ARTICLES[0][1], TRAIN_ARTICLES[1][1]
RARE = "鬱躑躅薔薇檸檬"  # characters the fixture tokenizer never saw: 3 byte-fallback tokens each


def _item(paragraph, answers, starts, qid="q0", title="東京駅", question="東京駅の駅舎を設計したのは誰か。"):
    return QAItem(qid, title, paragraph, question, list(answers), list(starts))


def _segments(ids, sep):
    """The parts of a sequence between BOS and its SEPs (the last part: what follows the last SEP)."""
    parts, cur = [], []
    for i in ids[1:]:
        if i == sep:
            parts.append(cur)
            cur = []
        else:
            cur.append(i)
    return parts + [cur]


# ----------------------------------------------------------------------------- the two layouts

@pytest.mark.parametrize("order", ["context_first", "question_first"])
def test_prompt_layout_follows_the_order_option(tok, order):
    """`order=question_first` puts the question before the title and paragraph; `context_first` (the
    default) after them. Both the evaluation prompt and the training row use the layout, and the
    training row is the prompt followed by the answer and EOS."""
    it = _item(TOKYO, ["辰野金吾"], [TOKYO.index("辰野金吾")])
    enc = jsq._Encoder(tok, 256, order)
    s, t, p, q = tok.special, tok.encode(it.title), tok.encode(it.paragraph), tok.encode(it.question)
    expect = ([s.bos, *q, s.sep, *t, s.sep, *p, s.sep] if order == "question_first"
              else [s.bos, *t, s.sep, *p, s.sep, *q, s.sep])
    prompt, kept = enc.prompt(it, reserve=8)
    assert prompt == expect and kept == len(TOKYO)
    rows, truncated, dropped = enc.training_set([it])
    n = int(rows.lengths[0])
    assert rows.ids[0, :n].tolist() == expect + tok.encode("辰野金吾") + [s.eos]
    assert rows.target[0, :n].tolist() == [False] * len(expect) + [True] * (n - len(expect))
    assert (truncated, dropped) == (0, 0)


def test_question_first_prepare_keeps_answers_inside_their_paragraphs(offline_dir, cache_dir):
    """End to end with `order=question_first` and a max_len that windows the training paragraphs:
    every training row reads question, title, paragraph window, answer, and the answer is a gold answer
    of *that* question and lies inside its window; every evaluation prompt starts with its own question
    and keeps the first tokens of its own paragraph, and its scored target is its own first gold answer (cut to max_answer_tokens)."""
    d = tasks.build("jsquad", order="question_first", max_answer_tokens=12).prepare(
        PrepareContext(offline_dir, cache_dir, 300, 64, log=lambda s: None))
    sep = d.special.sep
    by_question = {it.question: it for it in jsq.load_file(offline_dir / "valid-v1.3.json")}
    assert d.info["train_truncated"] > 0 and d.info["train_dropped"] == 0
    for i in range(len(d.train)):
        n = int(d.train.lengths[i])
        ids, tgt = d.train.ids[i, :n].tolist(), d.train.target[i, :n].tolist()
        q, title, par, ans = (d.decode(x) for x in _segments(ids, sep))
        gold = by_question[q]
        assert title == gold.title and par in gold.paragraph
        assert d.decode([x for x, m in zip(ids, tgt) if m]) == ans == gold.answers[0]
        assert ans in par, (i, ans, par)
    for k, (prompt, it) in enumerate(d.items):
        q, title, par, rest = _segments(prompt, sep)
        assert (d.decode(q), d.decode(title), rest) == (it.question, it.title, [])
        assert par and par == d.tokenizer.encode(it.paragraph)[: len(par)]  # its paragraph's first tokens
        n = int(d.eval.lengths[k])
        target = d.eval.ids[k, :n][d.eval.target[k, :n]].tolist()
        assert target == d.tokenizer.encode(it.answers[0])[:12] + [d.special.eos]


# ----------------------------------------------------------------------------- evaluation prompt length

def test_eval_prompt_without_room_for_any_context_is_a_clear_error(tok):
    """When max_len minus the answer reserve, the title, the question and the four special tokens
    leaves no paragraph token, the prompt would carry no context at all: a DataError naming the
    question and max_len. One token more and the prompt keeps the paragraph's first token."""
    it = _item(TOKYO, ["辰野金吾"], [TOKYO.index("辰野金吾")], qid="v1p0q1")
    fixed = 5 + 4 + len(tok.encode(it.title)) + len(tok.encode(it.question))  # reserve 5
    with pytest.raises(DataError, match=rf"question v1p0q1: max_len {fixed} leaves no room for the context"):
        jsq._Encoder(tok, fixed, "context_first").prompt(it, reserve=5)
    enc = jsq._Encoder(tok, fixed + 1, "context_first")
    prompt, kept = enc.prompt(it, reserve=5)
    first = tok.encode(TOKYO)[:1]
    assert _segments(prompt, tok.special.sep)[1] == first and kept == len(tok.decode(first))
    assert enc.eval_truncated == 1


# ----------------------------------------------------------------------------- training window

@pytest.mark.parametrize("start", [-1, 0], ids=["unknown", "wrong"])
def test_window_finds_the_answer_when_its_start_is_unknown_or_wrong(tok, start):
    """A recorded answer start that is missing (-1) or does not point at the answer text must not
    centre the window elsewhere: the window is found by the answer text, so the training row still
    contains its answer (a window around position 0 here would hold only the first article)."""
    par = FUJI + TOKYO
    ids = jsq._Encoder(tok, 256, "context_first")._window(_item(par, ["辰野金吾"], [start]), room=20)
    assert ids is not None and len(ids) <= 20
    window = tok.decode(ids)
    assert "辰野金吾" in window and window in par


def test_window_shrinks_until_it_fits(tok):
    """The first window width comes from the paragraph's average characters per token; where the text
    around the answer is denser in tokens (byte-fallback characters here), that width does not fit
    and the window shrinks until it does, still around the answer."""
    par, room = FUJI + RARE + TOKYO, 15
    start = par.index("薔薇")
    width = int(len(par) * room / len(tok.encode(par)))  # the first try, as _window computes it
    lo = max(0, min(start - (width - 2) // 2, len(par) - width))
    assert len(tok.encode(par[lo : lo + width])) > room  # precondition: the first try does not fit
    ids = jsq._Encoder(tok, 256, "context_first")._window(_item(par, ["薔薇"], [start]), room)
    assert ids is not None and len(ids) <= room
    window = tok.decode(ids)
    assert "薔薇" in window and window in par and len(window) < width


@pytest.mark.parametrize("answer, start, room", [
    ("大阪城", -1, 20),  # not in the paragraph
    ("大阪城", 5, 20),  # not in the paragraph, with a start pointing at other text
    (RARE, None, 15),  # in the paragraph, but its own 21 tokens exceed the room
    ("辰野金吾", None, 0),  # no room at all
], ids=["absent", "absent-with-start", "too-long", "no-room"])
def test_window_gives_up_when_the_answer_cannot_be_kept(tok, answer, start, room):
    """No window: the caller drops the question rather than train on a paragraph without its answer."""
    par = FUJI + RARE + TOKYO
    it = _item(par, [answer], [par.index(answer) if start is None else start])
    assert jsq._Encoder(tok, 256, "context_first")._window(it, room) is None


def test_training_set_drops_and_counts_questions_it_cannot_use(tok):
    """Questions without an answer, and questions whose answer no window can keep (absent from the
    paragraph, or too long for the room), are dropped and counted in `dropped`; a windowed question is
    kept and counted in `truncated`. The kept rows are exactly the usable questions, in order."""
    par = FUJI + RARE + TOKYO
    q = "東京駅の駅舎を設計したのは誰か。"
    fixed = 4 + len(tok.encode("東京駅")) + len(tok.encode(q))
    max_len = fixed + 20  # room = 20 minus the answer and EOS: the paragraph needs a window
    items = [_item(TOKYO[:10], ["東京駅"], [0], qid="fits"),  # short paragraph: kept whole
             _item(par, [], [], qid="no-answer"),
             _item(par, ["大阪城"], [-1], qid="absent"),
             _item(par, [RARE], [par.index(RARE)], qid="too-long"),
             _item(par, ["辰野金吾"], [par.index("辰野金吾")], qid="windowed")]
    rows, truncated, dropped = jsq._Encoder(tok, max_len, "context_first").training_set(items)
    assert (len(rows), truncated, dropped) == (2, 1, 3)
    answers = [tok.decode(rows.ids[i, : int(rows.lengths[i])][rows.target[i, : int(rows.lengths[i])]].tolist())
               for i in range(2)]
    assert answers == ["東京駅", "辰野金吾"]
    assert int(rows.lengths.max()) <= max_len


def test_a_character_cut_in_half_is_not_counted_as_kept(tok):
    """The evaluation prompt is cut in tokens, and a rare character is several byte tokens: a cut through
    one keeps part of its bytes. The characters kept (what `eval_answer_cut` compares each gold answer's
    end with) count whole characters only, so an answer whose last character was cut is counted as cut,
    not as kept."""
    par = "東京駅は薔薇である。"  # 薔薇: unseen by the fixture tokenizer, byte tokens
    it = _item(par, ["薔薇"], [4])
    fixed = 1 + 4 + len(tok.encode(it.title)) + len(tok.encode(it.question))  # BOS, 3 SEPs, the reserve
    for keep, whole in ((len(tok.encode("東京駅は薔")) + 1, 5), (len(tok.encode("東京駅は薔薇")), 6)):
        assert tok.decode(tok.encode(par)[:keep]).startswith(par[:whole])
        _, kept_chars = jsq._Encoder(tok, fixed + keep, "context_first").prompt(it, reserve=1)
        assert kept_chars == whole  # one byte into 薇: 5 whole characters; all of 薇: 6


# ----------------------------------------------------------------------------- exact fits

def test_a_paragraph_that_exactly_fits_is_kept_whole_and_one_token_more_is_cut(tok):
    """The boundaries of both limits: an evaluation prompt (reserve + 4 specials + title + question +
    paragraph) of exactly max_len, and a training row (4 specials + title + question + paragraph + answer
    + EOS) of exactly max_len, keep the whole paragraph and count nothing as truncated; one token less of
    max_len cuts (evaluation) or windows (training) it, and counts it."""
    it = _item(TOKYO, ["辰野金吾"], [TOKYO.index("辰野金吾")])
    title, q, par = (len(tok.encode(s)) for s in (it.title, it.question, it.paragraph))
    ans = len(tok.encode("辰野金吾")) + 1  # and EOS
    exact_eval, exact_train = 5 + 4 + title + q + par, 4 + title + q + par + ans
    for max_len, cut in ((exact_eval, 0), (exact_eval - 1, 1)):
        enc = jsq._Encoder(tok, max_len, "context_first")
        prompt, kept = enc.prompt(it, reserve=5)
        assert (enc.eval_truncated, len(prompt) + 5) == (cut, max_len)
        assert (kept == len(TOKYO)) == (cut == 0)
    for max_len, windowed in ((exact_train, 0), (exact_train - 1, 1)):
        rows, truncated, dropped = jsq._Encoder(tok, max_len, "context_first").training_set([it])
        assert (truncated, dropped) == (windowed, 0)
        assert int(rows.lengths[0]) <= max_len


def test_an_answer_at_the_paragraphs_first_character_is_windowed_not_dropped(tok):
    """A start of 0 is a real start (the answer opens the paragraph), not "unknown": the window keeps it."""
    par = FUJI + TOKYO
    ids = jsq._Encoder(tok, 256, "context_first")._window(_item(par, [FUJI[:3]], [0]), room=20)
    assert ids is not None and len(ids) <= 20 and tok.decode(ids).startswith(FUJI[:3])


class _CharTokenizer:
    """One token per character (its code point): the window's arithmetic becomes exact, since its first
    width, characters per token times the room, is the room itself."""

    special = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


@pytest.mark.parametrize("answer, room", [("辰", 1), ("辰野金吾", 4), ("辰野金吾", 9), ("辰野金吾", 20),
                                          ("富士山", 20), ("発着する", 20)])
def test_the_window_fills_the_room_exactly_centred_on_the_answer(answer, room):
    """With one token per character, the first window tried is `room` characters, `room` tokens: it
    fits (a fit is `<=`, not `<`), so the training paragraph uses the whole room, with the answer in
    its middle (as much context before it as after). At a room of the answer's own length the window
    is the answer itself, down to a room of one token. An answer near the paragraph's start or end
    moves the window inward, still the whole room."""
    par = FUJI + TOKYO
    start = par.index(answer)
    ids = jsq._Encoder(_CharTokenizer(), 256, "context_first")._window(_item(par, [answer], [start]), room)
    assert ids is not None and len(ids) == room
    lo = min(max(0, start - (room - len(answer)) // 2), len(par) - room)
    assert _CharTokenizer().decode(ids) == par[lo : lo + room]


def test_the_window_is_around_the_recorded_answer_not_an_earlier_copy_of_its_text():
    """An answer text can occur more than once in a paragraph; the gold start says which one the
    question is about, and the window is cut around that one, not the first occurrence."""
    par = "東京駅は" + FUJI + "東京駅の" + TOKYO
    second = par.index("東京駅の")
    ids = jsq._Encoder(_CharTokenizer(), 256, "context_first")._window(_item(par, ["東京駅"], [second]), 9)
    assert _CharTokenizer().decode(ids) == par[second - 3 : second + 6]


def test_an_answer_counts_as_cut_only_when_its_paragraph_was_cut_before_the_answer_ends(offline_dir, cache_dir):
    """`eval_answer_cut` counts evaluation questions no model could answer from its prompt: the paragraph
    was cut and every gold answer ends after the cut. A cut paragraph that still holds an answer is not
    one, nor is a whole one. At max_len 100 the fixture has both kinds of cut paragraph; the count is
    checked against the prompts themselves (the paragraph between the first two SEPs, decoded)."""
    d = tasks.build("jsquad", max_answer_tokens=4).prepare(
        PrepareContext(offline_dir, cache_dir, 300, 100, log=lambda s: None))
    tok, expect, kinds = d.tokenizer, 0, set()
    for prompt, it in d.items:
        par = _segments(prompt, tok.special.sep)[1]  # [BOS, title, SEP, paragraph, SEP, question, SEP]
        kept = tok.decode(par).rstrip("\ufffd")
        assert it.paragraph.startswith(kept)
        cut = len(kept) < len(it.paragraph)
        holds_answer = any(0 <= s and s + len(a) <= len(kept) for a, s in zip(it.answers, it.starts))
        kinds.add((cut, holds_answer))
        expect += cut and not holds_answer
    assert {(True, True), (True, False)} <= kinds
    assert d.info["eval_answer_cut"] == expect > 0
    # a cut prompt leaves exactly the answer tokens and EOS of room: the scored rows fit in max_len
    for (prompt, _), n in zip(d.items, d.eval.lengths.tolist()):
        assert len(prompt) <= 100 - 5 and n <= 100
    assert max(len(p) for p, _ in d.items) == 100 - 5


def _one_question_split(tmp_path):
    """An offline data directory whose evaluation split is one question, its answer opening the paragraph
    (富士山 at 0, under another title): (the directory, its test file)."""
    data = tmp_path / "jsquad"
    write_split(data, "valid", TRAIN_ARTICLES, "v")
    return data, write_split(data, "test", [("フジ", FUJI, [("標高3776メートルの山は何か。", ["富士山"])])], "e")


def test_an_answer_ending_exactly_at_the_cut_is_kept_and_one_token_less_is_cut(tmp_path, cache_dir):
    """The boundary of `eval_answer_cut`: an answer opening the paragraph (start 0, a real start) whose
    last character is the prompt's last kept character is in the prompt, so not counted; one paragraph
    token less and it is counted. The limits are found from the run's own tokenizer."""
    data, _ = _one_question_split(tmp_path)

    def prepare(max_len):
        return tasks.build("jsquad", max_answer_tokens=4).prepare(
            PrepareContext(data, cache_dir, 300, max_len, log=lambda s: None))

    whole = prepare(256)
    tok, ((_, it),) = whole.tokenizer, whole.items  # the same tokenizer at any max_len (the same split)
    ids = tok.encode(FUJI)
    k = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]) == "富士山")  # tokens up to the answer's end
    fixed = 5 + 4 + len(tok.encode("フジ")) + len(tok.encode(it.question))  # reserve 5, BOS and 3 SEPs
    assert it.starts == [0]
    for keep, cut in ((k, 0), (k - 1, 1)):
        d = prepare(fixed + keep)
        assert (d.info["eval_truncated"], d.info["eval_answer_cut"]) == (1, cut)


def test_an_answer_without_a_recorded_start_is_not_counted_cut_in_a_whole_paragraph(tmp_path, cache_dir):
    """`eval_answer_cut` counts prompts whose paragraph was cut; a gold answer with no `answer_start`
    (start -1: nothing to locate) in a paragraph kept whole is not one."""
    import json

    data, test = _one_question_split(tmp_path)
    doc = json.loads(test.read_text(encoding="utf-8"))
    del doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"]
    test.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    d = tasks.build("jsquad").prepare(PrepareContext(data, cache_dir, 300, 256, log=lambda s: None))
    (_, it), = d.items
    assert it.starts == [-1] and (d.info["eval_truncated"], d.info["eval_answer_cut"]) == (0, 0)
