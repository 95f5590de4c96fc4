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


def test_an_unknown_norm_placement_is_a_clear_error():
    """A misspelt --norm fails before any layer is built, naming the placements there are."""
    from harness.model import LMConfig

    cfg = LMConfig(vocab_size=50, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32, norm="pree")
    with pytest.raises(ValueError, match=r"^unknown norm placement 'pree'; choose from pre, post, hybrid$"):
        LM(cfg)


def test_prefill_refuses_a_bidirectional_model():
    """Decoding left to right needs a causal model; a bidirectional one (masked diffusion) would see
    the future of the prompt, so `LM.prefill` says so instead of returning states."""
    from harness.model import LMConfig

    model = LM(LMConfig(vocab_size=50, d_model=32, n_layers=1, mixer="attention", causal=False, mlp_hidden=32))
    with pytest.raises(RuntimeError, match="LM.prefill: decoding needs a causal model"):
        model.prefill(torch.randint(0, 50, (2, 4)))


def test_the_model_on_meta_imports_the_mixers_outside_the_meta_device(monkeypatch):
    """The mixer registry imports its modules on first use. When that first use was inside
    `torch.device("meta")` (counting parameters for matching), their import-time code ran on meta, and
    under torch 2.6 `torch._dynamo`'s import failed there: the first cell of every fresh process (a
    spawned rank, a warm-up worker) failed. The registry's load must see the ordinary device."""
    from harness.model import LMConfig, on_meta

    seen = []
    load = type(mixers.REGISTRY)._load

    def recording_load(self):
        if not self._loaded:  # the call that imports
            seen.append(torch.get_default_device().type)
        load(self)

    monkeypatch.setattr(type(mixers.REGISTRY), "_load", recording_load)
    monkeypatch.setattr(mixers.REGISTRY, "_loaded", False)  # as in a fresh process
    model = on_meta(LMConfig(vocab_size=50, d_model=64, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))
    assert seen and "meta" not in seen, seen
    assert {p.device.type for p in model.parameters()} == {"meta"}


@pytest.mark.parametrize("name", ["attention", "wave_interference", "mamba"])
def test_the_matched_mlp_width_is_the_multiple_of_8_nearest_the_target(name):
    """Widths 8 apart bracket the target: the solved one must be the closer of its two neighbours, not
    one step off (a ±5% tolerance alone lets a width 8 too narrow through)."""
    import dataclasses

    from harness.model import _count_on_meta

    p = PRESETS["small"]
    cfg = matched_config(p, name, True)
    assert cfg.mlp_hidden % 8 == 0
    gap = lambda h: abs(_count_on_meta(dataclasses.replace(cfg, mlp_hidden=h)) - p.target_params)  # noqa: E731
    assert gap(cfg.mlp_hidden) <= min(gap(cfg.mlp_hidden - 8), gap(cfg.mlp_hidden + 8))


def test_the_narrowest_mlp_is_8_wide_and_a_smaller_target_is_refused():
    import dataclasses

    from harness.model import LMConfig, _count_on_meta

    p = PRESETS["tiny"]
    base = LMConfig(p.vocab_size, p.d_model, p.n_layers, "attention", True, mlp_hidden=8)
    n8, n16 = _count_on_meta(base), _count_on_meta(dataclasses.replace(base, mlp_hidden=16))
    assert matched_config(dataclasses.replace(p, target_params=n8), "attention", True).mlp_hidden == 8
    with pytest.raises(ValueError, match="more than the target"):  # the nearest width would be 0
        matched_config(dataclasses.replace(p, target_params=n8 - (n16 - n8)), "attention", True)


def test_a_causal_model_called_with_a_mask_reads_the_batch_as_right_padded(monkeypatch):
    """`model(ids, pad_mask)` on a causal model: no real token sees a pad after it, so the mixers get no
    mask (their fast path, e.g. SDPA is_causal); `right_padded=False` (a left-padded prompt) keeps it.
    A bidirectional model always keeps it."""
    from harness.model import LMConfig

    def masks_seen(causal, **kw):
        model = LM(LMConfig(vocab_size=50, d_model=32, n_layers=2, mixer="attention", causal=causal, mlp_hidden=32))
        seen = []
        for blk in model.blocks:
            forward = blk.mixer.forward
            monkeypatch.setattr(blk.mixer, "forward", lambda x, m, f=forward: seen.append(m) or f(x, m))
        pad = torch.tensor([[True, True, False]])
        model(torch.randint(0, 50, (1, 3)), pad, **kw)
        return [m is None for m in seen]

    assert masks_seen(True) == [True, True]
    assert masks_seen(True, right_padded=False) == [False, False]
    assert masks_seen(False) == [False, False]


def test_initialisation_scales_the_residual_outputs_by_depth():
    """GPT-2's init: every linear and the embedding N(0, 0.02), biases zero; the projections that write
    into the residual stream (MLP down, mixer out) N(0, 0.02 / sqrt(2 n_layers)), so 8 layers give 0.005."""
    import torch.nn as nn

    from harness.model import LMConfig

    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=512, d_model=128, n_layers=8, mixer="attention", causal=True, mlp_hidden=512))
    stds = {n: p.std().item() for n, p in model.named_parameters() if p.dim() == 2}
    scaled = [n for n in stds if n.endswith(("out.weight", "down.weight", "out_proj.weight"))]
    assert len(scaled) == 16  # one mixer output and one MLP down per layer
    for n, s in stds.items():
        assert s == pytest.approx(0.005 if n in scaled else 0.02, rel=0.05), n

    lin = nn.Linear(64, 64, bias=True)  # a mixer may bring a biased projection
    LM._init(lin)
    assert torch.all(lin.bias == 0) and lin.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_the_mlp_has_two_bias_free_projections():
    from harness.model import MLP

    assert [n for n, _ in MLP(16, 64).named_parameters()] == ["up.weight", "down.weight"]
