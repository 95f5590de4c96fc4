"""Span-constrained answers: which tokens may come next so that the answer stays a span of its context.

JSQuAD's answers are spans of the paragraph (4% of the test split's: of the article title, which
JSQuAD's context holds before the paragraph). A small model trained from scratch spends most of its
errors on text that occurs in neither; `answer_constraint=span` asks the decoder to pick, at every
step, only among tokens that keep the answer a substring of the title or of the paragraph (greedy, in
the model's own order of preference). It measures where the model puts the answer, not whether it
can spell it: a different question from free generation, so rows record which one ran.

Why bytes, not token ids: the tokenizer encodes a gold answer on its own, and MeCab may cut it
differently from the same characters inside the paragraph. Matching the paragraph's *token* sequence
would forbid the very ids the model was trained to produce. So a prefix is allowed when its decoded
UTF-8 bytes are a substring of a context's bytes, whatever pieces spell them; byte-fallback pieces
spell single bytes, so every context can be spelled.

Rules (bytes of the answer so far: g; contexts: the title and the paragraph, each on its own):
- the answer starts at a character boundary of a context;
- a token is allowed when g + its bytes occur in one context, starting at such a boundary;
- EOS is allowed once g is a non-empty, whole-character string (never an empty answer, never a
  character cut in half).

A decoder that cannot apply the rules token by token (masked diffusion fills positions out of order)
returns `longest_answer(ids)`: the longest prefix of what it sampled that the rules allow, so every
answer it gives is still a span.
"""
from __future__ import annotations

from typing import Sequence


class PieceTrie:
    """Byte trie over a vocabulary's pieces: `walk(text, at)` lists the ids whose bytes start `text[at:]`.

    Built once per tokenizer (`pieces[i]`: token i's bytes, None for ids that spell nothing: PAD, EOS,
    control symbols)."""

    def __init__(self, pieces: Sequence[bytes | None]):
        self.pieces = list(pieces)
        self.root: dict = {}
        for i, b in enumerate(self.pieces):
            if not b:
                continue
            node = self.root
            for byte in b:
                node = node.setdefault(byte, {})
            node.setdefault(None, []).append(i)  # key None: the ids ending here

    def walk(self, text: bytes, at: int, out: set[int]) -> None:
        node = self.root
        for j in range(at, len(text)):
            node = node.get(text[j])
            if node is None:
                return
            out.update(node.get(None, ()))


def _is_boundary(b: bytes, i: int) -> bool:
    """Whether byte b[i] starts a character: UTF-8 continuation bytes are 10xxxxxx."""
    return (b[i] & 0xC0) != 0x80


class SpanConstraint:
    """The allowed next tokens of an answer that must be a span of one of `contexts` (see the module doc).

    `next_tokens(prefix)` takes the answer's ids so far; `tokens()` is every id that can occur in some
    allowed answer (EOS included): what a decoder that fills positions out of order can enforce. A span
    never crosses from one context to the next (JSQuAD: the title and the paragraph)."""

    def __init__(self, contexts: Sequence[str], trie: PieceTrie, eos: int):
        self.texts = [c.encode("utf-8") for c in contexts if c]
        self.trie, self.eos = trie, eos
        # (text, offset) where an answer may start: every character boundary
        self.starts = [(t, i) for t in self.texts for i in range(len(t)) if _is_boundary(t, i)]
        self._any: list[int] | None = None

    def _bytes(self, prefix: Sequence[int]) -> bytes | None:
        parts = []
        for i in prefix:
            b = self.trie.pieces[int(i)] if 0 <= int(i) < len(self.trie.pieces) else None
            if b is None:
                return None  # an id that spells nothing is not part of any span
            parts.append(b)
        return b"".join(parts)

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        g = self._bytes(prefix)
        if g is None:
            return [self.eos]
        out: set[int] = set()
        for t, s in self.starts:
            if not g or t.startswith(g, s):
                self.trie.walk(t, s + len(g), out)
        if g:
            try:
                g.decode("utf-8")
                out.add(self.eos)
            except UnicodeDecodeError:
                pass
        return sorted(out) if out else [self.eos]  # never nothing: a decoder must always have a choice

    def longest_answer(self, ids: Sequence[int]) -> list[int]:
        """The longest prefix of `ids` that is a whole allowed answer ([] if none).

        One test per prefix, not a walk through `next_tokens`: a prefix follows the rules token by token
        exactly when its bytes are valid UTF-8 and occur in one context (every shorter prefix then occurs
        at the same place; valid UTF-8 starts with a lead byte, so any occurrence starts a character)."""
        for k in range(len(ids), 0, -1):
            g = self._bytes(ids[:k])
            if g is None:
                continue
            try:
                g.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if any(g in t for t in self.texts):
                return list(ids[:k])
        return []

    def tokens(self) -> list[int]:
        if self._any is None:
            out: set[int] = {self.eos}
            for t in self.texts:  # a later token of a span may start mid-character (byte pieces)
                for s in range(len(t)):
                    self.trie.walk(t, s, out)
            self._any = sorted(out)
        return self._any
