"""Small building blocks shared by mixers and the skeleton (not a mixer: the registry skips `_` modules)."""
from __future__ import annotations

import torch
import torch.nn as nn


class _RMSNormFn(torch.autograd.Function):
    """y = x / rms(x) * w in fp32 (fp64 stays fp64), with a hand-written backward.

    Why a Function: autograd through the textbook expression records ~75 operator calls per norm
    (casts, pow, mean, broadcasts and their gradients); this is ~20, and a model calls its norms 13+
    times per forward. Eager launch overhead, not math, is what a small model's GPU step waits on.
    Saves x and 1/rms only; y is recomputed in the backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        r = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))  # (..., 1)
        ctx.save_for_backward(x, w, r)
        y = xf * r * w
        # no `.to(x.dtype)` when it would return `y` itself: one operator call less per norm eagerly, and
        # torch 2.11's dynamo (the CUDA image's) traced that form's backward wrong, with zero weight
        # gradients and wrong input gradients (RMSNorm no longer lets torch.compile trace this Function)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w, r = ctx.saved_tensors
        xf = x.to(r.dtype)
        y = xf * r
        gf = g.to(r.dtype)
        gy = gf * w
        gx = r * (gy - y * (gy * y).mean(-1, keepdim=True))
        gw = (gf * y).reshape(-1, y.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        return gx.to(x.dtype), (gw.to(w.dtype) if gw is not None else None), None


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 whatever the autocast dtype (bf16 reductions drift), cast back after."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # traced by torch.compile: the textbook form, whose operators inductor fuses and whose
            # backward it derives. The Function's fewer operator calls matter only eagerly, and a traced
            # Function costs twice: AOTAutograd's cache passes over any graph holding one (every cell then
            # recompiles from scratch), and torch 2.11's dynamo traced this one wrong (see above)
            xf = x.to(torch.promote_types(x.dtype, torch.float32))
            return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)
        return _RMSNormFn.apply(x, self.weight, self.eps)


def positions_from_mask(pad_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """Position index of every token counting real tokens only: (B, T) long.

    Why: with left padding a real token must get the same position (and so the same RoPE rotation)
    as when the sequence is run alone. Pad positions get 0; their outputs are never used.
    """
    if pad_mask is None:
        return torch.arange(T, device=device).expand(B, T)
    return (pad_mask.long().cumsum(-1) - 1).clamp_min(0)


def rope_angles(pos: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for rotary embeddings, returned in fp32 (bf16 angles lose whole radians at long T).

    Angles and their cos/sin are computed in float64, then rounded once to fp32: fp32 `sin`/`cos` are
    not the same function on every CPU (a vectorised kernel over a long tensor and the scalar one over a
    short tail may differ; on one CI machine (2026-12-03) every test comparing RoPE outputs, the
    table's or a step's, with a float64 reference failed, by up to 4e-3). In float64 both round to the same
    fp32 value, so the table, the decode step and the compiled graph agree on any machine, and the
    table costs nothing per step (one (T, dim/2) tensor). MPS has no float64: fp32 there.

    pos: (B, T) -> cos, sin: (B, T, dim // 2)
    """
    dt = torch.float32 if pos.device.type == "mps" else torch.float64
    inv = base ** -(torch.arange(0, dim, 2, device=pos.device, dtype=dt) / dim)  # (dim/2,)
    ang = pos.to(dt)[..., None] * inv  # (B, T, dim/2)
    return ang.cos().float(), ang.sin().float()


_ROPE_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def rope_table(T: int, dim: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of positions 0..T-1, (T, dim // 2) fp32, computed once per (dim, base, device) and grown
    by doubling: every layer and every step reads the same table instead of recomputing the angles.
    Bit-identical to `rope_angles` of the same positions (same float64 expression, rounded once)."""
    key = (dim, float(base), str(torch.device(device)))
    tab = _ROPE_TABLES.get(key)
    if tab is None or tab[0].shape[0] < T:
        n = max(1024, 1 << (T - 1).bit_length())
        with torch.inference_mode(False), torch.no_grad():  # a plain tensor even if first built in inference
            pos = torch.arange(n, device=device)[None]
            cos, sin = rope_angles(pos, dim, base)
        tab = _ROPE_TABLES[key] = (cos[0], sin[0])
    return tab[0][:T], tab[1][:T]


def rope_for(pad_mask: torch.Tensor | None, B: int, T: int, dim: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope_angles(positions_from_mask(...))`, read from the cached table: (B, T, dim // 2) each.

    Without a mask the table is broadcast (a view, no copy); with one it is gathered at the positions.
    Inside torch.compile the angles are computed in the graph (the compiler fuses them; a Python-side
    cache would only add guards)."""
    if torch.compiler.is_compiling():
        return rope_angles(positions_from_mask(pad_mask, B, T, device), dim, base)
    cos, sin = rope_table(T, dim, base, device)
    if pad_mask is None:
        return cos.expand(B, T, -1), sin.expand(B, T, -1)
    pos = positions_from_mask(pad_mask, B, T, device)
    return cos[pos], sin[pos]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) by the angle of their frequency. x: (B, H, T, Dh); cos/sin (B, T, Dh/2)."""
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    c, s = cos[:, None], sin[:, None]  # (B, 1, T, Dh/2)
    out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    return out.to(x.dtype)
