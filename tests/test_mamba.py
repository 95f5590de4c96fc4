"""Mamba mixer: the parallel and chunked scans held to the step-by-step recurrence (values, gradients,
extreme Δ, long sequences, float64), PyTorch calls flat in T for the parallel scan, padding, the
bidirectional combination, initialisation, state size, safe detection of the optional CUDA packages,
and (CUDA + mamba-ssm only) the fused path against the PyTorch path."""
from __future__ import annotations

import math
import sys
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import mixers
import mixers.mamba as mm
from harness.model import LM, matched_config
from core.presets import PRESETS
from harness.train import TrainConfig, _optimizer

D_MODEL = 32


def scan_inputs(T: int, seed: int = 0, Bsz: int = 2, Di: int = 6, N: int = 5, delta=None, dtype=torch.float32):
    """Random inputs of the selective scan; `delta` (B, T, Di) overrides the default Δ in ~(0.05, 2)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        u=r(Bsz, T, Di),
        delta=F.softplus(r(Bsz, T, Di) - 1.0) if delta is None else delta,
        A=-torch.exp(0.5 * r(Di, N)),
        B=r(Bsz, T, N),
        C=r(Bsz, T, N),
        D=r(Di),
        z=r(Bsz, T, Di),
        h0=r(Bsz, Di, N),
    )


def _build(causal: bool, seed: int = 0, **opts) -> mm.Mamba:
    torch.manual_seed(seed)
    m = mixers.build("mamba", D_MODEL, causal, **opts)
    with torch.no_grad():  # random, not near-zero, weights so every path matters
        for name, p in m.named_parameters():
            if p.dim() >= 2 and "A_log" not in name:
                p.normal_(0, 0.3)
    return m.eval()


# ---------------------------------------------------------------- chunked scan == reference recurrence


@pytest.mark.parametrize("chunk", [5, 16])
@pytest.mark.parametrize("T", [1, 7, 16, 33, 50])
def test_chunked_scan_equals_reference(T, chunk):
    """Lengths below, equal to and not divisible by the chunk size; D, gate and initial state on."""
    x = scan_inputs(T, seed=T)
    y_ref, h_ref = mm.selective_scan_reference(**x, return_last_state=True)
    y, h = mm.selective_scan_chunked(**x, return_last_state=True, chunk_size=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


def _grads(fn, x: dict, **kw) -> dict[str, torch.Tensor]:
    x = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    y, h = fn(**x, return_last_state=True, **kw)
    g = torch.Generator().manual_seed(9)
    loss = (y * torch.randn(y.shape, generator=g)).sum() + (h * torch.randn(h.shape, generator=g)).sum()
    loss.backward()
    return {k: v.grad for k, v in x.items()}


def _assert_grads_close(got: dict, ref: dict, what: str) -> None:
    """1e-5 relative, with the absolute floor scaled by the gradient's magnitude: gradients sum
    terms of both signs, so fp32 rounding of ~1e-7 of the largest term is the honest noise floor
    (the fp32 reference itself is that far from a float64 run)."""
    for k in ref:
        assert torch.isfinite(got[k]).all(), f"gradient of {k} ({what}) is not finite"
        scale = float(ref[k].abs().max().clamp_min(1.0))
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5 * scale, msg=f"gradient of {k} ({what})")


@pytest.mark.parametrize("checkpoint", [False, True], ids=["plain", "checkpointed"])
def test_chunked_scan_gradients_equal_reference(checkpoint):
    """A right forward with wrong gradients is a known failure of fast scans (fla #547): check all inputs."""
    x = scan_inputs(23, seed=3)
    ref = _grads(mm.selective_scan_reference, x)
    got = _grads(mm.selective_scan_chunked, x, chunk_size=8, checkpoint=checkpoint)
    _assert_grads_close(got, ref, "")


# the fast scans, each with options that exercise its memory-saving path
FAST = {
    "chunked": (mm.selective_scan_chunked, dict(chunk_size=8, checkpoint=True)),
    "parallel": (mm.selective_scan_parallel, {}),
    "parallel_blocks": (mm.selective_scan_parallel, dict(max_block_elems=2 * 37 * 5 * 4)),  # Di 6 -> 4 + 2
    "parallel_keep": (mm.selective_scan_parallel, dict(keep_states=True)),
}


REGIMES = ("near_zero", "large", "mixed", "exact_zero")


def extreme_inputs(regime: str, T: int, Bsz: int = 2, Di: int = 6) -> dict:
    """Scan inputs with Δ ≈ 0 (state kept, no input), Δ large (state wiped every step: decays
    exp(-Δ|A|) underflow to 0, where an exp(-cumsum) formulation would overflow), both interleaved, or
    Δ = 0 (a pad), and strong decays (A down to -20)."""
    g = torch.Generator().manual_seed(11)
    pick = torch.rand(Bsz, T, Di, generator=g) < 0.5
    delta = {
        "near_zero": torch.full((Bsz, T, Di), 1e-6),
        "large": torch.full((Bsz, T, Di), 40.0),
        "mixed": torch.where(pick, torch.tensor(1e-5), torch.tensor(30.0)),
        "exact_zero": torch.where(pick, torch.tensor(0.0), torch.tensor(0.7)),
    }[regime]
    x = scan_inputs(T, seed=5, Bsz=Bsz, Di=Di, delta=delta)
    x["A"] = -torch.arange(1, 6, dtype=torch.float32).expand(Di, -1).clone() * 4
    return x


@pytest.mark.parametrize("scan", list(FAST))
@pytest.mark.parametrize("regime", REGIMES)
def test_fast_scans_extreme_delta(regime, scan):
    """Every fast scan against the step loop on `extreme_inputs`."""
    x = extreme_inputs(regime, 37)
    fn, kw = FAST[scan]
    y_ref = mm.selective_scan_reference(**x)
    y = fn(**x, **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    ref = _grads(mm.selective_scan_reference, x)
    got = _grads(fn, x, **kw)
    _assert_grads_close(got, ref, regime)


@pytest.mark.parametrize("variant", ["parallel", "parallel_blocks", "parallel_keep"])
@pytest.mark.parametrize("T", [1, 2, 7, 16, 37, 50])
def test_parallel_scan_equals_reference(T, variant):
    """Values, last state and every input's gradient: fp32 at 1e-5, float64 at 1e-12 (so a wrong
    term that fp32 noise could hide would show); odd lengths and uneven channel blocks included."""
    fn, kw = FAST[variant]
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        x = scan_inputs(T, seed=T, dtype=dtype)
        y_ref, h_ref = mm.selective_scan_reference(**x, return_last_state=True)
        y, h = fn(**x, return_last_state=True, **kw)
        assert y.dtype == h.dtype == dtype
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(h, h_ref, rtol=tol, atol=tol)
        ref, got = _grads(mm.selective_scan_reference, x), _grads(fn, x, **kw)
        if dtype == torch.float32:
            _assert_grads_close(got, ref, str(dtype))
        else:
            for k in ref:
                torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-10, msg=f"float64 gradient of {k}")


def test_parallel_scan_gradcheck_float64():
    """Finite differences against the hand-written backward (every input, both outputs)."""
    x = scan_inputs(11, seed=4, Bsz=1, Di=3, N=2, dtype=torch.float64)
    args = tuple(v.clone().requires_grad_(True) for v in x.values())
    fn = lambda *a: mm.selective_scan_parallel(*a, return_last_state=True, max_block_elems=22)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


def test_parallel_scan_long_sequence_is_stable_and_exact():
    """T = 4096: strong decays (Δ up to 30, A down to -16: per-step log-decays to -480, cumulative
    sums to ~-1e6, where exp(-cumsum) forms overflow) interleaved with Δ ~ 1e-4 stretches where the
    state must survive thousands of steps; the fp32 parallel scan matches a float64 step loop."""
    T, Di = 4096, 4
    g = torch.Generator().manual_seed(12)
    strong = torch.rand(1, T, Di, generator=g) < 0.02
    delta = torch.where(strong, 30 * torch.rand(1, T, Di, generator=g), torch.full((1, T, Di), 1e-4))
    x = scan_inputs(T, seed=6, Bsz=1, Di=Di, N=4, delta=delta)
    x["A"] = -torch.linspace(0.5, 16, Di * 4).view(Di, 4)
    y, h = mm.selective_scan_parallel(**x, return_last_state=True)
    y64, h64 = mm.selective_scan_reference(**{k: v.double() for k, v in x.items()}, return_last_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    torch.testing.assert_close(y, y64.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h64.float(), rtol=1e-4, atol=1e-4)
    got = _grads(mm.selective_scan_parallel, x)
    assert all(torch.isfinite(v).all() for v in got.values())


@pytest.mark.parametrize("scan", ["reference", "chunked", "parallel"])
def test_scan_ignores_bf16_autocast(scan):
    """The scan and its reductions stay fp32 under autocast (bf16 scans drift: mamba #6); the
    parallel scan's backward too, even when run inside the autocast region (the chunk loop's
    checkpoint recomputation is not: the trainer calls backward outside autocast)."""
    fn, kw = FAST.get(scan, (mm.selective_scan_reference, {}))
    x = scan_inputs(40, seed=8)
    y32 = fn(**x, **kw)
    ref = _grads(fn, x, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = fn(**x, **kw)
        got = _grads(fn, x, **kw)
    assert yb.dtype == torch.float32
    torch.testing.assert_close(yb, y32, rtol=1e-6, atol=1e-6)
    for k in ref if scan == "parallel" else []:
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=1e-6)


def test_delta_reaches_the_scan_computed_in_fp32_under_bf16_autocast(monkeypatch):
    """The mixer's own precision policy under the grid's bf16 autocast (CPU autocast stands in for CUDA's):
    Δ = softplus(dt_proj(dt) + dt_bias) and A are computed in fp32 from what x_proj gave, not by a bf16
    matmul (Δ sets the decay exp(Δ A) over the whole sequence: bf16 scans drift). A dtype check is not
    enough: a bf16 matmul plus the fp32 bias comes out fp32 too, so Δ is held to the fp32 computation."""
    seen, dts = [], []

    def spy(u, delta, A, *args, **kw):
        seen.append((delta.detach(), A.detach()))
        return mm.selective_scan_parallel(u, delta, A, *args, **kw)

    monkeypatch.setitem(mm.SCANS, "parallel", (spy, "torch_parallel_scan"))
    m = _build(True, seed=3)
    m.fwd.x_proj.register_forward_hook(lambda mod, inp, out: dts.append(out[..., : m.dt_rank].detach()))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randn(2, 24, D_MODEL))
    (delta, A), dt = seen[0], dts[0]
    assert dt.dtype == torch.bfloat16  # x_proj did run under autocast: Δ's input is bf16
    d = m.fwd
    want = F.softplus(dt.float() @ d.dt_weight.float().t() + d.dt_bias.float())
    assert delta.dtype == A.dtype == torch.float32
    torch.testing.assert_close(delta, want, rtol=1e-6, atol=1e-6)  # a bf16 dt_proj: ~1e-2 off
    torch.testing.assert_close(A, -torch.exp(d.A_log.float()), rtol=0, atol=0)


@pytest.mark.parametrize("scan", ["parallel", "triton"])
@pytest.mark.parametrize("given_h0", [True, False], ids=["h0", "no_h0"])
def test_fast_scans_of_an_empty_sequence_return_no_outputs_and_the_initial_state(scan, given_h0, monkeypatch):
    """T = 0 has no positions to scan: the fast scans return an empty output and
    the state they started from (zeros when none is given), as the reference recurrence does, rather
    than launching a scan over nothing. The triton scan's empty case runs no kernel, so it is checked
    here on any machine with its device check bypassed."""
    monkeypatch.setattr(mm._scan_triton, "available", lambda device: True)
    x = scan_inputs(0)
    if not given_h0:
        x["h0"] = None
    y, h = mm.SCANS[scan][0](**x, return_last_state=True)
    y_ref, h_ref = mm.selective_scan_reference(**x, return_last_state=True)
    assert y.shape == y_ref.shape == (2, 0, 6) and h.shape == (2, 6, 5)
    torch.testing.assert_close(h, x["h0"] if given_h0 else torch.zeros(2, 6, 5), rtol=0, atol=0)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)


def test_bad_chunk_or_block_size_is_an_error_and_the_smallest_good_one_is_exact():
    with pytest.raises(ValueError, match="chunk_size"):
        mm.selective_scan_chunked(**scan_inputs(4), chunk_size=0)
    with pytest.raises(ValueError, match="max_block_elems"):
        mm.selective_scan_parallel(**scan_inputs(4), max_block_elems=0)
    # one position per chunk, one channel per block (a block of 1 element is smaller than one channel)
    x = scan_inputs(4)
    ref = mm.selective_scan_reference(**x)
    torch.testing.assert_close(mm.selective_scan_chunked(**x, chunk_size=1), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mm.selective_scan_parallel(**x, max_block_elems=1), ref, rtol=1e-6, atol=1e-6)


def test_the_prefills_closed_form_state_equals_the_scans_last_state_across_chunks():
    """`_final_state` (what a Mamba prefill carries into decoding) sums the state in closed form a chunk at a
    time (256 positions by default); over several chunks, the odd last one included, it must be the scan's
    last state. A prompt longer than one chunk (a JSQuAD prompt runs to 384 tokens) crosses a chunk edge."""
    x = scan_inputs(23, seed=5)
    _, h_ref = mm.selective_scan_reference(**{**x, "h0": None}, return_last_state=True)
    for chunk in (4, 23, 256):
        torch.testing.assert_close(mm._final_state(x["u"], x["delta"], x["A"], x["B"], chunk=chunk), h_ref,
                                   rtol=1e-5, atol=1e-6)


def test_channel_blocks_are_the_largest_that_fit_the_element_bound():
    """Each block of d channels holds (B, T, d, N) = d * per_channel elements: at most max_elems, and as
    many channels as fit (fewer, larger blocks: fewer kernel launches); at least one channel a block,
    even when one channel alone is over the bound."""
    cover = lambda Di, per, cap: [(s.start, s.stop) for s in mm._channel_blocks(Di, per, cap)]  # noqa: E731
    assert cover(10, 7, 30) == [(0, 4), (4, 8), (8, 10)]  # 4 * 7 = 28 <= 30 < 35
    assert cover(10, 7, 28) == [(0, 4), (4, 8), (8, 10)]  # exactly at the bound
    assert cover(6, 7, 1000) == [(0, 6)]
    assert cover(3, 7, 5) == [(0, 1), (1, 2), (2, 3)]
    assert cover(5, 1, 3) == [(0, 3), (3, 5)]  # one element a channel (B = T = N = 1)


class _OpCounter(TorchDispatchMode):
    """Counts ATen operator calls (what eager execution launches, one by one)."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _count_calls(m: mm.Mamba, T: int, backward: bool) -> int:
    x = torch.randn(1, T, 8, requires_grad=backward)
    with _OpCounter() as c:
        y = m(x)
        if backward:
            y.sum().backward()
    return sum(c.calls.values())


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_parallel_scan_calls_stay_flat_in_T(causal):
    """Eager cost on a GPU is launch-bound (one call ~ 18 us on the H200), so the number of calls
    is the number that matters: from T = 256 to 2048 it must stay nearly flat for the parallel scan
    (log2 T levels), while the chunk loop's grows with T / 64 (which shows the counter counts)."""
    torch.manual_seed(0)
    par = mixers.build("mamba", 8, causal, scan="parallel", d_state=4)
    for backward in (False, True):
        short, long = _count_calls(par, 256, backward), _count_calls(par, 2048, backward)
        assert long / short < 1.5, (backward, short, long)
    if causal:  # once is enough to show it
        loop = mixers.build("mamba", 8, causal, scan="chunked", d_state=4)
        assert _count_calls(loop, 2048, False) / _count_calls(loop, 256, False) > 4


# ---------------------------------------------------------------- the mixer


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_mixer_chunk_size_and_reference_scan_agree(causal):
    """The whole block (conv, Δ, gate, both directions) is the same function whatever the scan."""
    m = _build(causal)
    x = torch.randn(2, 29, D_MODEL, requires_grad=True)
    outs, grads = [], []
    backends = []
    for scan, chunk in (("reference", 64), ("chunked", 4), ("chunked", 64), ("parallel", 64)):
        m.opts.scan, m.opts.chunk_size = scan, chunk
        m.zero_grad()
        x.grad = None
        y = m(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in m.parameters()])
        backends.append(m.backend)
    for y, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(y, outs[0], rtol=1e-5, atol=1e-5)
        for a, b in zip(g, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert backends == ["torch_reference_scan", "torch_chunked_scan", "torch_chunked_scan", "torch_parallel_scan"]


@pytest.mark.parametrize("scan", ["parallel", "chunked"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_padding_with_large_conv_bias_and_skip(causal, side, scan):
    """Pads hold garbage, the conv bias is large (it would leak into the state through pad positions
    if the conv output were not masked) and D is large: real outputs still equal the unpadded run."""
    m = _build(causal, seed=1, scan=scan)
    with torch.no_grad():
        for d in (m.fwd, m.bwd):
            if d is not None:
                d.conv1d.bias.fill_(3.0)
                d.D.fill_(2.0)
                d.dt_bias.fill_(2.0)  # large Δ at pads would otherwise wipe / rewrite the state
    n, T = 9, 16
    seq = torch.randn(1, n, D_MODEL)
    x = torch.randn(1, T, D_MODEL) * 10
    mask = torch.zeros(1, T, dtype=torch.bool)
    sl = slice(0, n) if side == "right" else slice(T - n, T)
    x[:, sl], mask[:, sl] = seq, True
    with torch.no_grad():
        want, got = m(seq), m(x, mask)[:, sl]
    # fp32 rounding only: a shifted start changes how the parallel scan groups its products
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_pads_reach_the_scan_as_identity_steps(causal, monkeypatch):
    """The padding policy itself: in every direction the scan sees u = 0 (conv output, bias included,
    masked) and Δ = 0 (no write, no decay) at pads, here in the middle and at both ends."""
    seen = []

    def spy(u, delta, *args, **kw):
        seen.append((u.detach(), delta.detach()))
        return mm.selective_scan_reference(u, delta, *args)

    monkeypatch.setitem(mm.SCANS, "parallel", (spy, "torch_parallel_scan"))
    m = _build(causal, seed=2)
    with torch.no_grad():
        for d in (m.fwd, m.bwd):
            if d is not None:
                d.conv1d.bias.fill_(3.0)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, :3] = mask[0, 7] = mask[1, 9:] = False
    m(torch.randn(2, 12, D_MODEL) * 5, mask)
    assert len(seen) == (1 if causal else 2)
    for i, (u, delta) in enumerate(seen):
        pads = ~(mask if i == 0 else mask.flip(1))
        assert (u[pads] == 0).all() and (delta[pads] == 0).all()
        assert (u[~pads] != 0).any() and (delta[~pads] > 0).all()


def test_bidirectional_is_the_mean_of_a_forward_and_a_reversed_scan():
    """With shared parameters, bidir(x) = (causal(x) + flip(causal(flip(x)))) / 2 exactly (the
    out-projection is linear without bias), and so the mixer commutes with reversing the sequence."""
    causal = _build(True, seed=4)
    shared = mixers.build("mamba", D_MODEL, False, bidir_share=True).eval()
    shared.load_state_dict(causal.state_dict())
    x = torch.randn(2, 21, D_MODEL)
    want = 0.5 * (causal(x) + causal(x.flip(1)).flip(1))
    torch.testing.assert_close(shared(x), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shared(x.flip(1)), shared(x).flip(1), rtol=1e-5, atol=1e-6)
    separate = _build(False, seed=4)
    assert not torch.allclose(separate(x.flip(1)), separate(x).flip(1), atol=1e-4)


def test_bidirectional_parameters_separate_or_shared():
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    causal = mixers.build("mamba", D_MODEL, True)
    separate = mixers.build("mamba", D_MODEL, False)
    shared = mixers.build("mamba", D_MODEL, False, bidir_share=True)
    assert n(shared) == n(causal)
    assert n(separate) == n(causal) + n(separate.bwd)
    assert separate.bwd is not None and shared.bwd is None and causal.bwd is None


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_state_floats_by_hand(causal):
    """d_model 64 (tiny): d_inner 128, d_state 16, d_conv 4 -> 128*16 + 3*128 = 2432 per direction."""
    m = mixers.build("mamba", 64, causal)
    want = 2432 if causal else 2 * 2432
    assert m.state_floats(128) == want and m.state_floats(4096) == want
    small = mixers.build("mamba", 32, causal, expand=1, d_state=8, d_conv=3)  # 32*8 + 2*32 = 320
    assert small.state_floats(10) == small.state_floats(1000) == (320 if causal else 640)


def test_dt_rank_default_and_options():
    assert mixers.build("mamba", 64, True).dt_rank == 4  # ceil(64 / 16)
    assert mixers.build("mamba", 72, True).dt_rank == 5
    assert mixers.build("mamba", 64, True, dt_rank="7").dt_rank == 7
    with pytest.raises(ValueError, match="scan must be one of"):
        mixers.build("mamba", 64, True, scan="loop")
    for bad in ({"scan_block_elems": 0}, {"triton_stages": 0}, {"triton_programs": 0}):
        with pytest.raises(ValueError, match="sizes must be positive"):
            mixers.build("mamba", 64, True, **bad)
    # the Triton backward's launch shape: Triton's blocks and warp counts are powers of two
    for name, bad in (("triton_bwd_block_d", 0), ("triton_bwd_block_d", 12), ("triton_bwd_warps", 3),
                      ("triton_bwd_warps", 256)):
        with pytest.raises(ValueError, match=f"{name} must be a power of two from 1 to 128, got {bad}"):
            mixers.build("mamba", 64, True, **{name: bad})
    assert mixers.build("mamba", 64, True, triton_bwd_block_d=8, triton_bwd_warps=1).opts.triton_bwd_warps == 1


def test_mamba_init_survives_the_skeleton_and_A_log_is_not_decayed():
    """The LM re-initialises every nn.Linear; Mamba's Δ, A and D initialisation must come through."""
    torch.manual_seed(0)
    model = LM(matched_config(PRESETS["tiny"], "mamba", causal=True, vocab_size=100))
    o = mixers.options_of("mamba")
    for blk in model.blocks:
        d = blk.mixer.fwd
        dt = F.softplus(d.dt_bias)
        assert dt.min() >= o["dt_init_floor"] * 0.999 and dt.max() <= o["dt_max"] * 1.001
        assert dt.std() > 0  # log-uniform, not a constant
        torch.testing.assert_close(-torch.exp(d.A_log[0]), -torch.arange(1.0, 17.0))
        torch.testing.assert_close(d.D, torch.ones_like(d.D))
        assert d.dt_weight.abs().max() <= d.dt_rank**-0.5
    opt = _optimizer(model, TrainConfig(), torch.device("cpu"))
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0.0 for p in g["params"]}
    for blk in model.blocks:
        assert id(blk.mixer.fwd.A_log) in no_decay
        assert id(blk.mixer.in_proj.weight) in decay and id(blk.mixer.fwd.x_proj.weight) in decay


def test_hybrid_norm_normalises_the_input_projection():
    plain = mixers.build("mamba", D_MODEL, True)
    hybrid = mixers.build("mamba", D_MODEL, True, proj_norm=True)
    assert isinstance(plain.x_norm, torch.nn.Identity)
    assert type(hybrid.x_norm).__name__ == "RMSNorm" and type(hybrid.z_norm).__name__ == "RMSNorm"
    assert torch.isfinite(hybrid(torch.randn(2, 5, D_MODEL))).all()


# ---------------------------------------------------------------- optional CUDA packages


def _fake_package(root, name: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A directory first on sys.path for fake mamba_ssm / causal_conv1d packages; cleaned up after."""
    names = ("mamba_ssm", "causal_conv1d", "selective_scan_cuda", "causal_conv1d_cuda")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in names}
    for k in saved:
        del sys.modules[k]
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for k in [k for k in sys.modules if k.split(".")[0] in names]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_broken_mamba_ssm_is_detected_as_absent(fake_site):
    """The known failure: the package is installed but its compiled extension is not, so the import
    itself raises; a wrong-ABI build raises OSError. Both mean "absent", never a crash."""
    _fake_package(fake_site, "mamba_ssm", {
        "__init__.py": "",
        "ops/__init__.py": "",
        "ops/selective_scan_interface.py": "import selective_scan_cuda\ndef selective_scan_fn(*a, **k): pass\n",
    })
    _fake_package(fake_site, "causal_conv1d", {"__init__.py": "raise OSError('undefined symbol: _ZN3c10')\n"})
    assert mm.load_fused_kernels() == (None, None)


def test_working_mamba_ssm_is_detected(fake_site):
    _fake_package(fake_site, "mamba_ssm", {
        "__init__.py": "",
        "ops/__init__.py": "",
        "ops/selective_scan_interface.py": "def selective_scan_fn(*a, **k): return 'scan'\n",
    })
    _fake_package(fake_site, "causal_conv1d", {"__init__.py": "def causal_conv1d_fn(*a, **k): return 'conv'\n"})
    scan, conv = mm.load_fused_kernels()
    assert scan() == "scan" and conv() == "conv"


def test_cpu_tensors_always_take_the_torch_path(monkeypatch):
    """Even with the kernels importable, CPU inputs (or use_mamba_ssm=False) run the PyTorch scan."""
    def boom(*a, **k):
        raise AssertionError("fused kernel called on CPU")

    monkeypatch.setattr(mm, "_selective_scan_fn", boom)
    monkeypatch.setattr(mm, "_causal_conv1d_fn", boom)
    m = _build(True)
    assert torch.isfinite(m(torch.randn(1, 6, D_MODEL))).all()
    assert m.backend == "torch_parallel_scan"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or mm._selective_scan_fn is None,
                    reason="needs CUDA and an importable mamba-ssm")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_fused_path_matches_torch_path_on_cuda(causal):
    """Identical weights, both paths, left padding, bf16 autocast: outputs and gradients agree."""
    torch.manual_seed(0)
    dev = torch.device("cuda")
    fused = mixers.build("mamba", 64, causal).to(dev)
    plain = mixers.build("mamba", 64, causal, use_mamba_ssm=False, scan="parallel").to(dev)  # auto: triton on CUDA
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(3, 100, 64, device=dev)
    mask = torch.ones(3, 100, dtype=torch.bool, device=dev)
    mask[1, :30] = False  # left padding
    mask[2, 70:] = False  # right padding
    results = []
    for m in (fused, plain):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = m(xi, mask)
        (y.float() * mask[..., None]).square().sum().backward()
        results.append((y.float(), xi.grad, [p.grad for p in m.parameters()]))
    assert fused.backend == "mamba_ssm" and plain.backend == "torch_parallel_scan"
    (yf, gxf, gpf), (yp, gxp, gpp) = results
    m3 = mask[..., None]
    torch.testing.assert_close(yf * m3, yp * m3, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gxf * m3, gxp * m3, rtol=5e-2, atol=5e-2)
    for a, b in zip(gpf, gpp):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2 * float(b.abs().max().clamp_min(1e-3)))
    with torch.no_grad():  # fp32, no autocast: much tighter
        torch.testing.assert_close(fused(x, mask) * m3, plain(x, mask) * m3, rtol=1e-3, atol=1e-4)


def test_causal_depthwise_conv_equals_pytorchs_conv1d_in_values_and_gradients():
    """The mixer's conv as K shifted multiply-adds is the same function as nn.Conv1d(groups=C, padding=K-1)
    cut to T outputs (what it replaced, so checkpoints and the decoding step keep their meaning)."""
    from mixers.mamba import causal_depthwise_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3, bias=True).double()
    x = torch.randn(3, 13, 6, dtype=torch.float64, requires_grad=True)
    ref = conv(x.transpose(1, 2))[..., :13].transpose(1, 2)
    got = causal_depthwise_conv(x, conv.weight[:, 0], conv.bias)
    torch.testing.assert_close(got, ref)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [x, conv.weight, conv.bias], g)
    have = torch.autograd.grad(got, [x, conv.weight, conv.bias], g)
    for a, b in zip(have, want):
        torch.testing.assert_close(a, b)


def test_dt_init_is_log_uniform_in_dt_min_dt_max():
    """Mamba's Δ init: log Δ ~ U[log dt_min, log dt_max] (then softplus(dt_bias) = Δ): half the channels
    below the geometric mean sqrt(dt_min dt_max), a quarter in each quartile of the log range. A plain
    uniform draw in [dt_min, dt_max] stays in range too but puts only ~9% below the geometric mean."""
    torch.manual_seed(0)
    m = mixers.build("mamba", 256, True)  # d_inner 512 draws
    o = mixers.options_of("mamba")
    lo, hi = math.log(o["dt_min"]), math.log(o["dt_max"])
    u = ((torch.log(F.softplus(m.fwd.dt_bias.detach().double())) - lo) / (hi - lo)).clamp(0, 1)
    counts = torch.histc(u, bins=4, min=0.0, max=1.0) / u.numel()
    assert ((counts - 0.25).abs() < 0.07).all(), counts


def test_D_skip_is_added_to_the_scan_output_before_the_gate():
    """With C = 0 the state is never read: y = D ⊙ u ⊙ SiLU(z) exactly, for every scan."""
    inp = scan_inputs(9, seed=3)
    inp["C"] = torch.zeros_like(inp["C"])
    want = inp["D"] * inp["u"] * F.silu(inp["z"])
    for fn in (mm.selective_scan_reference, mm.selective_scan_parallel, mm.selective_scan_chunked):
        torch.testing.assert_close(fn(**inp), want, rtol=1e-6, atol=1e-6)
