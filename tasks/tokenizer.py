"""Japanese tokenizer: MeCab (fugashi + unidic-lite) words, then SentencePiece pieces inside words.

Why this shape:
- SentencePiece is trained on MeCab *word frequencies* (TSV "word<TAB>count"), so a piece never
  crosses a MeCab word boundary, and no "▁" word-start markers are wasted on segmentation spaces.
- Encoding a text = MeCab-segment it, keep the original whitespace as its own tokens, encode every
  word with SentencePiece. Decoding concatenates pieces, so it gives back the original characters
  (no stray spaces) for any text: `byte_fallback` covers characters never seen in training.
- The normaliser defaults to `identity`: SentencePiece's usual `nmt_nfkc` rewrites full-width digits,
  letters and brackets, and JSQuAD's official metric does not forgive that. `nmt_nfkc` stays an option
  (the tokenizer-ceiling rows measure what it costs).
- Known limit: the character U+2581 "▁" stands for a space inside SentencePiece and decodes as " "
  (it occurs nowhere in JSQuAD v1.3).

Special ids: 0 <pad>, 1 <unk>, 2 <s> (BOS), 3 </s> (EOS), then <sep> and <mask> (control symbols:
never produced from text, only by id).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from core.data import SpecialTokens
from core.files import write_atomic

NORMALIZERS = ("identity", "nmt_nfkc", "nfkc")


@dataclass(frozen=True)
class TokenizerSettings:
    vocab_size: int = 8000
    normalization: str = "identity"
    model_type: str = "unigram"


class JaTokenizer:
    def __init__(self, model_proto: bytes, settings: TokenizerSettings):
        import fugashi
        import sentencepiece as spm

        self.settings = settings
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._tagger = fugashi.Tagger()
        self.special = SpecialTokens(
            pad=self.sp.pad_id(), unk=self.sp.unk_id(), bos=self.sp.bos_id(), eos=self.sp.eos_id(),
            sep=self.sp.piece_to_id("<sep>"), mask=self.sp.piece_to_id("<mask>"),
        )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def words(self, text: str) -> list[str]:
        """MeCab segmentation that keeps every original character, whitespace included."""
        out: list[str] = []
        for w in self._tagger(text):
            if w.white_space:
                out.append(w.white_space)
            out.append(w.surface)
        # MeCab drops trailing whitespace: keep it so decode(encode(t)) == t
        rest = len(text) - sum(len(x) for x in out)
        if rest > 0:
            out.append(text[len(text) - rest :])
        return out

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return [i for piece_ids in self.sp.encode(self.words(text)) for i in piece_ids]

    def decode(self, ids: Iterable[int]) -> str:
        drop = {self.special.pad, self.special.bos, self.special.eos, self.special.sep, self.special.mask}
        return self.sp.decode([int(i) for i in ids if int(i) not in drop])

    def piece_bytes(self) -> list[bytes | None]:
        """Each id's UTF-8 bytes as `decode` concatenates them (None: specials and <unk>, which spell
        nothing); byte-fallback pieces are their one byte. For span-constrained answers (tasks/answer_span.py)."""
        sp, out = self.sp, []
        for i in range(sp.get_piece_size()):
            if sp.is_control(i) or sp.is_unknown(i):
                out.append(None)
            elif sp.is_byte(i):  # "<0xE3>"
                out.append(bytes([int(sp.id_to_piece(i)[3:-1], 16)]))
            else:
                out.append(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out


def _size_and_coverage(chars: Counter[str], vocab_size: int) -> tuple[int, float]:
    """The vocabulary size and SentencePiece `character_coverage` to train with, from character counts.

    Japanese has thousands of characters: a small vocabulary keeps the most frequent ones as pieces (at
    most half the vocabulary, but SentencePiece insists on >= 98% character coverage) and byte_fallback
    covers the rest. A vocabulary too small even for that is raised to fit: the characters that reach
    98% of the text, + 6 specials, 256 bytes and 64 merges (the size actually trained is what the
    results record). The coverage sits just below the kept characters' share, so SentencePiece keeps
    exactly those."""
    freqs = sorted(chars.values(), reverse=True)
    total, cum, need98 = sum(freqs), 0, 0
    for need98, f in enumerate(freqs, 1):
        cum += f
        if cum >= 0.98 * total:
            break
    vocab_size = max(vocab_size, need98 + 6 + 256 + 64)
    keep = min(len(freqs), vocab_size // 2)
    coverage = 1.0 if keep == len(freqs) else max(0.98, sum(freqs[:keep]) / total - 1e-9)
    return vocab_size, coverage


def _train_proto(texts: list[str], settings: TokenizerSettings) -> bytes:
    import fugashi
    import sentencepiece as spm

    if settings.normalization not in NORMALIZERS:
        raise ValueError(f"unknown normalization {settings.normalization!r}; choose from {', '.join(NORMALIZERS)}")
    tagger = fugashi.Tagger()
    counts: Counter[str] = Counter()
    for t in texts:
        for w in tagger(t):
            if w.surface.strip():
                counts[w.surface.replace("\t", " ")] += 1
    if not counts:
        raise ValueError("cannot train a tokenizer on empty text")
    chars: Counter[str] = Counter()
    for w, c in counts.items():
        for ch in w:
            chars[ch] += c
    vocab_size, coverage = _size_and_coverage(chars, settings.vocab_size)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(f"{w}\t{c}" for w, c in counts.most_common()),
        model_writer=buf,
        input_format="tsv",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # small corpora (test fixtures) may not support the full size
        model_type=settings.model_type,
        normalization_rule_name=settings.normalization,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        byte_fallback=True,
        character_coverage=coverage,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        control_symbols=["<sep>", "<mask>"],
        user_defined_symbols=["\u2581"],  # a space is one piece, not three fallback bytes
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return buf.getvalue()


def train_or_load(texts: list[str], settings: TokenizerSettings, cache_dir: Path | None) -> JaTokenizer:
    """Train on `texts` (the training split), cached on disk keyed by the texts and the settings."""
    key = hashlib.sha256(json.dumps([asdict(settings), texts], ensure_ascii=False).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"spm-{key}.model" if cache_dir else None
    if path is not None and path.exists():
        return JaTokenizer(path.read_bytes(), settings)
    proto = _train_proto(texts, settings)
    if path is not None:
        write_atomic(path, proto)  # a concurrent reader sees all or nothing
    return JaTokenizer(proto, settings)
