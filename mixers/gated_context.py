"""Gated context: one fixed-size context vector carried token by token (the "New-LLM" design).

    context_t = f_t ⊙ context_{t-1} + (1 - f_t) ⊙ u_t          f_t = σ(W_f x_t + b_f),  u_t = W_u x_t
    y_t       = W_out( σ(W_o x_t) ⊙ norm(context_t) )

A GRU-style coupled gate (the same f_t forgets the old context and admits the new candidate, so the
context is a weighted average of past candidates and its size stays bounded without a norm inside
the recurrence), an LSTM-style output gate, and layer normalisation (RMSNorm) on the read-out.
The token's output reads only from the context: everything this layer knows about the past is the
`d_ctx` numbers of `context_t` (see `state_floats`).

Why the gates see the token only, never the state: the update is then *linear in the state*,
c_t = a_t c_{t-1} + b_t with a_t, b_t computed from x_t alone, and a first-order linear recurrence
is an associative scan. On CUDA it runs as a Triton walk (mixers/_linear_scan_triton.py: the state in a
register, a few launches per layer, long sequences cut into chunks walked in parallel); elsewhere as a
log-depth pairwise scan (`pairwise_scan`): O(T) work, log2(T) rounds of whole-tensor ops, no Python
loop over time. Both are exact fp32 products of gates in [0, 1]. We prefer them to the alternatives:
- cumulative log-gates (c_t = e^{L_t} Σ_s e^{-L_s} b_s): e^{-L_s} overflows, and even in log space
  L_t reaches -10^3 over a few hundred tokens where fp32 keeps only ~1e-4 of absolute precision, so
  outputs drift by ~1e-4 relative; chunking fixes that but needs a (C × C × d_ctx) decay tensor per
  chunk for per-channel gates;
- a loop fused with torch.compile: still T sequential steps, and a compile per sequence length
  (the Triton walk is that loop written once as a kernel, for any length).
A norm *inside* the recurrence (norm(c_{t-1}) in the update, as some New-LLM variants do) would make
it non-linear in the state and force a sequential loop; we normalise the read-out instead, which
also undoes the small magnitude of the context in its first steps, when (1 - f) has admitted little.

Bidirectional mode (masked diffusion) runs a second, backward scan with its own projections and
concatenates both contexts before the output projection, like a BiLSTM: the future and the past
play different roles, so sharing the gate timescales between directions would be a constraint with
no reason behind it. Padding (left or right) is neutral: at a pad the gate is forced to f = 1 and the
input to 0, so the context passes through unchanged and no pad ever feeds or decays it.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from mixers import Mixer, MixingFlops, register
from mixers import _linear_scan_triton
from mixers._layers import RMSNorm


@torch.compiler.disable
def pairwise_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve c_t = a_t * c_{t-1} + b_t (c_{-1} = 0) along dim 1 in log2(T) rounds.

    a, b: (B, T, ...) -> c: (B, T, ...). Pairs (2i, 2i+1) are folded into one step of a recurrence
    half as long, c_{2i+1} = (a_{2i+1} a_{2i}) c_{2i-1} + (a_{2i+1} b_{2i} + b_{2i+1}), which is solved
    recursively; the even positions then follow from their odd predecessor. Total work is O(T).

    It runs eagerly inside a torch.compile'd model (`torch.compiler.disable`): its recursion branches on
    the parity of T at every level, so a traced copy would guard on those parities and recompile for
    nearly every new batch length, inside the budgeted clock (tests/test_compile.py). Eagerly it is
    ~6 log2(T) whole-tensor calls, and the layers around it still compile once for all lengths.
    """
    T = a.shape[1]
    if T <= 1:  # c_0 = b_0; and an empty prompt (T = 0) has no context: folding it would never end
        return b
    if T % 2:  # an identity step (a=1, b=0) at the end makes the length even; dropped afterwards
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        b = torch.cat([b, torch.zeros_like(b[:, :1])], dim=1)
    a0, a1 = a[:, 0::2], a[:, 1::2]
    b0, b1 = b[:, 0::2], b[:, 1::2]
    odd = pairwise_scan(a1 * a0, a1 * b0 + b1)  # c_1, c_3, c_5, ...
    prev = torch.cat([torch.zeros_like(odd[:, :1]), odd[:, :-1]], dim=1)  # c_{-1}, c_1, c_3, ...
    even = a0 * prev + b0  # c_0, c_2, c_4, ...
    # contiguous: for odd T the slice would leave a stride of T + 1 rows, which a compiled caller guards on
    return torch.stack((even, odd), dim=2).flatten(1, 2)[:, :T].contiguous()


def loop_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same recurrence one step at a time: the reference the fast path is tested against."""
    c = b.new_zeros(b.shape[:1] + b.shape[2:])  # c_{-1} = 0
    out = [b[:, :0]]  # (B, 0, ...): an empty prompt gives an empty context
    for t in range(a.shape[1]):
        c = a[:, t] * c + b[:, t]
        out.append(c[:, None])
    return torch.cat(out, dim=1)


# option `scan` -> the function; the row's backend is "<name>_scan"
SCANS = {"pairwise": pairwise_scan, "loop": loop_scan, "triton": _linear_scan_triton.linear_scan_triton}


@register("gated_context")
class GatedContext(Mixer):
    @dataclasses.dataclass
    class Options:
        d_ctx: int = 0  # context-vector size per direction; 0 means d_model
        tau_min: float = 2.0  # forget gates start with memory timescales 1/(1-f) log-spaced in
        tau_max: float = 256.0  # [tau_min, tau_max] tokens, one per context channel
        # auto: "triton" on CUDA when Triton imports (mixers/_linear_scan_triton.py: one walk, a few launches
        # a layer), else "pairwise" (parallel, log-depth) | loop (step-by-step reference)
        scan: str = "auto"

    def __init__(self, d_model: int, causal: bool, opts=None, proj_norm: bool = False):
        super().__init__(d_model, causal, opts, proj_norm)
        o = self.opts
        if o.scan not in ("auto", *SCANS):
            raise ValueError(f"gated_context: scan must be one of auto, {', '.join(SCANS)}, got {o.scan!r}")
        if not 1.0 < o.tau_min <= o.tau_max:
            raise ValueError(f"gated_context: need 1 < tau_min <= tau_max, got {o.tau_min}, {o.tau_max}")
        self.n_dir = 1 if causal else 2
        self.d_ctx = N = o.d_ctx or d_model
        # candidate u, forget-gate logits and output gate for every direction, from the token alone
        self.in_proj = nn.Linear(d_model, self.n_dir * 3 * N, bias=False)
        # 1-D so it is not weight-decayed towards f = 0.5 (the optimiser decays tensors of dim >= 2)
        tau = torch.logspace(math.log10(o.tau_min), math.log10(o.tau_max), N)
        self.gate_bias = nn.Parameter(torch.log(tau - 1).repeat(self.n_dir))  # σ(bias) = 1 - 1/τ
        # HybridNorm: normalise the input projections (identity unless --norm hybrid)
        self.u_norm, self.f_norm, self.o_norm = (self.proj_norm_layer(N) for _ in range(3))
        self.c_norm = RMSNorm(N)  # read-out layer normalisation
        self.out = nn.Linear(self.n_dir * N, d_model, bias=False)
        self.backend = f"{self._scan_name(torch.device('cpu'))}_scan"

    def _scan_name(self, device: torch.device) -> str:
        """The scan this call runs: "auto" is the Triton walk where it runs, else the pairwise scan."""
        if self.opts.scan != "auto":
            return self.opts.scan
        return "triton" if device.type == "cuda" and _linear_scan_triton.available(device) else "pairwise"

    def _gates(self, x: torch.Tensor, pad_mask: torch.Tensor | None):
        """x (B, T, D) -> a, b (B, T, n_dir, N) fp32 recurrence coefficients; o (B, T, n_dir, N) gate."""
        B, T, _ = x.shape
        u, f, o = self.in_proj(x).view(B, T, self.n_dir, 3, self.d_ctx).unbind(3)
        u, o = self.u_norm(u), self.o_norm(o)
        f = self.f_norm(f).float() + self.gate_bias.view(self.n_dir, self.d_ctx)
        a = torch.sigmoid(f)  # forget gate f_t
        b = torch.sigmoid(-f) * u.float()  # (1 - f_t) u_t, with 1 - f computed without cancellation
        if pad_mask is not None:  # pads neither feed nor decay the context
            real = pad_mask[:, :, None, None]
            a = torch.where(real, a, torch.ones_like(a))
            b = torch.where(real, b, torch.zeros_like(b))
        return a, b, o

    def _read(self, c: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """c, o (B, T, n_dir, N) -> (B, T, D)."""
        h = torch.sigmoid(o) * self.c_norm(c).to(o.dtype)
        return self.out(h.flatten(-2))

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        a, b, o = self._gates(x, pad_mask)
        name = self._scan_name(x.device)
        scan, self.backend = SCANS[name], f"{name}_scan"
        if not self.causal:  # backward context: the same scan on the reversed sequence, both in one call
            a, b = (torch.stack((t[:, :, 0], t[:, :, 1].flip(1)), dim=2) for t in (a, b))
        c = scan(a, b)  # contexts (B, T, n_dir, N)
        if not self.causal:
            c = torch.stack((c[:, :, 0], c[:, :, 1].flip(1)), dim=2)
        return self._read(c, o)

    decode_path = "state"
    decode_backend = "torch_step"

    @torch.no_grad()
    def prefill(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A prompt (B, T, D) (left pads pass the context through) -> (outputs (B, T, D), context (B, d_ctx))."""
        self._check_causal()
        a, b, o = self._gates(x, pad_mask)
        c = SCANS[self._scan_name(x.device)](a[:, :, 0], b[:, :, 0])  # (B, T, N)
        last = c[:, -1] if c.shape[1] else c.new_zeros(c.shape[0], self.d_ctx)
        return self._read(c[:, :, None], o), last

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One token of causal decoding: x_t (B, D), context (B, d_ctx) or None -> (y_t (B, D), context).

        The whole memory of the past is `context`, of `state_floats(T)` numbers for any T.
        """
        if not self.causal:
            raise RuntimeError("gated_context: step() decodes left to right; a bidirectional mixer has no step")
        a, b, o = self._gates(x_t[:, None], None)  # (B, 1, 1, N)
        c = b[:, 0, 0] if context is None else a[:, 0, 0] * context.float() + b[:, 0, 0]
        return self._read(c[:, None, None], o)[:, 0], c

    def mixing_flops(self, seq_len: float) -> MixingFlops:
        """All elementwise, constant in T: per token, direction and context channel, forward: the gate
        bias (1 add), (1 − f)·u (2), the recurrence f·c + b (a multiply-add, 2), the output gate
        σ(o)·norm(c) (1): 6, x3 for forward + backward = 18 * d_ctx * n_dir.

        Left out: sigmoids and the RMSNorm (activations, norms), pad masking, and the pairwise scan's
        extra products (it composes pairs of steps, about 5 FLOPs per element where the recurrence
        needs 2): an implementation detail of a log-depth scan, not model FLOPs.
        """
        return MixingFlops(matmul=0.0, elementwise=18.0 * self.d_ctx * self.n_dir)

    def state_floats(self, seq_len: int) -> int:
        """The context vector(s): d_ctx numbers per direction, whatever the length."""
        return self.n_dir * self.d_ctx
