from __future__ import annotations

import pytest
import torch

import mixers
from harness.model import LM, PARAM_TOLERANCE, count_params, matched_config
from core.presets import PRESETS


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("name", mixers.names())
def test_every_mixer_matches_the_preset_parameter_target(preset, causal, name):
    p = PRESETS[preset]
    cfg = matched_config(p, name, causal)
    with torch.device("meta"):
        n = count_params(LM(cfg))
    assert abs(n - p.target_params) / p.target_params <= PARAM_TOLERANCE, (name, preset, n)


def test_param_matching_adapts_to_the_mixer_not_the_depth():
    p = PRESETS["small"]
    cfg = matched_config(p, "attention", True, mixer_opts={"head_dim": 64})
    assert cfg.n_layers == p.n_layers and cfg.d_model == p.d_model


def test_too_small_a_target_is_a_clear_error():
    import dataclasses

    p = dataclasses.replace(PRESETS["tiny"], target_params=1000)
    with pytest.raises(ValueError, match="more than the target"):
        matched_config(p, "attention", True)


def test_head_is_tied_to_the_embedding():
    cfg = matched_config(PRESETS["tiny"], "attention", True, vocab_size=100)
    m = LM(cfg)
    assert m.head_weight.data_ptr() == m.embed.weight.data_ptr()
    h = m(torch.randint(0, 100, (1, 5)))
    assert m.logits(h).shape == (1, 5, 100)


@pytest.mark.parametrize("norm", ["pre", "post", "hybrid"])
def test_norm_placements_build_and_run(norm):
    cfg = matched_config(PRESETS["tiny"], "attention", True, vocab_size=100, norm=norm)
    m = LM(cfg)
    y = m(torch.randint(0, 100, (2, 7)))
    assert torch.isfinite(y).all()
    names = {n for n, _ in m.named_parameters()}
    has_qk_norm = any("q_norm" in n for n in names)
    assert has_qk_norm == (norm == "hybrid")
    assert any("norm1" in n for n in names) == (norm != "hybrid")
