"""gated_context: the parallel scan against a step-by-step loop (values and gradients), extreme gates,
token-by-token decoding against the full forward, and HybridNorm's normalised projections.
The registry-wide contract (causality, padding, bf16, ...) is in tests/test_mixers.py."""
from __future__ import annotations

import pytest
import torch

import mixers
from mixers.gated_context import loop_scan, pairwise_scan

D = 32
MODES = [pytest.param(True, id="causal"), pytest.param(False, id="bidir")]


def _build(causal: bool, seed: int = 0, **opts) -> mixers.Mixer:
    torch.manual_seed(seed)
    m = mixers.build("gated_context", D, causal, **opts)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return m.eval()


def test_scan_on_a_hand_computed_case():
    a = torch.tensor([0.5, 0.5, 0.0, 1.0, 0.25]).view(1, 5, 1)
    b = torch.tensor([1.0, 1.0, 2.0, 3.0, 4.0]).view(1, 5, 1)
    # c0 = 1; c1 = .5 + 1 = 1.5; c2 = 0 + 2 = 2 (a=0 forgets); c3 = 2 + 3 = 5 (a=1 keeps); c4 = 1.25 + 4
    expected = torch.tensor([1.0, 1.5, 2.0, 5.0, 5.25]).view(1, 5, 1)
    torch.testing.assert_close(pairwise_scan(a, b), expected)
    torch.testing.assert_close(loop_scan(a, b), expected)
    for scan in (pairwise_scan, loop_scan):  # an empty sequence (an empty prompt's prefill): no contexts
        assert scan(a[:, :0], b[:, :0]).shape == (1, 0, 1)


@pytest.mark.parametrize("T", [1, 2, 3, 7, 16, 33, 100])
@pytest.mark.parametrize("gates", ["random", "zero", "one", "mixed_extremes"])
def test_pairwise_scan_equals_the_loop_values_and_gradients(T, gates):
    torch.manual_seed(T)
    a = {"random": torch.rand(2, T, 5), "zero": torch.zeros(2, T, 5), "one": torch.ones(2, T, 5),
         "mixed_extremes": torch.randint(0, 2, (2, T, 5)).float()}[gates].requires_grad_()
    b = torch.randn(2, T, 5, requires_grad=True)
    fast, ref = pairwise_scan(a, b), loop_scan(a, b)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    if gates == "one":  # nothing forgotten: a running sum
        torch.testing.assert_close(fast, b.cumsum(1), rtol=1e-5, atol=1e-5)
    if gates == "zero":  # everything forgotten: the input itself
        torch.testing.assert_close(fast, b)
    w = torch.randn_like(fast)
    # c_{-1} = 0, so a_0 never matters: at T=1 the fast path does not touch `a` at all (grad None)
    ga_fast, gb_fast = torch.autograd.grad((fast * w).sum(), (a, b), allow_unused=True, materialize_grads=True)
    ga_ref, gb_ref = torch.autograd.grad((ref * w).sum(), (a, b))
    torch.testing.assert_close(ga_fast, ga_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb_fast, gb_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", MODES)
def test_mixer_parallel_path_equals_step_by_step_loop(causal):
    """Same weights, scan=pairwise vs scan=loop: outputs and every parameter gradient, with padding."""
    fast, ref = _build(causal), _build(causal, scan="loop")
    assert_same_mixer(fast, ref)
    assert fast.backend == "pairwise_scan" and ref.backend == "loop_scan"


def assert_same_mixer(fast: mixers.Mixer, ref: mixers.Mixer) -> None:
    """`ref` given `fast`'s weights: the same outputs and every parameter's gradient on a batch with left
    and right padding (two scans of one mixer must be one function)."""
    ref.load_state_dict(fast.state_dict())
    torch.manual_seed(3)
    x = torch.randn(3, 41, D)
    mask = torch.ones(3, 41, dtype=torch.bool)
    mask[1, :9] = False  # left padding
    mask[2, 30:] = False  # right padding
    y_fast, y_ref = fast(x, mask), ref(x, mask)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(y_fast)
    (y_fast * w).sum().backward()
    (y_ref * w).sum().backward()
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("T", [1, 5, 24])
def test_decoding_step_by_step_equals_the_full_forward(T):
    """The recurrent decode path (state = the context vector only) must equal the parallel forward."""
    m = _build(True)
    torch.manual_seed(T)
    x = torch.randn(2, T, D)
    full = m(x)
    ctx, ys = None, []
    for t in range(T):
        y, ctx = m.step(x[:, t], ctx)
        ys.append(y)
    assert ctx.shape == (2, m.state_floats(T))
    torch.testing.assert_close(torch.stack(ys, 1), full, rtol=1e-5, atol=1e-5)


def test_step_is_refused_in_bidirectional_mode():
    with pytest.raises(RuntimeError, match="bidirectional"):
        _build(False).step(torch.randn(1, D))


def test_closed_forget_gates_make_the_mixer_pointwise():
    """f = 0 everywhere: the context is the current candidate, so no earlier token can matter."""
    m = _build(True)
    with torch.no_grad():
        m.gate_bias.fill_(-40.0)
    x = torch.randn(1, 10, D)
    x2 = x.clone()
    x2[:, :6] = torch.randn(1, 6, D)
    torch.testing.assert_close(m(x2)[:, 6:], m(x)[:, 6:])
    with torch.no_grad():  # open gates (the default init) carry the past: the same edit now shows
        m.gate_bias.fill_(3.0)
    assert not torch.allclose(m(x2)[:, 6:], m(x)[:, 6:], atol=1e-4)


def test_forget_gates_start_at_the_configured_timescales():
    m = mixers.build("gated_context", D, True, tau_min=2.0, tau_max=64.0)
    f = torch.sigmoid(m.gate_bias)
    tau = 1 / (1 - f)
    torch.testing.assert_close(tau[[0, -1]], torch.tensor([2.0, 64.0]), rtol=1e-4, atol=1e-4)
    assert (tau.diff() > 0).all()


@pytest.mark.parametrize("causal", MODES)
def test_bidirectional_mode_has_its_own_backward_parameters(causal):
    m = mixers.build("gated_context", D, causal, d_ctx=16)
    n_dir = 1 if causal else 2
    assert m.in_proj.weight.shape == (n_dir * 3 * 16, D)
    assert m.out.weight.shape == (D, n_dir * 16)
    assert m.gate_bias.shape == (n_dir * 16,)


@pytest.mark.parametrize("causal", MODES)
def test_hybrid_norm_makes_the_mixer_blind_to_input_scale(causal):
    """With every input projection normalised (HybridNorm), scaling the input changes nothing;
    without it, it does (so the norms are really on the path)."""
    torch.manual_seed(0)
    x = torch.randn(2, 12, D)
    normed = mixers.build("gated_context", D, causal, proj_norm=True)
    torch.testing.assert_close(normed(3.0 * x), normed(x), rtol=1e-4, atol=1e-5)
    plain = _build(causal)
    assert not torch.allclose(plain(3.0 * x), plain(x), atol=1e-4)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="scan must be one of"):
        mixers.build("gated_context", D, True, scan="fft")
    with pytest.raises(ValueError, match="tau_min"):
        mixers.build("gated_context", D, True, tau_min=1.0)
    with pytest.raises(ValueError, match="tau_min <= tau_max"):
        mixers.build("gated_context", D, True, tau_min=8.0, tau_max=4.0)
    one = mixers.build("gated_context", D, True, tau_min=8.0, tau_max=8.0)  # the edge: a single timescale
    torch.testing.assert_close(torch.sigmoid(one.gate_bias), torch.full((D,), 1 - 1 / 8))


def test_forget_gates_are_log_spaced_between_the_timescales():
    """τ_i = τ_min (τ_max / τ_min)^(i / (N - 1)): geometric, not linear (the endpoints alone cannot tell)."""
    N = 16
    m = mixers.build("gated_context", D, False, d_ctx=N, tau_min=2.0, tau_max=512.0)
    want = 2.0 * (512.0 / 2.0) ** (torch.arange(N, dtype=torch.float64) / (N - 1))
    for half in m.gate_bias.detach().double().view(2, N):  # both directions start alike
        torch.testing.assert_close(1 / (1 - torch.sigmoid(half)), want, rtol=1e-4, atol=1e-4)


def _reference(m: mixers.Mixer, x: torch.Tensor) -> torch.Tensor:
    """The module docstring's equations, one token at a time in float64:
    c_t = f_t c_{t-1} + (1 - f_t) u_t, f_t = σ(W_f x_t + b_f), u_t = W_u x_t; y_t = W_out(σ(W_o x_t) ⊙ RMSNorm(c_t)).
    Bidirectional: a second context from the end with its own rows of in_proj, concatenated after the first."""
    N, eps = m.d_ctx, m.c_norm.eps
    W = m.in_proj.weight.double().view(m.n_dir, 3, N, -1)
    bias = m.gate_bias.double().view(m.n_dir, N)
    xd = x.double()
    B, T, _ = x.shape
    reads = []
    for d in range(m.n_dir):
        u, f, o = (xd @ W[d, i].t() for i in range(3))
        f = torch.sigmoid(f + bias[d])
        c, ctx = torch.zeros(B, N, dtype=torch.float64), [None] * T
        for t in (range(T) if d == 0 else reversed(range(T))):
            c = f[:, t] * c + (1 - f[:, t]) * u[:, t]
            ctx[t] = c
        c = torch.stack(ctx, 1)
        normed = c / (c.pow(2).mean(-1, keepdim=True) + eps).sqrt() * m.c_norm.weight.double()
        reads.append(torch.sigmoid(o) * normed)
    return (torch.cat(reads, -1) @ m.out.weight.double().t()).float()


@pytest.mark.parametrize("causal", MODES)
def test_mixer_equals_the_documented_recurrence(causal):
    """The coupled gate ((1 - f) admits what f forgets) and the backward context's alignment, against
    a literal loop of the docstring's equations rather than the module's own scan."""
    m = _build(causal, seed=2, d_ctx=8)
    with torch.no_grad():
        m.c_norm.weight.copy_(torch.rand(8) + 0.5)
    torch.manual_seed(4)
    x = torch.randn(2, 13, D)
    torch.testing.assert_close(m(x), _reference(m, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", MODES)
def test_a_pad_inside_the_sequence_is_an_identity_step(causal):
    """At a pad f = 1 and the input is 0: the context passes through unchanged, so real tokens see exactly
    the sequence with the pad removed (a reset, f = 0 at pads, would look the same for edge pads only)."""
    m = _build(causal, seed=1)
    torch.manual_seed(6)
    x = torch.randn(1, 12, D)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, [4, 5, 8]] = False
    y = m(x, mask)[mask]
    want = m(x[mask][None])[0]
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
