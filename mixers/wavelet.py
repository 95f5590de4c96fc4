"""`wave_wavelet`: the wave mixer followed by multi-scale wavelet mixing along the sequence.

Ideas: WaveletGPT (arXiv 2409.12924) imposes causal Haar multi-resolution averages on the hidden
states of a decoder; the seed design puts a wavelet stage after the RoPE-phased wave. Here:

    h = WaveCore(x)                                   (B, T, D), mixers/wave.py
    a_0 = h;  for k < levels, at dilation 2^k:        the undecimated ("à trous") wavelet cascade
        d_{k+1} = hi ⋆ a_k,   a_{k+1} = lo ⋆ a_k      depthwise (every channel alone), fixed filters
    y = g_0 ⊙ h + Σ_k g_{k+1} ⊙ d_{k+1} + g_{L+1} ⊙ a_L   learned per-channel gate g: (levels+2, D)

- Filters are PyWavelets' decomposition filters (`pywt.Wavelet(name).dec_lo / dec_hi`, default
  Haar), used as a true convolution y_t = Σ_i f[i]·a_{t − i·2^k}: in causal mode no output looks
  ahead, and it is pywt's own convention (Haar level 1: lo_t = (a_t + a_{t−1})/√2,
  hi_t = (a_{t−1} − a_t)/√2, with a_{−1} = 0). They are buffers, not parameters.
- Bidirectional mode is symmetric: each level is the mean of the causal filter and its
  time-reversed mirror (it looks (K−1)·2^k positions both ways; Haar's low-pass becomes
  [1, 2, 1]/(2√2) around t).
- Padding: the wave output is zeroed at pad positions and every level is re-zeroed there, so the
  filters see exactly the zeros a sequence run alone sees beyond its ends (left or right pads).
- Gate init: g_0 = 1 and the wavelet bands 0, so the mixer starts as the plain wave mixer and
  learns how much of each scale to add (the band gates get gradients from the first step).
  Parameters added over the wave mixer: (levels + 2)·D (`added_params`): 256 per layer for the
  tiny preset (D=64, levels 2), 500,544 parameters in all vs 500,032 for wave_modulation.
- Measured once (tiny preset, JSQuAD offline, 300k tokens, eval_limit=300, CPU, seed 0, defaults):
  best dev loss / eval ppl 6.187 / 358, vs wave_modulation 6.193 / 360 and attention 6.164 / 347:
  at this budget the wavelet stage neither helps nor hurts measurably.
- Inference state (`WaveletState`, causal decoding): the wave's running sums plus, per level, the
  last (K−1)·2^k values of a_k per channel, in a ring buffer: a step reads the K−1 taps it needs
  at slots (t − i·2^k) mod (K−1)·2^k and overwrites the oldest. Left pads are zeros in the buffer,
  exactly the zeros the forward sees before a sequence's start. O(levels·K·D) per step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pywt
import torch
import torch.nn as nn
import torch.nn.functional as F

from mixers import Mixer, MixingFlops, register
from mixers.wave import WaveCore, WaveOptions, WaveState


def wavelet_filters(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dec_lo, dec_hi) of a PyWavelets wavelet as fp32 tensors (K,); a clear error for a bad name."""
    try:
        w = pywt.Wavelet(name)
    except ValueError:
        raise ValueError(f"unknown wavelet {name!r}; e.g. {', '.join(pywt.wavelist(kind='discrete')[:8])}, ...") from None
    return torch.tensor(w.dec_lo, dtype=torch.float32), torch.tensor(w.dec_hi, dtype=torch.float32)


def causal_filter(x: torch.Tensor, f: torch.Tensor, dilation: int) -> torch.Tensor:
    """Depthwise causal convolution y_t = Σ_i f[i]·x_{t − i·dilation} (zeros before the start).

    x: (B, T, D), f: (K,) -> (B, T, D). Written as K shifted multiply-adds rather than a depthwise
    conv1d (the same numbers): elementwise work that torch.compile fuses and traces for any T, where
    inductor's CPU convolution backward specialised to each length and recompiled the model at every
    new batch shape, inside the budgeted clock (tests/test_compile.py).
    """
    T, K = x.shape[1], f.numel()
    xp = F.pad(x, (0, 0, (K - 1) * dilation, 0))  # (B, (K-1)·d + T, D): zeros in front of the sequence
    f = f.to(x.dtype)
    y = xp[:, (K - 1) * dilation : (K - 1) * dilation + T] * f[0]
    for i in range(1, K):  # tap i reads x_{t - i·d}
        start = (K - 1 - i) * dilation
        y = y + xp[:, start : start + T] * f[i]
    return y


def symmetric_filter(x: torch.Tensor, f: torch.Tensor, dilation: int) -> torch.Tensor:
    """Mean of the causal filter and its time-reversed mirror: looks (K−1)·dilation both ways."""
    return 0.5 * (causal_filter(x, f, dilation) + causal_filter(x.flip(1), f, dilation).flip(1))


@dataclass
class WaveletState:
    core: WaveState
    rings: list[torch.Tensor]  # per level k: (B, (K-1)·2^k, D) fp32, a_k at time s in slot s mod length
    t: int  # positions so far, pads included (the ring index of the next one)


@register("wave_wavelet")
class WaveWavelet(Mixer):
    @dataclasses.dataclass
    class Options(WaveOptions):
        op: str = "modulation"  # the wave combination: interference | modulation
        wavelet: str = "haar"  # any discrete PyWavelets name (haar, db2, sym4, ...)
        levels: int = 2  # dilations 1, 2, ..., 2^(levels-1)

    def __init__(self, d_model: int, causal: bool, opts=None, proj_norm: bool = False):
        super().__init__(d_model, causal, opts, proj_norm)
        if self.opts.levels < 1:
            raise ValueError(f"wave_wavelet: levels must be >= 1, got {self.opts.levels}")
        self.core = WaveCore(d_model, causal, self.opts.op, self.opts, self.proj_norm_layer)
        lo, hi = wavelet_filters(self.opts.wavelet)
        self.register_buffer("lo", lo, persistent=False)
        self.register_buffer("hi", hi, persistent=False)
        gate = torch.zeros(self.opts.levels + 2, d_model)  # [identity, d_1 .. d_L, a_L] x channels
        gate[0] = 1.0
        self.gate = nn.Parameter(gate)
        # a per-channel gain, like a norm's weight: weight decay would pull the identity path (1 at init)
        # toward 0 for no reason but its shape, so it opts out (the trainer reads this flag)
        self.gate._no_weight_decay = True  # type: ignore[attr-defined]

    @property
    def added_params(self) -> int:
        """Parameters on top of the wave mixer (the per-channel gate)."""
        return self.gate.numel()

    def bands(self, h: torch.Tensor, pad_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """[h, d_1, ..., d_L, a_L], each (B, T, D), computed in fp32 with pads held at zero."""
        return self._cascade(h, pad_mask)[0]

    def _cascade(self, h: torch.Tensor, pad_mask: torch.Tensor | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(bands, [a_0, ..., a_{L-1}]): the bands and the input of every level."""
        keep = None if pad_mask is None else pad_mask[..., None].float()
        filt = causal_filter if self.causal else symmetric_filter
        a = h.float() if keep is None else h.float() * keep
        out, inputs = [a], []
        for k in range(self.opts.levels):
            inputs.append(a)
            d, a = filt(a, self.hi, 2**k), filt(a, self.lo, 2**k)
            if keep is not None:
                d, a = d * keep, a * keep
            out.append(d)
        out.append(a)
        return out, inputs

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.core(x, pad_mask)  # (B, T, D)
        bands = torch.stack(self.bands(h, pad_mask))  # (L+2, B, T, D)
        y = (bands * self.gate.float()[:, None, None, :]).sum(0)
        return y.to(h.dtype)

    decode_path = "state"
    decode_backend = "torch_step"

    def _mix(self, bands: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """Σ_b g_b ⊙ band_b over the stacked bands' first axis."""
        return (torch.stack(bands) * self.gate.float()[:, None, None, :]).sum(0).to(dtype)

    @torch.no_grad()
    def prefill(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, WaveletState]:
        """Outputs of a prompt (B, T, D), and the last (K−1)·2^k inputs of every level (zeros before the start)."""
        self._check_causal()
        B, T, D = x.shape
        h, core = self.core.prefill(x, pad_mask)
        bands, inputs = self._cascade(h, pad_mask)
        K, rings = self.lo.numel(), []
        for k, a in enumerate(inputs):
            L = (K - 1) * 2**k
            last = torch.cat([a.new_zeros(B, L, D), a], dim=1)[:, -L:]  # a_k at times T-L .. T-1
            rings.append(torch.roll(last, T % L, dims=1))  # time s -> slot s mod L
        return self._mix(bands, h.dtype), WaveletState(core, rings, T)

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, state: WaveletState | None = None) -> tuple[torch.Tensor, WaveletState]:
        """One causal position: x_t (B, D) -> y_t (B, D); the rings advance by one slot."""
        self._check_causal()
        if state is None:
            state = self._empty(x_t)
        h, core = self.core.step(x_t, state.core)
        K, t = self.lo.numel(), state.t
        a = h.float()
        bands = [a]
        for k, ring in enumerate(state.rings):
            L, dil = ring.shape[1], 2**k
            taps = torch.stack([a] + [ring[:, (t - i * dil) % L] for i in range(1, K)], dim=1)  # (B, K, D)
            d = (taps * self.hi.view(1, K, 1)).sum(1)
            ring[:, t % L] = a  # overwrites a_k at t − L, the oldest tap, already read
            a = (taps * self.lo.view(1, K, 1)).sum(1)
            bands.append(d)
        bands.append(a)
        return self._mix([b[:, None] for b in bands], h.dtype)[:, 0], WaveletState(core, state.rings, t + 1)

    def _empty(self, x_t: torch.Tensor) -> WaveletState:
        B, D = x_t.shape
        K = self.lo.numel()
        rings = [x_t.new_zeros(B, (K - 1) * 2**k, D, dtype=torch.float32) for k in range(self.opts.levels)]
        return WaveletState(self.core.empty_state(B, x_t.device), rings, 0)

    def mixing_flops(self, seq_len: float) -> MixingFlops:
        """All elementwise, constant in T: 3 x forward, per token and channel (K filter taps, L levels):

        - the wave core: `WaveCore.forward_flops_per_channel`
        - per level, two filters (hi, lo): a causal K-tap filter is K multiplies and K − 1 adds
          (2K − 1); a bidirectional level is the mean of the filter and its mirror, one symmetric
          filter of 2K − 1 taps (the 1/2 folded into the taps): 4K − 3
        - the gate: L + 2 bands, each times its per-channel gate, summed: 2L + 3

        Left out: pad re-zeroing and the fp32 casts. The causal filter is K shifted multiply-adds, not a
        conv operator, so FlopCounterMode sees none of this (tests/test_flops.py checks it sees nothing).
        """
        K, L = self.lo.numel(), self.opts.levels
        taps = 2 * K - 1 if self.causal else 4 * K - 3
        per_channel = self.core.forward_flops_per_channel() + L * 2 * taps + (2 * L + 3)
        return MixingFlops(matmul=0.0, elementwise=3.0 * self.d_model * per_channel)

    def state_floats(self, seq_len: int) -> int:
        K = self.lo.numel()
        history = sum((K - 1) * 2**k for k in range(self.opts.levels)) * self.d_model
        return self.core.state_floats() + history
