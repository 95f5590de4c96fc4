"""Model FLOPs: the 6N of the weights plus every mixer's declared sequence mixing, checked three ways.

- matmul parts against torch's FlopCounterMode on the mixer's real forward + backward (exact: the
  counter's formulas are integer products of shapes, and both count 2 FLOPs per multiply-add);
- elementwise parts against the add/multiply ops the forward actually dispatches (a bracket: the
  implementation does at least the reference arithmetic and at most a small multiple of it);
- by hand, for the default options of each mixer.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import mixers
from harness.flops import flops_per_token, mfu, peak_tflops
from harness.model import LM, LMConfig

D, B, T = 64, 2, 48
NAMES = mixers.names()
MODES = [pytest.param(True, id="causal"), pytest.param(False, id="bidir")]
# Declaring is optional for a new mixer (its rows' MFU is then labelled a lower bound, and the checks
# below skip it); every built-in mixer declares, split into matmul and elementwise parts.
BUILT_IN = ("attention", "gated_context", "mamba", "wave_interference", "wave_modulation", "wave_wavelet")


def _declared(m: mixers.Mixer, name: str, seq_len: float = T) -> mixers.MixingFlops:
    f = m.mixing_flops(seq_len)
    if f is None and name not in BUILT_IN:
        pytest.skip(f"{name} declares no split FLOP count (optional)")
    assert f is not None, f"{name} is built in and must declare its FLOPs"
    return f


def test_built_in_mixers_are_registered():
    assert set(BUILT_IN) <= set(NAMES)


def _lm(mixer="attention"):
    return LM(LMConfig(vocab_size=100, d_model=64, n_layers=2, mixer=mixer, causal=True, mlp_hidden=128))


def test_attention_flops_by_hand():
    m = _lm()
    # per layer: qkv 64*192 + out 64*64 + mlp 2*64*128; head 100*64
    n = 2 * (64 * 192 + 64 * 64 + 2 * 64 * 128) + 100 * 64
    f, basis = flops_per_token(m, 50)
    # per layer: scores and weighted values 12*T*d, RoPE on q and k 3 * 6*d
    assert f == 6 * n + 2 * (12 * 50 * 64 + 18 * 64)
    assert basis.startswith("model FLOPs") and "attention's declared" in basis


def test_mfu_only_on_known_gpus():
    m = _lm()
    assert mfu(m, 1e5, 50, torch.device("cpu"), "cpu: x")["mfu"] is None
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0  # SXM; the PCIe and NVL cards peak lower
    lower = [peak_tflops(f"NVIDIA {name}") for name in ("H200 NVL", "H100 NVL", "H100 PCIe")]
    assert lower == [835.0, 835.0, 756.0]
    assert peak_tflops("NVIDIA L40") == 181.0 and peak_tflops("NVIDIA L4") == 121.0  # L40 contains "L4"
    assert peak_tflops("Some GPU") is None
    f, _ = flops_per_token(m, 50)
    got = mfu(m, 1e6, 50, torch.device("cuda"), "NVIDIA H100 80GB HBM3")["mfu"]
    assert got == pytest.approx(1e6 * f / 989e12)


# ------------------------------------------------------------------------------------------------
# Every registered mixer declares its count, and it scales with T as the mixer does.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_every_mixer_declares_a_count_that_scales_with_length(name, causal):
    m = mixers.build(name, D, causal)
    lengths = (1, 64, 512, 4096)
    assert _declared(m, name, 1).total == m.flops_per_token(1)
    counts = [m.flops_per_token(t) for t in lengths]
    assert all(c is not None and math.isfinite(c) and c > 0 for c in counts), counts
    if name == "attention":  # linear in T: 12*d more per token for every extra position
        assert [c - counts[0] for c in counts] == [12.0 * D * (t - 1) for t in lengths]
    elif name in BUILT_IN:  # the linear-time mixers: a constant per token
        assert counts == [counts[0]] * len(lengths)


# ------------------------------------------------------------------------------------------------
# Matmul parts: torch's FlopCounterMode on the mixer's forward + backward, less 6 x its nn.Linear weights.
# ------------------------------------------------------------------------------------------------

# (name, options, backward is plain autograd). Mamba's default parallel scan has a hand-written backward
# whose gradients of Δ·A and (Δu)·B reduce over broadcast axes with einsums: contractions the counter
# sees but that are the backward of elementwise products in the reference math (see its docstring).
CASES = [(n, {}, n != "mamba") for n in NAMES] + [
    ("mamba", {"scan": "chunked", "checkpoint_chunks": False}, True),  # autograd, no recomputation
    ("mamba", {"bidir_share": True, "scan": "chunked", "checkpoint_chunks": False}, True),  # x_proj runs twice
    ("wave_wavelet", {"wavelet": "db2", "levels": 3}, True),
    ("wave_interference", {"readout": "magnitude", "scale": "unit", "rope_phase": False}, True),
]
CASE_IDS = [f"{n}-{','.join(f'{k}={v}' for k, v in o.items()) or 'defaults'}" for n, o, _ in CASES]


def _linear_params(m: nn.Module) -> int:
    return sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, nn.Linear))


def _counted_matmul_per_token(m: mixers.Mixer, backward: bool) -> float:
    """FlopCounterMode's FLOPs per token of the mixer, less its nn.Linear weights (2N forward, 6N with backward).

    SDPA runs its math backend: the counter has no formula for CPU's fused flash kernel (it would read 0).
    """
    x = torch.randn(B, T, D, requires_grad=True)  # so every nn.Linear computes its input gradient too
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        y = m(x)
        if backward:
            y.float().square().sum().backward()
    return counter.get_total_flops() / (B * T) - (6 if backward else 2) * _linear_params(m)


@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("name,opts,autograd", CASES, ids=CASE_IDS)
def test_matmul_part_matches_flop_counter(name, opts, autograd, causal):
    torch.manual_seed(0)
    m = mixers.build(name, D, causal, **opts)
    declared = _declared(m, name)
    # forward alone: exactly a third of the declaration (forward + backward = 3 x forward)
    assert _counted_matmul_per_token(m, backward=False) == pytest.approx(declared.matmul / 3, rel=1e-12)
    counted = _counted_matmul_per_token(m, backward=True)
    if autograd:  # a matmul's backward is two matmuls of the same size: exactly 3 x forward
        assert counted == pytest.approx(declared.matmul, rel=1e-12)
    else:  # a hand-written backward may run some elementwise gradients as contractions, never more than all
        assert declared.matmul < counted <= declared.total


# ------------------------------------------------------------------------------------------------
# Elementwise parts: the adds and multiplies the forward dispatches, against the declared third.
# ------------------------------------------------------------------------------------------------

_ONE_PER_OUTPUT = {"add", "sub", "rsub", "mul", "div", "neg", "pow", "square", "cumsum"}  # and in-place forms


class ElementwiseCounter(TorchDispatchMode):
    """Adds and multiplies of the dispatched ops: 1 per output element (addcmul: 2), a reduction
    (sum, mean) 1 per input element it folds. Transcendentals, clamps, where and copies: 0, as in
    the declarations."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        op = func.overloadpacket.__name__.rstrip("_")  # add_ counts as add
        if op in _ONE_PER_OUTPUT:
            self.flops += out.numel()
        elif op == "addcmul":
            self.flops += 2 * out.numel()
        elif op in ("sum", "mean"):
            self.flops += args[0].numel() - out.numel()
        return out


def _counted_elementwise_per_token(m: mixers.Mixer, x: torch.Tensor) -> float:
    with torch.no_grad(), ElementwiseCounter() as counter:
        m(x)
    return counter.flops / (x.shape[0] * x.shape[1])


# Why at most 3 x: the measured implementations run 1.0x (attention's RoPE) to 2.2x (gated_context,
# whose pairwise scan composes pairs of steps, ~5 FLOPs per element where the recurrence needs 2, and
# whose read-out RMSNorm the declaration leaves out) the reference arithmetic; eps guards, pad masks
# and cancellation-free sums add the rest. An elementwise part declared without its factor 3, or
# without a per-state term, falls outside.
MAX_IMPLEMENTATION_OVERHEAD = 3.0


@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("name,opts,autograd", CASES, ids=CASE_IDS)
def test_elementwise_part_brackets_the_forwards_ops(name, opts, autograd, causal):
    torch.manual_seed(0)
    m = mixers.build(name, D, causal, **opts)
    reference = _declared(m, name).elementwise / 3  # forward
    counted = _counted_elementwise_per_token(m, torch.randn(B, T, D))
    assert reference <= counted <= MAX_IMPLEMENTATION_OVERHEAD * reference, (counted, reference)


def test_wavelet_stage_counted_op_for_op():
    """Causal wavelet filters and the gate are written exactly as the reference (K multiplies and K − 1
    adds per filter, L + 2 gated bands): the wavelet mixer's ops beyond its wave core must equal its
    declaration beyond the wave mixer's, at every number of levels and filter length."""
    x = torch.randn(B, T, D)
    wave = mixers.build("wave_modulation", D, True)
    for wavelet, levels in (("haar", 1), ("haar", 2), ("db2", 3)):
        m = mixers.build("wave_wavelet", D, True, wavelet=wavelet, levels=levels)
        counted = _counted_elementwise_per_token(m, x) - _counted_elementwise_per_token(wave, x)
        declared = (m.flops_per_token(T) - wave.flops_per_token(T)) / 3
        K = m.lo.numel()
        assert declared == D * (levels * 2 * (2 * K - 1) + 2 * levels + 3)  # by hand: filters, gate
        assert counted == declared


@pytest.mark.parametrize(
    "name,causal,opts,per_channel",
    [
        # per wave: w² 1, running sum 1, rms scale 2, RoPE rotation 6 = 10; modulation 6; cartesian 0
        ("wave_modulation", True, {}, 2 * 10 + 6),
        # bidirectional: the total and G² − w² are 2 sums where the causal running sum is 1
        ("wave_modulation", False, {}, 2 * 11 + 6),
        ("wave_interference", True, {}, 2 * 10 + 2),
        # unit scale: the mean over channels 1 + 2; no RoPE; magnitude readout Re² + Im² 3
        ("wave_interference", True, {"scale": "unit", "rope_phase": False, "readout": "magnitude"}, 2 * 5 + 2 + 3),
        # the paper's raw G (scale sum): no scaling, 2 per wave fewer; real readout 0
        ("wave_modulation", True, {"scale": "sum", "readout": "real"}, 2 * 8 + 6),
        # wave modulation 26, 2 Haar levels x 2 filters x 3, gate over 4 bands 7
        ("wave_wavelet", True, {}, 26 + 12 + 7),
        # bidirectional Haar level: one symmetric 3-tap filter, 5 FLOPs
        ("wave_wavelet", False, {}, 28 + 2 * 2 * 5 + 7),
        # gate bias 1, (1 − f)·u 2, f·c + b 2, output gate 1, per direction
        ("gated_context", True, {}, 6),
        ("gated_context", False, {}, 12),
    ],
)
def test_elementwise_counts_by_hand(name, causal, opts, per_channel):
    m = mixers.build(name, D, causal, **opts)
    assert m.mixing_flops(T) == mixers.MixingFlops(matmul=0.0, elementwise=3.0 * D * per_channel)


def test_mamba_count_by_hand():
    """d_model 64: Di = 128, N = 16, R = dt_rank 4, K = d_conv 4."""
    Di, N, R, K = 128, 16, 4, 4
    per_dir_mm = 2 * Di * R + 2 * Di * N  # Δ projection, C read-out
    per_dir_ew = 2 * K * Di + Di + Di + 4 * Di * N + 2 * Di + Di  # conv, Δ bias, Δu, scan, D skip, gate
    m = mixers.build("mamba", D, True)
    assert m.mixing_flops(T) == mixers.MixingFlops(3.0 * per_dir_mm, 3.0 * per_dir_ew)
    m = mixers.build("mamba", D, False)
    assert m.mixing_flops(T) == mixers.MixingFlops(3.0 * 2 * per_dir_mm, 3.0 * (2 * per_dir_ew + 2 * Di))
    m = mixers.build("mamba", D, False, bidir_share=True)  # the one x_proj (Di -> R + 2N) runs twice
    assert m.mixing_flops(T).matmul == 3.0 * (2 * per_dir_mm + 2 * Di * (R + 2 * N))


# ------------------------------------------------------------------------------------------------
# A mixer that declares nothing: the count is 6N for it, and the basis says lower bound.
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def undeclared():
    @mixers.register("undeclared_toy")
    class Undeclared(mixers.Mixer):  # a running mean, with no flops declaration
        def __init__(self, d_model, causal, opts=None, proj_norm=False):
            super().__init__(d_model, causal, opts, proj_norm)
            self.proj = nn.Linear(d_model, d_model, bias=False)

        def forward(self, x, pad_mask=None):
            h = self.proj(x)
            return h.cumsum(1) / torch.arange(1, x.shape[1] + 1, device=x.device)[:, None]

    try:
        yield "undeclared_toy"
    finally:
        mixers.REGISTRY.unregister("undeclared_toy")


def test_undeclared_mixer_gives_a_lower_bound(undeclared):
    m = _lm(undeclared)
    assert m.blocks[0].mixer.flops_per_token(50) is None
    f, basis = flops_per_token(m, 50)
    n = 2 * (64 * 64 + 2 * 64 * 128) + 100 * 64  # proj + mlp per layer; head
    assert f == 6 * n
    assert basis.startswith("lower bound") and f"{undeclared}'s sequence mixing not counted" in basis
    assert mfu(m, 1e6, 50, torch.device("cuda"), "NVIDIA H100")["mfu_basis"] == basis


@pytest.mark.parametrize("name", NAMES)
def test_registered_mixers_give_model_flops_basis(name):
    m = _lm(name)
    if m.blocks[0].mixer.flops_per_token(50) is None and name not in BUILT_IN:
        pytest.skip(f"{name} declares no FLOPs (optional): test_undeclared_mixer_gives_a_lower_bound covers it")
    _, basis = flops_per_token(m, 50)
    assert basis.startswith("model FLOPs") and f"{name}'s declared sequence mixing" in basis


def test_mfu_needs_a_cuda_device_whatever_the_name_says():
    """A CPU run (the GPU check's dry run) has no MFU, even when the name it records is a known GPU's."""
    m = _lm()
    got = mfu(m, 1e6, 50, torch.device("cpu"), "NVIDIA H100 80GB HBM3")
    assert got["mfu"] is None and got["peak_tflops"] is None


def test_the_count_is_at_the_mean_length_unrounded_and_its_basis_says_per_layer_what_it_added():
    """seq_len is the data's mean row length, rarely whole: attention's scores cost 12 x T x d at T = 50.5,
    not at 50. The basis a row records names the sum over the mixer's layers, their number and the T used,
    so the figure can be checked from the row alone."""
    m = _lm()  # 2 attention layers, d_model 64
    n = 2 * (64 * 192 + 64 * 64 + 2 * 64 * 128) + 100 * 64
    mixing = 2 * (12 * 50.5 * 64 + 18 * 64)  # 79,872
    f, basis = flops_per_token(m, 50.5)
    assert f == 6 * n + mixing
    assert "attention's declared sequence mixing (79,872 per token, 2 layers, T=50.5)" in basis


def test_mfu_of_an_unmeasured_throughput_is_none_not_nan():
    """A stage with no clocked steps has tokens_per_s NaN (harness/cell.py passes NaN for it): its MFU is
    None, absent, as off CUDA, not a NaN that a JSON row and the report's averages would carry."""
    got = mfu(_lm(), float("nan"), 50, torch.device("cuda"), "NVIDIA H100 80GB HBM3")
    assert got["mfu"] is None and got["peak_tflops"] == 989.0 and got["flops_per_token"] > 0
