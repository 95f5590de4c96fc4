"""Unlabeled text for the pretraining stage: where documents come from, nothing about tokens.

A source is named on the command line (`--pretrain SOURCE`, repeatable):
- `passages`          the task's own training passages (self-pretraining, Amos et al. arXiv
                      2310.02980): each distinct training paragraph is a document. Never the
                      evaluation split's, nor the dev slice's (the task decides: `TaskData.passages`).
- `dir:PATH`          every `*.txt` file under PATH (sorted, recursively), UTF-8, one paragraph per
                      line; a blank line ends a document (the aozora-pd layout: works separated by
                      one blank line), so a document is a run of non-empty lines joined by "\n".
- `hf:NAME[:CONFIG]`  a Hugging Face `datasets` corpus, streamed (split `train`, the `text` column,
                      else the first string column) when huggingface.co is reachable; offline it
                      stops with one line. Its tokens are cached like any other source's.

`max_chars` (> 0) caps the characters taken from each source, in the source's own order (whole
documents; the last one is cut): tokenising is slow on a CPU (~200k characters/s measured for MeCab +
SentencePiece), and the cap is part of the token cache's key. Problems are `DataError`s: one line
naming the source and what to do.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from core.results import error_text
from tasks import DataError
from tasks.net import reachable

KINDS = ("passages", "dir", "hf")
HF_HOST = "huggingface.co"


@dataclass(frozen=True)
class Source:
    kind: str  # passages | dir | hf
    arg: str = ""  # the directory, or "NAME[:CONFIG]"

    @classmethod
    def parse(cls, text: str) -> "Source":
        kind, sep, arg = text.partition(":")
        if text == "passages":
            return cls("passages")
        if kind not in KINDS or kind == "passages" or not sep or not arg:
            raise DataError(f"--pretrain {text!r}: a source is 'passages', 'dir:PATH' or 'hf:NAME[:CONFIG]'")
        return cls(kind, arg)

    def __str__(self) -> str:
        return self.kind if self.kind == "passages" else f"{self.kind}:{self.arg}"

    @property
    def short(self) -> str:
        """A name for grid names and tables: the directory's base name, the dataset's name."""
        if self.kind == "dir":
            return Path(self.arg).resolve().name or "dir"
        return self.arg.split(":")[0].replace("/", "-") if self.kind == "hf" else "passages"


def _dir_files(path: Path) -> list[Path]:
    if not path.is_dir():
        raise DataError(f"dir:{path}: no such directory (a pretraining dir holds UTF-8 *.txt files, one paragraph per line)")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"dir:{path}: no *.txt files in it (a pretraining dir holds UTF-8 text, one paragraph per line)")
    return files


def identity(src: Source, passages: list[str]) -> str:
    """What the source's text depends on (part of the token cache's key): the passages themselves, a
    directory's file names, sizes and modification times, a dataset's name."""
    if src.kind == "passages":
        blob = json.dumps(passages, ensure_ascii=False)
    elif src.kind == "dir":
        path = Path(src.arg)
        blob = json.dumps([(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in _dir_files(path)])
    else:
        blob = src.arg
    return hashlib.sha256(f"{src}\n{blob}".encode()).hexdigest()[:16]


def _dir_documents(path: Path) -> Iterator[str]:
    for f in _dir_files(path):
        lines: list[str] = []
        try:
            with f.open(encoding="utf-8") as fh:
                for line in fh:
                    line = line.rstrip("\r\n")
                    if line.strip():
                        lines.append(line)
                    elif lines:
                        yield "\n".join(lines)
                        lines = []
        except UnicodeDecodeError as e:
            raise DataError(f"{f}: not UTF-8 text ({e})") from None
        if lines:
            yield "\n".join(lines)


def _hf_documents(spec: str, cache_dir: Path) -> Iterator[str]:
    name, _, config = spec.partition(":")
    if not reachable(HF_HOST):
        raise DataError(f"hf:{spec}: cannot reach {HF_HOST} to stream it (offline?); use dir:PATH with local text "
                        "files (e.g. dir:../shared/data/aozora-pd) or passages")
    import datasets

    try:
        ds = datasets.load_dataset(name, config or None, split="train", streaming=True,
                                   cache_dir=str(cache_dir / "datasets"))
    except Exception as e:  # network and hub errors come in many types; the message is what matters
        raise DataError(f"hf:{spec}: could not load it ({error_text(e, limit=250)})") from None
    column = None
    for row in ds:
        if column is None:
            column = "text" if isinstance(row.get("text"), str) else next(
                (k for k, v in row.items() if isinstance(v, str)), None)
            if column is None:
                raise DataError(f"hf:{spec}: no text column (expected 'text' or a string column)")
        if row[column].strip():
            yield row[column]


def documents(src: Source, passages: list[str], cache_dir: Path, max_chars: int = 0) -> Iterator[str]:
    """The source's documents, at most `max_chars` characters in all (0: no cap)."""
    if src.kind == "passages":
        it: Iterator[str] = iter(p for p in passages if p.strip())
    elif src.kind == "dir":
        it = _dir_documents(Path(src.arg))
    else:
        it = _hf_documents(src.arg, cache_dir)
    left = max_chars if max_chars > 0 else None
    for doc in it:
        if left is not None:
            if left <= 0:
                return
            doc = doc[:left]
            left -= len(doc)
        yield doc


def check(src: Source, passages: list[str]) -> None:
    """Fail fast, with one line, on a source that cannot give any text (before any tokenising)."""
    if src.kind == "passages" and not any(p.strip() for p in passages):
        raise DataError("--pretrain passages: this task has no training passages (a text QA task such as jsquad has)")
    if src.kind == "dir":
        _dir_files(Path(src.arg))

