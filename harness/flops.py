"""Model FLOPs and model-FLOPs utilisation (MFU), so speed is a ratio, not only a time.

Counted (forward + backward = 3 x forward, 2 FLOPs per multiply-add, per token):
- every `nn.Linear` weight and the tied LM head: 6 x (their parameter count)   (Kaplan et al.'s 6N)
- attention scores and weighted values: 12 x layers x T x d_model              (PaLM's appendix B,
  no discount for the causal mask)
What is *not* counted: the sequence-mixing arithmetic of other mixers (wave sums, wavelet
convolutions, scans), norms, activations. For those mixers MFU is a lower bound on utilisation and
is labelled so (`mfu_basis`). Peaks are dense bf16 tensor-core TFLOP/s from the vendors' sheets.
"""
from __future__ import annotations

import torch
import torch.nn as nn

PEAK_BF16_TFLOPS = {  # matched against torch.cuda.get_device_name, first hit wins
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
    "V100": 125.0,
    "T4": 65.0,
}


def peak_tflops(device_name: str) -> float | None:
    for key, val in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return val
    return None


def flops_per_token(model: nn.Module, seq_len: float) -> tuple[float, str]:
    """Training FLOPs per token at mean sequence length `seq_len`, and what the count covers."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    head = model.head_weight.numel()
    flops = 6.0 * (linear + head)
    mixer = model.cfg.mixer
    if mixer == "attention":
        flops += 12.0 * model.cfg.n_layers * seq_len * model.cfg.d_model
        basis = "exact for matmuls: 6N (linear + head) + 12*L*T*d (attention)"
    else:
        basis = f"lower bound: 6N (linear + head); {mixer}'s sequence mixing not counted"
    return flops, basis


def mfu(model: nn.Module, tokens_per_s: float, seq_len: float, device: torch.device, device_name: str) -> dict:
    """{'flops_per_token', 'mfu', 'mfu_basis', 'peak_tflops'}; mfu is None off CUDA or for unknown GPUs."""
    fpt, basis = flops_per_token(model, seq_len)
    peak = peak_tflops(device_name) if device.type == "cuda" else None
    util = tokens_per_s * fpt / (peak * 1e12) if peak and tokens_per_s == tokens_per_s else None
    return {"flops_per_token": fpt, "mfu": util, "mfu_basis": basis, "peak_tflops": peak}
