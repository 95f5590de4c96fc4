"""The mixer contract, checked for every registered mixer (new mixers are covered automatically)."""
from __future__ import annotations

import math
import re

import pytest
import torch

import mixers
from harness.model import LM, LMConfig

D = 64
NAMES = mixers.names()
MODES = [pytest.param(True, id="causal"), pytest.param(False, id="bidir")]


def _build(name: str, causal: bool, seed: int = 0) -> mixers.Mixer:
    torch.manual_seed(seed)
    m = mixers.build(name, D, causal)
    # random (not zero-init) weights everywhere so no path is trivially inert
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return m.eval()


@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_shape_and_finite(name, causal):
    m = _build(name, causal)
    x = torch.randn(3, 17, D)
    y = m(x)
    assert y.shape == (3, 17, D)
    assert torch.isfinite(y).all()
    assert isinstance(m.backend, str) and m.backend


@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_embedding(name, causal):
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=50, d_model=D, n_layers=2, mixer=name, causal=causal, mlp_hidden=32))
    ids = torch.randint(0, 50, (2, 12))
    h = model(ids, torch.ones(2, 12, dtype=torch.bool), right_padded=False)
    model.logits(h).logsumexp(-1).sum().backward()
    g = model.embed.weight.grad
    assert g is not None and torch.isfinite(g).all()
    assert g[ids.unique()].abs().sum() > 0
    mixer_grads = [p.grad for p in model.blocks[0].mixer.parameters() if p.requires_grad]
    assert mixer_grads and all(gr is not None and torch.isfinite(gr).all() for gr in mixer_grads)
    assert sum(gr.abs().sum() for gr in mixer_grads) > 0


@pytest.mark.parametrize("name", NAMES)
def test_causal_mode_ignores_the_future(name):
    m = _build(name, causal=True)
    torch.manual_seed(1)
    x = torch.randn(2, 24, D)
    y = m(x)
    for t in (0, 5, 11, 22):
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :]) * 3
        y2 = m(x2)
        torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=1e-5, atol=1e-5,
                                   msg=f"{name}: output at <= {t} changed when only tokens after {t} changed")
        assert not torch.allclose(y2[:, t + 1 :], y[:, t + 1 :]), "perturbation had no effect at all"


@pytest.mark.parametrize("name", NAMES)
def test_causal_output_on_a_prefix_is_the_full_outputs_prefix(name):
    """Causal means the output at t depends on x[:t+1] only, so also not on the total length T: running
    the prefix alone gives the full run's first t+1 outputs. Changing future values at a fixed T (the test
    above) misses a mixer that scales by T or pads T to a block size; decoding token by token would not."""
    m = _build(name, causal=True)
    torch.manual_seed(1)
    x = torch.randn(2, 24, D)
    y = m(x)
    for t in (0, 6, 11, 15, 22):  # prefix lengths 1, 7, 12, 16 (a power of two), 23
        torch.testing.assert_close(m(x[:, : t + 1]), y[:, : t + 1], rtol=1e-5, atol=1e-5,
                                   msg=f"{name}: the output on x[:, :{t + 1}] differs from the full output's prefix")


@pytest.mark.parametrize("name", NAMES)
def test_causal_lm_ignores_future_tokens(name):
    """The same guard one level up: the whole skeleton, token ids in, hidden states out."""
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=50, d_model=D, n_layers=2, mixer=name, causal=True, mlp_hidden=32)).eval()
    ids = torch.randint(0, 50, (2, 20))
    h = model(ids)
    ids2 = ids.clone()
    ids2[:, 10:] = (ids2[:, 10:] + 7) % 50
    torch.testing.assert_close(model(ids2)[:, :10], h[:, :10], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_mode_sees_the_future(name):
    """Masked diffusion needs context on both sides: a bidirectional mixer must use it."""
    m = _build(name, causal=False)
    x = torch.randn(2, 16, D)
    x2 = x.clone()
    x2[:, 10:] += torch.randn_like(x2[:, 10:])
    assert not torch.allclose(m(x)[:, :5], m(x2)[:, :5], atol=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_padding_never_changes_real_tokens(name, causal, side):
    """A padded batch equals its sequences run one by one, on their real positions. In float64: a pad
    that leaks changes outputs by O(1), while fp32 rounding of a longer scan (pads are identity steps)
    already reached ~1e-4, the tolerance, for bidirectional mamba."""
    m = _build(name, causal).double()
    torch.manual_seed(2)
    lengths = [13, 7, 10]
    T = max(lengths)
    seqs = [torch.randn(n, D, dtype=torch.float64) for n in lengths]
    x = torch.randn(len(lengths), T, D, dtype=torch.float64) * 5  # garbage in the pad slots
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        x[i, sl] = s
        mask[i, sl] = True
    y = m(x, mask)
    # a pad's output is unused, but finite: a NaN there turns into a NaN everywhere in the next layer (0 x NaN)
    assert torch.isfinite(y).all(), f"{name}: a non-finite output at a pad"
    for i, s in enumerate(seqs):
        alone = m(s[None])[0]
        sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        torch.testing.assert_close(y[i, sl], alone, rtol=1e-4, atol=1e-5,
                                   msg=f"{name}: {side} padding changed real outputs (sequence {i})")


@pytest.mark.parametrize("name", NAMES)
def test_state_floats_is_reported(name):
    m = _build(name, causal=True)
    a, b = m.state_floats(128), m.state_floats(256)
    assert isinstance(a, int) and a > 0 and b >= a


@pytest.mark.parametrize("name", NAMES)
def test_a_mixer_class_built_directly_is_the_registrys_default(name):
    """`MixerClass(d_model, causal)` (how a notebook or a new mixer's own test builds one) has the
    parameters `mixers.build` gives with default options: one default, not two (e.g. HybridNorm's
    projection norms on in the class but off in the registry)."""
    built = mixers.build(name, D, True)
    direct = type(built)(D, True)
    assert direct.proj_norm is False and direct.opts == built.opts
    assert [(k, v.shape) for k, v in direct.named_parameters()] == [(k, v.shape) for k, v in built.named_parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_bf16_and_zero_inputs_stay_finite(name):
    m = _build(name, causal=True)
    for x in (torch.zeros(2, 9, D), torch.randn(2, 9, D)):
        y = m(x)
        assert torch.isfinite(y).all()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yb = m(x)
        assert torch.isfinite(yb.float()).all()


def test_unknown_mixer_and_option_are_clear_errors():
    """A misspelt name or option fails at once and says what would have been valid: the registered
    mixers, or the mixer's own options (sorted), so a --mixer-opt typo is fixed without reading code."""
    with pytest.raises(ValueError, match="unknown mixer 'nope'; registered: .*attention"):
        mixers.build("nope", D, True)
    options = ", ".join(sorted(mixers.options_of("attention")))  # every option, e.g. head_dim, rope_base
    assert "head_dim" in options
    with pytest.raises(ValueError, match=f"^mixer 'attention' has no option 'bogus'; options: {re.escape(options)}$"):
        mixers.build("attention", D, True, bogus=1)
    with pytest.raises(ValueError, match="not a valid int"):
        mixers.build("attention", D, True, head_dim="x")


def test_attention_head_dim_must_divide_d_model():
    """Heads are d_model // head_dim slices of d_model: a head_dim that does not divide it would drop
    channels or misshape the heads, so building fails at once and names both numbers."""
    with pytest.raises(ValueError, match=r"^attention: d_model=64 is not a multiple of head_dim=24$"):
        mixers.build("attention", D, True, head_dim=24)
    assert mixers.build("attention", D, True, head_dim=16).n_heads == 4
    # RoPE rotates pairs of a head's channels: an odd head_dim (even one dividing d_model) is refused too
    for hd in (0, 1):
        with pytest.raises(ValueError, match=rf"^attention: head_dim must be a positive even number .*got {hd}$"):
            mixers.build("attention", D, True, head_dim=hd)


def test_attention_state_is_a_kv_cache():
    m = mixers.build("attention", D, True)
    assert m.state_floats(100) == 2 * 100 * D
    assert m.state_floats(200) == 2 * m.state_floats(100)


def test_adding_a_file_registers_a_mixer(tmp_path, monkeypatch):
    """A new module in mixers/ joins the registry with no other edit."""
    import importlib
    import shutil
    import sys

    pkg = tmp_path / "mixers"
    shutil.copytree(mixers.__path__[0], pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "identity_test_mixer.py").write_text(
        "from mixers import Mixer, register\n"
        "@register('identity_test')\n"
        "class Identity(Mixer):\n"
        "    def forward(self, x, pad_mask=None):\n"
        "        return x\n"
    )
    saved = {k: v for k, v in sys.modules.items() if k == "mixers" or k.startswith("mixers.")}
    for k in saved:
        del sys.modules[k]
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        fresh = importlib.import_module("mixers")
        assert "identity_test" in fresh.names() and "attention" in fresh.names()
    finally:
        for k in [k for k in sys.modules if k == "mixers" or k.startswith("mixers.")]:
            del sys.modules[k]
        sys.modules.update(saved)


# ---------------------------------------------------------------- attention and the shared layers, by hand


def _attention_reference(m: mixers.Mixer, x: torch.Tensor) -> torch.Tensor:
    """Multi-head attention written out in float64: q, k, v from qkv (rows [q | k | v], each split into
    heads of head_dim); RoPE on q and k only, rotating channel pairs (2i, 2i+1) by pos·base^(-2i/hd);
    softmax(q kᵀ / sqrt(hd)) with the causal mask when causal; heads concatenated; the output map."""
    B, T, Dm = x.shape
    hd, base = m.opts.head_dim, m.opts.rope_base
    H = Dm // hd
    q, k, v = (x.double() @ m.qkv.weight.double().t()).view(B, T, 3, H, hd).unbind(2)  # (B, T, H, hd)
    theta = torch.arange(T, dtype=torch.float64)[:, None] * base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)

    def rope(t):
        z = torch.complex(t[..., 0::2], t[..., 1::2]) * torch.exp(1j * theta)[None, :, None, :]
        return torch.stack([z.real, z.imag], -1).flatten(-2)

    q, k = rope(q), rope(k)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd)
    if m.causal:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(B, T, Dm)
    return (y @ m.out.weight.double().t()).float()


@pytest.mark.parametrize("causal", MODES)
def test_attention_equals_multi_head_attention_with_rope_on_q_and_k(causal):
    """RoPE rotates q and k (never v), the scale is 1/sqrt(head_dim), heads are contiguous head_dim slices."""
    m = _build("attention", causal, seed=3)
    m.opts.use_flash_attn = False
    torch.manual_seed(1)
    x = torch.randn(2, 11, D)
    torch.testing.assert_close(m(x), _attention_reference(m, x), rtol=1e-4, atol=1e-5)


def test_attention_values_carry_no_position():
    """RoPE rotates q and k only: the values carry no position, so in bidirectional mode a sequence of
    identical tokens gives identical outputs at every position, whatever the attention weights (RoPE on
    v breaks that; where q and k are rotated is held by the reference test above)."""
    m = _build("attention", False, seed=2)
    x = torch.randn(1, 1, D).expand(1, 9, D)
    y = m(x)
    torch.testing.assert_close(y, y[:, :1].expand_as(y), rtol=1e-5, atol=1e-6)


def test_rms_norm_is_x_over_root_mean_square_plus_1e_6_times_weight():
    """The default RMSNorm: y = x / sqrt(mean(x²) + 1e-6) ⊙ weight, weight initialised to ones. Inputs of
    size ~1e-3 (mean square ~1e-6), where the eps matters as much as the signal."""
    from mixers._layers import RMSNorm

    norm = RMSNorm(16)
    torch.testing.assert_close(norm.weight.detach(), torch.ones(16))
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64) * 1e-3
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16) + 0.5)
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()
    torch.testing.assert_close(norm(x), want, rtol=1e-6, atol=1e-9)
