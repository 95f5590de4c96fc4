"""core/data.py: SeqSet.from_lists (ids, targets, lengths, target counts), padded_rows, batches, token-budget and
fixed-shape cutting, the batch sampler, padding_fraction."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from core.data import (Batch, BatchSampler, SeqSet, SpecialTokens, fixed_shape_batches, padded_rows,
                       padding_fraction, token_budget_batches)

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


def test_iter_batches_trim_each_batch_to_its_longest_row_by_default():
    """Evaluation batches are cut to their longest row unless a `pad_to` is asked for: a default that
    rounded widths up would spend compute on padding in every scored batch."""
    s = SeqSet.from_lists(SEQS, TGTS, pad_id=0)
    assert [tuple(b.ids.shape) for b in s.iter_batches(3)] == [(3, 3), (1, 5)]
    assert [tuple(b.ids.shape) for b in s.iter_batches(3, pad_to=4)] == [(3, 4), (1, 5)]  # capped at Tmax


@pytest.mark.parametrize("width,want", [(5, 5), (7, 7), (9, 8)], ids=["exactly_the_longest", "wider", "capped_at_tmax"])
def test_a_batch_takes_a_fixed_width_of_at_least_its_longest_row(width, want):
    """`width` fixes a batch's shape (CUDA graphs) from the batch's longest row up, exactly it included;
    a wider one pads; the set's own width (8: its longest row) caps it. Narrower would cut real tokens."""
    s = SeqSet.from_lists(SEQS + [[1] * 8], TGTS + [[False] * 8], pad_id=0)
    b = s.batch(np.array([0, 2]), width=width)  # rows of 3 and 5 tokens
    assert b.ids.shape == (2, want) and b.pad_mask.shape == (2, want)
    assert b.pad_mask.sum(1).tolist() == [3, 5]
    with pytest.raises(AssertionError):
        s.batch(np.array([0, 2]), width=4)  # narrower than the longest row (5)


def test_a_batch_built_without_its_target_bound_says_unknown():
    """A Batch made by hand (a benchmark, a test) without `max_target` reports the bound as unknown
    (negative), so masked diffusion gathers the full width rather than trusting a made-up bound."""
    ids = torch.zeros(2, 3, dtype=torch.long)
    b = Batch(ids, ids > -1, ids > 0, 6)
    assert b.max_target < 0


def test_cutting_a_batch_on_the_device_copies_nothing_from_the_host(monkeypatch):
    """Once a set is moved (`to`), its row lengths live on the device and a batch cut with indices already
    there (`idx_dev`, as the sampler does) builds no tensor from host data: a host-to-device copy per step
    would synchronise the CUDA stream."""
    s = SeqSet.from_lists(SEQS, TGTS, pad_id=0).to("cpu")
    idx = np.array([0, 3])
    idx_dev = torch.as_tensor(idx)
    made = []
    real = torch.as_tensor
    monkeypatch.setattr(torch, "as_tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    b = s.batch(idx, idx_dev=idx_dev)
    assert made == []
    assert b.pad_mask.tolist() == [[True, True, True], [True, True, False]]


def test_special_tokens_are_immutable():
    """One SpecialTokens is shared by a task's tokenizer, its objective and its decoders: none of them
    may reassign an id under the others."""
    special = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        special.pad = 7
    assert special.pad == 0


# lengths 3 1 5 2 4: sorted, the rows are 1 (1), 3 (2), 0 (3), 4 (4), 2 (5)
BUDGET_LENGTHS = np.array([3, 1, 5, 2, 4])


@pytest.mark.parametrize("pad_to,want", [
    (1, [[1, 3, 0], [4], [2]]),  # 3 rows x 3 = 9: exactly the budget; a 4th would need 4 x 4
    (2, [[1, 3], [0, 4], [2]]),  # widths 2 2 4 4 6: 3 x 4 = 12 would cross it
], ids=["default_no_rounding", "pad_to_2"])
def test_token_budget_batches_fill_up_to_the_budget_and_keep_the_last_rows(pad_to, want):
    """Rows sorted by length fill a batch while rows x (padded) longest length stays within the budget,
    exactly at it included; the rows left after the last full batch (the longest) are a batch too, not
    dropped. Without `pad_to` lengths are not rounded."""
    order = np.array([4, 0, 2, 1, 3])
    kwargs = {} if pad_to == 1 else {"pad_to": pad_to}
    got = token_budget_batches(order, BUDGET_LENGTHS, 9, pool=5, **kwargs)
    assert [b.tolist() for b in got] == want


def test_token_budget_rows_longer_than_the_budget_are_batches_of_their_own():
    """Even the shortest row may exceed the budget: each such row is a batch of one, and no empty batch
    is cut before it (an empty batch has no longest row to size it by)."""
    got = token_budget_batches(np.array([1, 0]), np.array([20, 30]), 9, pool=2)
    assert [b.tolist() for b in got] == [[0], [1]]


def test_token_budget_batches_carry_a_pools_rest_into_the_next_and_cover_every_row():
    """Pools smaller than the data: each pool's last, partial batch is carried into the next pool, and
    the last pool's rest is the final batch. Every row lands in exactly one batch within the budget."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, 23)
    order = rng.permutation(23)
    got = token_budget_batches(order, lengths, 16, pool=4)
    assert sorted(np.concatenate(got).tolist()) == list(range(23))
    assert all(len(b) * lengths[b].max() <= 16 for b in got)


@pytest.mark.parametrize("pool", [4, 8])
def test_fixed_shape_batches_of_data_that_divides_evenly_repeat_no_row(pool):
    """Eight rows of width 4 under a budget of 16 tokens are exactly two (4 rows, width 4) batches: every
    row once, none repeated (the last chunk's rest is empty, so no extra batch reaches back), whether one
    pool holds them all or each pool is one whole batch."""
    lengths = np.full(8, 4)
    order = np.array([5, 2, 7, 0, 3, 6, 1, 4])
    got = fixed_shape_batches(order, lengths, 16, pool, pad_to=4)
    assert [(len(rows), W) for rows, W in got] == [(4, 4), (4, 4)]
    assert sorted(np.concatenate([rows for rows, _ in got]).tolist()) == list(range(8))


def test_fixed_shape_batches_widen_to_their_longest_row():
    """Rows 4 4 4 8 (budget 16, widths multiples of 4): four rows would fill a width-4 batch, but the
    fourth needs width 8, so the batch widens to 8 and takes 2 rows; the other two are the second
    (2, 8) batch. No row is ever cut to a width narrower than itself."""
    lengths = np.array([4, 4, 4, 8])
    got = fixed_shape_batches(np.array([3, 0, 1, 2]), lengths, 16, 4, pad_to=4)
    assert [(rows.tolist(), W) for rows, W in got] == [([0, 1], 8), ([2, 3], 8)]


def test_fixed_shape_rows_wider_than_the_budget_are_one_row_batches_each():
    """Two rows (20 and 24 tokens) each wider than the 16-token budget: one row per batch at the row's
    own width, never two over-budget rows together."""
    got = fixed_shape_batches(np.array([1, 0]), np.array([20, 24]), 16, 2, pad_to=4)
    assert [(rows.tolist(), W) for rows, W in got] == [([0], 20), ([1], 24)]


def test_fixed_shape_a_row_wider_than_the_budget_is_one_row_and_short_data_widens():
    """Rows 4 4 20 under a budget of 16 (widths multiples of 4): the 20-row is a (1, 20) batch; the two
    4-rows are fewer than the 4 a width-4 batch needs, so they are served at the next width that enough
    rows of the epoch fit: 20, one row each. Every batch keeps its (budget // W or 1, W) shape."""
    lengths = np.array([4, 20, 4])
    got = fixed_shape_batches(np.array([1, 2, 0]), lengths, 16, 8, pad_to=4)
    assert [(len(rows), W) for rows, W in got] == [(1, 20)] * 3
    assert sorted(np.concatenate([rows for rows, _ in got]).tolist()) == [0, 1, 2]


def test_fixed_shape_last_short_batch_reaches_back_at_the_narrowest_width_enough_rows_fit():
    """Pools of 2 rows: the first pool (rows 8, 16) is two (1, 16) batches; the last pool holds row 2
    alone, short of the 2 rows a width-8 batch needs. Exactly 2 rows of the epoch fit width 8 (rows 0
    and 2), which is enough: the batch stays at width 8 and repeats row 0 rather than widen to 16."""
    lengths = np.array([8, 16, 8])
    got = fixed_shape_batches(np.array([0, 1, 2]), lengths, 16, 2, pad_to=4)
    assert [(rows.tolist(), W) for rows, W in got] == [([0], 16), ([1], 16), ([2, 0], 8)]


def test_a_default_sampler_serves_every_row_once_per_epoch_trimmed_to_its_longest_row():
    """With only a row count given, an epoch serves every row exactly once (the last, short batch
    included: `drop_last` is off by default) in batches as wide as their longest row (no rounding by
    default); the epoch counter advances by one per epoch served."""
    s = SeqSet.from_lists(SEQS, TGTS, pad_id=0)
    sampler = BatchSampler(s, 3, seed=0)
    served = [next(sampler) for _ in range(2)]
    assert sampler.epoch == 1
    rows = sorted(tuple(r[: int(m.sum())]) for b in served for r, m in zip(b.ids.tolist(), b.pad_mask))
    assert rows == sorted(tuple(x) for x in SEQS)
    assert sorted(tuple(b.ids.shape) for b in served) == [(1, 5), (3, 3)]
    next(sampler)
    assert sampler.epoch == 2


def test_a_sampler_of_one_row_per_batch_serves_single_rows():
    """batch_size 1 is the smallest allowed row count, not a refusal."""
    sampler = BatchSampler(SeqSet.from_lists(SEQS, TGTS, pad_id=0), 1, seed=0)
    assert [next(sampler).ids.shape[0] for _ in range(4)] == [1, 1, 1, 1]


@pytest.mark.parametrize("n_rows", [4, 5], ids=["even", "one_short"])
def test_drop_last_leaves_out_only_the_short_last_batch(n_rows):
    """`drop_last` (packed pretraining: one batch shape all run) drops an epoch's last batch only when it
    is short: 5 rows in 2s serve 4 (the fifth returns another epoch); 4 rows in 2s serve all 4."""
    s = SeqSet.from_lists([[1] * (i + 1) for i in range(n_rows)], [[False] * (i + 1) for i in range(n_rows)], 0)
    batches = BatchSampler(s, 2, seed=0, drop_last=True).epoch_batches()
    assert [len(b) for b in batches] == [2, 2]
    assert len(set(np.concatenate(batches).tolist())) == 4


def test_next_indices_are_the_host_row_indices_of_the_next_batch():
    """A data-parallel rank cuts its shard from `next_indices`: host (numpy) row ids, the same rows the
    sampler's next batch would hold."""
    s = SeqSet.from_lists(SEQS, TGTS, pad_id=0)
    a, b = BatchSampler(s, 3, seed=4), BatchSampler(s, 3, seed=4)
    for _ in range(3):
        idx = a.next_indices()
        host, dev = b.next_pair()
        assert isinstance(idx, np.ndarray) and idx.tolist() == host.tolist() == dev.tolist()


def test_token_budget_pools_keep_batch_membership_changing_across_epochs():
    """Rows are grouped by length within pools of `bucket` batches' worth of rows (here 2 x 40 // 20 = 4
    rows), not across the whole epoch: with distinct lengths a whole-epoch sort would put the same rows
    together every epoch; pools drawn from each epoch's permutation make new batches."""
    lengths = np.arange(1, 41)
    s = SeqSet.from_lists([[1] * int(L) for L in lengths], [[False] * int(L) for L in lengths], 0)
    sampler = BatchSampler(s, 0, seed=0, batch_tokens=40, bucket=2)
    epochs = [{frozenset(b.tolist()) for b in sampler.epoch_batches()} for _ in range(2)]
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("pad_to,want", [(1, 5 / 16), (4, 13 / 24)], ids=["default", "pad_to_4"])
def test_padding_fraction_on_a_hand_counted_case(pad_to, want):
    """Rows 3 1 | 5 2: 11 real tokens in 2 x 3 + 2 x 5 = 16 computed positions, or 2 x 4 + 2 x 8 = 24
    with lengths rounded up to 4. The default rounds nothing."""
    lengths = np.array([3, 1, 5, 2])
    batches = [np.array([0, 1]), np.array([2, 3])]
    kwargs = {} if pad_to == 1 else {"pad_to": pad_to}
    assert padding_fraction(batches, lengths, **kwargs) == pytest.approx(want)


def test_padding_fraction_of_a_single_one_token_row_is_zero():
    """The smallest batch, one row of one token, computes exactly its one real position: no padding."""
    assert padding_fraction([np.array([0])], np.array([1])) == 0.0


def test_a_set_built_without_its_target_counts_counts_them_itself():
    """`SeqSet(ids, target, lengths)` made directly (a task's own builder, a subset of it) counts its
    target tokens per row once, at build time, so a batch knows its bound without reading the device."""
    full = SeqSet.from_lists(SEQS, TGTS, pad_id=0)
    s = SeqSet(full.ids, full.target, full.lengths)
    assert s.target_lengths.tolist() == [2, 1, 1, 0] and s.target_lengths.dtype == np.int64
    assert s.batch(np.array([0, 1])).max_target == 2


def _distinct_lengths(n: int) -> SeqSet:
    return SeqSet.from_lists([[1] * (i + 1) for i in range(n)], [[False] * (i + 1) for i in range(n)], 0)


def test_rows_are_grouped_by_length_within_16_batches_and_the_batches_served_in_random_order():
    """The grid's sampler passes no `bucket`: the default pools 16 batches' rows (2 x 16 = 32 here) out of
    the epoch's seeded permutation and sorts each pool by length, so a batch holds rows of one pool that
    are next in length. The grid's padding figure (docs/cpu-evidence.md) was measured with this pool. The batches are
    then served in random order, not shortest first within each pool."""
    s, seed = _distinct_lengths(64), 3
    perm = np.random.default_rng(seed).permutation(64)  # the sampler's first draw of the epoch
    pools = [sorted(perm[:32].tolist()), sorted(perm[32:].tolist())]  # row i has length i + 1
    built = [tuple(p[i : i + 2]) for p in pools for i in range(0, 32, 2)]
    served = [tuple(sorted(b.tolist())) for b in BatchSampler(s, 2, seed=seed).epoch_batches()]
    assert sorted(served) == sorted(built)
    assert served != built


@pytest.mark.parametrize("lengths, budget, bucket, pool", [
    (np.arange(1, 41), 64, None, 48),  # the default: 16 batches' rows, a batch 64 // 20 = 3 rows of mean length
    (np.arange(1, 41), 16, 2, 2),  # a budget under the mean length: still one row a batch, so `bucket` rows
    (np.array([1, 2] * 5 + [1] * 30), 4, 1, 4),  # a mean under 2 tokens (int: 1): 4 rows of it a batch
], ids=["default", "budget-under-mean", "mean-under-2"])
def test_token_budget_batches_are_cut_in_pools_not_fixed_unless_asked_and_served_shuffled(lengths, budget, bucket,
                                                                                         pool):
    """A token budget cuts `token_budget_batches` over pools of `bucket` batches' worth of rows (a batch:
    the budget over the mean row length, at least one row); no width is fixed. `fixed_shapes` (CUDA
    graphs) cuts `fixed_shape_batches` over the same pools. Both are served in random order, not in the
    order they were cut (longest rows last)."""
    s = SeqSet.from_lists([[1] * int(L) for L in lengths], [[False] * int(L) for L in lengths], 0)
    seed, kw = 5, ({} if bucket is None else {"bucket": bucket})
    perm = np.random.default_rng(seed).permutation(len(lengths))  # the sampler's first draw of the epoch
    plain = BatchSampler(s, 0, seed=seed, batch_tokens=budget, **kw).epoch_plan()
    assert {w for _, w in plain} == {None}
    cut = [b.tolist() for b in token_budget_batches(perm, s.lengths, budget, pool)]
    assert sorted(b.tolist() for b, _ in plain) == sorted(cut) and [b.tolist() for b, _ in plain] != cut
    fixed = BatchSampler(s, 0, seed=seed, batch_tokens=budget, pad_to=2, fixed_shapes=True, **kw).epoch_plan()
    assert all(w % 2 == 0 and len(b) == max(1, budget // w) for b, w in fixed)
    cut = [(b.tolist(), w) for b, w in fixed_shape_batches(perm, s.lengths, budget, pool, 2, s.ids.shape[1])]
    assert sorted((b.tolist(), w) for b, w in fixed) == sorted(cut) and [(b.tolist(), w) for b, w in fixed] != cut


def test_an_upload_to_cuda_goes_through_pinned_memory_without_blocking(monkeypatch):
    """A copy from pageable host memory blocks the host until the GPU has run everything queued before it;
    from pinned memory with `non_blocking` it is queued like a kernel. Checked on a stand-in for the pinned
    tensor (this machine may have no GPU); on the CPU the array is copied as it is."""
    calls = []

    class Pinned:
        def to(self, device, non_blocking=False):
            calls.append(("to", str(device), non_blocking))
            return "on the GPU"

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append(("pin", self.tolist())) or Pinned())
    from core.data import upload
    assert upload(np.arange(3)[::-1], "cuda:1") == "on the GPU"  # a reversed view: made contiguous first
    assert calls == [("pin", [2, 1, 0]), ("to", "cuda:1", True)]
    calls.clear()
    t = upload(np.arange(3), "cpu")
    assert calls == [] and t.tolist() == [0, 1, 2] and t.device.type == "cpu"
