"""Masked diffusion: forward process, ELBO loss, bidirectional learning, sampler, perplexity bound."""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import mixers
from harness import objectives
from harness.budget import Budget
from core.data import SeqSet, SpecialTokens
from harness.loss import plain_nll, token_nll
from harness.model import LM, LMConfig
import harness.objectives.diffusion as diffusion
from harness.objectives.diffusion import mask_independently, sample_mask_ratio, transfer_schedule
from harness.train import TrainConfig, train

SP = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)
V = 20


def _obj(**opts):
    return objectives.build("diffusion", SP, "chunked", **opts)


def _lm(seed=0, causal=False):
    torch.manual_seed(seed)
    return LM(LMConfig(vocab_size=V, d_model=32, n_layers=2, mixer="attention", causal=causal, mlp_hidden=64)).eval()


def _qa(rows):
    """(prompt, answer) pairs -> SeqSet of `prompt answer EOS`, the answer and EOS as targets."""
    seqs = [p + a + [SP.eos] for p, a in rows]
    return SeqSet.from_lists(seqs, [[False] * len(p) + [True] * (len(a) + 1) for p, a in rows], SP.pad)


QA = [([2, 7, 8, 9, 4], [10, 11]), ([2, 12, 4], [13, 14, 15]), ([2, 6, 6, 7, 8, 9, 10, 4], [16])]


# ----------------------------------------------------------------------------- forward process

def test_mask_ratio_is_uniform_on_eps_to_1():
    p = sample_mask_ratio(40_000, 0.1, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert p.min() >= 0.1 and p.max() <= 1.0
    assert p.mean().item() == pytest.approx(0.55, abs=0.005)
    assert np.histogram(p.numpy(), bins=9, range=(0.1, 1.0))[0].min() > 4_000  # flat, not clumped


def test_masking_rate_matches_t():
    p = torch.tensor([0.0, 0.05, 0.3, 0.7, 1.0])
    n = 20_000
    masked = mask_independently(torch.ones(len(p), n, dtype=torch.bool), p, torch.Generator().manual_seed(1))
    rate = masked.float().mean(1)
    sigma = (p * (1 - p) / n).sqrt()
    assert ((rate - p).abs() <= 5 * sigma + 1e-9).all(), (rate, p)
    assert rate[0] == 0 and rate[-1] == 1


def test_supervised_form_never_masks_the_prompt_and_masks_the_region_at_rate_t():
    obj = _obj(gen_length=6)
    batch = _qa(QA).batch(np.arange(3))
    region = obj.region(batch)
    prompt = region.pad_mask & ~region.target
    gen = torch.Generator().manual_seed(0)
    hits, total, ever = 0.0, 0.0, torch.zeros_like(region.target)
    for _ in range(400):
        noisy, masked, p, maskable = obj.corrupt(region, gen)
        assert not (masked & ~region.target).any()
        assert torch.equal(noisy[prompt], region.ids[prompt]) and torch.equal(noisy[~region.pad_mask], region.ids[~region.pad_mask])
        assert torch.equal(noisy == SP.mask, masked)
        hits += masked.sum().item()
        total += (p[:, None] * maskable).sum().item()
        ever |= masked
    assert torch.equal(ever, region.target)  # answer, EOS and filler are all maskable
    assert hits / total == pytest.approx(1.0, abs=0.05)

    obj_all = _obj(gen_length=6, mask_on="all")
    masked = torch.stack([obj_all.corrupt(region, gen)[1] for _ in range(200)]).any(0)
    assert torch.equal(masked, region.pad_mask)  # pre-training form: prompt masked too, padding never


def test_eos_filler_extends_suffix_targets_to_gen_length():
    long_answer = ([2, 7, 4], [8, 9, 10, 11, 12, 13, 14])  # answer + EOS = 8 > L
    mqar_like = SeqSet.from_lists([[2, 7, 8, 9, 10, 3]], [[False, False, True, False, True, False]], SP.pad)
    obj = _obj(gen_length=4)
    r = obj.region(_qa([QA[0], long_answer]).batch(np.arange(2)))
    assert r.ids.shape == (2, 11 + 4)
    assert r.ids[0].tolist() == [2, 7, 8, 9, 4, 10, 11, 3, 3, 0, 0, 0, 0, 0, 0]  # answer + EOS + filler = 4
    assert r.target[0].tolist() == [False] * 5 + [True] * 4 + [False] * 6
    assert r.pad_mask[0].sum() == 9 and r.n_target.tolist() == [3, 8]
    assert r.ids[1, :11].tolist() == [2, 7, 4, 8, 9, 10, 11, 12, 13, 14, 3] and r.pad_mask[1].sum() == 11  # no filler
    r = obj.region(mqar_like.batch(np.arange(1)))
    assert r.pad_mask.sum() == 6 and r.target.sum() == 2  # interleaved targets: no filler
    r = _obj(eos_fill=False).region(_qa(QA).batch(np.arange(3)))
    assert r.ids.shape[1] == 10 and torch.equal(r.target.sum(1), r.n_target)


def test_eos_filler_goes_only_after_a_suffix_target_and_spans_exactly_gen_length():
    """Only a row whose targets end it gets filler: a row with no target (nothing to generate) and a row
    with interleaved targets (MQAR) keep their length even when `gen_length` reaches past their end,
    and an empty answer (its EOS the whole target) is filled out to `gen_length`."""
    rows = SeqSet.from_lists([[2, 7, 8, 9, 10, 3], [2, 7, 8, 4, 3], [2, 7, 4, 3]],
                             [[False, False, True, False, True, False], [False] * 5, [False] * 3 + [True]], SP.pad)
    r = _obj(gen_length=8).region(rows.batch(np.arange(3)))
    assert r.pad_mask.sum(1).tolist() == [6, 5, 3 + 8]  # the EOS target at 3, then filler to 3 + 8
    assert r.target.sum(1).tolist() == [2, 0, 8] and r.n_target.tolist() == [2, 0, 1]
    r = _obj(gen_length=2).region(_qa([([2, 7, 4], [])]).batch(np.arange(1)))
    assert r.ids[0].tolist()[:5] == [2, 7, 4, 3, 3] and r.target[0].sum() == 2


@pytest.mark.parametrize("name, sees_the_future, ppl_key", [("autoregressive", False, "ppl"),
                                                             ("diffusion", True, "ppl_bound")])
def test_each_objective_gets_the_model_its_training_needs(name, sees_the_future, ppl_key):
    """The cell builds its model with `objective.causal`: a diffusion model must see both sides of a
    masked position (its loss and sampler assume it), an autoregressive one must not see the future.
    Built as the grid builds it (matched_config on a preset); a future token changes position 0 or not.
    And each names its perplexity for the row: exact (`ppl`) or an upper bound (`ppl_bound`)."""
    from core.presets import get_preset
    from harness.model import matched_config
    obj = objectives.build(name, SP, "chunked")
    assert obj.ppl_key == ppl_key
    torch.manual_seed(0)
    model = LM(matched_config(get_preset("tiny"), "attention", obj.causal, vocab_size=V)).eval()
    x = torch.tensor([[2, 7, 8, 9, 10, 11]])
    y = x.clone()
    y[0, -1] = 12
    mask = torch.ones_like(x, dtype=torch.bool)
    moved = (model(x, mask)[0, 0] - model(y, mask)[0, 0]).abs().max().item()
    assert (moved > 1e-6) == sees_the_future


def test_loss_is_the_1_over_t_weighted_masked_ce_per_region_token():
    """Against a reference written out with plain cross-entropy on the same draws."""
    obj = _obj(gen_length=6)
    model = _lm()
    batch = _qa(QA).batch(np.arange(3))
    loss = obj.loss(model, batch, torch.Generator().manual_seed(3))
    region = obj.region(batch)
    noisy, masked, p, maskable = obj.corrupt(region, torch.Generator().manual_seed(3))
    h = model(noisy, region.pad_mask)
    ref = 0.0
    for b in range(3):
        ce = plain_nll(h[b][masked[b]], model.head_weight, region.ids[b][masked[b]])
        ref += ce.sum() / p[b] / maskable[b].sum()
    assert masked.any()
    assert loss.item() == pytest.approx((ref / 3).item(), rel=1e-5)
    loss.backward()
    assert model.embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("rows", [[([2, 7, 4], [])], [([2, 7, 4], []), ([2, 8, 9, 4], [10, 11])], QA],
                         ids=["one-target", "one-and-three", "qa"])
def test_the_training_loss_is_the_nll_per_maskable_token_down_to_one(rows):
    """With every maskable position masked (p -> 1) and a model that knows nothing (all weights zero:
    uniform logits over the V tokens), the ELBO per maskable token is log V, whatever the region
    size; a row with a single answer token (its EOS) included."""
    model = _lm()
    with torch.no_grad():
        for prm in model.parameters():
            prm.zero_()
    obj = _obj(mask_on="answer", eos_fill=False, eps=1 - 1e-7)
    batch = _qa(rows).batch(np.arange(len(rows)))
    loss = obj.loss(model, batch, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(math.log(V), rel=1e-5)


def test_options_are_validated():
    for bad in ({"mask_on": "prompt"}, {"remasking": "top_p"}, {"gen_length": 6, "block_length": 4},
                {"gen_length": 6, "block_length": 3, "steps": 3}, {"eps": 1.0}, {"steps": 0},
                {"nll_samples": 0}, {"dev_nll_samples": 0}, {"temperature": -0.5}, {"constrained_order": "random"}):
        with pytest.raises(ValueError, match="diffusion"):
            _obj(**bad)
    # the other side of each bound: no floor on the mask ratio, one step, one sample, greedy
    for edge in ({"eps": 0.0}, {"gen_length": 1, "steps": 1, "nll_samples": 1, "dev_nll_samples": 1},
                 {"temperature": 0.0}, {"gen_length": 6, "block_length": 3, "steps": 2}):
        assert all(getattr(_obj(**edge).opts, k) == v for k, v in edge.items())


# ----------------------------------------------------------------------------- bidirectional learning

def _right_context_toy(n, seed):
    """[BOS, 4 random tokens, SEP, y, c, EOS] with y == c: the target is only recoverable from its right."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        c = int(rng.integers(6, V))
        seqs.append([2, *rng.integers(6, V, size=4).tolist(), 4, c, c, 3])
    return SeqSet.from_lists(seqs, [[False] * 6 + [True, False, False]] * n, SP.pad)


def test_a_masked_position_sees_its_right_context():
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=V, d_model=32, n_layers=2, mixer="attention", causal=False, mlp_hidden=64))
    obj = _obj(gen_length=4, nll_samples=2)
    cfg = TrainConfig(batch_size=16, lr=3e-3, progress=False, eval_points=2, warmup_frac=0.02)
    res = train(model, obj, _right_context_toy(512, 0), _right_context_toy(32, 1), Budget.parse("tokens=28800"),
                cfg, torch.device("cpu"))  # 200 steps
    assert res.steps == 200
    test = _right_context_toy(200, 2)
    batch = test.batch(np.arange(len(test)))
    pred = obj.predict_targets(model.eval(), batch)
    acc = (pred[:, 6] == batch.ids[:, 7]).float().mean().item()
    assert acc > 0.9, acc  # chance: 1/14
    assert torch.equal(pred[:, 7:], batch.ids[:, 7:])  # non-target positions are returned as they are


@pytest.mark.parametrize("name", mixers.names())
def test_every_mixer_tells_masked_positions_apart_in_bidirectional_mode(name):
    """The sampler starts from a region of identical MASK inputs and the skeleton has no position
    embedding: a bidirectional mixer that is blind to position (e.g. one global statistic) would give
    every masked position the same prediction, and the sampler could only repeat one token."""
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=V, d_model=64, n_layers=2, mixer=name, causal=False, mlp_hidden=64)).eval()
    ids = torch.tensor([[2, 7, 8, 9, 4] + [SP.mask] * 6, [2, 7, 4] + [SP.mask] * 6 + [SP.pad] * 2])
    pad_mask = ids != SP.pad
    with torch.no_grad():
        h = model(ids, pad_mask)
    for row, start in ((0, 5), (1, 3)):
        region = h[row, start : start + 6]  # (6, D)
        dist = torch.cdist(region, region) / region.norm(dim=-1).mean()
        assert dist[~torch.eye(6, dtype=torch.bool)].min() > 1e-4, (
            f"{name}: bidirectional outputs at a run of MASK inputs are all alike: the mixer is blind to position "
            "(the skeleton adds no position embedding; see the contract in mixers/__init__.py)")


# ----------------------------------------------------------------------------- sampler

class Recorder(nn.Module):
    """Wraps a model and records how many MASKs each forward pass was given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.masks = model, []

    def forward(self, ids, pad_mask=None, right_padded=True):
        self.masks.append((ids == SP.mask).sum(1).tolist())
        return self.model(ids, pad_mask, right_padded)

    @property
    def head_weight(self):
        return self.model.head_weight

    def logits(self, h):
        return self.model.logits(h)


class _IdentityHead(nn.Module):
    """A stand-in LM whose hidden states are already log-probabilities: its head is the identity."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.eye(V))

    @property
    def head_weight(self):
        return self.w

    def logits(self, h):
        return h @ self.w.t()


class ScriptedAnswer(_IdentityHead):
    """Answer-region position j (after the prompt's last SEP) predicts 6 + j for j < 3 and EOS after,
    with confidences 0.95 - 0.01 j: hidden states are log-probabilities, the head is the identity."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, ids, pad_mask=None, right_padded=True):
        self.calls += 1
        B, T = ids.shape
        start = (T - 1 - (ids == SP.sep).flip(1).int().argmax(1)) + 1  # (B,) first position after the last SEP
        j = torch.arange(T)[None] - start[:, None]  # (B, T) region offset
        tok = torch.where(j < 3, 6 + j.clamp(0, 2), torch.full_like(j, SP.eos))
        conf = 0.95 - 0.01 * j.clamp(min=0).float()
        probs = torch.full((B, T, V), 1e-3)
        probs.scatter_(2, tok[..., None], conf[..., None])
        return probs.log()


def test_sampler_fills_every_mask_on_schedule():
    model = Recorder(_lm())
    obj = _obj(gen_length=6, steps=3)
    region = obj.sample(model, [p for p, _ in QA], early_stop=False)
    assert region.shape == (3, 6) and not (region == SP.mask).any() and not (region == SP.pad).any()
    assert model.masks == [[6] * 3, [4] * 3, [2] * 3]  # 2 commits per step
    model.masks.clear()
    _obj(gen_length=6, steps=4, block_length=3).sample(model, [QA[0][0]], early_stop=False)
    assert model.masks == [[6], [4], [3], [1]]  # per block of 3: 2 steps committing 2 then 1, left block first
    model.masks.clear()
    _obj(gen_length=6, steps=2, block_length=3).sample(model, [QA[0][0]], early_stop=False)
    assert model.masks == [[6], [3]]  # one step per block, committing the whole block
    model.masks.clear()
    _obj(gen_length=3, steps=6).sample(model, [QA[0][0]], early_stop=False)
    assert model.masks == [[3], [2], [1]]  # more steps than tokens: a step that would commit none runs no forward
    assert transfer_schedule(5, 3) == [2, 2, 1] and transfer_schedule(2, 3) == [1, 1, 0]


def test_low_confidence_remasking_commits_the_most_confident_first():
    model = ScriptedAnswer()
    obj = _obj(gen_length=6, steps=6)
    region = obj.sample(model, [[2, 7, 4]], early_stop=False)
    assert region.tolist() == [[6, 7, 8, 3, 3, 3]]
    rec = Recorder(model)
    obj.sample(rec, [[2, 7, 4]], early_stop=False)
    assert rec.masks == [[6], [5], [4], [3], [2], [1]]


class ScriptedConfidence(_IdentityHead):
    """Answer-region position j (after the prompt's last SEP) proposes token 6 + j with confidence
    `conf[j]` (hidden states are log-probabilities, the head is the identity), whatever else is filled
    in, and records which region positions each forward pass was given as MASK (batch row 0)."""

    def __init__(self, conf):
        super().__init__()
        self.conf, self.masked = torch.tensor(conf), []

    def forward(self, ids, pad_mask=None, right_padded=True):
        B, T = ids.shape
        start = (T - 1 - (ids == SP.sep).flip(1).int().argmax(1)) + 1  # (B,) first position after the last SEP
        j = torch.arange(T)[None] - start[:, None]  # (B, T) region offset
        L = len(self.conf)
        self.masked.append({int(i) for i in j[0][(ids[0] == SP.mask) & (j[0] >= 0)]})
        jc = j.clamp(0, L - 1)
        probs = torch.full((B, T, V), 1e-3)
        probs.scatter_(2, (6 + jc)[..., None], self.conf[jc][..., None])
        return probs.log()

    def commit_order(self, region):
        """The region positions committed at each step: those MASK in one input and not in the next (the
        last step's commits are what is still MASK in the last input, as the final `region` has none)."""
        assert not (region == SP.mask).any()
        after = self.masked[1:] + [set()]
        return [sorted(before - now) for before, now in zip(self.masked, after)]


def test_low_confidence_remasking_commits_in_descending_confidence_whatever_the_position():
    """One commit per step, in order of confidence, not of position: a sampler that committed the least
    confident position first (or went left to right) would fill the same tokens but in another order."""
    conf = [0.5, 0.9, 0.6, 0.95, 0.7, 0.8]
    model = ScriptedConfidence(conf)
    region = _obj(gen_length=6, steps=6).sample(model, [[2, 7, 4]], early_stop=False)
    assert region.tolist() == [[6, 7, 8, 9, 10, 11]]
    assert model.commit_order(region) == [[3], [1], [5], [4], [2], [0]]  # descending confidence


def test_semi_autoregressive_blocks_commit_left_block_first_even_against_confidence():
    """Confidence rises with position, so an unrestricted sampler would commit 5, 4, 3 first; with
    blocks of 3 the first three steps may only commit in positions 0-2 (most confident first within the
    block) and the next three in positions 3-5."""
    model = ScriptedConfidence([0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    region = _obj(gen_length=6, block_length=3, steps=6).sample(model, [[2, 7, 4]], early_stop=False)
    order = model.commit_order(region)
    assert sorted(p for step in order[:3] for p in step) == [0, 1, 2]
    assert sorted(p for step in order[3:] for p in step) == [3, 4, 5]
    assert order == [[2], [1], [0], [5], [4], [3]]


def test_sampler_respects_eos_and_stops_once_the_answer_is_settled():
    model = ScriptedAnswer()
    obj = _obj(gen_length=8, steps=8)
    out = obj.generate(model, [[2, 7, 4], [2, 9, 9, 9, 4]], max_new=24, batch_size=2)
    assert out == [[6, 7, 8], [6, 7, 8]]  # cut before the first EOS
    assert model.calls == 4  # 3 answer tokens then the EOS after them: the rest cannot change the answer
    assert obj.generate(model, [[2, 7, 4]], max_new=2, batch_size=1) == [[6, 7]]
    model.calls = 0
    assert obj.generate(model, [[2, 7, 4]], max_new=0, batch_size=1) == [[]]
    assert model.calls == 0  # no token asked for: nothing sampled


def test_greedy_sampler_is_batch_invariant():
    model = _lm(seed=1)
    obj = _obj(gen_length=6, steps=6)
    prompts = [p for p, _ in QA]
    batched = obj.generate(model, prompts, max_new=6, batch_size=3)
    assert batched == [obj.generate(model, [p], max_new=6, batch_size=1)[0] for p in prompts]
    assert all(len(g) <= 6 and SP.eos not in g and SP.mask not in g for g in batched)


def test_the_sampler_shows_each_row_its_prompt_and_region_and_never_the_padding_after_them():
    """A bidirectional model attends to every position its mask lets through: a shorter prompt batched
    with a longer one must not see the pad after its own region (greedy answers hide such a leak: it
    nudges the logits, rarely the argmax)."""
    model = _lm(seed=1)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    prompts = [p for p, _ in QA]
    _obj(gen_length=4, steps=2).sample(model, prompts, early_stop=False)
    lens = [len(p) + 4 for p in prompts]
    assert len(seen) == 2 and all(m.sum(1).tolist() == lens and m.shape[1] == max(lens) for m in seen)
    assert all(m[i, :n].all() for m in seen for i, n in enumerate(lens))


def test_stochastic_sampler_is_deterministic_with_a_seed():
    model = _lm(seed=2)
    prompts = [p for p, _ in QA] * 3
    run = lambda seed: _obj(gen_length=6, steps=3, temperature=1.0, remasking="random", seed=seed).generate(
        model, prompts, max_new=6, batch_size=4)
    assert run(0) == run(0)
    assert run(0) != run(1)


class Flat(_IdentityHead):
    """Uniform predictions whatever the input: what a stochastic sampler commits is its noise alone."""

    def forward(self, ids, pad_mask=None, right_padded=True):
        return torch.zeros(*ids.shape, V)


@pytest.mark.parametrize("opts", [{"temperature": 1.0}, {"temperature": 1.0, "remasking": "random"}])
def test_each_batch_of_a_stochastic_sampler_draws_its_own_noise(opts):
    """Seeding every batch with `seed` alone replayed one random stream: row r of every batch drew the
    same noise, so under a model that ignores its input the second batch's answers copied the first's
    (answers' randomness shared across questions, not averaged out). Each batch's prompts now enter its
    seed: the batches differ, and a batch's answers are the same whichever batches come before it."""
    obj = _obj(gen_length=6, steps=6, **opts)
    prompts = [[2, 6 + i, 7, 4] for i in range(12)]  # one length: three batches of one shape
    run = lambda ps: [obj.sample(Flat(), ps[s : s + 4], early_stop=False).tolist() for s in range(0, len(ps), 4)]
    first, second, third = run(prompts)
    assert first != second and second != third and first != third
    assert run(prompts[4:8]) == [second]  # the same batch alone draws what it drew among the others
    assert run(prompts) == [first, second, third]  # deterministic
    answers = obj.generate(Flat(), prompts, max_new=6, batch_size=4)  # (the path the tasks' evaluation takes)
    assert answers[:4] != answers[4:8] != answers[8:]


class Order(_IdentityHead):
    """Ignores the prompt and proposes, at every position, the token 6 + (masks left in the row), with
    certainty: with one position committed per step, an answer spells the order in which its positions
    were committed. At temperature 0 that order is all that random remasking draws."""

    def forward(self, ids, pad_mask=None, right_padded=True):
        left = (ids == SP.mask).sum(1)  # (B,)
        return torch.nn.functional.one_hot(6 + left, V).float()[:, None].expand(*ids.shape, V)


def test_random_remasking_at_temperature_0_draws_each_batchs_own_order():
    """Random remasking draws with a greedy proposal too: each batch must hash its prompts into its seed
    there as well (a sampler that hashed only under a temperature would let every batch of one shape
    commit its positions in one order, the bug of `test_each_batch_of_a_stochastic_sampler_draws_its_own_noise`)."""
    obj = _obj(gen_length=6, steps=6, remasking="random")
    prompts = [[2, 6 + i, 7, 4] for i in range(12)]
    batches = [obj.sample(Order(), prompts[s : s + 4], early_stop=False).tolist() for s in range(0, 12, 4)]
    assert all(sorted(row) == list(range(7, 13)) for b in batches for row in b)  # one commit a step
    assert batches[0] != batches[1] != batches[2] != batches[0]
    assert obj.sample(Order(), prompts[4:8], early_stop=False).tolist() == batches[1]  # the same batch draws the same
    low = _obj(gen_length=6, steps=6).sample(Order(), prompts[:4], early_stop=False).tolist()
    assert low == [low[0]] * 4  # low-confidence remasking draws nothing: every row commits in one order


@pytest.mark.parametrize("opts, hashes", [({}, False), ({"remasking": "random"}, True), ({"temperature": 1.0}, True)])
def test_the_sampler_hashes_its_prompts_exactly_when_it_draws(opts, hashes, monkeypatch):
    """Greedy low-confidence sampling (the default) draws nothing, so it skips the prompts' hash (~4 ms of
    host time per 128 prompts of 300 ids); a sampler that draws must hash them (the tests above)."""
    calls = []
    real = diffusion._rows_hash
    monkeypatch.setattr(diffusion, "_rows_hash", lambda rows: calls.append(len(rows)) or real(rows))
    _obj(gen_length=4, steps=4, **opts).sample(Flat(), [[2, 6, 7, 4], [2, 8, 4]], early_stop=False)
    assert bool(calls) == hashes


def test_distinct_seeds_and_batch_hashes_seed_distinct_generators():
    """The generator's seed keeps the batch's hash whole: a seed that folded hashes together (a modulus of
    125, `2 * 63 - 1` for `2**63 - 1`, planted) would let distinct batches replay one stream again, as
    `nll_seed` alone did. Hashes up to 1e13: a batch of 16,384 tokens (the small and base presets'
    `batch_tokens`) with ids under 16,000 hashes to at most ~1.1e12."""
    cpu = torch.device("cpu")
    hashes = torch.randint(0, 10**13, (2000,), generator=torch.Generator().manual_seed(0)).unique().tolist()
    assert len({diffusion._generator(cpu, 1234, h).initial_seed() for h in hashes}) == len(hashes)
    assert len({diffusion._generator(cpu, s, 77).initial_seed() for s in range(1000)}) == 1000


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_a_temperature_draw_follows_softmax_of_the_logits_over_the_temperature(temperature):
    """Gumbel-max sampling: the proposal is a draw from softmax(logits / temperature), so a distribution
    p becomes p^(1/T), renormalised (sharper below 1, flatter above). 40,000 draws at 3 tokens:
    each frequency within 0.015 (more than 5 standard errors) of the target."""
    p = torch.tensor([0.5, 0.3, 0.2])
    logits = p.log().expand(40_000, 1, 3)  # (b, L, V)
    x0, _ = _obj(temperature=temperature)._propose(logits, torch.Generator().manual_seed(0))
    want = p ** (1 / temperature)
    freq = torch.bincount(x0.flatten(), minlength=3).float() / x0.numel()
    torch.testing.assert_close(freq, want / want.sum(), rtol=0, atol=0.015)


def test_low_confidence_is_the_models_probability_of_its_proposed_token():
    """The remasking score of a position is the softmax probability, over the vocabulary, of the token
    proposed there. Position 0 is peaked on a small logit (0.98), position 1 nearly flat on large ones
    (0.58): the peaked one is the more confident, whatever the logits' scale across positions."""
    logits = torch.tensor([[[5.0, 0.0, 0.0], [10.0, 9.0, 9.0]]])  # (b, L, V)
    x0, conf = _obj()._propose(logits, torch.Generator().manual_seed(0))
    assert x0.tolist() == [[0, 0]]
    torch.testing.assert_close(conf, logits.softmax(-1)[..., 0])
    assert conf[0, 0] > 0.97 and conf[0, 1] < 0.6


def test_a_one_token_answer_is_sampled():
    """gen_length 1, one step: the smallest region the sampler is asked for still gives one token per prompt."""
    out = _obj(gen_length=1, steps=1).generate(_lm(), [p for p, _ in QA], max_new=1, batch_size=2)
    assert [len(a) <= 1 for a in out] == [True] * 3 and any(out)


# ----------------------------------------------------------------------------- perplexity bound

class Denoiser(_IdentityHead):
    """A hand-made denoiser over a 2-token answer region [BOS, SEP, x0, x1]: `table(ids)` gives the
    probability of token 6 at each region slot; the rest of the mass goes to token 7."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, ids, pad_mask=None, right_padded=True):
        B, T = ids.shape
        probs = torch.full((B, T, V), 1e-9)
        p6 = self.table(ids)  # (B, T)
        probs[..., 6], probs[..., 7] = p6, 1 - p6
        return probs.log()


def _exact(model, obj, seq, region_slots):
    """Exact -log p(x) of the masked-diffusion model (uniform random unmasking order, each token drawn
    from the model given what is revealed) and the exact ELBO (sum over m of 1/m E_{|S|=m} sum CE)."""
    x = torch.tensor([seq])
    n = len(region_slots)

    def logp(revealed, slot):
        ids = x.clone()
        for s in region_slots:
            if s not in revealed:
                ids[0, s] = SP.mask
        return torch.log_softmax(model.logits(model(ids)), -1)[0, slot, seq[slot]].item()

    orders = list(itertools.permutations(region_slots))
    p = sum(math.exp(sum(logp(set(o[:k]), o[k]) for k in range(n))) for o in orders) / len(orders)
    elbo = 0.0
    for m in range(1, n + 1):
        subsets = list(itertools.combinations(region_slots, m))
        elbo += sum(-logp(set(region_slots) - set(S), s) for S in subsets for s in S) / len(subsets) / m
    return -math.log(p), elbo


def test_bound_equals_the_exact_nll_for_independent_predictions():
    model = Denoiser(lambda ids: torch.tensor([0.5, 0.5, 0.3, 0.9]).expand(ids.shape))
    obj = _obj(eos_fill=False, nll_samples=1000)
    data = SeqSet.from_lists([[2, 4, 6, 7]], [[False, False, True, True]], SP.pad)
    s, c = obj.nll(model, data.batch(np.arange(1)))
    exact = -math.log(0.3) - math.log(0.1)
    assert c.item() == 2
    assert s.item() == pytest.approx(exact, rel=0.03)


def test_bound_is_above_the_exact_nll_when_predictions_use_context():
    # slot 2 is confident and right only once slot 3 is revealed; slot 3 is a coin flip
    def table(ids):
        out = torch.full(ids.shape, 0.5)
        out[:, 2] = torch.where(ids[:, 3] == SP.mask, 0.01, 0.99)
        return out

    model = Denoiser(table)
    seq = [2, 4, 6, 7]
    exact, elbo = _exact(model, _obj(eos_fill=False), seq, [2, 3])
    assert exact == pytest.approx(math.log(4), rel=1e-6)  # mean of 0.01*0.5 and 0.5*0.99 = 0.25
    assert elbo == pytest.approx(3.0007, abs=1e-3)
    batch = SeqSet.from_lists([seq], [[False, False, True, True]], SP.pad).batch(np.arange(1))
    for k in (2, 8):  # stratified: half the samples mask both slots, which alone costs more than `exact`
        s, _ = _obj(eos_fill=False, nll_samples=k).nll(model, batch)
        assert s.item() >= exact, k
    s, _ = _obj(eos_fill=False, nll_samples=400).nll(model, batch)
    assert s.item() == pytest.approx(elbo, rel=0.03)


def test_bound_of_a_real_model_matches_the_enumerated_elbo_with_eos_filler():
    """A random bidirectional LM; the region is answer + EOS + one filler EOS (L = 3)."""
    model = _lm(seed=3)
    obj = _obj(gen_length=3, nll_samples=256)
    seq = [2, 9, 10, 4, 11, 3]
    batch = _qa([([2, 9, 10, 4], [11])]).batch(np.arange(1))
    exact, elbo = _exact(model, obj, seq + [3], [4, 5, 6])
    s, c = obj.nll(model, batch)
    assert c.item() == 2  # answer + EOS; the filler is in the region, not in the count
    assert elbo >= exact
    assert s.item() == pytest.approx(elbo, rel=0.01)


def test_nll_is_deterministic_and_leaves_the_global_rng_alone():
    model = _lm()
    obj = _obj(gen_length=6)
    batch = _qa(QA).batch(np.arange(3))
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = obj.nll(model, batch), obj.nll(model, batch)
    assert torch.equal(state, torch.get_rng_state())
    assert a[0].item() == b[0].item() and a[1].item() == b[1].item() == 9


# ----------------------------------------------------------------------------- output layer on the region only

def _interleaved(rows):
    """MQAR-like rows [BOS, k, v, k, v, ..., SEP]: the values are targets, none at the end (no suffix)."""
    seqs = [[2] + [t for k, v in kv for t in (k, v)] + [4] for kv in rows]
    tgts = [[False] + [f for _ in kv for f in (False, True)] + [False] for kv in rows]
    return SeqSet.from_lists(seqs, tgts, SP.pad)


LONG = ([2, 7, 4], [8, 9, 10, 11, 12, 13, 14, 15, 16])  # answer + EOS = 10 > gen_length
KV = [[(6, 7), (8, 9), (10, 11)], [(12, 13)], [(14, 15), (16, 17), (18, 19), (6, 8), (9, 10)]]
WIDTH_CASES = {  # name -> (data, options): suffix targets with and without filler, interleaved, and mixed rows
    "suffix": (lambda: _qa(QA), {"gen_length": 6}),
    "suffix_long_answer": (lambda: _qa(QA + [LONG]), {"gen_length": 6}),
    "suffix_no_filler": (lambda: _qa(QA + [LONG]), {"eos_fill": False}),
    "interleaved": (lambda: _interleaved(KV), {"gen_length": 4}),
    "interleaved_no_filler": (lambda: _interleaved(KV), {"eos_fill": False}),
    "mixed": (lambda: SeqSet.from_lists(
        [p + a + [SP.eos] for p, a in QA] + [[2, 6, 7, 8, 9, 4], [2, 6, 7, 8, 4]],
        [[False] * len(p) + [True] * (len(a) + 1) for p, a in QA] + [[False, False, True, False, True, False], [False] * 5],
        SP.pad), {"gen_length": 3}),
}


def _loss_and_grads(obj, model, batch, seed):
    model.zero_grad()
    loss = obj.loss(model, batch, torch.Generator().manual_seed(seed))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("case", list(WIDTH_CASES))
def test_training_loss_on_the_region_columns_equals_the_full_width_loss(case):
    """The same draws (mask ratio, masks) give the same loss and the same gradients whether the output
    layer sees W region columns per row or all T' positions (max_target = -1: the full path). Several
    seeds, so every region position (the widest row's last included) is masked in some draw."""
    make, opts = WIDTH_CASES[case]
    obj, model = _obj(**opts), _lm(seed=4).train()
    data = make()
    batch = data.batch(np.arange(len(data)))
    full = dataclasses.replace(batch, max_target=-1)
    for seed in range(6):
        narrow_loss, narrow_grads = _loss_and_grads(obj, model, batch, seed)
        full_loss, full_grads = _loss_and_grads(obj, model, full, seed)
        torch.testing.assert_close(narrow_loss, full_loss, rtol=1e-5, atol=1e-6)
        for g, r in zip(narrow_grads, full_grads):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", list(WIDTH_CASES))
def test_the_output_layer_sees_only_the_region_columns(case, monkeypatch):
    """B x W rows reach token_nll, W = max(most targets in a row, gen_length if filler) < T', known on the
    host; mask_on="all" and an unknown bound (-1) keep all B x T' rows."""
    import harness.objectives.diffusion as diff

    rows = []
    monkeypatch.setattr(diff, "token_nll", lambda h, w, y, impl: rows.append(h.shape[0]) or token_nll(h, w, y, impl))
    make, opts = WIDTH_CASES[case]
    obj, model = _obj(**opts), _lm()
    data = make()
    batch = data.batch(np.arange(len(data)))
    B, T = batch.ids.shape
    L = obj.opts.gen_length if obj.opts.eos_fill else 0
    n_target = [int(t.sum()) for t in batch.target]
    assert batch.max_target == max(n_target)
    W = max(max(n_target), L)
    region = obj.region(batch)
    assert W == int(region.target.sum(1).max())  # the bound is tight here: one column less would drop one
    obj.loss(model, batch, torch.Generator().manual_seed(0))
    assert rows == [B * W] and W < T + L
    rows.clear()
    obj.loss(model, dataclasses.replace(batch, max_target=-1), torch.Generator().manual_seed(0))
    _obj(**opts, mask_on="all").loss(model, batch, torch.Generator().manual_seed(0))
    assert rows == [B * (T + L)] * 2


def test_bound_is_the_mean_over_samples_of_n_over_m_times_the_masked_ce():
    """Every region token costs the same CE c whatever is revealed: each sample's (n/m) x (m c) is n c,
    so the bound, the mean over K samples, is exactly n c for any K, in either form (reported, selection)."""
    c = -math.log(0.3)
    model = Denoiser(lambda ids: torch.full(ids.shape, 0.3))
    data = SeqSet.from_lists([[2, 4, 6, 6], [2, 4, 6, 6, 6], [2, 4, 6]],
                             [[False, False, True, True], [False, False, True, True, True], [False, False, True]], SP.pad)
    batch = data.batch(np.arange(3))
    for K in (1, 2, 3, 8):
        obj = _obj(eos_fill=False, nll_samples=K, dev_nll_samples=K)
        for s, n in (obj.nll(model, batch), obj.selection_nll(model, batch)):
            assert n.item() == 6
            assert s.item() == pytest.approx(6 * c, rel=1e-5), K


def test_bound_samples_one_mask_count_per_stratum(monkeypatch):
    """m ~ U{1..n} stratified over the K samples: sample k draws m from the k-th of K equal slices of 1..n."""
    import harness.objectives.diffusion as D

    seen = []
    orig = D.mask_exactly
    monkeypatch.setattr(D, "mask_exactly", lambda mk, m, g: (seen.append(m.clone()), orig(mk, m, g))[1])
    model = _lm()
    n = 8
    batch = SeqSet.from_lists([[2, 4] + [6] * n], [[False, False] + [True] * n], SP.pad).batch(np.arange(1))
    with torch.no_grad():
        _obj(eos_fill=False, nll_samples=4).nll(model, batch)
    assert tuple(int(m[0]) for m in seen) in itertools.product([1, 2], [3, 4], [5, 6], [7, 8])
    # K = n: one sample per count, whatever the offset u: m = 1, 2, ..., n (a single masked token included)
    seen.clear()
    with torch.no_grad():
        _obj(eos_fill=False, nll_samples=n).nll(model, batch)
    assert [int(m[0]) for m in seen] == list(range(1, n + 1))


# the bound's Monte Carlo error: four batches of five rows `BOS q..q SEP 6..6`, every row 12 tokens (the
# evaluation's length sort keeps this order), region sizes 3..7 in each batch, the answer token 6 everywhere;
# the batches differ in their question token q only, so they have one shape and one layout
_SE_SIZES = [(8 + b, n) for b in range(4) for n in (3, 5, 7, 4, 6)]
_SE_DATA = SeqSet.from_lists([[2] + [q] * (10 - n) + [4] + [6] * n for q, n in _SE_SIZES],
                             [[False] * (12 - n) + [True] * n for _, n in _SE_SIZES], SP.pad)


def _by_column(ids):
    """p(6) fixed per column (0.9 even, 0.2 odd): a draw's term depends on *which* slots are masked."""
    col = torch.arange(ids.shape[1]).expand_as(ids)
    return torch.where(col % 2 == 0, 0.9, 0.2)


def _by_left_neighbour(ids):
    """p(6) 0.2 where the left neighbour is masked, else 0.9: the term's mean drifts with m (the strata)."""
    left = torch.cat([ids[:, :1], ids[:, :-1]], 1)
    return torch.where(left == SP.mask, 0.2, 0.9)


def test_bound_error_is_zero_when_every_draw_agrees_and_absent_when_exact():
    """The constant-CE denoiser: every draw's (n/m)(m c) is n c, so draws cannot disagree and the
    estimated variance is 0; one sample gives no estimate; an exact NLL (autoregressive) has none."""
    from harness.evaluate import eval_nll

    cpu = torch.device("cpu")
    model = Denoiser(lambda ids: torch.full(ids.shape, 0.3))
    batch = _SE_DATA.batch(np.arange(len(_SE_DATA)))
    s, n, var, _ = _obj(eos_fill=False, nll_samples=4).nll_with_variance(model, batch)
    assert (s.item(), n.item()) == pytest.approx((100 * -math.log(0.3), 100), rel=1e-5) and var.item() < 1e-9
    assert _obj(eos_fill=False, nll_samples=1).nll_with_variance(model, batch)[2] is None
    nll, se, _ = eval_nll(model, _obj(eos_fill=False, nll_samples=4), _SE_DATA, 5, cpu)
    assert nll == pytest.approx(-math.log(0.3), rel=1e-5) and se == pytest.approx(0.0, abs=1e-6)
    assert eval_nll(model, _obj(eos_fill=False, nll_samples=1), _SE_DATA, 5, cpu)[1] is None
    one = SeqSet.from_lists([[2, 9, 4, 6]], [[False, False, False, True]], SP.pad)  # one target token in all
    assert eval_nll(model, _obj(eos_fill=False, nll_samples=4), one, 5, cpu)[0] == pytest.approx(-math.log(0.3), rel=1e-5)
    ar = objectives.build("autoregressive", SP, "chunked")
    assert eval_nll(_lm(causal=True), ar, _qa(QA), 2, cpu)[1] is None


def test_eval_nll_puts_each_rows_nll_on_its_own_row():
    """What the report pairs two cells by (`per_question.nll`): batches run in length order, not row order,
    and each row's NLL must land on its own row. Autoregressive: a row's NLL in a batch equals the row
    scored alone; the bound with a constant denoiser: a row's is its target count x -log 0.3, and a row
    without a target token scores 0. Both add up to the reported NLL."""
    from harness.evaluate import eval_nll

    cpu = torch.device("cpu")
    ar, model = objectives.build("autoregressive", SP, "chunked"), _lm(causal=True)
    # the last row's answer starts right after BOS: in one batch of 4 its targets sit early in the third row
    data = _qa(QA + [([2], [9, 10, 11, 12, 13, 14])])
    assert data.eval_order().tolist() == [1, 0, 3, 2]  # lengths differ: batches run in another order
    for bs in (2, 4):
        got = eval_nll(model, ar, data, bs, cpu)
        alone = [eval_nll(model, ar, data.subset(np.array([i])), 1, cpu).nll * data.target_lengths[i] for i in range(4)]
        assert got.rows == pytest.approx(alone, rel=1e-5) and len(set(np.round(alone, 3))) == 4
        assert got.rows.sum() / data.target_lengths.sum() == pytest.approx(got.nll, rel=1e-6)
    # the shortest rows there are: BOS and a scored EOS, two to a batch
    eos_only = _qa([([2], []), ([2], [])])
    got = eval_nll(model, ar, eos_only, 2, cpu)
    assert got.rows.tolist() == pytest.approx([got.nll] * 2)
    sizes = [3, 0, 5, 1]  # target tokens per row; the row lengths differ too
    rows = SeqSet.from_lists([[2] + [8] * (4 - i) + [4] + [6] * n for i, n in enumerate(sizes)],
                             [[False] * (6 - i) + [True] * n for i, n in enumerate(sizes)], SP.pad)
    bound = eval_nll(Denoiser(lambda ids: torch.full(ids.shape, 0.3)), _obj(eos_fill=False, nll_samples=4), rows, 3, cpu)
    assert bound.rows == pytest.approx([-math.log(0.3) * n for n in sizes], rel=1e-5)
    assert bound.nll == pytest.approx(-math.log(0.3), rel=1e-5)


@pytest.mark.parametrize("table, K", [(_by_column, 2), (_by_column, 8), (_by_left_neighbour, 8)])
def test_bound_standard_error_matches_its_spread_over_mask_seeds(table, K):
    """What `metrics.nll_mc_se` claims: the reported bound moves by about that much under another
    mask seed. Over 150 seeds (the weights fixed) the bound's standard deviation and the root mean
    square of the estimated error agree within 25%, whether a draw's term depends on which slots are
    masked or drifts with how many (at K = 2 a drift counts as spread: 1.6x, the docstring's caveat).
    The four batches have one shape: seeded with `nll_seed` alone they drew the same masks, their
    errors added up, and the spread was 1.4-2x the estimate (`_batch_hash`). An error left undivided
    by K or computed across rows would miss too."""
    from harness.evaluate import eval_nll

    model, cpu = Denoiser(table), torch.device("cpu")
    runs = [eval_nll(model, _obj(eos_fill=False, nll_samples=K, nll_seed=seed), _SE_DATA, 5, cpu)
            for seed in range(150)]
    spread = float(np.std([r.nll for r in runs], ddof=1))
    claimed = math.sqrt(float(np.mean([r.se ** 2 for r in runs])))
    assert spread > 0.02
    assert 0.8 < claimed / spread < 1.25, (claimed, spread)
    # the reported number is `nll`'s, unchanged by asking for the error
    obj = _obj(eos_fill=False, nll_samples=K)
    batch = _SE_DATA.batch(np.arange(len(_SE_DATA)))
    assert obj.nll_with_variance(model, batch)[0].item() == obj.nll(model, batch)[0].item()


@pytest.mark.parametrize("table", [_by_column, _by_left_neighbour])
def test_each_rows_estimated_variance_matches_its_variance_over_mask_seeds(table):
    """The variance a row's bound claims, against the variance of that row's bound over 100 seeds, summed
    over 12 rows of JSQuAD's region size (24 slots), K = 8: within 15% (their ratio is known to ~4%, far
    finer than the total's spread above). With `_by_column` the first stratum (1-3 of 24 slots masked,
    their loss times 24/m) holds most of the variance: successive differences over all strata,
    which weight it half, claimed 0.77; second differences 0.59. With `_by_left_neighbour` the term's mean
    drifts with m: the plain variance over the K draws counts the drift and claimed 5.2."""
    S, R, n = 100, 12, 24
    data = SeqSet.from_lists([[2, 8 + r % 12, 8 + r // 12, 4] + [6] * n for r in range(R)],  # distinct rows
                             [[False] * 4 + [True] * n] * R, SP.pad)
    model, sums, claimed = Denoiser(table), np.zeros((S, R)), np.zeros((S, R))
    for seed in range(S):
        obj = _obj(eos_fill=False, nll_samples=8, nll_seed=seed)
        for r in range(R):  # a batch of one row: its own draws
            with torch.no_grad():
                total, _, var, _ = obj.nll_with_variance(model, data.batch(np.array([r])))
            sums[seed, r], claimed[seed, r] = total.item(), var.item()
    ratio = claimed.mean(0).sum() / sums.var(0, ddof=1).sum()
    assert 0.85 < ratio < 1.15, ratio


def test_collapsed_strata_pair_neighbouring_draws_and_weight_every_stratum_once():
    """By hand: K = 8 is four pairs, (t_a - t_b)^2 / K^2 each; K = 9 ends in a group of three (its unbiased
    variance times 3); K = 2 is the plain variance of the mean; equal draws give 0; rows stay apart."""
    from harness.objectives.diffusion import collapsed_strata_variance as csv

    t8 = torch.tensor([[1.0, 3, 0, 4, 2, 2, 5, 1], [7.0] * 8])
    assert csv(t8).tolist() == pytest.approx([(4 + 16 + 0 + 16) / 64, 0.0])
    t9 = torch.tensor([[1.0, 3, 0, 4, 2, 2, 5, 1, 3]])  # last group 5 1 3: mean 3, sum of squares 8
    assert csv(t9).item() == pytest.approx((4 + 16 + 0 + 3 * 8 / 2) / 81)
    assert csv(torch.tensor([[1.0, 4]])).item() == pytest.approx(9 / 4)  # (1 - 4)^2 / 2 / 2
    assert csv(torch.tensor([[1.0, 4, 7]])).item() == pytest.approx(3 * 9 / 9)  # one group of three


class _FirstThenTokens:
    """A task's answer constraint as the sampler can use it: the ids an answer may start with (its prefix is
    the empty one, whatever the fill order) and, past the first position, `tokens()`; after sampling,
    `longest_answer` keeps the longest prefix that is one of `answers` (and records what it was given)."""

    def __init__(self, first, ids, answers):
        self.first, self.ids = sorted(first), sorted(set(ids) | set(first) | {SP.eos})
        self.answers, self.seen = {tuple(a) for a in answers}, []

    def next_tokens(self, prefix):
        assert list(prefix) == [], "the sampler fills positions out of order: only the first has a known prefix"
        return self.first

    def tokens(self):
        return self.ids

    def longest_answer(self, ids):
        self.seen.append(list(ids))
        return next((list(ids[:k]) for k in range(len(ids), 0, -1) if tuple(ids[:k]) in self.answers), [])


def test_the_sampler_proposes_only_the_tokens_each_rows_constraint_allows():
    """The scripted model answers 6 7 8 then EOS, each choice at probability ~0.95 and every other id at
    1e-3. Row 1 may use every id: the same answer. Row 0 may not use 7: there every allowed id is equally
    likely, the argmax takes the lowest, EOS, and the answer ends after 6. Row 2 may not start with 6
    (nor with EOS: no empty answer): it starts with the lowest of 8 and 9, then follows the script to
    8 7 8, which is no allowed answer: `longest_answer` cuts it to 8 7, the longest prefix that is one."""
    model = ScriptedAnswer()
    obj = _obj(gen_length=6, steps=6, constrained_order="confidence")  # the relaxed path (left to right: below)
    prompts = [[2, 7, 4], [2, 9, 9, 4], [2, 8, 4]]
    assert obj.generate(model, prompts, max_new=6, batch_size=3) == [[6, 7, 8]] * 3
    cons = [_FirstThenTokens([6, 8], [9], [[6], [6, 9]]), _FirstThenTokens(range(6, V), range(6, V), [[6, 7, 8]]),
            _FirstThenTokens([8, 9], [7], [[8], [8, 7]])]
    assert obj.generate(model, prompts, max_new=6, batch_size=3, constraints=cons) == [[6], [6, 7, 8], [8, 7]]
    assert [c.seen for c in cons] == [[[6]], [[6, 7, 8]], [[8, 7, 8]]]  # each sampled answer, EOS cut away
    region = obj.sample(model, prompts, early_stop=False, constraints=cons)
    assert set(region[0].tolist()) <= {6, 8, 9, SP.eos}  # every position, also those after the EOS


class _ByPrefix:
    """A constraint that depends on the answer so far (`after[tuple(prefix)]`; only EOS once it has ended),
    recording each prefix it was asked about."""

    def __init__(self, after):
        self.after, self.seen = after, []

    def next_tokens(self, prefix):
        self.seen.append(list(prefix))
        return [SP.eos] if SP.eos in prefix else self.after.get(tuple(prefix), [SP.eos])

    def tokens(self):
        return sorted({i for ids in self.after.values() for i in ids} | {SP.eos})

    def longest_answer(self, ids):
        return list(ids)


def test_blocks_of_one_position_apply_the_constraint_exactly_left_to_right():
    """Under a constraint the region fills left to right by default (`constrained_order`), as with
    block_length=1, so each position's prefix is known: the sampler asks the constraint about it and
    proposes only what it allows. The scripted model wants 6 7 8: here 7 is never allowed after 6, so the
    second token is the lowest allowed (8, a tie at 1e-3), and then the script's 8, then EOS: 6 8 8. The
    relaxed sampler (`constrained_order=confidence`), asked about the empty prefix only, cannot do this.
    Free answers keep the configured order, and fewer `steps` than positions still fill every position."""
    model = ScriptedAnswer()
    after = {(): [6, 9], (6,): [8, 9], (6, 8): [8, SP.eos], (6, 8, 8): [SP.eos]}
    relaxed = _obj(gen_length=6, steps=6, constrained_order="confidence")
    exact = [_obj(gen_length=6, steps=6), _obj(gen_length=6, steps=6, block_length=1, constrained_order="confidence"),
             _obj(gen_length=6, steps=2), _obj(gen_length=6, steps=6, block_length=3)]
    assert relaxed.constraint_path.startswith("relaxed") and relaxed.constraint_path == relaxed.RELAXED
    assert {o.constraint_path for o in exact} == {exact[0].LEFT_TO_RIGHT} and exact[0].LEFT_TO_RIGHT.startswith("exact: ")
    one = _obj(gen_length=1, steps=1, constrained_order="confidence")
    assert one.constraint_path == exact[0].constraint_path  # one position: one block of one
    for obj in exact:
        cons = [_ByPrefix(after), _ByPrefix(after)]
        got = obj.generate(model, [[2, 7, 4], [2, 8, 8, 4]], max_new=6, batch_size=2, constraints=cons)
        assert got == [[6, 8, 8]] * 2, obj.opts
        assert cons[0].seen[:4] == [[], [6], [6, 8], [6, 8, 8]]  # every position's prefix, in order
    got = relaxed.generate(model, [[2, 7, 4]], max_new=6, batch_size=1, constraints=[_ByPrefix(after)])
    assert got == [[6]]  # position 1 may hold any allowed id: the lowest at 1e-3 is EOS
    calls = []  # free answers keep the order configured (one block), not left to right
    hook = model.register_forward_pre_hook(lambda m, args: calls.append(1))
    assert exact[2].generate(model, [[2, 7, 4]], max_new=6, batch_size=1) == [[6, 7, 8]]
    hook.remove()
    assert len(calls) == 2  # steps=2: two calls, where left to right takes one per position
