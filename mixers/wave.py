"""Wave Network token mixers (Zhang & Sheng, arXiv 2411.02674): `wave_interference`, `wave_modulation`.

The paper represents every token as a complex vector whose *magnitude* is the global semantics of
the text and whose *phase* is the token's relation to it, then mixes two such representations by
wave interference (complex addition) or wave modulation (element-wise complex multiplication).
There is no attention: the only place where tokens meet is the per-dimension energy sum G.

Paper step -> code (see `wave_representation` and `WaveCore.forward`):

1. two linear maps of the input give real token vectors w¹, w² (B, T, D)       `in_proj`
2. global semantics per dimension  G_k = sqrt(Σ_j w_{j,k}²)                       `energy_sums`
3. phase  α_{j,k} = arctan2(sqrt(1 − (w_{j,k}/G_k)²), w_{j,k}/G_k)
4. complex token  Z_j = G ⊙ e^{iα_j}
   Steps 3-4 are computed without trigonometry: G·cos α = w and G·sin α = sqrt(G² − w²), so
   Z_j = w_j + i·sqrt(G² − w_j²). The quantity under the root is the energy of the *other* tokens
   in the window, summed directly (never G² − w², which cancels catastrophically when one token
   dominates), clamped at 0 and offset by `eps` so the root and its gradient stay finite for an
   all-zero prefix and for |w| = G (the first token of a causal window). Hence |Z|² = G² + eps.
5. interference  Z = Z¹ + Z²  |  modulation  Z = Z¹ ⊙ Z²                           `COMBINE`
6. back to real vectors, then the block's output map                               `READOUT`, `out`

Choices the paper leaves open (each kept as an option):

- **Causal form** (`causal=True`): the paper's G sums over the whole text, which would let every
  position see the future under an autoregressive objective. Here G_t² = Σ_{j≤t} w_j² is a running
  sum of squares (O(T), a state of D numbers per stream at inference). Bidirectional mode uses the
  paper's global G, summed over real (unpadded) tokens only.
- **Scale** (`scale`): with the paper's G ("sum") |Z| grows like sqrt(window length) while
  Re Z = w stays O(1): w/G ≈ 1/sqrt(T), every phase sits near π/2, and in causal mode the
  output size depends on the position. "rms" (default) divides each complex token by
  sqrt(number of real tokens in the window), so |Z_k| is the RMS of w_k over the window and
  the phases are the paper's, unchanged. "unit" divides by sqrt(mean_k G_k²) instead (magnitudes
  average 1 over dimensions, at any input scale). Measured (tiny preset, JSQuAD offline,
  300k tokens, eval_limit=300, CPU, seed 0, RoPE phase on), best dev loss / eval ppl:
  interference rms 6.450 / 497, unit 6.735 / 722, sum 6.778 / 720;
  modulation rms 6.193 / 360, unit 6.817 / 794, sum 6.683 / 673.
- **Readout** (`readout`): how the combined complex vector becomes real again is where the public
  re-implementations disagree (|Z| then LayerNorm; separate FFNs on Re Z and Im Z), and the text
  of the paper available to us did not settle it. "cartesian" (default) feeds [Re Z, Im Z] to one
  Linear(2D, D), which can express either part; "magnitude" uses |Z|; "real" uses Re Z. Note
  Re(Z¹ + Z²) = w¹ + w² is a linear map of the token itself, so interference with readout="real"
  mixes nothing across tokens and is refused; |Z¹ ⊙ Z²| = |Z¹||Z²| carries only window energies.
- **RoPE as phase** (`rope_phase`, the seed design): multiply Z_t by e^{iθ_t} (RoPE in complex
  form, one frequency base^(-k/D) per dimension k, θ_t from real-token positions), i.e. add θ_t
  to the phase of both waves before they are combined; |Z| = G is unchanged. Without it the
  mixer has no position signal except the length of the causal window (in bidirectional mode
  it is permutation-equivariant). On by default because it helped on the tiny task (tiny
  preset, JSQuAD offline, 300k tokens, eval_limit=300, CPU, scale rms), best dev loss / eval
  ppl, seeds 0 and 1:
  interference on 6.450 / 497, 6.305 / 433  vs off 6.603 / 613, 6.628 / 659;
  modulation   on 6.193 / 360, 6.145 / 353  vs off 6.225 / 374, 6.177 / 362.
  At the 20k-token budget of the smoke grid (15 steps, eval_limit=300, seed 0) they are within
  noise: interference 7.274 / 1510 vs 7.273 / 1514; modulation 7.243 / 1463 vs 7.247 / 1472.

Decoding (causal): the state is `WaveState`, the running sums of squares of both waves and the number
of real tokens so far (the rms scale and the RoPE phase of the next token, whose position is that
count). A step is O(D), whatever the context: Z_t = w_t + i·sqrt(S_{t-1}) with S the running sum.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from mixers import Mixer, MixingFlops, register
from mixers._layers import rope_angles, rope_for

Complex = tuple[torch.Tensor, torch.Tensor]  # (real part, imaginary part), each (B, T, D), fp32


# --------------------------------------------------------------------------------------------
# The representation (paper steps 2-4), usable on its own (tests check Re Z = w, |Z| = G).
# --------------------------------------------------------------------------------------------


def energy_sums(w: torch.Tensor, pad_mask: torch.Tensor | None, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Window energies of w (B, T, D): (G², energy of the other tokens of the window), both (B, T, D).

    causal: the window of position t is the prefix j <= t (running sum of squares, O(T)).
    bidirectional: the window is every real token. Pads (pad_mask False) contribute nothing.
    """
    sq = w.float().pow(2)
    if pad_mask is not None:
        sq = sq * pad_mask[..., None]
    incl = sq.cumsum(1)  # (B, T, D) Σ_{j<=t}
    before = torch.cat([torch.zeros_like(sq[:, :1]), incl[:, :-1]], 1)  # Σ_{j<t}, no cancellation
    if causal:
        return incl, before
    total = incl[:, -1:]  # (B, 1, D)
    rev = sq.flip(1).cumsum(1).flip(1)  # Σ_{j>=t}
    after = torch.cat([rev[:, 1:], torch.zeros_like(sq[:, :1])], 1)  # Σ_{j>t}
    return total.expand_as(sq), before + after


def wave_representation(
    w: torch.Tensor, pad_mask: torch.Tensor | None, causal: bool, eps: float = 1e-6
) -> tuple[Complex, torch.Tensor]:
    """The paper's complex token Z_j = G ⊙ e^{iα_j} with α = arctan2(sqrt(1-(w/G)²), w/G).

    w: (B, T, D) real, zero at pads -> ((Re Z, Im Z), G²), each (B, T, D) fp32, with Re Z = w and
    |Z|² = G² + eps. Computed as Z = w + i·sqrt(energy of the other tokens of the window): the same
    number, no trigonometry, and finite (value and gradient) for all-zero inputs and for |w| = G.
    """
    g2, others = energy_sums(w, pad_mask, causal)  # step 2 (squared)
    im = (others.clamp_min(0.0) + eps).sqrt()  # steps 3-4: G·sin α = sqrt(G² - w²); G·cos α = w
    return (w.float(), im), g2


def interfere(z1: Complex, z2: Complex) -> Complex:
    """Wave interference: complex addition, |Z|² = G¹² + G²² + 2G¹G² cos(α¹ − α²)."""
    return z1[0] + z2[0], z1[1] + z2[1]


def modulate(z1: Complex, z2: Complex) -> Complex:
    """Wave modulation: element-wise complex product, Z¹ ⊙ Z² = G¹G² e^{i(α¹ + α²)}."""
    (a, b), (c, d) = z1, z2
    return a * c - b * d, a * d + b * c


COMBINE: dict[str, Callable[[Complex, Complex], Complex]] = {"interference": interfere, "modulation": modulate}

# complex (B, T, D) -> real features (B, T, width * D); width is the multiple of D the readout gives
READOUT: dict[str, tuple[int, Callable[[Complex, float], torch.Tensor]]] = {
    "cartesian": (2, lambda z, eps: torch.cat(z, -1)),
    "real": (1, lambda z, eps: z[0]),
    "magnitude": (1, lambda z, eps: (z[0].square() + z[1].square() + eps).sqrt()),
}
SCALES = ("rms", "unit", "sum")


def rotate(z: Complex, cos: torch.Tensor, sin: torch.Tensor) -> Complex:
    """Z ⊙ e^{iθ}: adds θ (B, T, D) to the phase; the magnitude is unchanged."""
    re, im = z
    return re * cos - im * sin, re * sin + im * cos


# --------------------------------------------------------------------------------------------
# The mixer core shared by wave_interference, wave_modulation and wave_wavelet.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class WaveOptions:
    rope_phase: bool = True  # add a RoPE rotation θ_t to the phase (seed design); see module doc
    rope_base: float = 10000.0
    scale: str = "rms"  # rms | unit | sum (the paper's raw G): see module doc
    readout: str = "cartesian"  # cartesian | magnitude | real: complex -> real, see module doc
    eps: float = 1e-6  # added to energies under square roots


@dataclass
class WaveState:
    """Causal decoding state of a WaveCore: 2·D + 1 numbers per sequence (`state_floats`)."""

    s1: torch.Tensor  # (B, D) fp32: Σ w¹² over the real tokens so far
    s2: torch.Tensor  # (B, D) fp32: Σ w²² likewise
    n_real: torch.Tensor  # (B,) long: real tokens so far = the position of the next token


class WaveCore(nn.Module):
    """x (B, T, D) -> two waves -> combined by `op` -> real (B, T, D). Holds all the parameters:
    in_proj (D -> 2D) and out (width·D -> D): 4·D² for the default cartesian readout, the same as
    attention's QKV + output maps."""

    def __init__(self, d_model: int, causal: bool, op: str, opts: WaveOptions, norm: Callable[[int], nn.Module]):
        super().__init__()
        if op not in COMBINE:
            raise ValueError(f"unknown wave op {op!r}; choose from {', '.join(COMBINE)}")
        if opts.readout not in READOUT:
            raise ValueError(f"unknown readout {opts.readout!r}; choose from {', '.join(READOUT)}")
        if opts.scale not in SCALES:
            raise ValueError(f"unknown scale {opts.scale!r}; choose from {', '.join(SCALES)}")
        if op == "interference" and opts.readout == "real":
            raise ValueError("interference with readout='real' is Re(Z¹+Z²) = w¹+w², a per-token linear map: "
                             "no mixing across tokens; use readout='cartesian' or 'magnitude'")
        self.d_model, self.causal, self.op, self.opts = d_model, causal, op, opts
        self.in_proj = nn.Linear(d_model, 2 * d_model, bias=False)  # paper step 1: w¹, w²
        self.norm1, self.norm2 = norm(d_model), norm(d_model)  # HybridNorm on the projections
        width = READOUT[opts.readout][0]
        self.out = nn.Linear(width * d_model, d_model, bias=False)

    def _wave(self, w: torch.Tensor, pad_mask: torch.Tensor | None, inv_len: torch.Tensor | None,
              rope: tuple[torch.Tensor, torch.Tensor] | None) -> Complex:
        """One wave (paper steps 2-4), scaled, optionally rotated: w (B, T, D) -> Z (B, T, D) complex."""
        if pad_mask is not None:
            w = w * pad_mask[..., None]  # pads carry no energy
        z, g2 = wave_representation(w, pad_mask, self.causal, self.opts.eps)
        if self.opts.scale == "unit":  # the window's energy per dimension: phases untouched
            c = (g2.mean(-1, keepdim=True) + self.opts.eps).rsqrt()  # (B, T, 1)
            z = (z[0] * c, z[1] * c)
        elif self.opts.scale == "rms":  # |Z_k| = RMS of w_k over the window
            z = (z[0] * inv_len, z[1] * inv_len)
        if rope is not None:
            z = rotate(z, *rope)  # RoPE as phase: α -> α + θ_t
        return z

    def _inv_sqrt_len(self, pad_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
        """1/sqrt(number of real tokens in each position's window): (B, T, 1)."""
        m = torch.ones(B, T, device=device) if pad_mask is None else pad_mask.float()
        n = m.cumsum(1) if self.causal else m.sum(1, keepdim=True).expand(B, T)
        return n.clamp_min(1.0).rsqrt()[..., None]

    def _waves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Paper step 1: x (..., D) -> w¹, w² (..., D), projections normalised under HybridNorm."""
        w1, w2 = self.in_proj(x).chunk(2, -1)
        return self.norm1(w1), self.norm2(w2)

    def _read(self, z1: Complex, z2: Complex, dtype: torch.dtype) -> torch.Tensor:
        """Paper steps 5-6: combine the two waves, back to real features, output map."""
        z = COMBINE[self.op](z1, z2)
        feats = READOUT[self.opts.readout][1](z, self.opts.eps)  # fp32, (..., width*D)
        return self.out(feats.to(dtype))

    def _forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The output (B, T, D) and the two waves w¹, w² (B, T, D) it was computed from."""
        B, T, D = x.shape
        w1, w2 = self._waves(x)  # step 1: each (B, T, D)
        inv_len = self._inv_sqrt_len(pad_mask, B, T, x.device) if self.opts.scale == "rms" else None
        rope = None
        if self.opts.rope_phase:
            # D frequencies base^(-k/D): rope_angles over 2D "pairs" gives exactly D angles, fp32
            rope = rope_for(pad_mask, B, T, 2 * D, self.opts.rope_base, x.device)  # cached angles
        z1 = self._wave(w1, pad_mask, inv_len, rope)
        z2 = self._wave(w2, pad_mask, inv_len, rope)
        return self._read(z1, z2, x.dtype), w1, w2

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._forward(x, pad_mask)[0]

    @torch.no_grad()
    def prefill(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, WaveState]:
        """The forward's outputs for a prompt (B, T, D) and the running sums at its end."""
        B, T, _ = x.shape
        y, w1, w2 = self._forward(x, pad_mask)
        keep = torch.ones(B, T, device=x.device) if pad_mask is None else pad_mask.float()
        sums = [(w.float().pow(2) * keep[..., None]).sum(1) for w in (w1, w2)]  # (B, D) each
        return y, WaveState(sums[0], sums[1], keep.sum(1).long())

    def empty_state(self, B: int, device) -> WaveState:
        z = torch.zeros(B, self.d_model, device=device)
        return WaveState(z, z.clone(), torch.zeros(B, dtype=torch.long, device=device))

    def _wave_step(self, w: torch.Tensor, s: torch.Tensor, inv_len: torch.Tensor | None,
                   rope: tuple[torch.Tensor, torch.Tensor] | None) -> Complex:
        """`_wave` for one causal position: w (B, D), s = Σ w² of the tokens before it (B, D)."""
        wf = w.float()
        z = (wf, (s.clamp_min(0.0) + self.opts.eps).sqrt())  # Im Z = sqrt(energy of the others) (+ eps)
        if self.opts.scale == "unit":
            c = ((s + wf.square()).mean(-1, keepdim=True) + self.opts.eps).rsqrt()
            z = (z[0] * c, z[1] * c)
        elif self.opts.scale == "rms":
            z = (z[0] * inv_len, z[1] * inv_len)
        return z if rope is None else rotate(z, *rope)

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, state: WaveState) -> tuple[torch.Tensor, WaveState]:
        """One causal position: x_t (B, D) at position `state.n_real` -> (y_t (B, D), the updated state)."""
        D = self.d_model
        w1, w2 = self._waves(x_t)  # (B, D) each
        n = state.n_real
        inv_len = (n + 1).float().rsqrt()[:, None] if self.opts.scale == "rms" else None
        rope = None
        if self.opts.rope_phase:
            cos, sin = rope_angles(n[:, None], 2 * D, self.opts.rope_base)  # (B, 1, D)
            rope = (cos[:, 0], sin[:, 0])
        z1 = self._wave_step(w1, state.s1, inv_len, rope)
        z2 = self._wave_step(w2, state.s2, inv_len, rope)
        y = self._read(z1, z2, x_t.dtype)
        return y, WaveState(state.s1 + w1.float().square(), state.s2 + w2.float().square(), n + 1)

    def forward_flops_per_channel(self) -> int:
        """Forward FLOPs per token and channel of paper steps 2-6, all elementwise (the maps w¹, w² and
        `out` are nn.Linear, in 6N). Each add and multiply of the reference formula counts once:

        - per wave: w² (1); the window sum: causal, a running sum (1 add; Σ_{j<t} is the same sum one
          position earlier); bidirectional, the total (1 add) and the others' energy G² − w² (1);
          the scale: rms, Re and Im times 1/sqrt(n) (2); unit, the mean of G² over channels (1) and
          the same 2; sum, 0; the RoPE phase: a complex rotation (4 multiplies, 2 adds)
        - the combination: interference, 2 adds; modulation, a complex product (4 multiplies, 2 adds)
        - the readout: cartesian and real, 0 (a concatenation, a slice); magnitude, Re² + Im² (3)

        Left out: square roots (Im Z, |Z|) and rsqrt like activations; eps guards, clamps and pad masks;
        per-position scalars (1/sqrt(n), the RoPE angles: O(1) per token, cached); and the implementation's
        cancellation-free Σ_{j<t} + Σ_{j>t} (two more sums) in place of the bidirectional G² − w².
        """
        per_wave = 1 + (1 if self.causal else 2)
        per_wave += {"rms": 2, "unit": 3, "sum": 0}[self.opts.scale]
        per_wave += 6 if self.opts.rope_phase else 0
        combine = {"interference": 2, "modulation": 6}[self.op]
        readout = {"cartesian": 0, "real": 0, "magnitude": 3}[self.opts.readout]
        return 2 * per_wave + combine + readout

    def state_floats(self) -> int:
        """Running sums of squares per dimension for both waves (2D), plus a token count when the
        scale or the RoPE phase needs the position. Independent of the sequence length."""
        needs_count = self.opts.scale == "rms" or self.opts.rope_phase
        return 2 * self.d_model + int(needs_count)


class WaveMixer(Mixer):
    """A Mixer around one WaveCore; subclasses fix the combination `op`."""

    Options = WaveOptions
    op: str = "?"

    def __init__(self, d_model: int, causal: bool, opts=None, proj_norm: bool = False):
        super().__init__(d_model, causal, opts, proj_norm)
        self.core = WaveCore(d_model, causal, self.op, self.opts, self.proj_norm_layer)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.core(x, pad_mask)

    decode_path = "state"
    decode_backend = "torch_step"

    def prefill(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, WaveState]:
        self._check_causal()
        return self.core.prefill(x, pad_mask)

    def step(self, x_t: torch.Tensor, state: WaveState | None = None) -> tuple[torch.Tensor, WaveState]:
        self._check_causal()
        return self.core.step(x_t, state if state is not None else self.core.empty_state(x_t.shape[0], x_t.device))

    def state_floats(self, seq_len: int) -> int:
        return self.core.state_floats()

    def mixing_flops(self, seq_len: float) -> MixingFlops:
        """All elementwise, constant in T: 3 x d_model x `WaveCore.forward_flops_per_channel` (its
        docstring says what is counted); e.g. 78 * d_model for causal modulation with the defaults."""
        return MixingFlops(matmul=0.0, elementwise=3.0 * self.d_model * self.core.forward_flops_per_channel())


@register("wave_interference")
class WaveInterference(WaveMixer):
    """Two waves of the same tokens, added (interference)."""

    op = "interference"


@register("wave_modulation")
class WaveModulation(WaveMixer):
    """Two waves of the same tokens, multiplied element-wise (modulation)."""

    op = "modulation"
