"""Token-mixer registry.

A mixer maps hidden states (B, T, D) -> (B, T, D). It is built from `d_model`, `causal` and its own
options (a dataclass `Options` on the class). Every module in this package whose name does not start
with `_` is imported on first use, and each mixer class registers itself with `@register("name")`:
adding a file is the only step needed to add a row to the grid.

Contract (tests in tests/test_mixers.py enforce it for every registered mixer):
- `forward(x: (B, T, D), pad_mask: (B, T) bool | None) -> (B, T, D)`; `pad_mask` is True on real
  tokens. Padding (left or right) never changes a real token's output.
- `causal=True`: the output at t depends on inputs at positions <= t only.
- `causal=False` (masked diffusion): the mixer must know positions. The skeleton adds no position
  embedding, and the sampler starts from a run of identical MASK inputs: a mixer that sees the
  sequence as a set (one global mean, say) gives them all one prediction (tests/test_diffusion.py).
  A causal mixer knows positions by what it has seen; a bidirectional one can rotate by RoPE
  angles (`mixers._layers.rope_for` / `apply_rope`, as attention does) or scan each direction.
- `state_floats(seq_len)`: how many numbers the mixer carries between positions at inference for a
  sequence of that length (per sequence, per layer): the size of its memory of the past (L2M, arXiv
  2503.04725). A bidirectional mixer counts the state of both directions. `LM.state_floats` sums the
  layers; results rows record it as `metrics.state_floats` at `metrics.state_T`, the mean evaluation
  length.
- `flops_per_token(seq_len)`: training FLOPs (forward + backward) per token of the mixer's own
  sequence-mixing arithmetic at that length, *beyond* its `nn.Linear` weights (those are counted
  as 6 x parameters for every mixer); None (the default): not counted, and the row's MFU says it is
  a lower bound. `harness/flops.py` sums the layers' declarations. A mixer declares it by returning
  `MixingFlops(matmul, elementwise)` from `mixing_flops(seq_len)` (the base `flops_per_token` sums
  the two), or by overriding `flops_per_token` itself. Convention: forward + backward = 3 x forward,
  2 FLOPs per multiply-add, every add and multiply of the reference formula once; norms,
  activations and other transcendentals (exp, sqrt, sigmoid) are left out, and so is the extra work
  of an implementation (a log-depth scan's extra passes, recomputation): model FLOPs, not hardware
  FLOPs. `matmul` is the contractions outside nn.Linear that the forward runs as matmul / einsum /
  conv operators, which tests/test_flops.py holds to torch's FlopCounterMode; `elementwise` the
  rest, counted by hand (depthwise filters written as shifted multiply-adds included). The tests
  also bracket `elementwise` by the adds and multiplies the forward dispatches, so a new mixer that
  declares only its matmuls while its forward does elementwise work fails them.
- `backend`: which implementation ran last (e.g. "sdpa", "flash_attn", "torch_scan"), for results.
- Decoding (causal mode only): `prefill(x, pad_mask) -> (y, state)` runs a prompt (left padding allowed)
  and returns its outputs and the mixer's memory of it; `step(x_t: (B, D), state) -> (y_t, state)`
  appends one real token per row. The full forward is the reference: prefill then steps must give
  the outputs `forward` gives for the whole sequence (tests/test_decode.py, every registered mixer).
  A mixer that overrides both sets `decode_path = "state"`; the base class's fallback keeps the
  inputs seen so far and reruns `forward` over them at every step (`decode_path = "rerun"`), so a new
  mixer decodes correctly before it has a step of its own.
- `proj_norm=True` (HybridNorm) asks the mixer to normalise its input projections; mixers use
  `self.proj_norm_layer(dim)` so the choice costs them one line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from core.registry import Registry, UnknownNameError
from mixers._layers import RMSNorm

REGISTRY: Registry["Mixer"] = Registry("mixer", __name__)
register = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get
options_of = REGISTRY.options_of
UnknownMixerError = UnknownNameError


@dataclass(frozen=True)
class MixingFlops:
    """Training FLOPs per token (forward + backward) of a mixer's sequence mixing beyond its nn.Linear
    weights, split by kind so each part can be checked its own way (see the contract above)."""

    matmul: float  # contractions run as matmul/einsum (attention scores, Mamba's Δ projection and C read-out)
    elementwise: float  # scans, running sums, complex products, filter taps, depthwise convs, gates

    @property
    def total(self) -> float:
        return self.matmul + self.elementwise


@dataclass
class RerunState:
    """The fallback decoding state: every input seen so far (B, T, D) and its pad mask (B, T) or None."""

    x: torch.Tensor
    pad_mask: torch.Tensor | None


def append_real(pad_mask: torch.Tensor | None, B: int, device) -> torch.Tensor | None:
    """The pad mask after one more real token per row (None stays None: no padding anywhere)."""
    if pad_mask is None:
        return None
    return torch.cat([pad_mask, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)


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

    decode_path: str = "rerun"  # "state" when the subclass implements prefill/step with a carried state
    decode_backend: str = "forward_rerun"  # what the last step ran

    def _check_causal(self) -> None:
        if not self.causal:
            raise RuntimeError(f"{self.name}: decoding runs left to right; a bidirectional mixer has no step")

    def prefill(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """Run a prompt x (B, T, D) (pad_mask True on real tokens, pads on the left) -> (y (B, T, D), state).

        Fallback: the state is the prompt itself, and every `step` reruns the whole prefix.
        """
        self._check_causal()
        return self.forward(x, pad_mask), RerunState(x, pad_mask)

    def step(self, x_t: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """One more real token per row: x_t (B, D), the state of the prefix (None: empty) -> (y_t (B, D), state)."""
        self._check_causal()
        B = x_t.shape[0]
        if state is None:
            state = RerunState(x_t[:, None][:, :0], None)
        x = torch.cat([state.x, x_t[:, None]], dim=1)
        mask = append_real(state.pad_mask, B, x_t.device)
        return self.forward(x, mask)[:, -1], RerunState(x, mask)

    def state_floats(self, seq_len: int) -> int:
        """Numbers carried between positions at inference for a sequence of `seq_len` tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not report its state size")

    def mixing_flops(self, seq_len: float) -> MixingFlops | None:
        """`flops_per_token` split into matmul and elementwise parts; None: not declared."""
        return None

    def flops_per_token(self, seq_len: float) -> float | None:
        """Training FLOPs per token of the sequence mixing beyond the nn.Linear weights, at mean length
        `seq_len`; None: not counted (MFU is then a lower bound, and says so)."""
        f = self.mixing_flops(seq_len)
        return None if f is None else f.total


def build(name: str, d_model: int, causal: bool, proj_norm: bool = False, **opts: Any) -> Mixer:
    """Build a registered mixer; `opts` may be CLI strings ("head_dim=32"), coerced by field type."""
    return get(name)(d_model, causal, REGISTRY.make_options(name, opts), proj_norm=proj_norm)
