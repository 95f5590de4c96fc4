"""Tokenised sequences, batches and the batch sampler: the only data format the harness knows.

A task turns its examples into `SeqSet`s: token ids plus a `target` mask marking the tokens the task
is scored on (a QA answer and its EOS; MQAR's values). Objectives decide what to do with it (the
autoregressive loss may use every token; masked diffusion masks only targets in its supervised form).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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


@dataclass
class SeqSet:
    ids: torch.Tensor  # (N, Tmax) long, right-padded with the pad id
    target: torch.Tensor  # (N, Tmax) bool
    lengths: np.ndarray  # (N,) real lengths, kept on the host

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
        return cls(ids, tgt, np.array([len(s) for s in seqs], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device: torch.device | str) -> "SeqSet":
        """Move once to the device: batches are then cut on-device with no host-to-device copies."""
        return SeqSet(self.ids.to(device), self.target.to(device), self.lengths)

    def subset(self, idx: np.ndarray) -> "SeqSet":
        t = torch.as_tensor(idx, device=self.ids.device)
        return SeqSet(self.ids[t], self.target[t], self.lengths[idx])

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def batch(self, idx: np.ndarray, pad_to: int = 1) -> Batch:
        """Rows `idx`, trimmed to the longest of them (rounded up to `pad_to` to limit recompiles)."""
        T = int(self.lengths[idx].max())
        T = min(-(-T // pad_to) * pad_to, self.ids.shape[1])
        t = torch.as_tensor(idx, device=self.ids.device)
        ids = self.ids[t, :T]
        lengths = torch.as_tensor(self.lengths[idx], device=self.ids.device)
        pad_mask = torch.arange(T, device=ids.device)[None, :] < lengths[:, None]
        return Batch(ids, pad_mask, self.target[t, :T], int(self.lengths[idx].sum()))

    def iter_batches(self, batch_size: int, pad_to: int = 1):
        """Deterministic order, sorted by length so evaluation wastes little on padding."""
        order = np.argsort(self.lengths, kind="stable")
        for s in range(0, len(order), batch_size):
            yield self.batch(order[s : s + batch_size], pad_to)


class BatchSampler:
    """Endless shuffled batches: each epoch is a fresh seeded permutation, split into chunks of
    `bucket` batches whose rows are grouped by length (less padding, still random order)."""

    def __init__(self, data: SeqSet, batch_size: int, seed: int, bucket: int = 16, pad_to: int = 1):
        if len(data) == 0:
            raise ValueError("no training sequences")
        self.data, self.bs, self.bucket, self.pad_to = data, min(batch_size, len(data)), bucket, pad_to
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self._queue: list[np.ndarray] = []

    def _refill(self) -> None:
        perm = self.rng.permutation(len(self.data))
        span = self.bs * self.bucket
        batches = []
        for s in range(0, len(perm), span):
            chunk = perm[s : s + span]
            chunk = chunk[np.argsort(self.data.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.bs] for i in range(0, len(chunk), self.bs)]
        self.rng.shuffle(batches)
        self._queue = batches
        self.epoch += 1

    def __iter__(self):
        return self

    def next_indices(self) -> np.ndarray:
        """Row indices of the next batch (a data-parallel rank cuts its shard from these)."""
        if not self._queue:
            self._refill()
        return self._queue.pop()

    def __next__(self) -> Batch:
        return self.data.batch(self.next_indices(), self.pad_to)
