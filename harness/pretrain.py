"""The pretraining stage: unlabeled text, tokenised once and cached, packed, trained first in the budget.

A cell with `pretrain = {"sources": [...], "frac": F, "max_chars": N}` spends the first F of its
budget on its objective's language-modelling form (`Objective.pretraining()`: next-token loss on every
token for autoregressive, masked diffusion over whole sequences for diffusion) over packed unlabeled
text, then the rest on the task. One run, one optimizer, one WSD schedule over the whole budget (with
decay_frac 0.2 and F = 0.8 the task stage would be exactly the decay phase), one loss curve and
dev-loss checkpoint selection over both stages (the dev loss is always the task's).

Why it is built this way:
- **Token cache.** Tokenising Japanese (MeCab + SentencePiece) runs at ~200k characters/s on a CPU,
  so each (tokenizer, source, max_chars) is encoded once into `<cache>/pretrain/*.tok`, a flat
  uint16/uint32 token file read back with `np.memmap`. The key holds a hash of the tokenizer's model
  bytes: a different tokenizer (other training text, vocabulary or normaliser) gets a different file,
  never stale ids.
- **Packing.** Documents are concatenated with EOS after each one and cut into full `max_len` rows
  (no padding, no wasted compute; the last partial row is dropped and counted). A row may span a
  document boundary: the EOS tells the model where one ends (GPT-style packing, no cross-document
  attention mask).
- **Exact split.** The stage switch happens at the first step whose budget fraction reaches F, so a
  token budget's pretraining share is F x budget to within one batch.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from core.data import BatchSampler, SeqSet
from core.files import replacing, write_atomic
from harness.step_profile import busy_fraction
from tasks import DataError
from tasks.corpus import Source, check, documents, identity

DEFAULT_FRAC = 0.5  # the share measured on CPU (docs/pretraining.md: "What pretraining and JaQuAD buy")


@dataclass
class PretrainSpec:
    """What a cell pretrains on; stored in the Cell (its resume key) and in every row."""

    sources: list[str]
    frac: float = DEFAULT_FRAC
    max_chars: int = 0  # per source, 0: all

    def __post_init__(self):
        if not self.sources:
            raise DataError("--pretrain needs at least one source")
        if not 0.0 < self.frac < 1.0:
            raise ValueError(f"--pretrain-frac must be in (0, 1), got {self.frac}")
        if self.max_chars < 0:
            raise ValueError(f"--pretrain-max-chars must be >= 0, got {self.max_chars}")
        for s in self.sources:
            Source.parse(s)

    def slug(self) -> str:
        """For grid names: `pt-passages+aozora-pd-f0.8`."""
        names = "+".join(Source.parse(s).short for s in self.sources)
        cap = f"-c{self.max_chars}" if self.max_chars else ""
        return f"pt-{names}{cap}-f{self.frac:g}"


@dataclass
class Corpus:
    """Packed pretraining rows (on the host) and what went into them."""

    data: SeqSet  # (N, max_len) rows, every token real and a target
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- token cache

def tokenizer_id(tok) -> str:
    """Identity of a tokenizer: its SentencePiece model bytes (vocabulary, normaliser, pieces)."""
    return hashlib.sha256(tok.sp.serialized_model_proto()).hexdigest()[:16]


def _encode_doc(tok, doc: str, newline: list[int]) -> list[int]:
    """A document's ids, line by line (MeCab on a whole novel at once is slow and memory-hungry)."""
    out: list[int] = []
    for i, line in enumerate(doc.split("\n")):
        if i:
            out += newline
        out += tok.encode(line)
    return out


def tokenize_cached(src: Source, passages: list[str], tok, cache_dir: Path, max_chars: int = 0,
                    log: Callable[[str], None] = print) -> tuple[np.ndarray, dict[str, Any]]:
    """The source as one token stream, EOS after every document (a read-only memmap), and its counts."""
    check(src, passages)
    key = hashlib.sha256(f"{tokenizer_id(tok)}|{identity(src, passages)}|{max_chars}".encode()).hexdigest()[:16]
    base = Path(cache_dir) / "pretrain" / f"{src.short}-{key}"
    meta_path, tok_path = base.with_suffix(".json"), base.with_suffix(".tok")
    if meta_path.exists() and tok_path.exists():
        meta = json.loads(meta_path.read_text())
        return np.memmap(tok_path, dtype=meta["dtype"], mode="r"), {**meta, "cached": True}
    dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    eos, newline = tok.special.eos, tok.encode("\n")
    t0 = time.perf_counter()
    n_docs = n_chars = n_tok = 0
    tok_path.parent.mkdir(parents=True, exist_ok=True)
    # streamed: a source that fails part-way (a file not UTF-8, Ctrl-C) leaves no partial file in the cache
    with replacing(tok_path) as tmp:
        with tmp.open("wb") as fh:
            for doc in documents(src, passages, Path(cache_dir), max_chars):
                ids = _encode_doc(tok, doc, newline) + [eos]
                fh.write(np.asarray(ids, dtype=dtype).tobytes())
                n_docs, n_chars, n_tok = n_docs + 1, n_chars + len(doc), n_tok + len(ids)
                if n_docs % 5000 == 0:
                    log(f"[pretrain] {src}: {n_chars:,} characters tokenised ...")
        if n_tok == 0:
            raise DataError(f"--pretrain {src}: empty corpus (no text in it)")
    meta = {"source": str(src), "docs": n_docs, "chars": n_chars, "tokens": n_tok, "max_chars": max_chars,
            "tokens_per_char": round(n_tok / max(n_chars, 1), 4), "tokenizer": tokenizer_id(tok),
            "dtype": np.dtype(dtype).name, "tokenize_s": round(time.perf_counter() - t0, 2)}
    write_atomic(meta_path, json.dumps(meta))  # written last: a file without its meta is never read
    log(f"[pretrain] {src}: {n_docs:,} documents, {n_chars:,} characters -> {n_tok:,} tokens "
        f"in {meta['tokenize_s']:.0f}s (cached)")
    return np.memmap(tok_path, dtype=dtype, mode="r"), {**meta, "cached": False}


# ----------------------------------------------------------------------------- packing

def pack(stream: np.ndarray, row_len: int) -> tuple[SeqSet, int]:
    """Full rows of `row_len` tokens cut from the stream, and the number of tail tokens left out.
    A stream shorter than one row gives that one shorter row."""
    n_rows = len(stream) // row_len
    if n_rows == 0:
        ids = torch.from_numpy(np.asarray(stream, dtype=np.int64))[None]
        n = np.array([ids.shape[1]], dtype=np.int64)
        return SeqSet(ids, torch.ones_like(ids, dtype=torch.bool), n, target_lengths=n.copy()), 0
    ids = torch.from_numpy(np.asarray(stream[: n_rows * row_len], dtype=np.int64)).view(n_rows, row_len)
    n = np.full(n_rows, row_len, dtype=np.int64)  # every token is a target
    return SeqSet(ids, torch.ones_like(ids, dtype=torch.bool), n, target_lengths=n.copy()), len(stream) - n_rows * row_len


def prepare(spec: PretrainSpec, data, cache_dir: Path, row_len: int, log: Callable[[str], None] = print) -> Corpus:
    """Tokenise (or load) every source with the task's tokenizer, concatenate, pack into rows."""
    tok = getattr(data, "tokenizer", None)
    if tok is None:
        raise DataError("--pretrain needs a task with a text tokenizer (e.g. jsquad)")
    streams, sources = [], []
    for s in spec.sources:
        stream, meta = tokenize_cached(Source.parse(s), data.passages, tok, cache_dir, spec.max_chars, log)
        streams.append(stream)
        sources.append(meta)
    packed, tail = pack(np.concatenate(streams) if len(streams) > 1 else streams[0], row_len)
    info = {"sources": sources, "rows": len(packed), "row_len": row_len, "tokens": packed.n_tokens,
            "tail_dropped": tail}
    log(f"[pretrain] {' + '.join(spec.sources)}: {len(packed):,} rows of {row_len} tokens")
    return Corpus(packed, info)


# ----------------------------------------------------------------------------- stages in the training loop

@dataclass
class Stage:
    name: str  # "pretrain" | "task"
    until: float  # budget fraction at which it ends
    sampler: Any  # BatchSampler (or a data-parallel rank's ShardedSampler)
    objective: Any  # what the loss comes from in this stage
    sources: list[str]
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    steady_tokens: int = 0  # tokens/s counts the steps after the warm-up (the trainer decides which)
    steady_seconds: float = 0.0
    real_pos: int = 0  # positions holding a token, of the `computed_pos` (rows x batch length) computed
    computed_pos: int = 0
    data_tokens: int = 0  # tokens in the stage's text (the packed corpus, the task's training split)
    warm_tokens: int = 0  # tokens trained in the stage's steps off the clock (warm-up, late compiles, profiled)
    profile: dict[str, Any] | None = None  # one profiled step (TrainConfig.profile): harness/step_profile.py

    def account(self, tokens: int, seconds: float, real_pos: int = 0, computed_pos: int = 0,
                warm: bool = False) -> None:
        self.tokens += tokens
        self.steps += 1
        self.seconds += seconds
        self.real_pos += real_pos
        self.computed_pos += computed_pos
        if warm:
            self.warm_tokens += tokens

    @property
    def clocked_tokens(self) -> int:
        """Tokens of the stage's steps on the clock (its `seconds` are theirs, drains included)."""
        return self.tokens - self.warm_tokens

    def clocked_rate(self) -> float | None:
        """Seconds per token of the stage's steps on the clock (the drains charged to it included), None
        before one was timed: what a token of this stage's shapes and loss form costs to train."""
        return self.seconds / self.clocked_tokens if self.clocked_tokens > 0 and self.seconds > 0 else None

    def padding_frac(self) -> float | None:
        return round(1.0 - self.real_pos / self.computed_pos, 4) if self.computed_pos else None

    def tokens_per_s(self) -> float:
        """The stage's own speed: its shapes (packed full rows, or the task's padded length buckets) and its
        loss form differ from the other stage's, so one figure over both would depend on the split."""
        return self.steady_tokens / self.steady_seconds if self.steady_seconds > 0 else float("nan")

    def describe(self) -> dict[str, Any]:
        tps = self.tokens_per_s()
        return {"stage": self.name, "sources": self.sources, "tokens": self.tokens, "steps": self.steps,
                "seconds": round(self.seconds, 3), "warm_tokens": self.warm_tokens,
                "tokens_per_s": round(tps, 1) if tps == tps else None,
                "padding_frac": self.padding_frac(),
                # passes over the stage's text: at a GPU's speed a small corpus (the passages: ~123k tokens at
                # the small preset) is seen hundreds of times in a budget chosen on CPU, where it was half a pass
                "epochs": round(self.tokens / self.data_tokens, 2) if self.data_tokens else None,
                # the profiled step, and how busy its kernels kept the device at the stage's clocked rate
                **({"profile": {**self.profile, "busy_frac": busy_fraction(self.profile, self.clocked_rate())}}
                   if self.profile else {})}


class StagePlan:
    """The stages of one training run, in order; `at(frac)` is the one a step at budget fraction
    `frac` trains in (a stage ends at the first step whose fraction reaches its `until`)."""

    def __init__(self, stages: list[Stage]):
        self.stages, self.i = stages, 0

    def at(self, frac: float) -> Stage:
        while frac >= self.stages[self.i].until and self.i < len(self.stages) - 1:
            self.i += 1
        return self.stages[self.i]

    @property
    def task(self) -> Stage:
        return self.stages[-1]

    def warm_charge(self) -> float:
        """Seconds a time budget charges for the training done off the clock: each stage's warm tokens at
        that stage's clocked rate (a stage not timed yet: the run's, every stage's seconds over every
        clocked token, the stages' seconds adding up to the run's clock; 0 before any step was timed).
        The warm-up steps are off the clock because they compile, but they train all the same: left
        uncharged, a cell with more of them (compiled: 2 a stage, eager: 1; CUDA graphs: 2 per batch
        shape) would train for free what another cell pays for."""
        seconds, clocked = sum(s.seconds for s in self.stages), sum(s.clocked_tokens for s in self.stages)
        run_rate = seconds / clocked if clocked > 0 and seconds > 0 else 0.0
        return sum(s.warm_tokens * (s.clocked_rate() or run_rate) for s in self.stages)

    def describe(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.stages]


def stage_plan(task_sampler, objective, pretrain: tuple[Corpus, float] | None, batch_size: int, seed: int,
               pad_to: int, device: torch.device, shard: Callable[[BatchSampler], Any] | None = None,
               task_sources: list[str] | None = None) -> StagePlan:
    """A single task stage, or pretraining on the corpus until fraction F, then the task."""
    task = Stage("task", 1.0, task_sampler, objective, task_sources or ["task"])
    if pretrain is None:
        return StagePlan([task])
    corpus, frac = pretrain
    # every packed row has one length: batches of one shape (an epoch's short last batch left out), so a
    # compiled model compiles once for the stage, in its warm-up, never again mid-budget at an epoch's end
    sampler = BatchSampler(corpus.data.to(device), batch_size, seed=seed + 1, pad_to=pad_to, drop_last=True)
    sampler = shard(sampler) if shard else sampler
    pre = Stage("pretrain", frac, sampler, objective.pretraining(), [s["source"] for s in corpus.info["sources"]],
                data_tokens=corpus.data.n_tokens)
    return StagePlan([pre, task])
