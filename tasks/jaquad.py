"""JaQuAD (SkelterLabs, arXiv 2202.01764) as extra JSQuAD training data, with the overlap filter.

JaQuAD v0.1.0 is SQuAD-format Japanese QA over Wikipedia (31,748 train + 3,939 dev questions, CC BY-SA
3.0; ../shared/data/jaquad-v0.1.0/README.md): `train/*.json` and `dev/*.json` (or xz-compressed, `*.json.xz`),
each `{"version", "data": [articles]}`. Its contexts carry no "title [SEP]" prefix (the title comes from
the article) and are normalised to half-width ASCII punctuation, so it adds data but in a slightly
different surface form than JSQuAD's evaluation text.

Both datasets come from Wikipedia, so an article may be in both: JaQuAD shares one title (オスマン
帝国) and a few paragraphs with JSQuAD v1.3 test. Training on the evaluation split's text would
inflate scores, so `filter_overlap` drops every JaQuAD article whose title, or any of whose
paragraphs, also occurs in the held-out text (the evaluation split and the dev slice). Matching is on
NFKC-normalised text with whitespace removed (JaQuAD is half-width, JSQuAD full-width), a paragraph
matching when its first `PREFIX_CHARS` characters equal those of a held-out paragraph (edits later in
a paragraph between the two Wikipedia snapshots do not hide it).
"""
from __future__ import annotations

import json
import lzma
import re
import unicodedata
from pathlib import Path
from typing import Any

from tasks import DataError

PREFIX_CHARS = 40
SPLITS = ("train", "dev")


def _key(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def _files(split_dir: Path) -> list[Path]:
    """A split's files in name order, each `NAME.json` or its xz-compressed `NAME.json.xz`, not both."""
    files = {f.name: f for f in split_dir.glob("*.json")}
    for f in split_dir.glob("*.json.xz"):
        if f.name[:-3] in files:  # the same file twice would train on its questions twice
            raise DataError(f"{split_dir}: both {f.name[:-3]} and {f.name}; keep one of the two")
        files[f.name[:-3]] = f
    return [files[k] for k in sorted(files)]


def load_articles(root: Path) -> list[dict[str, Any]]:
    """Every article of JaQuAD's train and dev files (sorted file order), raw SQuAD dicts.

    A file may be xz-compressed (`NAME.json.xz`, read as `NAME.json`): JaQuAD's 25 MB of JSON are 4.7 MB so,
    which is what lets a copy travel to a lent GPU beside the wheels (scripts/prepare_device.sh)."""
    root = Path(root)
    files = [f for s in SPLITS for f in _files(root / s)] if root.is_dir() else []
    if not files:
        raise DataError(f"{root}: no JaQuAD files (expected train/*.json and dev/*.json, or *.json.xz, as in "
                        "../shared/data/jaquad-v0.1.0; point --task-opt jaquad_dir=DIR at it)")
    out: list[dict[str, Any]] = []
    for f in files:
        try:
            data = lzma.decompress(f.read_bytes()) if f.suffix == ".xz" else f.read_bytes()
            raw = json.loads(data.decode("utf-8"))
            out += list(raw["data"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, lzma.LZMAError) as e:
            raise DataError(f"{f}: not SQuAD-format JaQuAD JSON ({type(e).__name__}: {e})") from None
    return out


def filter_overlap(articles: list[dict[str, Any]], held_titles: set[str], held_paragraphs: set[str]
                   ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Articles sharing no title and no paragraph (prefix) with the held-out text, and what was dropped."""
    titles = {_key(t) for t in held_titles}
    prefixes = {_key(p)[:PREFIX_CHARS] for p in held_paragraphs if _key(p)}
    kept, by_title, by_par, questions = [], 0, 0, 0
    for art in articles:
        pars = art.get("paragraphs", [])
        if _key(art.get("title", "")) in titles:
            by_title += 1
        elif any(_key(p.get("context", ""))[:PREFIX_CHARS] in prefixes for p in pars):
            by_par += 1
        else:
            kept.append(art)
            continue
        questions += sum(len(p.get("qas", [])) for p in pars)
    return kept, {"articles_dropped": by_title + by_par, "dropped_by_title": by_title,
                  "dropped_by_paragraph": by_par, "questions_dropped": questions}
