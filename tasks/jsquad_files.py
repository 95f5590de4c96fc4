"""JSQuAD's files: JGLUE/SQuAD-format JSON -> `QAItem`s, and where a split's file is.

Apart from `tasks/jsquad.py` so that the baselines (`tasks/jsquad_baselines.py`), which read the same
items, and the task, which scores them, both import it and neither imports the other.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import DataError

VERSION = "v1.3"
SEP_IN_CONTEXT = " [SEP] "


@dataclass
class QAItem:
    qid: str
    title: str
    paragraph: str
    question: str
    answers: list[str]
    starts: list[int]  # answer starts, in paragraph coordinates (-1 when unknown)


def parse_articles(articles: Any, where: str) -> list[QAItem]:
    """JGLUE/SQuAD-format articles -> QA items; any structural problem names `where`."""
    if not isinstance(articles, list):
        raise DataError(f"{where}: not JGLUE JSQuAD JSON (expected a 'data' list of articles)")
    items: list[QAItem] = []
    try:
        for art in articles:
            for par in art["paragraphs"]:
                ctx = par["context"]
                title, paragraph = ctx.split(SEP_IN_CONTEXT, 1) if SEP_IN_CONTEXT in ctx else (art.get("title", ""), ctx)
                offset = len(ctx) - len(paragraph)
                for qa in par["qas"]:
                    answers = [a["text"] for a in qa["answers"]]
                    starts = [int(a.get("answer_start", -1)) - offset if a.get("answer_start", -1) >= 0 else -1 for a in qa["answers"]]
                    items.append(QAItem(str(qa["id"]), title, paragraph, qa["question"], answers, starts))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise DataError(f"{where}: not JGLUE JSQuAD JSON (bad or missing field: {e})") from None
    if not items:
        raise DataError(f"{where}: no questions found")
    return items


def load_file(path: Path) -> list[QAItem]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or "data" not in raw:
        raise DataError(f"{path}: not JGLUE JSQuAD JSON (no top-level 'data')")
    return parse_articles(raw["data"], str(path))


def find_split(data_dir: Path, split: str) -> Path | None:
    for name in (f"{split}-{VERSION}.json", f"{split}.json"):
        if (data_dir / name).is_file():
            return data_dir / name
    hits = sorted(data_dir.glob(f"{split}-v*.json"))
    return hits[-1] if hits else None
