"""Non-neural floors and the tokenizer ceiling for JSQuAD, scored with the official EM/F1 code.

A benchmark number means little without its floor and its ceiling. Extractive QA has strong
floors (answers are short spans of the context, often right next to words the question repeats),
and a model trained from scratch on a small budget may not beat them. These references become
ordinary results rows (`reference.name` = the baseline's name, `mixer` null, `objective` = "none"), so the report puts
them in the same table as the models.

- Baselines (`BASELINES`, a registry: `@baseline("name")` adds one): a function QAItem -> answer
  text. They see the full, untruncated paragraph (models may see a truncated one: the rows record
  `eval_answer_cut`), and must be deterministic and fast (the whole split in seconds on CPU).
- Ceiling (`tokenizer_ceiling`): every gold answer encoded with the run's tokenizer and decoded
  back, cut to the answer-token limit of generation. No model that emits tokens of this tokenizer
  can do better, so it exposes what normalisation (NFKC rewriting full-width characters) or the
  answer limit costs before any training.
"""
from __future__ import annotations

import random
import re
import zlib
from typing import Callable, Iterable, Sequence

from tasks.jsquad_files import QAItem
from tasks.jsquad_metric import corpus_scores

BASELINES: dict[str, Callable[[QAItem], str]] = {}


def baseline(name: str) -> Callable[[Callable[[QAItem], str]], Callable[[QAItem], str]]:
    """Register a baseline under `name` (the `mixer` of its results rows)."""

    def deco(fn: Callable[[QAItem], str]) -> Callable[[QAItem], str]:
        if name in BASELINES:
            raise ValueError(f"baseline {name!r} registered twice")
        BASELINES[name] = fn
        return fn

    return deco


def describe(name: str) -> str:
    """First line of a baseline's docstring: the one-line rule shown in the report."""
    doc = (BASELINES[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else name


def score_baseline(name: str, items: Sequence[QAItem]) -> dict[str, float]:
    """EM/F1 (fractions) of one baseline over `items`, with JGLUE's metric."""
    fn = BASELINES[name]
    return {**corpus_scores([fn(it) for it in items], [it.answers for it in items]), "eval_n": len(items)}


# ----------------------------------------------------------------------------- baselines

@baseline("title")
def title_answer(it: QAItem) -> str:
    """Always answer the article title (JSQuAD contexts start with it)."""
    return it.title


_SENTENCE_END = re.compile(r"(?<=[。！？!?\n])")
_CUT = set("、，,。．.！？!?「」『』（）()[]［］【】〈〉《》・：:；; 　\t\n\"'“”")
_PARTICLES = set("はがをにでともへやのか")
_WH = ("何", "誰", "いつ", "どこ", "どの", "どれ", "どう", "どんな", "いくつ", "いくら", "なぜ")
_NUMERIC_Q = re.compile(r"何[^ぁ-ゖ\s？?。、]|いつ|いくつ|いくら|どのくらい|どれくらい")  # 何 + a counter: 何年, 何cm, 何位
_DIGIT = re.compile(r"[0-9０-９一二三四五六七八九十百千万億]")


def _sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(paragraph) if s.strip()]


def _bigrams(text: str) -> set[str]:
    return {text[i : i + 2] for i in range(len(text) - 1) if not (set(text[i : i + 2]) & _CUT)}


def _question_bigrams(question: str) -> set[str]:
    """The question's character bigrams, minus those that touch a wh-word (they are not in the answer's
    sentence: the answer replaces them)."""
    masked = question
    for w in _WH:
        masked = masked.replace(w, "\0" * len(w))
    return {b for b in _bigrams(masked) if "\0" not in b}


def _best_sentence(it: QAItem, qb: set[str]) -> str:
    sents = _sentences(it.paragraph) or [it.paragraph]
    return max(sents, key=lambda s: len(_bigrams(s) & qb))  # max keeps the first of equals


@baseline("overlap_sentence")
def overlap_sentence(it: QAItem) -> str:
    """Answer the paragraph sentence sharing the most character bigrams with the question (first of ties)."""
    return _best_sentence(it, _question_bigrams(it.question)).strip()


def _suffix_after_wh(question: str) -> str:
    """The word part a wh-word asks about: '何種類あるか' -> '種類', '何年' -> '年', 'どの県' -> '県'."""
    m = re.search(r"(?:何|どの)([^\sぁ-ゖ？?。、！!]+)", question)
    return m.group(1) if m else ""


def _strip(span: str) -> str:
    span = re.sub(r"^[ぁ-ゖ]+", "", span.strip())  # a leading kana run is the previous word's ending
    while span and span[-1] in _PARTICLES:
        span = span[:-1]
    return span


@baseline("overlap_span")
def overlap_span(it: QAItem) -> str:
    """Gap filling: in the best-overlap sentence, the uncovered span nearest the question's words.

    Rule (deterministic, character level, no model):
    1. Pick the paragraph sentence that shares the most character bigrams with the question (bigrams
       touching a wh-word such as 何/誰/いつ/どこ are ignored; the first sentence wins ties).
    2. Mark the sentence characters covered by a bigram the question also contains. The maximal
       runs of uncovered characters, cut at punctuation and brackets, are the candidate answers (a
       JSQuAD question is usually its sentence with the answer replaced by a wh-word); a leading
       hiragana run (the previous word's ending) and trailing one-char particles (は が を に で と
       も へ や の か) are stripped, and all-hiragana candidates dropped.
    3. Score each candidate: covered characters within 4 positions on either side (the answer sits
       between question words) + 3 if the question asks for a number (何 + a counter, いつ, いくつ,
       ...) and the candidate has a digit, - 0.1 per character beyond 8 (answers are short, ~6
       characters). Highest score wins; the leftmost wins ties.
    4. A candidate followed in the sentence by what the wh-word asks about (何種類 -> 種類, 何科 -> 科,
       どの県 -> 県) keeps it ("20" -> "20種類"). No candidate: answer the whole sentence.
    """
    qb = _question_bigrams(it.question)
    sent = _best_sentence(it, qb)
    n = len(sent)
    covered = [False] * n
    for i in range(n - 1):
        if sent[i : i + 2] in qb:
            covered[i] = covered[i + 1] = True
    numeric = bool(_NUMERIC_Q.search(it.question))
    suffix = _suffix_after_wh(it.question)

    best, best_score = "", float("-inf")
    i = 0
    while i < n:
        if covered[i] or sent[i] in _CUT:
            i += 1
            continue
        j = i
        while j < n and not covered[j] and sent[j] not in _CUT:
            j += 1
        raw = sent[i:j]
        span = _strip(raw)
        if span and not re.fullmatch(r"[ぁ-ゖー]+", span):  # all-hiragana runs are function words
            start = i + raw.index(span)
            end = start + len(span)
            near = sum(covered[k] for k in range(max(0, start - 4), start)) + sum(covered[k] for k in range(end, min(n, end + 4)))
            has_digit = bool(_DIGIT.search(span))
            score = near + (3 if numeric and has_digit else 0) - 0.1 * max(0, len(span) - 8)
            if score > best_score:
                if suffix and sent[end : end + len(suffix)] == suffix and not span.endswith(suffix):
                    span = span + suffix
                best, best_score = span, score
        i = j
    return best or sent.strip()


RANDOM_SPAN_MAX = 12  # characters: the 90th percentile of JSQuAD v1.3 valid's first answers (median 5)


@baseline("random_span")
def random_span(it: QAItem) -> str:
    """Chance for span answers: a paragraph span at a random start, 1 to 12 characters, seeded by the question id.

    The floor a span-constrained model (`answer_constraint=span`) must beat to show that it locates the
    answer at all: any span scores some character F1 against a short gold answer. The seed is a CRC of
    the question id (Python's `hash` of a string changes between processes), so the row reproduces.
    """
    if not it.paragraph:
        return ""
    rng = random.Random(zlib.crc32(it.qid.encode("utf-8")))
    start = rng.randrange(len(it.paragraph))
    return it.paragraph[start : start + rng.randint(1, RANDOM_SPAN_MAX)]


# ----------------------------------------------------------------------------- ceiling

def roundtrip_scores(items: Iterable[QAItem], encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                     max_answer_tokens: int) -> dict[str, float]:
    """Tokenizer ceiling: the best EM/F1 when each gold answer goes through encode -> cut to
    `max_answer_tokens` -> decode, taking the best round-tripped gold per question.
    `questions_changed` counts questions where at least one gold answer does not survive the trip."""
    from tasks.jsquad_metric import score

    items = list(items)
    if not items:
        return {"em": float("nan"), "f1": float("nan"), "eval_n": 0}
    ems, f1s, changed = [], [], 0
    for it in items:
        trips = [decode(encode(a)[:max_answer_tokens]) for a in it.answers] or [""]
        changed += any(t != a for t, a in zip(trips, it.answers))
        pairs = [score(t, it.answers) for t in trips]
        ems.append(max(e for e, _ in pairs))
        f1s.append(max(f for _, f in pairs))
    return {"em": sum(ems) / len(ems), "f1": sum(f1s) / len(f1s), "eval_n": len(items),
            "questions_changed": changed}


def tokenizer_ceiling(items: Iterable[QAItem], tokenizer, max_answer_tokens: int) -> dict[str, float]:
    """`roundtrip_scores` with a `tasks.tokenizer.JaTokenizer`."""
    return roundtrip_scores(items, tokenizer.encode, tokenizer.decode, max_answer_tokens)
