"""torch.compile (on by default on CUDA) must not recompile for every new batch shape.

Token-budget batches change both the number of rows and the length at every step. torch.compile
compiles the model for the first shape, compiles once more when a second shape marks the sizes
dynamic, and should then serve every later shape from that graph. A mixer whose traced code branches
on a Python integer computed from T (a scan's recursion on the parity of T, slices of a sweep) is
instead specialised to each length and recompiled at nearly every step: inside the budgeted clock
(only the first steps are warm-up), until torch gives up and runs it eagerly. On the H200 that is
what a GPU-only path hides; here the same contract is checked on CPU with a counting backend (the
graphs are traced and counted, not compiled by inductor, so it takes seconds).
"""
from __future__ import annotations

import shutil

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

import mixers
from harness.model import LM, LMConfig

# (rows, length) of successive batches: rows and length both vary, as token-budget batches do
# (never one row: torch specialises a size of 1 once, a known one-off)
SHAPES = ((4, 57), (3, 64), (2, 91), (5, 122), (6, 33))
V = 97


def _frames_per_step(mixer: str, causal: bool) -> list[int]:
    """Graphs compiled so far after each training step (forward + backward) of a small LM."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=V, d_model=32, n_layers=2, mixer=mixer, causal=causal, mlp_hidden=64))
    counter = CompileCounter()
    step = torch.compile(model, backend=counter)
    seen = []
    for rows, T in SHAPES:
        ids = torch.randint(0, V, (rows, T))
        lengths = torch.randint(T // 2, T + 1, (rows,))
        lengths[0] = T
        pad_mask = torch.arange(T)[None, :] < lengths[:, None]  # right padding, as the trainer's batches
        step(ids, pad_mask).float().pow(2).mean().backward()
        seen.append(counter.frame_count)
    return seen


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("mixer", mixers.names())
def test_a_compiled_model_stops_recompiling_after_the_second_batch_shape(mixer, causal):
    frames = _frames_per_step(mixer, causal)
    assert frames[0] >= 1, "nothing was compiled: the test would pass for any model"
    assert frames[-1] == frames[1], (
        f"{mixer} ({'causal' if causal else 'bidirectional'}) recompiled for new batch shapes: graphs after "
        f"each step {frames}; a Python branch or slice on T inside the traced code specialises it to each length "
        "(run the scan eagerly with torch.compiler.disable, or make it shape-agnostic)")


def test_the_check_catches_a_mixer_that_branches_on_the_length(monkeypatch):
    """A planted mixer whose forward branches on the parity of T recompiles, and the check sees it."""
    class Parity(mixers.Mixer):
        def forward(self, x, pad_mask=None):
            return x * 2 if x.shape[1] % 2 else x.cumsum(1)

        def state_floats(self, seq_len: int) -> int:
            return self.d_model

    mixers.REGISTRY.register("parity_probe")(Parity)
    try:
        frames = _frames_per_step("parity_probe", True)
    finally:
        mixers.REGISTRY.unregister("parity_probe")
    assert frames[-1] > frames[1], frames


def _mamba_conv():
    from mixers.mamba import causal_depthwise_conv

    w, b = torch.randn(8, 4, requires_grad=True), torch.randn(8, requires_grad=True)
    return lambda x: causal_depthwise_conv(x, w, b)


def _wavelet_filter():
    from mixers.wavelet import causal_filter, wavelet_filters

    lo, _ = wavelet_filters("db2")
    return lambda x: causal_filter(x, lo, 2)


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor on CPU needs a C++ compiler")
@pytest.mark.parametrize("make", [_mamba_conv, _wavelet_filter], ids=["mamba_conv", "wavelet_filter"])
def test_the_causal_convolutions_compile_once_for_all_lengths_with_inductor(make):
    """The counting backend cannot see what inductor itself specialises: its CPU convolution backward
    guarded on T, so mamba and wave_wavelet (nn.Conv1d / F.conv1d) recompiled at every new length. Both
    convolutions are now shifted multiply-adds; compiled by inductor, forward + backward, they serve
    every length from the graph compiled at the second shape."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    conv = torch.compile(make(), backend=counter)
    frames = []
    for rows, T in SHAPES[:4]:
        x = torch.randn(rows, T, 8, requires_grad=True)
        conv(x).pow(2).sum().backward()
        frames.append(counter.frame_count)
    assert frames[0] == 1 and frames[-1] == frames[1], frames
