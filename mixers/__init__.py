"""Token-mixer registry.

A mixer maps hidden states (B, T, D) -> (B, T, D). It is built from `d_model`, `causal` and its own
options (a dataclass `Options` on the class). Every module in this package whose name does not start
with `_` is imported on first use, and each mixer class registers itself with `@register("name")`:
adding a file is the only step needed to add a row to the grid.

Contract (tests in tests/test_mixers.py enforce it for every registered mixer):
- `forward(x: (B, T, D), pad_mask: (B, T) bool | None) -> (B, T, D)`; `pad_mask` is True on real
  tokens. Padding (left or right) never changes a real token's output.
- `causal=True`: the output at t depends on inputs at positions <= t only.
- `state_floats(seq_len)`: how many numbers the mixer carries between positions at inference for a
  sequence of that length (per sequence, per layer): the size of its memory of the past (L2M, arXiv
  2503.04725). A bidirectional mixer counts the state of both directions. `LM.state_floats` sums the
  layers; results rows record it as `metrics.state_floats` at `metrics.state_T`, the mean evaluation
  length.
- `backend`: which implementation ran last (e.g. "sdpa", "flash_attn", "torch_scan"), for results.
- `proj_norm=True` (HybridNorm) asks the mixer to normalise its input projections; mixers use
  `self.proj_norm_layer(dim)` so the choice costs them one line.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn

from harness.registry import Registry, UnknownNameError
from mixers._layers import RMSNorm

REGISTRY: Registry["Mixer"] = Registry("mixer", __name__)
register = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get
options_of = REGISTRY.options_of
UnknownMixerError = UnknownNameError


class Mixer(nn.Module):
    """Base class of all token mixers. Subclasses define `Options` (a dataclass) and `forward`."""

    @dataclasses.dataclass
    class Options:
        pass

    name: str = "?"

    def __init__(self, d_model: int, causal: bool, opts: Any = None, proj_norm: bool = False):
        super().__init__()
        self.d_model = d_model
        self.causal = causal
        self.opts = opts if opts is not None else self.Options()
        self.proj_norm = proj_norm
        self.backend = "torch"

    def proj_norm_layer(self, dim: int) -> nn.Module:
        """RMSNorm when HybridNorm asked for normalised projections, identity otherwise."""
        return RMSNorm(dim) if self.proj_norm else nn.Identity()

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def state_floats(self, seq_len: int) -> int:
        """Numbers carried between positions at inference for a sequence of `seq_len` tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not report its state size")


def build(name: str, d_model: int, causal: bool, proj_norm: bool = False, **opts: Any) -> Mixer:
    """Build a registered mixer; `opts` may be CLI strings ("head_dim=32"), coerced by field type."""
    return get(name)(d_model, causal, REGISTRY.make_options(name, opts), proj_norm=proj_norm)
