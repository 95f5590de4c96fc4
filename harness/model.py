"""The one LM skeleton every mixer shares, and parameter matching across mixers.

embedding -> N x (norm -> mixer -> residual; norm -> MLP -> residual) -> norm -> tied LM head.

"One layer" means the same thing for every mixer (one mixer + one MLP), and the MLP width is solved
per mixer so that every cell of a preset lands within ±5% of the preset's total parameter target:
a mixer with a heavier token-mixing block gets a thinner MLP, never an extra layer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import mixers
from core.presets import Preset
from mixers._layers import RMSNorm

NORMS = ("pre", "post", "hybrid")


PARAM_TOLERANCE = 0.05


@dataclass
class LMConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    mixer: str
    causal: bool
    mlp_hidden: int
    mixer_opts: dict[str, Any] = field(default_factory=dict)
    norm: str = "pre"  # pre | post | hybrid (HybridNorm, arXiv 2503.04598)


class MLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """One layer. Norm placement:
    - pre:    y = x + mixer(norm1(x));   out = y + mlp(norm2(y))
    - post:   y = norm1(x + mixer(x));   out = norm2(y + mlp(y))
    - hybrid: y = x + mixer(x), the mixer normalising its own input projections (QKV-norm for
              attention); h = norm2(y); out = h + mlp(h).

    `hybrid` is HybridNorm as its authors run it (arXiv 2503.04598; their OLMo configs set
    attn_norm=false, use_{query,key,value}_norm=true, ffn_norm=true, ffn_residual_after_norm=true):
    the FFN's residual starts *after* the norm, so the MLP always reads a normalised stream and the
    normalised stream is what continues. It is Post-Norm with each norm moved from the end of the
    layer to the start of the FFN sublayer; the last block's output is therefore not normalised and
    the LM's final norm is required (as in OLMo). Their HybridNorm* variant (a Pre-Norm first block)
    is not offered. With `post` the final norm is redundant but harmless, and kept for uniformity.
    """

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm_kind = cfg.norm
        self.mixer = mixers.build(cfg.mixer, cfg.d_model, cfg.causal, proj_norm=cfg.norm == "hybrid", **cfg.mixer_opts)
        self.mlp = MLP(cfg.d_model, cfg.mlp_hidden)
        self.norm1 = RMSNorm(cfg.d_model) if cfg.norm in ("pre", "post") else nn.Identity()
        self.norm2 = RMSNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        if self.norm_kind == "pre":
            x = x + self.mixer(self.norm1(x), pad_mask)
            return x + self.mlp(self.norm2(x))
        if self.norm_kind == "post":
            x = self.norm1(x + self.mixer(x, pad_mask))
            return self.norm2(x + self.mlp(x))
        h = self.norm2(x + self.mixer(x, pad_mask))  # hybrid
        return h + self.mlp(h)

    def _around(self, x: torch.Tensor, mix) -> tuple[torch.Tensor, Any]:
        """`forward` with the mixer call replaced by `mix(input) -> (output, state)`: norms and MLP act per
        token, so the same code serves a whole prompt (B, T, D) and one decoding step (B, D)."""
        if self.norm_kind == "pre":
            y, state = mix(self.norm1(x))
            x = x + y
            return x + self.mlp(self.norm2(x)), state
        y, state = mix(x)
        if self.norm_kind == "post":
            x = self.norm1(x + y)
            return self.norm2(x + self.mlp(x)), state
        h = self.norm2(x + y)
        return h + self.mlp(h), state

    def prefill(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        return self._around(x, lambda u: self.mixer.prefill(u, pad_mask))

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self._around(x_t, lambda u: self.mixer.step(u, state))


class LM(nn.Module):
    """Returns final hidden states; the objective turns them into a loss with `head_weight`."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        if cfg.norm not in NORMS:
            raise ValueError(f"unknown norm placement {cfg.norm!r}; choose from {', '.join(NORMS)}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.apply(self._init)
        # GPT-2 style: shrink the residual-branch outputs so depth does not blow up the stream
        for name, p in self.named_parameters():
            if name.endswith(("out.weight", "down.weight", "out_proj.weight")):
                nn.init.normal_(p, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def head_weight(self) -> torch.Tensor:
        """The tied output classifier (V, D)."""
        return self.embed.weight

    def forward(self, ids: torch.Tensor, pad_mask: torch.Tensor | None = None, right_padded: bool = True) -> torch.Tensor:
        """ids (B, T) -> hidden (B, T, D).

        A causal model fed right-padded batches drops the mask: no real token can see a pad that
        comes after it, so the mixers may take their unmasked fast path (e.g. SDPA is_causal).
        """
        if self.cfg.causal and right_padded:
            pad_mask = None
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, pad_mask)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.head_weight.t()

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Any]]:
        """Causal decoding, first call: a left-padded prompt ids (B, T) -> (hidden (B, T, D), per-layer states).

        The hidden states equal `forward(ids, pad_mask, right_padded=False)`; each layer's state is its
        mixer's memory of the prompt (a KV cache, running sums, ...; see `mixers.Mixer.prefill`).
        """
        if not self.cfg.causal:
            raise RuntimeError("LM.prefill: decoding needs a causal model (autoregressive objective)")
        x = self.embed(ids)
        states = []
        for blk in self.blocks:
            x, st = blk.prefill(x, pad_mask)
            states.append(st)
        return self.norm(x), states

    @torch.no_grad()
    def step(self, ids_t: torch.Tensor, states: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        """One more token per row: ids_t (B,) -> (hidden (B, D), the states one position on)."""
        x = self.embed(ids_t)
        new = []
        for blk, st in zip(self.blocks, states):
            x, st = blk.step(x, st)
            new.append(st)
        return self.norm(x), new

    def decode_paths(self) -> list[str]:
        """How each mixer decodes: "state" (carried state / KV cache) or "rerun" (the prefix is rerun)."""
        return sorted({b.mixer.decode_path for b in self.blocks})

    def backends(self) -> list[str]:
        return sorted({b.mixer.backend for b in self.blocks})

    def state_floats(self, seq_len: int) -> int:
        """Numbers the whole model carries about the past at inference, all layers."""
        return sum(b.mixer.state_floats(seq_len) for b in self.blocks)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(cfg: LMConfig) -> LM:
    """The model on the meta device: its shapes and parameter count, no memory, no time.

    The mixer modules are imported first, outside the device context. The registry imports them on
    first use, and import-time code run inside `torch.device("meta")` makes its tensors on meta: under
    torch 2.6, `torch._dynamo`'s own import then failed (`Tensor.item() cannot be called on meta
    tensors`), so the first cell of every fresh process failed: spawned ranks and warm-up workers."""
    mixers.get(cfg.mixer)
    with torch.device("meta"):
        return LM(cfg)


def _count_on_meta(cfg: LMConfig) -> int:
    return count_params(on_meta(cfg))


def matched_config(
    preset: Preset,
    mixer: str,
    causal: bool,
    vocab_size: int | None = None,
    mixer_opts: dict[str, Any] | None = None,
    norm: str = "pre",
    d_model: int | None = None,
) -> LMConfig:
    """Solve the MLP width so the total parameter count hits the preset's target.

    Parameters are linear in the MLP width, so two counts on the meta device (no memory) give the
    slope and intercept. The width is rounded to a multiple of 8 for kernel-friendly shapes.
    """
    base = LMConfig(
        vocab_size=vocab_size or preset.vocab_size,
        d_model=d_model or preset.d_model,
        n_layers=preset.n_layers,
        mixer=mixer,
        causal=causal,
        mlp_hidden=8,
        mixer_opts=dict(mixer_opts or {}),
        norm=norm,
    )
    n8 = _count_on_meta(base)
    n16 = _count_on_meta(dataclasses.replace(base, mlp_hidden=16))
    slope = (n16 - n8) / 8
    hidden = round((preset.target_params - n8) / slope / 8) * 8 + 8
    if hidden < 8:
        raise ValueError(
            f"preset {preset.name!r}: mixer {mixer!r} alone needs {n8:,} parameters, more than the target "
            f"{preset.target_params:,}; use a larger preset or smaller mixer options"
        )
    return dataclasses.replace(base, mlp_hidden=hidden)
