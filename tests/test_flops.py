from __future__ import annotations

import pytest
import torch

from harness.flops import flops_per_token, mfu, peak_tflops
from harness.model import LM, LMConfig


def _lm(mixer="attention"):
    return LM(LMConfig(vocab_size=100, d_model=64, n_layers=2, mixer=mixer, causal=True, mlp_hidden=128))


def test_attention_flops_by_hand():
    m = _lm()
    # per layer: qkv 64*192 + out 64*64 + mlp 2*64*128; head 100*64
    n = 2 * (64 * 192 + 64 * 64 + 2 * 64 * 128) + 100 * 64
    f, basis = flops_per_token(m, 50)
    assert f == 6 * n + 12 * 2 * 50 * 64
    assert basis.startswith("exact")


def test_mfu_only_on_known_gpus():
    m = _lm()
    assert mfu(m, 1e5, 50, torch.device("cpu"), "cpu: x")["mfu"] is None
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Some GPU") is None
    f, _ = flops_per_token(m, 50)
    got = mfu(m, 1e6, 50, torch.device("cuda"), "NVIDIA H100 80GB HBM3")["mfu"]
    assert got == pytest.approx(1e6 * f / 989e12)
