"""Multi-query associative recall (MQAR, Zoology: arXiv 2312.04927): can a mixer look a key up?

Answering a JSQuAD question means finding a span seen earlier and copying it. MQAR isolates that
skill with no language in the way: a sequence lists key-value pairs, then asks for some keys again,
and the model must emit each queried key's value. Zoology found this explains most of the quality
gap between attention and efficient mixers, so it is the diagnostic that explains the QA table.

Sequence (ids; `seq_len` tokens, all sequences the same length so nothing is padded):

    <s> k1 v1 k2 v2 ... kN vN | .. kq vq .. .. kr vr .. ..
        key-value pairs          query region: each query is a key followed by its value

- Vocabulary: the six special ids at the bottom, then keys and values from disjoint halves of the
  rest (keys [6, 6+K), values [6+K, V)); in one sequence keys are distinct and so are values.
- Queries: `num_queries` distinct keys of the sequence (all of them by default), each at a
  query slot (two positions: key, value) of the region after the pairs. Slots are drawn without
  replacement with P(slot i) ∝ i^(a-1), i = 1, 2, ... (Zoology's power law, a = `power_a` = 0.01:
  short gaps are common, long ones rarer, as for repeated bigrams in text); `power_a=1` is uniform.
- The other region positions are noise (`noise=True`, Zoology's `random_non_queries`): uniform
  over the non-special vocabulary *except this sequence's keys*, so every query's key occurs
  exactly once before it (in its pair). `noise=False` fills them with SEP instead.
- Targets: the value right after each query key. Autoregressive models predict it from the prefix
  (loss only there: `objective_defaults` sets loss_on=answer); diffusion masks exactly these
  positions. Pair values are never targets: they are the evidence.
- Unlike Zoology's generator (which keeps values only in the labels), the answered values are in
  the sequence (our `SeqSet` holds the gold ids), so a causal model can see earlier answers and
  guess among the values not yet used. `info["elimination_accuracy"]` is what that heuristic alone
  scores (kv=4: 0.52); only accuracy clearly above it is evidence of recall.

Data is generated from a seed, nothing is stored: train, dev and eval sets come from independent
streams of `seed` (numpy SeedSequence spawn keys 0, 1, 2), so they are disjoint by seed and
reproducible. The train set is pre-generated with `train_tokens` tokens; `harness/train.py` cycles
it in fresh shuffled epochs, and at the default sizes a token budget of a few million sees each
sequence only a few times (an MQAR sequence cannot be memorised usefully anyway: its pairs are
random).

Model size: presets are made for JSQuAD's vocabulary. MQAR keeps the preset's *body* (everything
but the embedding) and swaps only the embedding for the task's vocabulary, so a tiny MQAR cell has
the same layers and MLP widths as a tiny JSQuAD cell. A width override (the `--sweep` over d_model)
scales the body target by (d/d_preset)^2, the same shape made wider; mixers are still matched to
each other at every width (see `model_preset`).

Defaults: T=64, kv=4 (Zoology's smallest Figure 2 point), vocabulary 1024 rather than Zoology's
8192: on CPU the output layer at 8192 makes a tiny cell ~4x slower and the default grid must run in
minutes; pass `--task-opt vocab_size=8192` for the paper's setting. Measured on CPU while building
this task: the tiny preset (d=64, MLP 824 wide, lr 3e-3) does not learn T=64 recall within a
1M-token budget; a 2-layer d=64 attention model with a narrow MLP at lr 3e-4 solves T=16/kv=2 in
~1000 steps (tests/test_mqar.py), and lr matters (the `lr` option; Zoology sweeps it per point).

Metric: `accuracy` = correct values / queried values (micro-average over all queries of the eval
set), from `objective.predict_targets` (teacher-forced argmax for autoregressive; one-step fill-in
for diffusion). `gen_latency_ms`: one `predict_targets` call on one sequence (batch 1), averaged.
`per_question`: each eval sequence's accuracy, by sequence index, so the report's paired bootstrap
can say whether two mixers differ on the same sequences (as JSQuAD's per-question F1 does).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from core.data import SeqSet, SpecialTokens
from core.env import autocast
from core.presets import Preset
from tasks import Metric, PrepareContext, Task, TaskData, latency_ms, register

SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)
N_SPECIAL = 6
STREAMS = {"train": 0, "dev": 1, "eval": 2}  # SeedSequence spawn keys: independent streams per split


@dataclass(frozen=True)
class MQARConfig:
    """What one sequence looks like (the generator's inputs; the protocol name spells it out)."""

    seq_len: int = 64
    num_kv_pairs: int = 4
    num_queries: int = 4
    vocab_size: int = 1024
    power_a: float = 0.01
    noise: bool = True

    @property
    def key_range(self) -> tuple[int, int]:
        return N_SPECIAL, N_SPECIAL + (self.vocab_size - N_SPECIAL) // 2

    @property
    def value_range(self) -> tuple[int, int]:
        return self.key_range[1], self.vocab_size

    @property
    def query_slots(self) -> int:
        """Two-token (key, value) slots in the region after BOS and the pairs."""
        return (self.seq_len - 1 - 2 * self.num_kv_pairs) // 2

    def check(self) -> None:
        k0, k1 = self.key_range
        v0, v1 = self.value_range
        if self.num_kv_pairs < 1 or self.num_queries < 1:
            raise ValueError(f"mqar: need at least one pair and one query; got {self}")
        if self.num_queries > self.num_kv_pairs:
            raise ValueError(f"mqar: num_queries={self.num_queries} > num_kv_pairs={self.num_kv_pairs} "
                             "(each key is queried at most once)")
        if min(k1 - k0, v1 - v0) < self.num_kv_pairs:
            raise ValueError(f"mqar: vocab_size={self.vocab_size} leaves {k1 - k0} keys / {v1 - v0} values, "
                             f"fewer than num_kv_pairs={self.num_kv_pairs}")
        if self.query_slots < self.num_queries:
            raise ValueError(f"mqar: seq_len={self.seq_len} has {self.query_slots} query slots after "
                             f"{self.num_kv_pairs} pairs, fewer than num_queries={self.num_queries}; "
                             "raise seq_len or lower num_kv_pairs/num_queries")
        if not self.power_a > 0:
            raise ValueError(f"mqar: power_a must be > 0; got {self.power_a}")

    @property
    def protocol(self) -> str:
        extra = ("" if self.num_queries == self.num_kv_pairs else f"-q{self.num_queries}") \
            + ("" if self.power_a == 0.01 else f"-a{self.power_a:g}") + ("" if self.noise else "-nonoise")
        return f"mqar-T{self.seq_len}-kv{self.num_kv_pairs}-V{self.vocab_size}{extra}"


def _distinct(rng: np.random.Generator, n: int, k: int, lo: int, hi: int) -> np.ndarray:
    """(n, k) ints from [lo, hi), distinct within each row: a uniform k-subset in random order."""
    if k * k > hi - lo:  # repeats likely (birthday bound): the first k of a random permutation per row
        return lo + np.argsort(rng.random((n, hi - lo)), axis=1)[:, :k]
    out = rng.integers(lo, hi, size=(n, k))
    while True:  # rejection: redraw the rows with a repeat (a minority of rows when k * k <= range)
        s = np.sort(out, axis=1)
        bad = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not bad.any():
            return out
        out[bad] = rng.integers(lo, hi, size=(int(bad.sum()), k))


def _is_key(tokens: np.ndarray, keys: np.ndarray, vocab_size: int) -> np.ndarray:
    """(n, L) bool: tokens[r, j] is one of keys[r]. Rows are offset by r * vocab_size so one sorted
    search over all rows does it in O(n L log) memory-light steps (no (n, L, N) comparison)."""
    off = np.arange(len(keys))[:, None] * vocab_size
    flat = np.sort((keys + off).ravel())
    q = tokens + off
    at = np.minimum(np.searchsorted(flat, q), len(flat) - 1)
    return flat[at] == q


def generate(cfg: MQARConfig, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` MQAR sequences: ids (n, seq_len) int64 and target (n, seq_len) bool (queried values)."""
    cfg.check()
    N, Q, T = cfg.num_kv_pairs, cfg.num_queries, cfg.seq_len
    keys = _distinct(rng, n, N, *cfg.key_range)  # (n, N)
    values = _distinct(rng, n, N, *cfg.value_range)  # (n, N)

    ids = np.empty((n, T), dtype=np.int64)
    ids[:, 0] = SPECIAL.bos
    ids[:, 1 : 1 + 2 * N : 2] = keys
    ids[:, 2 : 2 + 2 * N : 2] = values

    # the query region: noise (never one of this row's keys) or SEP
    start = 1 + 2 * N
    region = T - start
    if cfg.noise:
        fill = rng.integers(N_SPECIAL, cfg.vocab_size, size=(n, region))
        while (clash := _is_key(fill, keys, cfg.vocab_size)).any():
            fill[clash] = rng.integers(N_SPECIAL, cfg.vocab_size, size=int(clash.sum()))
    else:
        fill = np.full((n, region), SPECIAL.sep, dtype=np.int64)
    ids[:, start:] = fill

    # query slots: Q of S slots without replacement, P(slot i) ∝ (i+1)^(a-1). Gumbel top-k draws
    # exactly that (successive sampling without replacement), vectorised over rows.
    S = cfg.query_slots
    logp = (cfg.power_a - 1.0) * np.log(np.arange(1, S + 1))
    slots = np.argsort(-(logp[None, :] + rng.gumbel(size=(n, S))), axis=1)[:, :Q]  # (n, Q)
    which = np.argsort(rng.random((n, N)), axis=1)[:, :Q]  # (n, Q): which pairs are queried
    rows = np.arange(n)[:, None]
    key_pos = start + 2 * slots
    ids[rows, key_pos] = keys[rows, which]
    ids[rows, key_pos + 1] = values[rows, which]
    target = np.zeros((n, T), dtype=bool)
    target[rows, key_pos + 1] = True
    return ids, target


def elimination_accuracy(cfg: MQARConfig) -> float:
    """Accuracy of a model that recalls nothing but guesses among the pair values not yet given as
    an answer earlier in the sequence (answers are in the sequence, so a causal model can see them):
    the i-th query has N - i + 1 candidates. Scores near this are no evidence of recall."""
    N, Q = cfg.num_kv_pairs, cfg.num_queries
    return sum(1.0 / (N - i) for i in range(Q)) / Q


def _seqset(ids: np.ndarray, target: np.ndarray) -> SeqSet:
    n, T = ids.shape
    return SeqSet(torch.from_numpy(ids), torch.from_numpy(target), np.full(n, T, dtype=np.int64),
                  target_lengths=target.sum(1).astype(np.int64))


def split_rng(seed: int, split: str) -> np.random.Generator:
    """An independent generator per split: the train, dev and eval streams never share a draw."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAMS[split],)))


@register("mqar")
class MQAR(Task):
    # MQAR scores only the queried values, so the autoregressive loss is on them only (an objective
    # without this option is unaffected); --objective-opt loss_on=all still overrides it.
    objective_defaults: ClassVar[dict[str, Any]] = {"loss_on": "answer"}
    # a CPU-minutes budget per cell at the default size (run_matrix --budget overrides it)
    default_budget: ClassVar[str] = "tokens=500000"
    metrics = (Metric("accuracy", "accuracy", "max", headline=True, doc="fraction of queries answered right",
                      axis="accuracy (fraction of queries)"),)

    @dataclasses.dataclass
    class Options:
        seq_len: int = 64  # tokens per sequence, BOS included
        num_kv_pairs: int = 0  # 0: seq_len // 16 (Zoology Figure 2: T=64/128/256 -> 4/8/16 pairs)
        num_queries: int = 0  # 0: every pair is queried (Zoology)
        vocab_size: int = 1024  # Zoology uses 8192 (slow on CPU); the preset's vocabulary is not used
        power_a: float = 0.01  # query-gap power law; 1.0 = uniform slots
        noise: bool = True  # random (non-key) tokens between queries, else SEP
        seed: int = 0  # data seed: train / dev / eval are independent streams of it
        train_tokens: int = 2_000_000  # size of the pre-generated training set
        dev_seqs: int = 256  # checkpoint selection
        eval_seqs: int = 1000  # scored
        latency_n: int = 16  # sequences timed one at a time for gen_latency_ms
        lr: float = 0.0  # 0: the preset's. MQAR is lr-sensitive (Zoology sweeps 1e-4..1e-2 per point)

    def config(self) -> MQARConfig:
        o = self.opts
        n_kv = o.num_kv_pairs or max(1, o.seq_len // 16)
        cfg = MQARConfig(seq_len=o.seq_len, num_kv_pairs=n_kv, num_queries=o.num_queries or n_kv,
                         vocab_size=o.vocab_size, power_a=o.power_a, noise=o.noise)
        cfg.check()
        return cfg

    def protocol_text(self, protocol: str) -> str:
        """Protocol names are generated from the options (`mqar-T64-kv4-V1024`): one text for all of them."""
        return ("synthetic multi-query associative recall (Zoology, arXiv 2312.04927): generated key-value "
                "sequences, accuracy on the queried values")

    def prepare(self, ctx: PrepareContext) -> TaskData:
        """Generate the three splits (ctx.vocab_size and ctx.max_len are the preset's: unused here)."""
        o, cfg = self.opts, self.config()
        n_train = max(1, o.train_tokens // cfg.seq_len)
        sets = {split: _seqset(*generate(cfg, n, split_rng(o.seed, split)))
                for split, n in (("train", n_train), ("dev", o.dev_seqs), ("eval", o.eval_seqs))}
        info = {**dataclasses.asdict(cfg), "seed": o.seed, "train_seqs": n_train, "dev_seqs": o.dev_seqs,
                "eval_seqs": o.eval_seqs, "train_tokens": sets["train"].n_tokens,
                "eval_queries": int(sets["eval"].target.sum()), "query_slots": cfg.query_slots,
                "elimination_accuracy": elimination_accuracy(cfg)}
        ctx.log(f"[mqar] {cfg.protocol}: {n_train} train / {o.dev_seqs} dev / {o.eval_seqs} eval sequences")
        return TaskData(cfg.protocol, SPECIAL, cfg.vocab_size, sets["train"], sets["dev"], sets["eval"],
                        items=[], info=info, eval_ids=list(range(len(sets["eval"]))))

    def model_preset(self, preset: Preset, vocab_size: int, d_model: int = 0) -> Preset:
        """The preset's body at the task's vocabulary: target = body * (d / d_preset)^2 + vocab * d
        (and the task's lr when set). Batch size stays the preset's, in sequences."""
        d = d_model or preset.d_model
        body = preset.target_params - preset.vocab_size * preset.d_model
        target = round(body * (d / preset.d_model) ** 2) + vocab_size * d
        return dataclasses.replace(preset, d_model=d, vocab_size=vocab_size, target_params=target,
                                   lr=self.opts.lr or preset.lr, batch_tokens=0)  # Zoology: sequences per step

    def evaluate(self, model, objective, data: TaskData, device: torch.device, batch_size: int,
                 progress=None) -> dict[str, Any]:

        model.eval()
        evals = data.eval.to(device)
        hits = []  # (B,) correct values per sequence, per batch, on the device until the end
        done = 0
        with torch.no_grad(), autocast(device):
            for batch in evals.iter_batches(batch_size):
                pred = objective.predict_targets(model, batch)  # (B, T); meaningful at targets only
                hits.append(((pred == batch.ids) & batch.target).sum(1))
                done += batch.ids.shape[0]
                if progress:
                    progress(done, len(evals))
            latency = latency_ms(lambda i: objective.predict_targets(model, evals.batch(np.array([i]))),
                                 min(self.opts.latency_n, len(evals)), device)
        order = data.eval.eval_order()  # the sequence each count belongs to
        correct = torch.cat(hits).cpu().numpy() if hits else np.zeros(0, dtype=np.int64)
        asked = data.eval.target_lengths[order]
        total = int(asked.sum())
        # per sequence (the unit the queries of one sample share): the paired bootstrap of the report
        # compares two mixers on the same sequences. Every sequence asks `num_queries` values, so the
        # mean of these equals `accuracy`
        per_question = {"id": [int(i) for i in order],
                        "accuracy": [round(float(c) / max(int(a), 1), 6) for c, a in zip(correct, asked)]}
        return {"accuracy": int(correct.sum()) / max(total, 1), "eval_n": len(data.eval), "eval_queries": total,
                "gen_latency_ms": latency, "per_question": per_question}
