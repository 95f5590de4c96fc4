"""Multi-head self-attention with rotary positions (RoPE), causal or bidirectional.

Runs through `torch.nn.functional.scaled_dot_product_attention` (which picks PyTorch's own flash /
memory-efficient kernels on CUDA), or through the `flash-attn` package when it is installed, the
tensors are on CUDA in bf16/fp16 and there is no padding to mask. `self.backend` says which ran.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from mixers import Mixer, register
from mixers._layers import apply_rope, rope_for

try:  # optional CUDA-only package; any failure (not installed, no compiled extension) means "absent"
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # pragma: no cover - depends on the machine
    _flash_attn_func = None


@register("attention")
class Attention(Mixer):
    @dataclasses.dataclass
    class Options:
        head_dim: int = 32
        rope_base: float = 10000.0
        use_flash_attn: bool = True  # use the flash-attn package when it can run

    def __init__(self, d_model: int, causal: bool, opts=None, proj_norm: bool = False):
        super().__init__(d_model, causal, opts, proj_norm)
        hd = self.opts.head_dim
        if d_model % hd:
            raise ValueError(f"attention: d_model={d_model} is not a multiple of head_dim={hd}")
        self.n_heads = d_model // hd
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        # HybridNorm: normalise Q, K and V (per head) inside the projection
        self.q_norm, self.k_norm, self.v_norm = (self.proj_norm_layer(hd) for _ in range(3))
        self.backend = "sdpa"

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        H, hd = self.n_heads, self.opts.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, hd).unbind(2)  # each (B, T, H, hd)
        q, k, v = self.q_norm(q), self.k_norm(k), self.v_norm(v)
        cos, sin = rope_for(pad_mask, B, T, hd, self.opts.rope_base, x.device)  # cached angles
        q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, H, T, hd)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)

        if (
            pad_mask is None
            and self.opts.use_flash_attn
            and _flash_attn_func is not None
            and x.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)
        ):
            self.backend = "flash_attn"
            y = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=self.causal)
            return self.out(y.reshape(B, T, D))

        self.backend = "sdpa"
        if pad_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            # (B, 1, T, T): query i may see key j when j is real (and j <= i if causal). Every query
            # also sees itself, so a pad query's row is never empty (no NaN); its output is unused.
            allowed = pad_mask[:, None, None, :].expand(B, 1, T, T)
            if self.causal:
                allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            allowed = allowed | torch.eye(T, dtype=torch.bool, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def state_floats(self, seq_len: int) -> int:
        """A KV cache: keys and values of every past position, 2 * T * d_model."""
        return 2 * seq_len * self.d_model
