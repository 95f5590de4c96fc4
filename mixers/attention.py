"""Multi-head self-attention with rotary positions (RoPE), causal or bidirectional.

Runs through `torch.nn.functional.scaled_dot_product_attention` (which picks PyTorch's own flash /
memory-efficient kernels on CUDA), or through the `flash-attn` package when it is installed, the
tensors are on CUDA in bf16/fp16 and there is no padding to mask. `self.backend` says which ran.

Decoding (`prefill` / `step`) keeps a KV cache (`KVCache`): the rotated keys and the values of every
past position, 2·T·d_model numbers, and attends over it with SDPA (a one-query attention, masked
only when the batch has left padding). The cache grows by doubling, so appending is amortised O(1)
and a step costs O(T): the per-token latency of attention grows with the context.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mixers import Mixer, MixingFlops, register
from mixers._layers import apply_rope, positions_from_mask, rope_angles, rope_for

try:  # optional CUDA-only package; any failure (not installed, no compiled extension) means "absent"
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # pragma: no cover - depends on the machine
    _flash_attn_func = None


@dataclass
class KVCache:
    """Keys (after RoPE) and values of the prefix, in slots [0, length) of a buffer that grows by doubling."""

    k: torch.Tensor  # (B, H, capacity, hd)
    v: torch.Tensor  # (B, H, capacity, hd)
    keep: torch.Tensor | None  # (B, capacity) bool, True on real tokens; None: no padding anywhere
    length: int  # slots in use (pads included)
    n_real: torch.Tensor  # (B,) long: real tokens so far = the RoPE position of the next token

    def append(self, k_t: torch.Tensor, v_t: torch.Tensor) -> None:
        """Write one position (B, H, 1, hd) at slot `length`, growing the buffers when full."""
        if self.length == self.k.shape[2]:
            grow = lambda t: torch.cat([t, torch.zeros_like(t)], dim=2)  # noqa: E731
            self.k, self.v = grow(self.k), grow(self.v)
            if self.keep is not None:
                self.keep = torch.cat([self.keep, torch.zeros_like(self.keep)], dim=1)
        self.k[:, :, self.length] = k_t[:, :, 0]
        self.v[:, :, self.length] = v_t[:, :, 0]
        if self.keep is not None:
            self.keep[:, self.length] = True
        self.length += 1
        self.n_real = self.n_real + 1


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
        if hd <= 0 or hd % 2:
            raise ValueError(f"attention: head_dim must be a positive even number (RoPE rotates pairs), got {hd}")
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
        elif not self.causal:
            # (B, 1, 1, T), broadcast over queries: every query sees the real keys. A row has a real token,
            # so no row is empty (no NaN); a pad query's output is unused and never reaches a real one.
            # Not the (B, 1, T, T) mask of the causal case: SDPA would turn that into a (B, 1, T, T) bias
            # per layer (bidirectional attention trains with padding: masked diffusion)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=pad_mask[:, None, None, :])
        else:
            # (B, 1, T, T): query i may see key j when j is real and j <= i (left padding: prefill). Every
            # query also sees itself, so a pad query's row is never empty (no NaN); its output is unused.
            allowed = pad_mask[:, None, None, :] & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            allowed = allowed | torch.eye(T, dtype=torch.bool, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    decode_path = "state"
    decode_backend = "sdpa_kv_cache"

    def _kv_rope(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k rotated to positions pos (B, T), and v: each (B, H, T, hd), as in `forward`."""
        B, T, _ = x.shape
        H, hd = self.n_heads, self.opts.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, hd).unbind(2)
        q, k, v = self.q_norm(q), self.k_norm(k), self.v_norm(v)
        cos, sin = rope_angles(pos, hd, self.opts.rope_base)
        return apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin), v.transpose(1, 2)

    @torch.no_grad()
    def prefill(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """The reference forward for the prompt's outputs, then its keys and values again for the cache
        (one extra K/V projection, so `forward` stays the single attention path)."""
        self._check_causal()
        B, T, _ = x.shape
        y = self.forward(x, pad_mask) if T else x.new_zeros(x.shape)
        _, k, v = self._kv_rope(x, positions_from_mask(pad_mask, B, T, x.device))
        cap = T + 128
        pad = lambda t: torch.cat([t, t.new_zeros(B, self.n_heads, cap - T, t.shape[-1])], dim=2)  # noqa: E731
        keep = None
        if pad_mask is not None:
            keep = torch.cat([pad_mask, pad_mask.new_zeros(B, cap - T)], dim=1)
        n_real = torch.full((B,), T, device=x.device) if pad_mask is None else pad_mask.long().sum(1)
        return y, KVCache(pad(k), pad(v), keep, T, n_real)

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """x_t (B, D) at position `state.n_real` -> y_t (B, D); appends its key and value to the cache."""
        self._check_causal()
        B, D = x_t.shape
        if state is None:
            state = self.prefill(x_t[:, None][:, :0], None)[1]
        q, k, v = self._kv_rope(x_t[:, None], state.n_real[:, None])  # (B, H, 1, hd)
        state.append(k, v)
        L = state.length
        mask = None if state.keep is None else state.keep[:, None, None, :L]  # (B, 1, 1, L)
        y = F.scaled_dot_product_attention(q, state.k[:, :, :L], state.v[:, :, :L], attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, D)), state

    def state_floats(self, seq_len: int) -> int:
        """A KV cache: keys and values of every past position, 2 * T * d_model."""
        return 2 * seq_len * self.d_model

    def mixing_flops(self, seq_len: float) -> MixingFlops:
        """matmul: the scores QK^T and the weighted values, 2 matmuls of 2*T*d FLOPs per token forward,
        x3 for forward + backward = 12*T*d (PaLM's appendix B; no discount for the causal mask, so the
        same count in both modes). elementwise: RoPE on q and k, 4 multiplies and 2 adds per pair of
        channels, 6*d per token forward, x3 = 18*d. Left out: the softmax and its 1/sqrt(hd) scale
        (as PaLM does; like activations) and the mask."""
        return MixingFlops(matmul=12.0 * seq_len * self.d_model, elementwise=18.0 * self.d_model)
