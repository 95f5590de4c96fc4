"""Small building blocks shared by mixers and the skeleton (not a mixer: the registry skips `_` modules)."""
from __future__ import annotations

import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 whatever the autocast dtype (bf16 reductions drift), cast back after."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def positions_from_mask(pad_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """Position index of every token counting real tokens only: (B, T) long.

    Why: with left padding a real token must get the same position (and so the same RoPE rotation)
    as when the sequence is run alone. Pad positions get 0; their outputs are never used.
    """
    if pad_mask is None:
        return torch.arange(T, device=device).expand(B, T)
    return (pad_mask.long().cumsum(-1) - 1).clamp_min(0)


def rope_angles(pos: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for rotary embeddings, always fp32 (bf16 angles lose whole radians at long T).

    pos: (B, T) -> cos, sin: (B, T, dim // 2)
    """
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32) / dim))
    ang = pos.float()[..., None] * inv  # (B, T, dim/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) by the angle of their frequency. x: (B, H, T, Dh); cos/sin (B, T, Dh/2)."""
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    c, s = cos[:, None], sin[:, None]  # (B, 1, T, Dh/2)
    out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    return out.to(x.dtype)
