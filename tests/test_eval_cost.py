"""Evaluation cost is bounded and visible: dev checks score a fixed sample of at most `dev_tokens`
tokens with the objective's cheap selection estimator, and the time they take is recorded."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness import objectives
from harness.budget import Budget
from core.data import SeqSet, SpecialTokens
from harness.model import LM, LMConfig
from harness.evaluate import dev_sample
from harness.train import TrainConfig, train

SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)


def _data(n: int, T: int = 12, seed: int = 0) -> SeqSet:
    rng = np.random.default_rng(seed)
    seqs = [[2, *rng.integers(6, 20, size=T - 4).tolist(), 4, int(rng.integers(6, 20)), 3] for _ in range(n)]
    return SeqSet.from_lists(seqs, [[False] * (T - 2) + [True, True] for _ in seqs], 0)


def _model(causal: bool = True) -> LM:
    torch.manual_seed(0)
    return LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention", causal=causal, mlp_hidden=32))


class Counting:
    """An objective that counts the tokens its dev checks (selection_nll) and final scoring (nll) read."""

    def __init__(self, inner):
        self.inner, self.causal, self.selection_tokens, self.nll_tokens = inner, inner.causal, [], []

    def loss(self, *a, **k):
        return self.inner.loss(*a, **k)

    def selection_nll(self, model, batch):
        self.selection_tokens.append(batch.n_tokens)
        return self.inner.selection_nll(model, batch)

    def nll(self, model, batch):
        self.nll_tokens.append(batch.n_tokens)
        return self.inner.nll(model, batch)


@pytest.mark.parametrize("n_dev", [20, 20_000])
def test_a_huge_dev_set_does_not_raise_the_evaluated_tokens_past_the_bound(n_dev):
    """A planted dev set 1000x larger costs each dev check no more tokens than the bound."""
    bound, checks = 600, 3
    obj = Counting(objectives.build("autoregressive", SPECIAL, "chunked"))
    cfg = TrainConfig(batch_size=8, lr=3e-3, progress=False, eval_points=checks, dev_tokens=bound)
    res = train(_model(), obj, _data(64), _data(n_dev, seed=1), Budget.parse("tokens=600"), cfg, torch.device("cpu"))
    assert len(res.loss_curve) == checks
    assert obj.nll_tokens == []  # dev checks use the selection estimator only
    assert sum(obj.selection_tokens) <= checks * bound
    assert res.dev_tokens == sum(obj.selection_tokens) // checks == min(n_dev * 12, bound // 12 * 12)
    assert res.dev_seconds > 0


def test_dev_sample_is_fixed_whole_sequences_within_the_bound():
    dev = _data(1000)
    a, b = dev_sample(dev, 1200), dev_sample(dev, 1200)
    assert a.n_tokens <= 1200 and len(a) == 100
    assert torch.equal(a.ids, b.ids)  # the same sample every check, every cell
    assert dev_sample(dev, 0) is dev and dev_sample(dev, 10**9) is dev  # 0: no bound; under the bound: all
    assert dev_sample(dev, dev.n_tokens) is dev  # exactly at the bound: all of it, not a sampled copy
    assert len(dev_sample(dev, 5)) == 1  # never empty


def test_diffusion_selection_uses_fewer_mask_samples_than_the_reported_bound():
    """The dev checks' estimate runs `dev_nll_samples` forward passes per batch; the reported bound
    keeps `nll_samples`. Both are deterministic (fixed seed), so checkpoints are ranked consistently."""
    obj = objectives.build("diffusion", SPECIAL, "chunked", gen_length=4, steps=4)
    assert (obj.opts.nll_samples, obj.opts.dev_nll_samples) == (8, 2)
    model = _model(causal=False)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    batch = next(_data(8).iter_batches(8))
    with torch.no_grad():
        sel = obj.selection_nll(model, batch)
        assert len(calls) == 2
        full = obj.nll(model, batch)
        assert len(calls) == 2 + 8
        assert torch.equal(obj.selection_nll(model, batch)[0], sel[0])  # fixed seed: the same number
    assert sel[1] == full[1] and torch.isfinite(sel[0])


# ----------------------------------------------------------------------------- dev_loss against references

class _SumIds:
    """A stub objective: a batch's "NLL" is the sum of its target ids (reported form) or twice that
    (selection form), the count its target tokens: dev_loss must add every batch up."""

    causal = True

    def nll(self, model, batch):
        t = batch.target & batch.pad_mask
        return (batch.ids * t).sum().float(), t.sum()

    def selection_nll(self, model, batch):
        s, c = self.nll(model, batch)
        return 2 * s, c


def _ragged(n: int = 7) -> SeqSet:
    rng = np.random.default_rng(1)
    seqs, tgts = [], []
    for i in range(n):
        L = 4 + (i * 3) % 5
        seqs.append(rng.integers(6, 20, size=L).tolist())
        tgts.append([j >= L - 1 - i % 3 for j in range(L)])  # 1..3 targets, a suffix
    return SeqSet.from_lists(seqs, tgts, 0)


def test_dev_loss_adds_every_batch_and_divides_by_target_tokens():
    from harness.evaluate import dev_loss

    data = _ragged(7)
    ids = [data.ids[i, : data.lengths[i]].tolist() for i in range(len(data))]
    tg = [data.target[i, : data.lengths[i]].tolist() for i in range(len(data))]
    total = sum(x for r, t in zip(ids, tg) for x, f in zip(r, t) if f)
    count = sum(sum(t) for t in tg)
    model = torch.nn.Linear(1, 1)
    seen = []
    for bs in (1, 3, 7, 100):  # 3 does not divide 7: a short last batch
        got = dev_loss(model, _SumIds(), data, bs, torch.device("cpu"), progress=lambda d, n: seen.append((d, n)))
        assert got == pytest.approx(total / count)
        assert seen[-1] == (7, 7)
    assert dev_loss(model, _SumIds(), data, 3, torch.device("cpu"), selection=True) == pytest.approx(2 * total / count)
    assert model.training  # the model's mode is restored


def test_dev_loss_of_an_lm_is_the_mean_next_token_nll_per_target_token():
    """Row by row, unpadded, with F.cross_entropy: the reference for the batched, padded dev_loss."""
    from harness.evaluate import dev_loss

    data = _ragged(7)
    model = _model(causal=True).eval()
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for i in range(len(data)):
            L = int(data.lengths[i])
            ids = data.ids[i : i + 1, :L]
            logits = model.logits(model(ids))[0, :-1].float()
            ce = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            use = data.target[i, 1:L]
            tot += float(ce[use].sum())
            cnt += int(use.sum())
    ref = tot / cnt
    for bs in (2, 3, 7):
        assert dev_loss(model, obj, data, bs, torch.device("cpu")) == pytest.approx(ref, rel=1e-5)
    assert math.exp(dev_loss(model, obj, data, 3, torch.device("cpu"))) == pytest.approx(math.exp(ref), rel=1e-5)


class _Counted:
    """A stand-in objective: each batch adds 3.0 of NLL per target token under `nll`, 5.0 under
    `selection_nll`, so the sums say which estimator ran and over how many tokens; it records the mode
    the model was scored in."""

    def __init__(self):
        self.modes: list[bool] = []

    def nll(self, model, batch):
        self.modes.append(model.training)
        n = batch.target.sum()
        return 3.0 * n.float(), n

    def selection_nll(self, model, batch):
        n = batch.target.sum()
        return 5.0 * n.float(), n


def test_dev_loss_is_the_reported_estimator_per_target_token_unless_selection_is_asked():
    """The reported perplexity uses the objective's own bound; only checkpoint selection may take the
    cheap estimator. A set with a single target token is that token's NLL (the count is a divisor, not a
    floor); the model is scored in eval mode and comes back in the mode it went in."""
    from harness.evaluate import dev_loss, nll_sums
    one = SeqSet.from_lists([[2, 7, 3]], [[False, False, True]], 0)
    model = _model().train()
    cpu = torch.device("cpu")
    obj = _Counted()
    assert dev_loss(model, obj, one, 4, cpu) == 3.0 and obj.modes == [False] and model.training
    assert dev_loss(model, _Counted(), _data(5), 2, cpu) == 3.0
    assert dev_loss(model, _Counted(), one, 4, cpu, selection=True) == 5.0
    tot, n = nll_sums(model, _Counted(), _data(3), 2, cpu)  # the data-parallel sums: the same default
    assert (tot.item(), n.item()) == (18.0, 6)


def test_a_dev_sample_of_one_token_is_one_sequence_not_the_whole_set():
    dev = _data(10)
    assert len(dev_sample(dev, 1)) == 1 and len(dev_sample(dev, 0)) == 10
    assert len(dev_sample(dev, dev.n_tokens)) == 10 and len(dev_sample(dev, 2 * 12 + 5)) == 2
