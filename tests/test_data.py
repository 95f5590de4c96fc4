"""core/data.py: SeqSet.from_lists (ids, targets, lengths, target counts), padded_rows, batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.data import BatchSampler, SeqSet, padded_rows

SEQS = [[7, 8, 9], [10], [11, 12, 13, 14, 15], [16, 17]]
TGTS = [[False, True, True], [True], [False, False, False, True, False], [False, False]]


def test_from_lists_pads_right_and_counts_lengths_and_targets():
    s = SeqSet.from_lists(SEQS, TGTS, pad_id=99)
    assert s.ids.shape == (4, 5) and s.target.shape == (4, 5)
    for i, (seq, t) in enumerate(zip(SEQS, TGTS)):
        assert s.ids[i].tolist() == seq + [99] * (5 - len(seq))
        assert s.target[i].tolist() == t + [False] * (5 - len(t))
    assert s.lengths.tolist() == [3, 1, 5, 2]
    assert s.target_lengths.tolist() == [2, 1, 1, 0]  # flags set, not row lengths
    assert s.n_tokens == 11 and len(s) == 4
    # the same counts when the set recounts them itself (a subset, a move)
    sub = s.subset(np.array([2, 0]))
    assert sub.lengths.tolist() == [5, 3] and sub.target_lengths.tolist() == [1, 2]


def test_a_batch_carries_real_token_masks_and_the_most_targets_in_a_row():
    s = SeqSet.from_lists(SEQS, TGTS, pad_id=0)
    b = s.batch(np.array([0, 1, 3]))
    assert b.ids.shape == (3, 3)  # trimmed to the longest of these rows
    assert b.pad_mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert b.n_tokens == 6
    assert b.max_target == 2
    assert s.batch(np.array([1, 2])).max_target == 1
    assert s.batch(np.array([0]), pad_to=4).ids.shape == (1, 4)


def test_iter_batches_serves_every_row_once_shortest_first():
    s = SeqSet.from_lists(SEQS, TGTS, pad_id=0)
    rows = [tuple(r[: int(m.sum())]) for b in s.iter_batches(3) for r, m in zip(b.ids.tolist(), b.pad_mask)]
    assert sorted(rows) == sorted(tuple(x) for x in SEQS)
    assert [len(r) for r in rows] == [1, 2, 3, 5]


def test_padded_rows_right_and_left():
    rows = [[1, 2], [3, 4, 5], []]
    right = padded_rows(rows, 4, 0, "cpu")
    left = padded_rows(rows, 4, 0, "cpu", left=True)
    assert right.dtype == torch.long and right.tolist() == [[1, 2, 0, 0], [3, 4, 5, 0], [0, 0, 0, 0]]
    assert left.tolist() == [[0, 0, 1, 2], [0, 3, 4, 5], [0, 0, 0, 0]]


@pytest.mark.parametrize("seqs,targets,message", [
    (SEQS, TGTS[:3], r"^one target mask per sequence$"),
    (SEQS, TGTS[:2] + [TGTS[2][:-1]] + TGTS[3:], r"^sequence 2: 5 ids but 4 target flags$"),
], ids=["a_mask_missing", "a_mask_short"])
def test_from_lists_refuses_targets_that_do_not_match_the_sequences(seqs, targets, message):
    """One target mask per sequence, one flag per id: otherwise the pairing silently drops a row or
    leaves ids unflagged (unscored), so building the set fails and names the sequence and both counts."""
    with pytest.raises(ValueError, match=message):
        SeqSet.from_lists(seqs, targets, pad_id=0)


@pytest.mark.parametrize("data,kwargs,message", [
    (SeqSet.from_lists([], [], pad_id=0), {"batch_size": 2}, r"^no training sequences$"),
    (SeqSet.from_lists(SEQS, TGTS, pad_id=0), {"batch_size": 2, "batch_tokens": -1},
     r"^batch_tokens must be >= 0 and batch_size >= 1 \(got -1, 2\)$"),
    (SeqSet.from_lists(SEQS, TGTS, pad_id=0), {"batch_size": 0},
     r"^batch_tokens must be >= 0 and batch_size >= 1 \(got 0, 0\)$"),
], ids=["no_rows", "negative_token_budget", "no_rows_per_batch"])
def test_batch_sampler_refuses_empty_data_and_empty_batches(data, kwargs, message):
    """No training rows, no rows per batch or a negative token budget leave the sampler no batch to
    serve: it refuses at construction and names the values it got, not later inside the training loop."""
    with pytest.raises(ValueError, match=message):
        BatchSampler(data, seed=0, **kwargs)
