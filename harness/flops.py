"""Model FLOPs and model-FLOPs utilisation (MFU), so speed is a ratio, not only a time.

Counted (forward + backward = 3 x forward, 2 FLOPs per multiply-add, per token):
- every `nn.Linear` weight and the tied LM head: 6 x (their parameter count)   (Kaplan et al.'s 6N)
- each layer's sequence mixing as its mixer declares it (`Mixer.flops_per_token(T)`, split into
  matmul and elementwise parts by `Mixer.mixing_flops`): contractions outside nn.Linear (attention's
  scores and weighted values, 12 x T x d_model per layer, PaLM's appendix B, no causal discount;
  Mamba's Δ projection and C read-out) and the elementwise arithmetic of the reference formula
  (RoPE, scans, running sums, complex products, wavelet filter taps, gates), each add and multiply once.
What is *not* counted: norms, activations and other transcendentals (softmax, exp, sqrt, sigmoid),
and the extra work of an implementation (a log-depth scan's extra passes, recomputation in the
backward): these are model FLOPs, not the operations the hardware ran. Every registered mixer
declares its count; a mixer that declares none (None) has its sequence mixing not counted, and
then MFU is a lower bound on utilisation and is labelled so (`mfu_basis` names what was counted).
Peaks are dense bf16 tensor-core TFLOP/s from the vendors' sheets.
"""
from __future__ import annotations

import torch
import torch.nn as nn

PEAK_BF16_TFLOPS = {  # matched against torch.cuda.get_device_name, first hit wins (the lower-power forms first)
    "H200 NVL": 835.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H200": 989.0,  # SXM ("NVIDIA H200")
    "H100": 989.0,  # SXM ("NVIDIA H100 80GB HBM3")
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,  # before "L4", which it contains
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
    declared: dict[str, list[float]] = {}  # mixer name -> its layers' FLOPs per token
    missing: set[str] = set()
    for block in model.blocks:
        f = block.mixer.flops_per_token(seq_len)
        if f is None:
            missing.add(block.mixer.name)
        else:
            declared.setdefault(block.mixer.name, []).append(float(f))
    flops += sum(sum(fs) for fs in declared.values())
    counted = "".join(f" + {name}'s declared sequence mixing ({sum(fs):,.0f} per token, {len(fs)} layers, "
                      f"T={seq_len:g})" for name, fs in sorted(declared.items()))
    if missing:
        basis = f"lower bound: 6N (linear + head){counted}; {', '.join(sorted(missing))}'s sequence mixing not counted"
    else:
        basis = f"model FLOPs: 6N (linear + head){counted}; norms, activations not counted"
    return flops, basis


def mfu(model: nn.Module, tokens_per_s: float, seq_len: float, device: torch.device, device_name: str) -> dict:
    """{'flops_per_token', 'mfu', 'mfu_basis', 'peak_tflops'}; mfu is None off CUDA or for unknown GPUs."""
    fpt, basis = flops_per_token(model, seq_len)
    peak = peak_tflops(device_name) if device.type == "cuda" else None
    util = tokens_per_s * fpt / (peak * 1e12) if peak and tokens_per_s == tokens_per_s else None
    return {"flops_per_token": fpt, "mfu": util, "mfu_basis": basis, "peak_tflops": peak}
