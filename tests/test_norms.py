"""Norm placement (--norm pre|post|hybrid): the block equations, the parameters each placement adds or
drops, HybridNorm's normalised mixer projections for every mixer, and a few training steps each."""
from __future__ import annotations

import math

import pytest
import torch

import mixers
from harness import objectives
from harness.budget import Budget
from harness.model import LM, NORMS, PARAM_TOLERANCE, Block, LMConfig, count_params, matched_config
from core.presets import PRESETS
from harness.train import TrainConfig, train
from mixers._layers import RMSNorm
from test_budget_train import SPECIAL, _toy_data

D = 32
TRAINED = ["attention", "gated_context"]


def _cfg(mixer: str, norm: str, **kw) -> LMConfig:
    return LMConfig(**{"vocab_size": 20, "d_model": D, "n_layers": 2, "mixer": mixer, "causal": True,
                       "mlp_hidden": 64, "norm": norm, **kw})


def _randomise(module: torch.nn.Module) -> None:
    """Norm weights away from 1 so a norm applied in the wrong place cannot hide."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.5, 0.3) if p.dim() == 1 else p.normal_(0, 0.3)


@pytest.mark.parametrize("norm", NORMS)
def test_block_computes_its_placement(norm):
    torch.manual_seed(0)
    blk = Block(_cfg("attention", norm)).eval()
    _randomise(blk)
    x = torch.randn(2, 9, D) * 4
    mix = lambda z: blk.mixer(z, None)  # noqa: E731
    if norm == "pre":
        y = x + mix(blk.norm1(x))
        want = y + blk.mlp(blk.norm2(y))
    elif norm == "post":
        y = blk.norm1(x + mix(x))
        want = blk.norm2(y + blk.mlp(y))
    else:  # HybridNorm: no norm before the mixer, FFN residual taken after the norm
        h = blk.norm2(x + mix(x))
        want = h + blk.mlp(h)
    torch.testing.assert_close(blk(x, None), want)
    assert blk.mixer.proj_norm == (norm == "hybrid")


def test_hybrid_mlp_reads_a_normalised_stream():
    """HybridNorm's FFN input is norm(x + mixer(x)), whatever the scale of the stream."""
    torch.manual_seed(0)
    blk = Block(_cfg("attention", "hybrid"))
    seen = {}
    blk.mlp.register_forward_hook(lambda mod, inp, out: seen.setdefault("in", inp[0]))
    blk(torch.randn(2, 5, D) * 100, None)
    rms = seen["in"].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mixer", TRAINED)
def test_parameter_list_per_placement(mixer):
    names = {norm: {n for n, _ in LM(_cfg(mixer, norm)).named_parameters()} for norm in NORMS}
    proj = {"attention": ("q_norm", "k_norm", "v_norm"), "gated_context": ("u_norm", "f_norm", "o_norm")}[mixer]
    for i in range(2):
        for norm in NORMS:
            assert (f"blocks.{i}.norm1.weight" in names[norm]) == (norm != "hybrid")
            assert f"blocks.{i}.norm2.weight" in names[norm]
            for p in proj:
                assert (f"blocks.{i}.mixer.{p}.weight" in names[norm]) == (norm == "hybrid")
    assert names["pre"] == names["post"]  # the same norms, in other places
    n = {norm: count_params(LM(_cfg(mixer, norm))) for norm in NORMS}
    # attention normalises per head (weights of head_dim), gated_context over its context size (d_model)
    width = {"attention": mixers.options_of("attention")["head_dim"], "gated_context": D}[mixer]
    assert n["hybrid"] - n["pre"] == 2 * (3 * width - D)  # per layer: + 3 projection norms, - norm1


@pytest.mark.parametrize("name", mixers.names())
def test_every_mixer_normalises_its_projections_under_hybrid_norm(name):
    """HybridNorm drops the norm before the mixer: a mixer that ignores proj_norm would then see
    an unnormalised stream. Every mixer must add at least one norm when asked."""
    def n_norms(m):
        return sum(isinstance(s, (RMSNorm, torch.nn.LayerNorm)) for s in m.modules())

    assert n_norms(mixers.build(name, 64, True, proj_norm=True)) > n_norms(mixers.build(name, 64, True))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", mixers.names())
def test_every_mixer_and_placement_is_parameter_matched(name, norm):
    p = PRESETS["tiny"]
    cfg = matched_config(p, name, True, norm=norm)
    with torch.device("meta"):
        n = count_params(LM(cfg))
    assert abs(n - p.target_params) / p.target_params <= PARAM_TOLERANCE


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("mixer", TRAINED)
def test_each_placement_trains_without_nan(mixer, norm):
    torch.manual_seed(0)
    model = LM(_cfg(mixer, norm))
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_size=8, lr=3e-3, progress=False, eval_points=3)
    res = train(model, obj, _toy_data(), _toy_data(16, seed=1), Budget.parse("tokens=1500"), cfg,
                torch.device("cpu"))
    assert res.steps >= 10
    losses = [p["train_loss"] for p in res.loss_curve] + [p["dev_loss"] for p in res.loss_curve]
    assert all(math.isfinite(v) for v in losses), res.loss_curve
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert res.loss_curve[-1]["dev_loss"] < math.log(20)  # learned something: below a uniform guess
