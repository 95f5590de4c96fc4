"""Wave mixers (mixers/wave.py, mixers/wavelet.py) against the papers' formulas and hand-computed cases.

The registry-wide contract (shape, gradients, causality, padding, bf16) is in tests/test_mixers.py;
here: the representation itself, equality to a literal (complex, trigonometric) reference of the
paper, numerical safety at the edge cases, the wavelet filters against hand values and PyWavelets,
state sizes and option errors.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import pywt
import torch

import mixers
from mixers.wave import energy_sums, wave_representation
from mixers.wavelet import causal_filter, symmetric_filter, wavelet_filters

D = 16
S2 = math.sqrt(2.0)
CAUSAL = [pytest.param(True, id="causal"), pytest.param(False, id="bidir")]


def _random_weights(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return m.eval()


def _prefix_G(w: torch.Tensor, causal: bool) -> torch.Tensor:
    """G by its definition, one window at a time: sqrt(Σ_{j in window(t)} w_j²), (B, T, D)."""
    T = w.shape[1]
    if not causal:
        return w.pow(2).sum(1, keepdim=True).sqrt().expand_as(w)
    return torch.stack([w[:, : t + 1].pow(2).sum(1).sqrt() for t in range(T)], 1)


# ---------------------------------------------------------------- the representation


@pytest.mark.parametrize("causal", CAUSAL)
def test_representation_real_part_is_w_and_magnitude_is_G(causal):
    torch.manual_seed(0)
    w = torch.randn(3, 11, D, dtype=torch.float64).float()
    (re, im), g2 = wave_representation(w, None, causal, eps=1e-12)
    G = _prefix_G(w, causal)
    torch.testing.assert_close(re, w)
    torch.testing.assert_close((re**2 + im**2).sqrt(), G, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g2.sqrt(), G, rtol=1e-5, atol=1e-5)
    # the phase is the paper's alpha = arctan2(sqrt(1 - (w/G)^2), w/G), in [0, pi]
    r = w / G
    alpha = torch.atan2((1 - r**2).clamp_min(0).sqrt(), r)
    torch.testing.assert_close(torch.atan2(im, re), alpha, rtol=1e-4, atol=1e-4)


def test_causal_G_is_the_prefix_and_ignores_pads():
    torch.manual_seed(0)
    w = torch.randn(1, 6, D)
    mask = torch.tensor([[False, False, True, True, True, True]])
    g2, others = energy_sums(w, mask, causal=True)
    wm = w * mask[..., None]
    torch.testing.assert_close(g2, _prefix_G(wm, True) ** 2)
    torch.testing.assert_close(others, g2 - wm**2, rtol=1e-5, atol=1e-5)
    g2b, othersb = energy_sums(w, mask, causal=False)
    torch.testing.assert_close(g2b, (wm**2).sum(1, keepdim=True).expand_as(w))
    torch.testing.assert_close(othersb, g2b - wm**2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal", CAUSAL)
def test_representation_is_finite_at_zero_prefix_and_at_abs_w_equal_G(causal, dtype):
    zeros = torch.zeros(2, 5, D, dtype=dtype)
    one_token = torch.zeros(2, 5, D, dtype=dtype)
    one_token[:, 0] = torch.randn(2, D).to(dtype)  # |w_0| = G at t = 0 (and for every t if bidirectional)
    for w in (zeros, one_token):
        w = w.clone().requires_grad_(True)
        (re, im), _ = wave_representation(w, None, causal)
        assert torch.isfinite(re).all() and torch.isfinite(im).all()
        (re.sum() + im.sum() + (re * im).sum()).backward()
        assert torch.isfinite(w.grad.float()).all()


# ---------------------------------------------------------------- the mixers against a literal reference


def _reference(m: mixers.Mixer, x: torch.Tensor, op: str, readout: str = "cartesian") -> torch.Tensor:
    """The paper written out with complex numbers and trigonometry, then this module's choices
    (scale, RoPE as phase, cartesian readout). No padding."""
    B, T, _ = x.shape
    opts = m.opts
    w1, w2 = (x.double() @ m.core.in_proj.weight.double().t()).chunk(2, -1)

    def wave(w):
        G = _prefix_G(w, m.causal)
        r = w / G
        alpha = torch.atan2((1 - r**2).clamp_min(0).sqrt(), r)  # paper's phase
        z = G * torch.exp(1j * alpha)  # paper's complex token
        if opts.scale == "unit":
            z = z / (G**2).mean(-1, keepdim=True).sqrt()
        elif opts.scale == "rms":  # divide by the window length
            n = torch.arange(1, T + 1, dtype=torch.float64)[:, None] if m.causal else torch.tensor(float(T))
            z = z / n.sqrt()
        if opts.rope_phase:
            theta = torch.arange(T, dtype=torch.float64)[:, None] * opts.rope_base ** (-torch.arange(D) / D)
            z = z * torch.exp(1j * theta)  # rotation added to the phase
        return z

    z = wave(w1) + wave(w2) if op == "interference" else wave(w1) * wave(w2)
    feats = {"cartesian": torch.cat([z.real, z.imag], -1), "magnitude": z.abs(), "real": z.real}[readout]
    return (feats @ m.core.out.weight.double().t()).float()


@pytest.mark.parametrize("scale", ["rms", "unit", "sum"])
@pytest.mark.parametrize("rope", [True, False], ids=["rope", "norope"])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("name,op", [("wave_interference", "interference"), ("wave_modulation", "modulation")])
def test_mixer_equals_the_papers_formulas(name, op, causal, rope, scale):
    m = _random_weights(mixers.build(name, D, causal, rope_phase=rope, scale=scale, eps=1e-12))
    torch.manual_seed(1)
    x = torch.randn(2, 9, D)
    torch.testing.assert_close(m(x), _reference(m, x, op), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("name,op,readout", [("wave_interference", "interference", "magnitude"),
                                             ("wave_modulation", "modulation", "magnitude"),
                                             ("wave_modulation", "modulation", "real")])
def test_non_default_readouts_equal_the_complex_reference(name, op, readout, causal):
    """readout="magnitude" is |Z| (the modulus of the combined complex token), "real" is Re Z: checked
    against numpy-style complex arithmetic, not the module's own READOUT table."""
    m = _random_weights(mixers.build(name, D, causal, readout=readout, eps=1e-12))
    torch.manual_seed(5)
    x = torch.randn(2, 9, D)
    torch.testing.assert_close(m(x), _reference(m, x, op, readout), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", CAUSAL)
def test_interference_and_modulation_differ_from_each_other_and_from_identity(causal):
    inter = _random_weights(mixers.build("wave_interference", D, causal), seed=3)
    mod = _random_weights(mixers.build("wave_modulation", D, causal), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(inter.parameters(), mod.parameters()))  # same weights
    torch.manual_seed(0)
    x = torch.randn(2, 10, D)
    yi, ym = inter(x), mod(x)
    assert (yi - ym).abs().mean() > 0.1 * yi.abs().mean()
    for y in (yi, ym):
        assert (y - x).abs().mean() > 0.1 * x.abs().mean()


@pytest.mark.parametrize("name", ["wave_interference", "wave_modulation"])
def test_rope_phase_is_the_only_position_signal_in_bidirectional_mode(name):
    """Without RoPE the global G makes the bidirectional mixer permutation-equivariant; the phase
    rotation θ_t is what tells positions apart, and it is on by default (the mixer as the grid builds it)."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, D)
    perm = torch.randperm(8)
    plain = _random_weights(mixers.build(name, D, False, rope_phase=False))
    torch.testing.assert_close(plain(x[:, perm]), plain(x)[:, perm], rtol=1e-5, atol=1e-5)
    roped = _random_weights(mixers.build(name, D, False))  # the default: rope_phase=True
    assert not torch.allclose(roped(x[:, perm]), roped(x)[:, perm], atol=1e-4)


@pytest.mark.parametrize("opts", [{"scale": "unit"}, {"scale": "sum"}, {"readout": "magnitude"},
                                  {"readout": "real"}, {"wavelet": "db2", "levels": 3}],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("causal", CAUSAL)
def test_non_default_options_keep_causality_and_padding(opts, causal):
    """The registry tests see the defaults only; the other options must keep the same contract."""
    name = "wave_wavelet" if "wavelet" in opts else "wave_modulation"
    m = _random_weights(mixers.build(name, D, causal, **opts))
    torch.manual_seed(2)
    lengths, T = [9, 5], 12
    seqs = [torch.randn(n, D) for n in lengths]
    for side in ("left", "right"):
        x = torch.randn(2, T, D) * 5
        mask = torch.zeros(2, T, dtype=torch.bool)
        for i, s in enumerate(seqs):
            sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
            x[i, sl], mask[i, sl] = s, True
        y = m(x, mask)
        for i, s in enumerate(seqs):
            sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
            torch.testing.assert_close(y[i, sl], m(s[None])[0], rtol=1e-4, atol=1e-5)
    if causal:
        x = torch.randn(1, T, D)
        x2 = x.clone()
        x2[:, 6:] += 3 * torch.randn_like(x2[:, 6:])
        torch.testing.assert_close(m(x2)[:, :6], m(x)[:, :6], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- wavelet stage


def test_haar_level_1_is_the_causal_average_and_difference():
    lo, hi = wavelet_filters("haar")
    x = torch.tensor([1.0, 2.0, 4.0, 8.0])[None, :, None]  # (1, 4, 1)
    avg = torch.tensor([1.0, 3.0, 6.0, 12.0]) / S2  # (x_t + x_{t-1}) / sqrt 2, x_{-1} = 0
    diff = torch.tensor([-1.0, -1.0, -2.0, -4.0]) / S2  # (x_{t-1} - x_t) / sqrt 2 (pywt's sign)
    torch.testing.assert_close(causal_filter(x, lo, 1)[0, :, 0], avg)
    torch.testing.assert_close(causal_filter(x, hi, 1)[0, :, 0], diff)
    # dilation 2 looks back two steps
    torch.testing.assert_close(causal_filter(x, lo, 2)[0, :, 0], torch.tensor([1.0, 2.0, 5.0, 10.0]) / S2)
    # bidirectional: the mean of the causal filter and its mirror, [1, 2, 1] / (2 sqrt 2) around t
    sym = torch.tensor([1 * 2 + 2, 1 + 2 * 2 + 4, 2 + 4 * 2 + 8, 4 + 8 * 2]) / (2 * S2)
    torch.testing.assert_close(symmetric_filter(x, lo, 1)[0, :, 0], sym)


def test_wavelet_mixer_bands_are_the_hand_computed_cascade():
    m = mixers.build("wave_wavelet", D, True, levels=2)
    h = torch.zeros(1, 4, D)
    h[0, :, 0] = torch.tensor([1.0, 2.0, 4.0, 8.0])
    ident, d1, d2, a2 = (b[0, :, 0] for b in m.bands(h))
    a1 = torch.tensor([1.0, 3.0, 6.0, 12.0]) / S2
    torch.testing.assert_close(ident, h[0, :, 0])
    torch.testing.assert_close(d1, torch.tensor([-1.0, -1.0, -2.0, -4.0]) / S2)
    a1_lag2 = torch.tensor([0.0, 0.0, 1.0, 3.0]) / S2  # a1 two steps back (dilation 2)
    torch.testing.assert_close(a2, (a1 + a1_lag2) / S2)
    torch.testing.assert_close(d2, (a1_lag2 - a1) / S2)


def _undecimated_cascade(h: np.ndarray, name: str, levels: int, causal: bool) -> list[np.ndarray]:
    """The à trous cascade by its definition, one position at a time (h: (T,)): level k filters a_k at
    dilation 2^k with pywt's dec_lo / dec_hi, y_t = Σ_i f[i] a_{t - i·2^k} (zeros outside); the
    bidirectional level is the mean of that and its mirror Σ_i f[i] a_{t + i·2^k}."""
    w = pywt.Wavelet(name)
    T = len(h)

    def filt(a, f, dil):
        at = lambda j: a[j] if 0 <= j < T else 0.0  # noqa: E731
        back = np.array([sum(f[i] * at(t - i * dil) for i in range(len(f))) for t in range(T)])
        if causal:
            return back
        fwd = np.array([sum(f[i] * at(t + i * dil) for i in range(len(f))) for t in range(T)])
        return 0.5 * (back + fwd)

    a, out = h, [h]
    for k in range(levels):
        d, a = filt(a, w.dec_hi, 2**k), filt(a, w.dec_lo, 2**k)
        out.append(d)
    return out + [a]


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("name,levels", [("haar", 1), ("haar", 3), ("db2", 3), ("haar", 4)])
def test_wavelet_mixer_every_level_uses_dilation_two_to_the_k(name, levels, causal):
    """Levels >= 3 (dilation 4, 8): the hand-computed level-2 test cannot tell 2^k from k + 1. The mix
    is Σ_b gate_b ⊙ band_b over [h, d_1, ..., d_L, a_L], checked with a random gate."""
    m = mixers.build("wave_wavelet", D, causal, wavelet=name, levels=levels)
    rng = np.random.default_rng(0)
    T = 19
    h = torch.zeros(1, T, D)
    h[0, :, 0] = torch.tensor(rng.normal(size=T), dtype=torch.float32)
    want = _undecimated_cascade(h[0, :, 0].double().numpy(), name, levels, causal)
    got = m.bands(h)
    assert len(got) == levels + 2
    for k, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g[0, :, 0].double().numpy(), w, rtol=1e-5, atol=1e-5, err_msg=f"band {k}")
    with torch.no_grad():
        m.gate.copy_(torch.randn(levels + 2, D))
    torch.manual_seed(0)
    x = torch.randn(1, T, D)
    hx = m.core(x)
    mix = sum(m.gate[b] * band for b, band in enumerate(m.bands(hx)))
    torch.testing.assert_close(m(x), mix, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["haar", "db2", "sym3"])
def test_causal_filters_match_pywavelets_dwt(name):
    """pywt.dwt (zero mode) is the causal filter output taken at every other position."""
    x = np.array([1.0, 2, 4, 8, 3, -1, 0, 5, 2, 7, -2, 1])
    cA, cD = pywt.dwt(x, name, mode="zero")
    lo, hi = wavelet_filters(name)
    t = torch.tensor(x, dtype=torch.float32)[None, :, None]
    la, hd = causal_filter(t, lo, 1)[0, 1::2, 0], causal_filter(t, hi, 1)[0, 1::2, 0]
    n = len(la)
    np.testing.assert_allclose(la.numpy(), cA[:n], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hd.numpy(), cD[:n], rtol=1e-5, atol=1e-5)


def test_wavelet_mixer_starts_as_the_wave_mixer_and_reports_added_params():
    torch.manual_seed(0)
    m = mixers.build("wave_wavelet", D, True, levels=3).eval()
    x = torch.randn(2, 7, D)
    torch.testing.assert_close(m(x), m.core(x))  # gate init: identity 1, bands 0
    assert m.added_params == (3 + 2) * D
    n_core = sum(p.numel() for p in m.core.parameters())
    assert sum(p.numel() for p in m.parameters()) == n_core + m.added_params
    assert n_core == 4 * D * D  # in_proj D->2D and out 2D->D (cartesian readout), as attention's 4 D^2
    # the filters are the wavelet's (from its name), not weights: a checkpoint holds the gate and the core only
    assert set(m.state_dict()) == {"gate"} | {f"core.{k}" for k in m.core.state_dict()}


def test_the_wavelet_gate_is_not_weight_decayed_and_the_projections_are():
    """The gate is a (levels + 2, D) gain: a matrix by shape only. Decayed, its identity row (1 at init)
    would shrink toward 0 every step whatever the loss wants."""
    from harness.model import LM, LMConfig
    from harness.train import TrainConfig, _optimizer

    model = LM(LMConfig(vocab_size=50, d_model=D, n_layers=2, mixer="wave_wavelet", causal=True, mlp_hidden=D))
    opt = _optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for blk in model.blocks:
        assert id(blk.mixer.gate) not in decayed
        assert all(id(p) in decayed for p in blk.mixer.core.parameters() if p.dim() >= 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("name, opts", [("wave_interference", {}), ("wave_modulation", {}), ("wave_wavelet", {}),
                                        ("wave_interference", {"readout": "magnitude"}),
                                        ("wave_modulation", {"readout": "magnitude"}),
                                        ("wave_interference", {"readout": "magnitude", "scale": "unit"}),
                                        ("wave_modulation", {"scale": "unit"})],
                         ids=["interference", "modulation", "wavelet", "interference-magnitude",
                              "modulation-magnitude", "interference-magnitude-unit", "modulation-unit"])
def test_all_zero_inputs_stay_finite_with_gradients(name, opts, causal, dtype):
    """An all-zero input (a zero-initialised layer, a padded prefix) has zero energy: every square root
    and reciprocal root (|Z| in the magnitude readout, the unit scale's 1/sqrt(mean G²)) is kept finite,
    in value and gradient, by its `eps`; and so is decoding, one step at a time from an empty state."""
    m = _random_weights(mixers.build(name, D, causal, **opts)).to(dtype)
    x = torch.zeros(2, 6, D, dtype=dtype, requires_grad=True)
    y = m(x)
    assert y.dtype == dtype and torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert torch.isfinite(x.grad.float()).all()
    assert all(torch.isfinite(p.grad.float()).all() for p in m.parameters() if p.grad is not None)
    if causal:
        state = None
        for _ in range(3):
            y_t, state = m.step(torch.zeros(2, D, dtype=dtype), state)
            assert torch.isfinite(y_t.float()).all()


# ---------------------------------------------------------------- state sizes and options


def test_state_floats_by_hand():
    D64 = 64
    inter = mixers.build("wave_interference", D64, True)
    # running sums of squares of both waves (2 * 64) + a token counter (RoPE phase, rms scale)
    assert inter.state_floats(128) == inter.state_floats(4096) == 2 * 64 + 1
    # no counter when neither the RoPE phase nor the rms scale needs the position
    assert mixers.build("wave_modulation", D64, True, rope_phase=False, scale="unit").state_floats(100) == 128
    assert mixers.build("wave_modulation", D64, True, rope_phase=False).state_floats(100) == 129
    wl = mixers.build("wave_wavelet", D64, True)  # haar (K=2), levels 2: (1*1 + 1*2) history per channel
    assert wl.state_floats(128) == wl.state_floats(256) == 129 + 3 * 64
    wl3 = mixers.build("wave_wavelet", D64, True, wavelet="db2", levels=3)  # K=4: 3*(1+2+4)
    assert wl3.state_floats(50) == wl3.state_floats(5000) == 129 + 21 * 64


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="no mixing across tokens"):
        mixers.build("wave_interference", D, True, readout="real")
    with pytest.raises(ValueError, match="unknown wavelet 'nope'"):
        mixers.build("wave_wavelet", D, True, wavelet="nope")
    with pytest.raises(ValueError, match="unknown scale"):
        mixers.build("wave_modulation", D, True, scale="max")
    with pytest.raises(ValueError, match="unknown readout 'polar'; choose from cartesian, real, magnitude"):
        mixers.build("wave_modulation", D, True, readout="polar")
    with pytest.raises(ValueError, match="unknown wave op"):
        mixers.build("wave_wavelet", D, True, op="sum")
    with pytest.raises(ValueError, match="levels must be >= 1"):
        mixers.build("wave_wavelet", D, True, levels=0)


@pytest.mark.parametrize("name", ["wave_interference", "wave_modulation", "wave_wavelet"])
def test_hybrid_norm_normalises_both_wave_projections(name):
    from harness.model import LM, matched_config
    from core.presets import PRESETS

    cfg = matched_config(PRESETS["tiny"], name, True, vocab_size=100, norm="hybrid")
    model = LM(cfg)
    names = {n for n, _ in model.named_parameters()}
    assert {"blocks.0.mixer.core.norm1.weight", "blocks.0.mixer.core.norm2.weight"} <= names
    assert torch.isfinite(model(torch.randint(0, 100, (2, 7)))).all()
    plain = mixers.build(name, D, True)
    assert not any("norm" in n for n, _ in plain.named_parameters())
