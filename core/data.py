"""Tokenised sequences, batches and the batch sampler: the only data format the harness knows.

A task turns its examples into `SeqSet`s: token ids plus a `target` mask marking the tokens the task
is scored on (a QA answer and its EOS; MQAR's values). Objectives decide what to do with it (the
autoregressive loss may use every token; masked diffusion masks only targets in its supervised form).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def upload(host: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host array on `device`, without stalling a GPU: a copy from pageable host memory is synchronous
    (the host waits until the copy is done, behind the kernels already queued), so every upload would
    drain the queue the host keeps ahead of the GPU. From pinned memory with `non_blocking` the copy is
    queued like a kernel (PyTorch's pinned-memory cache keeps the buffer until the copy has run)."""
    t = torch.from_numpy(np.ascontiguousarray(host))
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def padded_rows(rows: list[list[int]], width: int, pad: int, device: torch.device | str,
                left: bool = False) -> torch.Tensor:
    """(len(rows), width) long ids, each row right-padded with `pad` (left-padded with `left`), built on
    the host and uploaded once: a copy per row is a host-device round trip per row."""
    out = np.full((len(rows), width), pad, dtype=np.int64)
    for r, row in enumerate(rows):
        if left:
            out[r, width - len(row):] = row
        else:
            out[r, : len(row)] = row
    return upload(out, device)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids every task vocabulary reserves (MASK is the diffusion objective's noise token)."""

    pad: int
    unk: int
    bos: int
    eos: int
    sep: int
    mask: int


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T) long, right-padded
    pad_mask: torch.Tensor  # (B, T) bool, True on real tokens
    target: torch.Tensor  # (B, T) bool, True on scored tokens
    n_tokens: int  # real tokens in the batch (host-side: no device sync to read it)
    # the most target tokens in one row (host-side, like n_tokens); -1: unknown. Lets an objective size
    # a static gather of the target region without reading the count back from the device.
    max_target: int = -1


@dataclass
class SeqSet:
    ids: torch.Tensor  # (N, Tmax) long, right-padded with the pad id
    target: torch.Tensor  # (N, Tmax) bool
    lengths: np.ndarray  # (N,) real lengths, kept on the host
    lengths_dev: torch.Tensor | None = field(default=None, repr=False)  # (N,) the same, on ids' device
    # (N,) target tokens per row, kept on the host (counted once here, so no step reads it off the device)
    target_lengths: np.ndarray | None = None

    def __post_init__(self):
        if self.target_lengths is None:  # counted once when the set is built (a device read only then)
            self.target_lengths = self.target.sum(1).cpu().numpy().astype(np.int64)

    @classmethod
    def from_lists(cls, seqs: list[list[int]], targets: list[list[bool]], pad_id: int) -> "SeqSet":
        if len(seqs) != len(targets):
            raise ValueError("one target mask per sequence")
        n, tmax = len(seqs), max((len(s) for s in seqs), default=1)
        ids = torch.full((n, tmax), pad_id, dtype=torch.long)
        tgt = torch.zeros((n, tmax), dtype=torch.bool)
        for i, (s, t) in enumerate(zip(seqs, targets)):
            if len(s) != len(t):
                raise ValueError(f"sequence {i}: {len(s)} ids but {len(t)} target flags")
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            tgt[i, : len(t)] = torch.tensor(t, dtype=torch.bool)
        return cls(ids, tgt, np.array([len(s) for s in seqs], dtype=np.int64),
                   target_lengths=np.array([sum(map(bool, t)) for t in targets], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device: torch.device | str) -> "SeqSet":
        """Move once to the device: batches are then cut on-device with no host-to-device copies."""
        ids = self.ids.to(device)
        return SeqSet(ids, self.target.to(device), self.lengths, torch.as_tensor(self.lengths, device=ids.device),
                      self.target_lengths)

    def subset(self, idx: np.ndarray) -> "SeqSet":
        t = torch.as_tensor(idx, device=self.ids.device)
        return SeqSet(self.ids[t], self.target[t], self.lengths[idx], self._lengths_on_device()[t],
                      self.target_lengths[idx])

    def _lengths_on_device(self) -> torch.Tensor:
        if self.lengths_dev is None or self.lengths_dev.device != self.ids.device:
            self.lengths_dev = torch.as_tensor(self.lengths, device=self.ids.device)
        return self.lengths_dev

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def batch(self, idx: np.ndarray, pad_to: int = 1, idx_dev: torch.Tensor | None = None,
              width: int | None = None) -> Batch:
        """Rows `idx`, trimmed to the longest of them (rounded up to `pad_to` to limit recompiles), or to
        `width` when given (at least the longest row: a fixed batch shape).

        `idx_dev`: the same indices already on the data's device (the sampler uploads a whole epoch's
        order at once), so cutting a batch copies nothing from the host: no pageable host-to-device
        copy, which would synchronise the CUDA stream every step."""
        T = padded_len(int(self.lengths[idx].max()), pad_to, self.ids.shape[1])
        if width is not None:
            assert width >= T, (width, T)
            T = min(width, self.ids.shape[1])
        t = idx_dev if idx_dev is not None else torch.as_tensor(idx, device=self.ids.device)
        ids = self.ids[t, :T]
        lengths = self._lengths_on_device()[t]
        pad_mask = torch.arange(T, device=ids.device)[None, :] < lengths[:, None]
        return Batch(ids, pad_mask, self.target[t, :T], int(self.lengths[idx].sum()), int(self.target_lengths[idx].max()))

    def eval_order(self) -> np.ndarray:
        """The rows in `iter_batches`' order: sorted by length (stable), so evaluation wastes little on
        padding. A scorer that keeps per-row results maps them back to rows through this."""
        return np.argsort(self.lengths, kind="stable")

    def iter_batches(self, batch_size: int, pad_to: int = 1):
        """Deterministic order (`eval_order`)."""
        order = self.eval_order()
        for s in range(0, len(order), batch_size):
            yield self.batch(order[s : s + batch_size], pad_to)


def padded_len(T: int, pad_to: int, cap: int | None = None) -> int:
    """T rounded up to a multiple of `pad_to` (at most `cap`)."""
    T = -(-T // pad_to) * pad_to
    return min(T, cap) if cap is not None else T


def token_budget_batches(order: np.ndarray, lengths: np.ndarray, batch_tokens: int, pool: int,
                         pad_to: int = 1) -> list[np.ndarray]:
    """Cut rows (in `order`) into batches of at most `batch_tokens` computed positions each
    (rows x padded length of the batch's longest row). Rows are sorted by length within pools of
    `pool` rows, so a batch holds rows of similar length and little padding; a pool's last, partial
    batch is carried into the next pool. A row longer than the budget is a batch of its own.
    Every row appears in exactly one batch."""
    batches: list[np.ndarray] = []
    carry = order[:0]
    for s in range(0, len(order), pool):
        chunk = np.concatenate([carry, order[s : s + pool]])
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        start, longest = 0, 0
        for i, r in enumerate(chunk):
            longest_i = max(longest, padded_len(int(lengths[r]), pad_to))
            if i > start and (i - start + 1) * longest_i > batch_tokens:
                batches.append(chunk[start:i])
                start, longest_i = i, padded_len(int(lengths[r]), pad_to)
            longest = longest_i
        carry = chunk[start:]
    if len(carry):
        batches.append(carry)
    return batches


def fixed_shape_batches(order: np.ndarray, lengths: np.ndarray, batch_tokens: int, pool: int, pad_to: int,
                        cap: int | None = None) -> list[tuple[np.ndarray, int]]:
    """Token-budget batches of fixed shapes, for CUDA graphs (a graph is recorded per batch shape): each
    batch is (batch_tokens // W rows, W) for a width W that is a multiple of `pad_to`, so there are at
    most max_len / pad_to shapes. `token_budget_batches` bounds rows x length but not the row count (a
    batch ends wherever the next row's length would cross the budget): 14-26 shapes in 250 steps of
    JSQuAD-like lengths, 95 in 10,000, each recorded (and first run ungraphed) anew.

    Rows are sorted by length within pools, as there; a batch takes the rows its width's count allows,
    widening (and taking fewer) while its longest row needs more; a pool's rest (its longest rows) is
    carried into the next pool. The last chunk's rest is batched from its longest rows down, its lowest
    batch reaching below the rest into rows batched already (in the epoch's random order when the chunk
    is short): a few rows repeated once an epoch (fewer than a batch), rather than the rest left out,
    which would be the longest rows every epoch (widened when too few rows of the epoch fit its width).
    Data smaller than one batch of any width is that one batch. Returns (rows, W) pairs."""
    def width(L: int) -> int:
        return padded_len(L, pad_to, cap)

    out: list[tuple[np.ndarray, int]] = []
    chunk = carry = order[:0]
    start = 0
    for s in range(0, len(order), pool):
        chunk = np.concatenate([carry, order[s : s + pool]])
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        start = 0
        while start < len(chunk):
            W = width(int(lengths[chunk[start]]))
            while True:  # W only grows (rows are sorted), so this ends
                end = start + max(1, batch_tokens // W)
                if end > len(chunk) or width(int(lengths[chunk[end - 1]])) <= W:
                    break
                W = width(int(lengths[chunk[end - 1]]))
            if end > len(chunk):
                break
            out.append((chunk[start:end], W))
            start = end
        carry = chunk[start:]
    end = len(chunk)  # the last chunk's rest, batched from its longest rows down; the lowest batch reaches
    while end > start:  # below the rest into rows batched already
        W = width(int(lengths[chunk[end - 1]]))
        n = max(1, batch_tokens // W)
        rows = chunk[max(end - n, 0):end]
        if len(rows) < n:  # the last chunk is short: rows of the epoch that fit W (in its random order),
            # at a wider W (fewer rows) if too few rows fit this one; all of them in data under one batch
            widths = sorted({width(int(L)) for L in lengths[order]} | {W})
            for W in widths[widths.index(W):]:
                n = max(1, batch_tokens // W)
                fits = order[lengths[order] <= W]
                if len(fits) >= n:
                    break
            rows = chunk[max(end - n, 0):end]
            rows = np.concatenate([rows, fits[~np.isin(fits, rows)][: n - len(rows)]])
        out.append((rows, W))
        end -= n
    return out


class BatchSampler:
    """Endless shuffled batches: each epoch is a fresh seeded permutation cut into length-grouped
    batches (less padding), served in random order.

    - `batch_tokens > 0`: a token budget per batch: at most `batch_tokens` computed positions (rows x
      padded length), so a batch of short rows holds more rows; rows are grouped by length within
      pools of `bucket` batches' worth of rows (`token_budget_batches`). With `fixed_shapes` (CUDA
      graphs: one recording per shape) every batch is (batch_tokens // W, W), W a multiple of `pad_to`
      (`fixed_shape_batches`); `width` is the width of the batch last served.
    - else `batch_size` rows per batch, grouped by length within chunks of `bucket` batches;
      `drop_last` leaves out an epoch's last, short batch (packed pretraining rows: every batch then has
      one shape, and a compiled model never meets a second one mid-run; the rows return next epoch).

    Each epoch's row order is uploaded to the data's device once; a batch is then a slice of it
    (`idx_dev`), so no step copies indices from the host."""

    def __init__(self, data: SeqSet, batch_size: int, seed: int, bucket: int = 16, pad_to: int = 1,
                 batch_tokens: int = 0, drop_last: bool = False, fixed_shapes: bool = False):
        if len(data) == 0:
            raise ValueError("no training sequences")
        if batch_tokens < 0 or (batch_tokens == 0 and batch_size < 1):
            raise ValueError(f"batch_tokens must be >= 0 and batch_size >= 1 (got {batch_tokens}, {batch_size})")
        self.data, self.bs, self.bucket, self.pad_to = data, min(max(batch_size, 1), len(data)), bucket, pad_to
        self.batch_tokens, self.drop_last, self.fixed_shapes = batch_tokens, drop_last, fixed_shapes
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.width: int | None = None  # the width of the batch last served, when fixed (else its rows decide)
        self._queue: list[tuple[np.ndarray, torch.Tensor, int | None]] = []

    def epoch_batches(self) -> list[np.ndarray]:
        """The next epoch's batches (row indices); `_refill` serves them last first."""
        return [b for b, _ in self.epoch_plan()]

    def epoch_plan(self) -> list[tuple[np.ndarray, int | None]]:
        """The next epoch's batches with their fixed widths (None: the longest row's, rounded to pad_to)."""
        perm = self.rng.permutation(len(self.data))
        lengths = self.data.lengths
        if self.batch_tokens:
            pool = max(1, self.batch_tokens // max(1, int(lengths.mean()))) * self.bucket  # `bucket` batches' rows
            if self.fixed_shapes:
                plan = fixed_shape_batches(perm, lengths, self.batch_tokens, pool, self.pad_to, self.data.ids.shape[1])
                self.rng.shuffle(plan)
                return plan
            batches = token_budget_batches(perm, lengths, self.batch_tokens, pool, self.pad_to)
        else:
            span = self.bs * self.bucket
            batches = []
            for s in range(0, len(perm), span):
                chunk = perm[s : s + span]
                chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
                batches += [chunk[i : i + self.bs] for i in range(0, len(chunk), self.bs)]
            if self.drop_last and len(batches[-1]) < self.bs:
                batches.pop()
        self.rng.shuffle(batches)
        return [(b, None) for b in batches]

    def _refill(self) -> None:
        plan = self.epoch_plan()
        flat = upload(np.concatenate([b for b, _ in plan]), self.data.ids.device)  # one copy per epoch, queued
        ends = np.cumsum([len(b) for b, _ in plan])
        self._queue = [(b, flat[e - len(b) : e], w) for (b, w), e in zip(plan, ends)]  # served from the end
        self.epoch += 1

    def __iter__(self):
        return self

    def next_pair(self) -> tuple[np.ndarray, torch.Tensor]:
        """(row indices on the host, the same on the device) of the next batch."""
        if not self._queue:
            self._refill()
        idx, idx_dev, self.width = self._queue.pop()
        return idx, idx_dev

    def next_indices(self) -> np.ndarray:
        """Row indices of the next batch (a data-parallel rank cuts its shard from these)."""
        return self.next_pair()[0]

    def __next__(self) -> Batch:
        idx, idx_dev = self.next_pair()
        return self.data.batch(idx, self.pad_to, idx_dev, self.width)


def padding_fraction(batches: list[np.ndarray], lengths: np.ndarray, pad_to: int = 1) -> float:
    """Share of computed positions (rows x padded batch length) that are padding."""
    real = sum(int(lengths[b].sum()) for b in batches)
    computed = sum(len(b) * padded_len(int(lengths[b].max()), pad_to) for b in batches)
    return 1.0 - real / max(computed, 1)
