"""JSQuAD exact match and F1 exactly as JGLUE scores them.

JGLUE patches transformers' `squad_metrics.py` (fine-tuning/patch/): answers are normalised by
lower-casing, stripping trailing "。" and collapsing whitespace (punctuation is *not* removed, no
Unicode normalisation); F1 is the bag-of-characters overlap of the normalised strings (characters,
spaces included, are the tokens). Both take the max over gold answers and average over questions.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence


def normalize_answer(s: str) -> str:
    """lower -> strip trailing "。" -> collapse whitespace (JGLUE's order)."""
    s = s.lower()
    s = s.rstrip("。")
    return " ".join(s.split())


def _gold(golds: Iterable[str]) -> list[str]:
    """Gold answers whose normalised text is empty are dropped; if none remain the gold is ""."""
    kept = [g for g in golds if normalize_answer(g)]
    return kept or [""]


def exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def f1(pred: str, gold: str) -> float:
    p, g = list(normalize_answer(pred)), list(normalize_answer(gold))
    if not p or not g:  # empty vs anything: 1 only if both empty
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def score(pred: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction: the max over its gold answers."""
    gs = _gold(golds)
    return max(exact_match(pred, g) for g in gs), max(f1(pred, g) for g in gs)


def corpus_scores(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean EM and F1 over questions, as fractions in [0, 1]."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} questions")
    if not preds:
        return {"em": float("nan"), "f1": float("nan")}
    pairs = [score(p, g) for p, g in zip(preds, golds)]
    return {"em": sum(e for e, _ in pairs) / len(pairs), "f1": sum(f for _, f in pairs) / len(pairs)}
