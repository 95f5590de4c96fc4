"""Mamba (selective state space model, arXiv 2312.00752) as a token mixer, causal or bidirectional.

Per layer: in_proj -> (x, z); x -> short causal depthwise conv -> SiLU -> x_proj -> (dt, B, C);
Δ = softplus(dt_proj(dt) + dt_bias); the selective scan, per channel d and state n,

    h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] B_t[n] x_t[d],   A = -exp(A_log)
    y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] x_t[d]

then the gate y * SiLU(z) and out_proj. Several implementations compute this same function of the same
weights, and `self.backend` says which one ran:

- "mamba_ssm": on CUDA, when the optional `mamba-ssm` package imports (it needs its compiled
  extension), its fused `selective_scan_fn`; the conv uses `causal_conv1d_fn` when `causal-conv1d`
  imports too (and d_conv is 2..4), `causal_depthwise_conv` (K shifted multiply-adds) otherwise.
- "torch_parallel_scan": everywhere else (option scan="parallel", the default). The whole sequence
  is one log-depth, work-efficient parallel scan of the affine maps h -> a h + b, with a
  hand-written backward (the same scan run in reverse) that saves only the inputs
  (`selective_scan_parallel`): PyTorch calls grow as log2(T), so on a GPU the time per token stays
  flat in T instead of paying launch overhead per chunk.
- "torch_chunked_scan" (scan="chunked"): the previous path, a Python loop over chunks (the same
  parallel scan inside a chunk, the state carried between chunks, each chunk checkpointed); calls
  grow as T / chunk_size. Kept for comparison (benchmarks/mamba_scan.py).
- "torch_reference_scan" (scan="reference"): `selective_scan_reference`, the plain step-by-step
  loop, the ground truth the tests hold the other two to.

Bidirectional mode (masked diffusion): the forward scan plus a scan over the reversed sequence,
averaged (both gated by the same SiLU(z), so this is the mean taken before the gate). in_proj / gate / out_proj are shared by both directions; each direction has
its own conv, x_proj, dt_proj, A_log and D (as Caduceus' BiMamba with weight tying, arXiv
2403.03234). Why: the direction-specific parts are exactly what decides what "the past" means (the
conv kernel is asymmetric, the decay rates and the selection are learned per direction), and they
are small (about 10% of the block at d_model 256); the big projections carry token features that
need not depend on direction. `bidir_share=True` ties everything (a reversal-equivariant mixer).

Padding (`pad_mask`, True on real tokens, pads on the left or the right): pad inputs are zeroed
before the conv (so real tokens see the same zero history as an unpadded sequence), the conv output
(which would carry the conv bias) is zeroed again before the scan, and Δ is set to 0 at pads, which
makes a pad an identity step of the recurrence: no input and no decay of the state.

Precision: Δ, A and the whole scan run in fp32 whatever the autocast dtype (bf16 scans drift).

Decoding (`prefill` / `step`, causal): the state is `MambaState`, the last d_conv − 1 conv inputs and
the SSM state h (d_inner × d_state), the `state_floats` of the layer. `prefill` takes the prompt's
outputs from the reference forward and its final state from a closed form computed a chunk at a time
(`_final_state`), so the forward and its scan functions stay the one reference path. `step` is one
recurrence update in PyTorch, or mamba-ssm's `selective_state_update` kernel on CUDA when it imports.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

from mixers import Mixer, MixingFlops, _ops, _scan_triton, register


def load_fused_kernels() -> tuple[Callable | None, Callable | None]:
    """(selective_scan_fn, causal_conv1d_fn) from the optional CUDA packages, None for each absent one.

    Any exception means "absent": on a machine without the compiled extension `import mamba_ssm`
    itself fails (its selective_scan_interface imports `selective_scan_cuda` unconditionally), and
    a package built for another torch can fail with OSError or RuntimeError, not only ImportError.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:
        selective_scan_fn = None
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        causal_conv1d_fn = None
    return selective_scan_fn, causal_conv1d_fn


_selective_scan_fn, _causal_conv1d_fn = load_fused_kernels()

try:  # mamba-ssm's one-token state update (Triton, CUDA only); absent like the kernels above
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update as _selective_state_update
except Exception:
    _selective_state_update = None


# --------------------------------------------------------------------------------------------------
# The selective scan in PyTorch. Layout (B, T, ...) throughout; mamba-ssm's kernel wants (B, D, T).
# --------------------------------------------------------------------------------------------------


def _scan_dtype(*ts: torch.Tensor | None) -> torch.dtype:
    """fp32 whatever the input dtype (bf16 scans drift), float64 when any input is float64 (tests)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """D skip and SiLU(z) gate, exactly as mamba-ssm's selective_scan_fn applies them. (B, T, Di)."""
    if D is not None:
        y = y + u * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    return_last_state: bool = False,
):
    """The recurrence one position at a time (a Python loop over T): slow, obviously right.

    u, delta: (B, T, Di) with delta > 0 already (softplus applied); A: (Di, N); B, C: (B, T, N);
    D: (Di,); z: (B, T, Di); h0: (B, Di, N) initial state. Returns y (B, T, Di) fp32 (float64 for
    float64 inputs) [, h_T (B, Di, N)].
    """
    with torch.autocast(u.device.type, enabled=False):
        dt = _scan_dtype(u, delta, A, B, C, D, z, h0)
        u, delta, A, B, C = (t.to(dt) for t in (u, delta, A, B, C))
        h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1]) if h0 is None else h0.to(dt)
        ys = []
        for t in range(u.shape[1]):
            decay = torch.exp(delta[:, t, :, None] * A)  # (B, Di, N)
            h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
            ys.append((h * C[:, t, None, :]).sum(-1))  # (B, Di)
        y = torch.stack(ys, dim=1) if ys else u.new_zeros(u.shape)
        y = _finish(y, u, D, z)
    return (y, h) if return_last_state else y


def _prefix_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All states of h_t = a_t h_{t-1} + b_t (h_{-1} = 0) along dim 1, without a loop over t.

    A work-efficient odd-even (Blelloch-style) scan: the steps 2i and 2i+1 compose into one affine
    step (a_{2i+1} a_{2i}, a_{2i+1} b_{2i} + b_{2i+1}); the half-length problem is solved
    recursively, which gives h at every odd position; each even position is one step on from the
    odd one before it. log2(L) levels, about 2L multiply-adds in all (a Hillis-Steele scan does
    L log2 L). Only products of decays <= 1 and sums: exact as fp32 for any Δ, unlike an
    exp(-cumsum) form that overflows when decays are strong. a, b: (B, L, ...) -> h: (B, L, ...).
    """
    L = b.shape[1]
    if L == 1:
        return b
    n = L // 2  # pairs (2i, 2i+1)
    ae, ao, be, bo = a[:, 0 : 2 * n : 2], a[:, 1 : 2 * n : 2], b[:, 0 : 2 * n : 2], b[:, 1 : 2 * n : 2]
    h_odd = _prefix_scan(ao * ae, torch.addcmul(bo, ao, be))  # h at 1, 3, 5, ...
    h_even = torch.cat([b[:, :1], torch.addcmul(b[:, 2::2], a[:, 2::2], h_odd[:, : (L - 1) // 2])], dim=1)
    h = torch.stack([h_even[:, :n], h_odd], dim=2).flatten(1, 2)  # interleave: h_0, h_1, h_2, ...
    return torch.cat([h, h_even[:, n:]], dim=1) if L % 2 else h


def _scan_chunk(u, delta, A, B, C, h0):
    """One chunk of the scan in parallel. u, delta: (B, L, Di); B, C: (B, L, N); h0: (B, Di, N).

    Each position is an affine map of the state, h -> a_t h + b_t with a_t = exp(Δ_t A) in (0, 1]
    and b_t = Δ_t B_t u_t; the carried-in state h0 enters through the first step.
    Returns y (B, L, Di) without D / gate, and the state after the last position (B, Di, N).
    """
    a = torch.exp(delta[..., None] * A)  # (B, L, Di, N)
    b = (delta * u)[..., None] * B[:, :, None, :]  # (B, L, Di, N)
    b = torch.cat([torch.addcmul(b[:, :1], a[:, :1], h0[:, None]), b[:, 1:]], dim=1)
    h = _prefix_scan(a, b)  # (B, L, Di, N): the state after every position of the chunk
    y = torch.einsum("bldn,bln->bld", h, C)
    return y, h[:, -1]


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    return_last_state: bool = False,
    chunk_size: int = 64,
    checkpoint: bool = False,
):
    """The same function as `selective_scan_reference`, a chunk at a time (shapes as there).

    Memory: the intra-chunk tensors are (B, chunk, Di, N). With `checkpoint` (and grad enabled) each
    chunk is recomputed in the backward pass, so training keeps only the (B, Di, N) states between
    chunks instead of every position's state: (B, T, Di, N) is never held at once.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with torch.autocast(u.device.type, enabled=False):
        dt = _scan_dtype(u, delta, A, B, C, D, z, h0)
        u, delta, A, B, C = (t.to(dt) for t in (u, delta, A, B, C))
        h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1]) if h0 is None else h0.to(dt)
        ys = []
        for s in range(0, u.shape[1], chunk_size):
            sl = slice(s, s + chunk_size)
            args = (u[:, sl], delta[:, sl], A, B[:, sl], C[:, sl], h)
            if checkpoint and torch.is_grad_enabled():
                y, h = _checkpoint(_scan_chunk, *args, use_reentrant=False)
            else:
                y, h = _scan_chunk(*args)
            ys.append(y)
        y = torch.cat(ys, dim=1) if ys else u.new_zeros(u.shape)
        y = _finish(y, u, D, z)
    return (y, h) if return_last_state else y


def _scan_inplace(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """In place, b becomes every state of h_t = a_t h_{t-1} + b_t (h_{-1} = 0) along dim 1; returns b.

    With `reverse`, the recurrence runs from the end: h_t = a_t h_{t+1} + b_t. `a` is overwritten.
    A Brent-Kung scan on strided views: the up-sweep composes neighbouring segments of the affine
    maps, doubling their length each level, (a_r, b_r) o (a_l, b_l) = (a_r a_l, a_r b_l + b_r); the
    down-sweep then finishes the positions that are not yet a full prefix, largest stride first.
    About 2 log2(L) levels of one or two in-place ops each: no allocation, no copy, about 3L
    multiply-adds, and only products of decays <= 1 and sums (no exp(-cumsum) overflow).
    """
    L = b.shape[1]

    def pos(first: int, count: int, step: int) -> slice:  # mirrored index for the reverse scan
        if reverse:
            first = L - 1 - (first + (count - 1) * step)
        return slice(first, first + (count - 1) * step + 1, step)

    s = 1
    while 2 * s <= L:  # up-sweep: position (2s-1) + 2s j absorbs the segment of length s before it
        n = L // (2 * s)
        tgt, src = pos(2 * s - 1, n, 2 * s), pos(s - 1, n, 2 * s)
        b[:, tgt].addcmul_(a[:, tgt], b[:, src])
        a[:, tgt].mul_(a[:, src])
        s *= 2
    while s >= 1:  # down-sweep: position (3s-1) + 2s j takes the full prefix s before it
        n = (L - s) // (2 * s)
        if n > 0:
            tgt, src = pos(3 * s - 1, n, 2 * s), pos(2 * s - 1, n, 2 * s)
            b[:, tgt].addcmul_(a[:, tgt], b[:, src])
        s //= 2
    return b


def _channel_blocks(Di: int, per_channel: int, max_elems: int) -> list[slice]:
    """Slices of the Di channels such that one block's (B, T, d, N) tensors hold <= max_elems each.

    The channels of the scan are independent, so blocking over Di bounds memory without changing a
    single value; the number of blocks grows with B * T (the tokens of a step), not with T alone.
    """
    step = max(1, max_elems // max(per_channel, 1))
    return [slice(i, min(i + step, Di)) for i in range(0, Di, step)]


def _all_states(u, delta, A, B, h0) -> torch.Tensor:
    """Every state h (B, T, d, N) of one channel block at once.

    u, delta: (B, T, d); A: (d, N); B: (B, T, N); h0: (B, d, N). No autograd (called inside
    `_ParallelScan`), so everything happens in place in two fresh (B, T, d, N) buffers.
    """
    a = torch.exp(delta[..., None] * A)  # (B, T, d, N), in (0, 1]: exp of a log-decay <= 0, never overflows
    b = (delta * u)[..., None] * B[:, :, None, :]  # (B, T, d, N)
    b[:, 0].addcmul_(a[:, 0], h0)  # h0 enters through the first step
    return _scan_inplace(a, b)


class _ParallelScan(torch.autograd.Function):
    """The selective scan over the whole sequence with a log-depth scan, and its hand-written backward.

    Forward: h_t = a_t h_{t-1} + b_t with a_t = exp(Δ_t A), b_t = Δ_t B_t u_t, y_t = <C_t, h_t>.
    Backward: the adjoint of a linear recurrence is the same recurrence run backwards,
        g_t = a_{t+1} g_{t+1} + C_t gy_t (+ the gradient of h_T at t = T-1),   g_t = dL/dh_t,
    one more log-depth scan, then dL/db_t = g_t and dL/da_t = g_t h_{t-1}, reduced to the inputs.
    Why by hand: autograd through the scan would keep every level's (B, T, d, N) tensors; here only
    the inputs are saved (plus, if `keep_states`, the states h) and the rest is recomputed, one
    channel block at a time, so memory is a few (B, T, d, N) blocks whatever the sequence length.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, max_elems: int, keep_states: bool):
        Bsz, T, Di = u.shape
        blocks = _channel_blocks(Di, Bsz * T * A.shape[1], max_elems)
        y, hT, kept = u.new_empty(Bsz, T, Di), h0.new_empty(h0.shape), []
        for sl in blocks:
            h = _all_states(u[..., sl], delta[..., sl], A[sl], B, h0[:, sl])
            y[..., sl] = torch.einsum("btdn,btn->btd", h, C)
            hT[:, sl] = h[:, -1]
            if keep_states:
                kept.append(h)
        ctx.blocks = blocks
        ctx.save_for_backward(u, delta, A, B, C, h0, *kept)
        return y, hT

    @staticmethod
    def backward(ctx, gy, ghT):
        u, delta, A, B, C, h0, *kept = ctx.saved_tensors
        # the backward of a bf16-autocast region must not run these reductions in bf16
        with torch.autocast(u.device.type, enabled=False):
            du, ddelta, dA = torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A)
            dB, dC, dh0 = torch.zeros_like(B), torch.zeros_like(C), torch.empty_like(h0)
            for i, sl in enumerate(ctx.blocks):
                u_, d_, A_ = u[..., sl], delta[..., sl], A[sl]
                h = kept[i] if kept else _all_states(u_, d_, A_, B, h0[:, sl])  # (B, T, d, N)
                a = torch.exp(d_[..., None] * A_)  # (B, T, d, N)
                c = gy[..., sl, None] * C[:, :, None, :]  # (B, T, d, N): what y_t asks of h_t
                c[:, -1] += ghT[:, sl]
                # g_t = a_{t+1} g_{t+1} + c_t: decays shifted by one (the last one is never used)
                g = _scan_inplace(torch.cat([a[:, 1:], a[:, :1]], dim=1), c, reverse=True)  # dL/dh_t
                dh0[:, sl] = g[:, 0] * a[:, 0]
                gla = g * a  # dL/d(Δ_t A) = g_t h_{t-1} a_t: (B, T, d, N)
                gla[:, 0] *= h0[:, sl]
                gla[:, 1:] *= h[:, :-1]
                del a
                gdu = torch.einsum("btdn,btn->btd", g, B)  # dL/d(Δ_t u_t)
                ddelta[..., sl] = torch.einsum("btdn,dn->btd", gla, A_) + gdu * u_
                du[..., sl] = gdu * d_
                dA[sl] = gla.mul_(d_[..., None]).sum((0, 1))  # in place: faster than that einsum on CPU
                dB += torch.einsum("btdn,btd->btn", g, d_ * u_)
                dC += torch.einsum("btdn,btd->btn", h, gy[..., sl])
        return du, ddelta, dA, dB, dC, dh0, None, None


@torch.compiler.disable
def selective_scan_parallel(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    return_last_state: bool = False,
    max_block_elems: int = 2**26,
    keep_states: bool = False,
):
    """The same function as `selective_scan_reference` with no loop over T (shapes as there).

    The whole sequence is one work-efficient log-depth scan of the affine maps h -> a h + b
    (`_prefix_scan`: products of decays <= 1 and sums only, exact in fp32 for any Δ), so the number
    of PyTorch calls grows as log2(T), not as T / chunk. Memory: `max_block_elems` bounds each
    (B, T, d, N) tensor (channels are scanned in blocks of d); the backward is written by hand and
    saves only the inputs, recomputing the states (`keep_states=True` keeps them instead: one
    (B, T, Di, N) tensor per call held until backward, one scan fewer).

    Inside a torch.compile'd model it runs eagerly (`torch.compiler.disable`): the sweeps' slices and
    the channel blocks are Python integers computed from T, so a traced copy would be specialised to
    each batch length and recompiled for every new one, inside the budgeted clock (tests/test_compile.py);
    the projections and the convolution around it still compile once for all lengths.
    """
    if max_block_elems < 1:
        raise ValueError(f"max_block_elems must be >= 1, got {max_block_elems}")
    with torch.autocast(u.device.type, enabled=False):
        dt = _scan_dtype(u, delta, A, B, C, D, z, h0)
        u, delta, A, B, C = (t.to(dt) for t in (u, delta, A, B, C))
        h0 = u.new_zeros(u.shape[0], u.shape[2], A.shape[1]) if h0 is None else h0.to(dt)
        if u.shape[1] == 0:
            y, h = u.new_zeros(u.shape), h0
        else:
            y, h = _ParallelScan.apply(u, delta, A, B, C, h0, max_block_elems, keep_states)
        y = _finish(y, u, D, z)
    return (y, h) if return_last_state else y


@_ops.graph_break_when_disabled
def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    return_last_state: bool = False,
    chunk: int | None = None,
    ckpt: int | None = None,
    stages: int | None = None,
    programs: int | None = None,
    bwd_block: int | None = None,
    bwd_warps: int | None = None,
    bwd_stages: int | None = None,
):
    """The same function as `selective_scan_reference` as Triton kernels (mixers/_scan_triton.py):
    one walk over the sequence each way, the state in registers; long sequences in chunks of `chunk`
    positions (None: enough chunks for about `programs` programs, None: `TARGET_PROGRAMS` there); for
    the backward the forward keeps the state every `ckpt` positions (None: 16); `stages`: the walks'
    software-pipeline stages (None: `STAGES` there; 1: none); `bwd_block`, `bwd_warps`, `bwd_stages`: the
    backward walk's channels and warps per program and its reverse walk's stages (None: `BWD_BLOCK_D`,
    `BWD_WARPS`, `BWD_STAGES` there). CUDA (or Triton's interpreter) only.

    Inside a compiled model the kernels are custom operators (mixers/_ops.py), single nodes of the block's
    graph: no graph break, and the casts and the D skip / SiLU(z) gate around them compile with the block
    (the chunk length is SymInt arithmetic on the traced shapes, so no length is specialised on). With
    `WAVEBENCH_SCAN_OPS=0` the whole function runs eagerly instead (`_ops.graph_break_when_disabled`), as the
    PyTorch scans do."""
    if not _scan_triton.available(u.device):
        raise RuntimeError("the triton scan needs CUDA and Triton (or TRITON_INTERPRET=1); use scan=parallel")
    with torch.autocast(u.device.type, enabled=False):
        f32 = lambda t: t.float().contiguous()  # noqa: E731
        u, delta, A, B, C = (f32(t) for t in (u, delta, A, B, C))
        h0 = u.new_zeros(u.shape[0], u.shape[2], A.shape[1]) if h0 is None else f32(h0)
        if u.shape[1] == 0:
            y, h = u.new_zeros(u.shape), h0
        else:  # the chunk length from the shapes: SymInt arithmetic when traced, no guard on T
            chunk = chunk or _scan_triton.chunk_len(*u.shape, programs)
            y, h = _scan_triton.TritonScan.apply(u, delta, A, B, C, h0, chunk, ckpt, stages, bwd_block, bwd_warps,
                                                 bwd_stages)
        y = _finish(y, u, D, z)
    return (y, h) if return_last_state else y


# --------------------------------------------------------------------------------------------------
# The mixer
# --------------------------------------------------------------------------------------------------

# option `scan` -> (function, the backend name a results row records); "auto" picks per call (`_scan_name`)
SCANS: dict[str, tuple[Callable, str]] = {
    "triton": (selective_scan_triton, "triton_scan"),
    "parallel": (selective_scan_parallel, "torch_parallel_scan"),
    "chunked": (selective_scan_chunked, "torch_chunked_scan"),
    "reference": (selective_scan_reference, "torch_reference_scan"),
}


class SSMDirection(nn.Module):
    """The direction-specific half of a Mamba block: conv, x_proj, Δ projection, A, D.

    `dt_weight` / `dt_bias` are plain parameters, not an nn.Linear, on purpose: the LM skeleton
    re-initialises every nn.Linear (GPT-2 style, zero bias), which would erase Mamba's Δ
    initialisation (softplus(dt_bias) log-uniform in [dt_min, dt_max]); with bias 0 every channel
    would start at Δ = softplus(0) ≈ 0.69.
    """

    def __init__(self, d_inner: int, dt_rank: int, opts):
        super().__init__()
        self.d_inner, self.dt_rank, self.d_state = d_inner, dt_rank, opts.d_state
        self.opts = opts
        self.conv1d = nn.Conv1d(d_inner, d_inner, opts.d_conv, groups=d_inner, padding=opts.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * opts.d_state, bias=False)
        self.dt_weight = nn.Parameter(torch.empty(d_inner, dt_rank))
        self.dt_bias = nn.Parameter(torch.empty(d_inner))
        self.A_log = nn.Parameter(torch.empty(d_inner, opts.d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        # A_log is 2-D, so the trainer's "decay every matrix" rule would pull A toward -1: opt out
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation (works on the meta device too: no data-dependent Python)."""
        o = self.opts
        bound = self.dt_rank**-0.5
        self.dt_weight.uniform_(-bound, bound)
        dt = torch.exp(
            torch.rand(self.d_inner, device=self.dt_bias.device) * (math.log(o.dt_max) - math.log(o.dt_min))
            + math.log(o.dt_min)
        ).clamp(min=o.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus: softplus(bias) = dt
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(A).expand(self.d_inner, -1))  # S4D-real: A[d, n] = -(n + 1)
        self.D.fill_(1.0)

    def conv(self, x: torch.Tensor, fused: bool) -> torch.Tensor:
        """SiLU(causal depthwise conv along T). x: (B, T, Di) -> (B, T, Di)."""
        w = self.conv1d.weight  # (Di, 1, K)
        if fused and _causal_conv1d_fn is not None and 2 <= w.shape[-1] <= 4:
            y = _causal_conv1d_fn(x.transpose(1, 2).contiguous(), w.squeeze(1), self.conv1d.bias, activation="silu")
            return y.transpose(1, 2)
        return F.silu(causal_depthwise_conv(x, w[:, 0], self.conv1d.bias))

    def forward(self, x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None, fused: bool,
                scan: str = "parallel") -> torch.Tensor:
        """x, z: (B, T, Di) with pad inputs already zero; mask (B, T, 1) float or None -> y (B, T, Di) fp32.
        `scan` names the PyTorch/Triton scan (a key of SCANS) used when not `fused`."""
        xc = self.conv(x, fused)  # (B, T, Di)
        if mask is not None:
            xc = xc * mask  # the conv bias would otherwise feed pads into the state
        dt, Bm, Cm = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        with torch.autocast(x.device.type, enabled=False):
            delta = F.softplus(dt.float() @ self.dt_weight.float().t() + self.dt_bias.float())  # (B, T, Di)
            if mask is not None:
                delta = delta * mask  # Δ = 0: a pad neither writes into nor decays the state
            A = -torch.exp(self.A_log.float())  # (Di, N)
            if fused:
                tr = lambda t: t.float().transpose(1, 2).contiguous()  # noqa: E731  (B, T, C) -> (B, C, T)
                y = _selective_scan_fn(tr(xc), tr(delta), A, tr(Bm), tr(Cm), self.D.float(), tr(z),
                                       delta_bias=None, delta_softplus=False)
                return y.transpose(1, 2)
            o = self.opts
            if scan == "triton":
                # the casts and the D / SiLU(z) epilogue here, in the compiled graph around the kernels' operator
                # node, not inside the scan's function: with WAVEBENCH_SCAN_OPS=0 that is a graph break, where
                # each would be an eager launch
                f32 = lambda t: t.float().contiguous()  # noqa: E731
                u = f32(xc)
                y = selective_scan_triton(u, f32(delta), A, f32(Bm), f32(Cm), stages=o.triton_stages,
                                         programs=o.triton_programs, bwd_block=o.triton_bwd_block_d,
                                         bwd_warps=o.triton_bwd_warps, bwd_stages=o.triton_bwd_stages)
                return _finish(y, u, self.D.float(), z.float())
            kw = {"parallel": dict(max_block_elems=o.scan_block_elems, keep_states=not o.checkpoint_chunks),
                  "chunked": dict(chunk_size=o.chunk_size, checkpoint=o.checkpoint_chunks),
                  "reference": {}}[scan]
            return SCANS[scan][0](xc, delta, A, Bm, Cm, self.D, z, **kw)


def causal_depthwise_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y_t = b + sum_k w[:, k] x_{t-(K-1)+k} (zeros before the start): x (B, T, C), w (C, K), b (C,) -> (B, T, C).

    The same numbers as `nn.Conv1d(C, C, K, groups=C, padding=K-1)` cut to the first T outputs, written
    as K shifted multiply-adds (K = d_conv = 4): elementwise work that torch.compile fuses into one
    kernel and traces for any T. Inductor's convolution backward on CPU specialises to each length and
    recompiled the mixer at every new batch shape (tests/test_compile.py).
    """
    K, T = w.shape[-1], x.shape[1]
    xp = F.pad(x, (0, 0, K - 1, 0))  # (B, K - 1 + T, C): zeros in front of the sequence
    y = b.to(x.dtype) + xp[:, 0:T] * w[:, 0].to(x.dtype)
    for k in range(1, K):
        y = y + xp[:, k : k + T] * w[:, k].to(x.dtype)
    return y


@dataclass
class MambaState:
    """Causal decoding state of one direction: (d_conv − 1 + d_state) · d_inner numbers per sequence."""

    conv: torch.Tensor  # (B, Di, d_conv - 1): the last conv inputs, oldest first (zeros before the start)
    h: torch.Tensor  # (B, Di, N) fp32: the SSM state


def _final_state(u, delta, A, B, chunk: int = 256) -> torch.Tensor:
    """h_T of the recurrence h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t from h = 0, in closed form:
    h_T = Σ_t exp(A Σ_{s>t} Δ_s) Δ_t u_t B_t, a chunk of positions at a time (the exponents are
    <= 0: nothing overflows). u, delta (B, T, Di); A (Di, N); B (B, T, N) -> (B, Di, N) fp32."""
    u, delta, A, B = u.float(), delta.float(), A.float(), B.float()
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    for s in range(0, u.shape[1], chunk):
        dA = delta[:, s : s + chunk, :, None] * A  # (B, C, Di, N)
        incl = dA.flip(1).cumsum(1).flip(1)  # Σ_{s >= t} within the chunk
        after = torch.cat([incl[:, 1:], torch.zeros_like(incl[:, :1])], dim=1)  # Σ_{s > t}: no subtraction
        h = torch.exp(incl[:, 0]) * h + torch.einsum(
            "bcdn,bcd,bcn->bdn", torch.exp(after), delta[:, s : s + chunk] * u[:, s : s + chunk], B[:, s : s + chunk])
    return h


def _direction_prefill(d: "SSMDirection", x: torch.Tensor, mask: torch.Tensor | None) -> MambaState:
    """The state of direction `d` after a prompt x (B, T, Di) whose pad inputs are already zero."""
    K = d.conv1d.weight.shape[-1]
    conv = torch.cat([x.new_zeros(x.shape[0], K - 1, x.shape[2]), x], dim=1)[:, x.shape[1]:].transpose(1, 2)
    xc = d.conv(x, False)
    if mask is not None:
        xc = xc * mask
    dt, Bm, _ = d.x_proj(xc).split([d.dt_rank, d.d_state, d.d_state], dim=-1)
    with torch.autocast(x.device.type, enabled=False):  # Δ and the state in fp32, as the forward's scan
        delta = F.softplus(dt.float() @ d.dt_weight.float().t() + d.dt_bias.float())
        if mask is not None:
            delta = delta * mask
        return MambaState(conv.contiguous(), _final_state(xc, delta, -torch.exp(d.A_log.float()), Bm))


def _direction_step(d: "SSMDirection", x_t: torch.Tensor, z_t: torch.Tensor, st: MambaState,
                    fused: bool) -> tuple[torch.Tensor, MambaState]:
    """One position of direction `d`: x_t, z_t (B, Di) -> gated y_t (B, Di) fp32, the new state."""
    window = torch.cat([st.conv, x_t[:, :, None]], dim=2)  # (B, Di, K)
    # the forward's own conv over the window, its last output: the same operations in the same order and dtype
    # (bf16 under CUDA autocast), so that decoding a prefix gives the forward's numbers, not fp32 ones
    xc = F.silu(causal_depthwise_conv(window.transpose(1, 2), d.conv1d.weight[:, 0], d.conv1d.bias)[:, -1])  # (B, Di)
    dt, Bm, Cm = d.x_proj(xc).split([d.dt_rank, d.d_state, d.d_state], dim=-1)
    # Δ in fp32, as the forward computes it (under CUDA's bf16 autocast the matmul would run in bf16)
    with torch.autocast(x_t.device.type, enabled=False):
        delta = F.softplus(dt.float() @ d.dt_weight.float().t() + d.dt_bias.float())  # (B, Di)
    A = -torch.exp(d.A_log.float())
    if fused:  # updates h in place
        h = st.h.contiguous()
        y = _selective_state_update(h, xc.float(), delta, A, Bm.float(), Cm.float(), d.D.float(), z_t.float(),
                                    dt_bias=None, dt_softplus=False)
        return y.float(), MambaState(window[:, :, 1:], h)
    h = torch.exp(delta[..., None] * A) * st.h + (delta * xc.float())[..., None] * Bm.float()[:, None, :]
    y = (h * Cm.float()[:, None, :]).sum(-1) + xc.float() * d.D.float()
    return y * F.silu(z_t.float()), MambaState(window[:, :, 1:], h)


@register("mamba")
class Mamba(Mixer):
    @dataclasses.dataclass
    class Options:
        d_state: int = 16
        d_conv: int = 4
        expand: int = 2  # d_inner = expand * d_model
        dt_rank: int = 0  # 0: ceil(d_model / 16), as in Mamba
        dt_min: float = 0.001
        dt_max: float = 0.1
        dt_init_floor: float = 1e-4
        bidir_share: bool = False  # bidirectional: one conv/x_proj/Δ/A/D for both directions
        # "auto": "triton" on CUDA when Triton imports, else "parallel" | "chunked" (the old chunk loop) |
        # "reference" (the step loop); mamba-ssm, when it imports, comes before all of them (use_mamba_ssm)
        scan: str = "auto"
        scan_block_elems: int = 2**26  # parallel scan: max elements of one (B, T, d, N) channel block
        chunk_size: int = 64  # chunked scan: positions per parallel chunk
        checkpoint_chunks: bool = True  # PyTorch scans: recompute states in backward (bounded memory)
        triton_stages: int = _scan_triton.STAGES  # triton scan: software-pipeline stages of its walks (1: none)
        # triton scan: rows are cut into chunks until (rows x channel blocks x chunks) reaches about this many
        # programs; fewer: fewer chunks, so less of the extra summary walk, and less to keep the GPU busy
        triton_programs: int = _scan_triton.TARGET_PROGRAMS
        # triton scan: the backward walk's channels and warps per program (powers of two; mixers/_scan_triton.py
        # says why one warp of 8 channels may be faster)
        triton_bwd_block_d: int = _scan_triton.BWD_BLOCK_D
        triton_bwd_warps: int = _scan_triton.BWD_WARPS
        triton_bwd_stages: int = _scan_triton.BWD_STAGES  # triton scan: the reverse walk's pipeline stages (1: none)
        use_mamba_ssm: bool = True  # use the mamba-ssm kernels when they can run

    def __init__(self, d_model: int, causal: bool, opts=None, proj_norm: bool = False):
        super().__init__(d_model, causal, opts, proj_norm)
        o = self.opts
        if o.scan not in ("auto", *SCANS):
            raise ValueError(f"mamba: scan must be one of auto, {', '.join(SCANS)}, got {o.scan!r}")
        if min(o.d_state, o.d_conv, o.expand, o.chunk_size, o.scan_block_elems, o.triton_stages,
               o.triton_programs, o.triton_bwd_stages) < 1 or o.dt_rank < 0:
            raise ValueError(f"mamba: sizes must be positive, got {o}")
        for name in ("triton_bwd_block_d", "triton_bwd_warps"):  # Triton's blocks and warp counts are powers of two
            v = getattr(o, name)
            if v < 1 or v & (v - 1) or v > 128:
                raise ValueError(f"mamba: {name} must be a power of two from 1 to 128, got {v}")
        self.d_inner = o.expand * d_model
        self.dt_rank = o.dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        # HybridNorm: normalise the two halves of the input projection
        self.x_norm, self.z_norm = self.proj_norm_layer(self.d_inner), self.proj_norm_layer(self.d_inner)
        self.fwd = SSMDirection(self.d_inner, self.dt_rank, o)
        self.bwd = SSMDirection(self.d_inner, self.dt_rank, o) if not causal and not o.bidir_share else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.backend = SCANS[self._scan_name(torch.device("cpu"))][1]

    def _fused(self, x: torch.Tensor) -> bool:
        return self.opts.use_mamba_ssm and _selective_scan_fn is not None and x.is_cuda

    def _scan_name(self, device: torch.device) -> str:
        """The scan option this call runs: "auto" is the Triton kernels where they run, else the parallel scan."""
        if self.opts.scan != "auto":
            return self.opts.scan
        return "triton" if device.type == "cuda" and _scan_triton.available(device) else "parallel"

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        fused = self._fused(x)
        scan = self._scan_name(x.device)
        self.backend = "mamba_ssm" if fused else SCANS[scan][1]
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # each (B, T, Di)
        xs, z = self.x_norm(xs), self.z_norm(z)
        mask = None if pad_mask is None else pad_mask[..., None].to(xs.dtype)  # (B, T, 1)
        if mask is not None:
            xs = xs * mask  # zero pads before the conv: real tokens see the zero history of an unpadded run
        y = self.fwd(xs, z, mask, fused, scan)  # (B, T, Di) fp32, gated
        if not self.causal:
            bwd = self.fwd if self.bwd is None else self.bwd
            flip = lambda t: None if t is None else t.flip(1)  # noqa: E731
            y = 0.5 * (y + bwd(flip(xs), flip(z), flip(mask), fused, scan).flip(1))
        return self.out_proj(y.to(xs.dtype))

    decode_path = "state"
    decode_backend = "torch_step"  # "mamba_ssm_step" after a step on the fused kernel

    @torch.no_grad()
    def prefill(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, MambaState]:
        """A prompt (B, T, D) -> (the forward's outputs (B, T, D), the conv and SSM state at its end)."""
        self._check_causal()
        y = self.forward(x, pad_mask) if x.shape[1] else x.new_zeros(x.shape)
        xs = self.x_norm(F.linear(x, self.in_proj.weight[: self.d_inner]))  # the x half of in_proj
        mask = None if pad_mask is None else pad_mask[..., None].to(xs.dtype)
        if mask is not None:
            xs = xs * mask
        return y, _direction_prefill(self.fwd, xs, mask)

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, state: MambaState | None = None) -> tuple[torch.Tensor, MambaState]:
        """x_t (B, D) -> (y_t (B, D), the state one position on)."""
        self._check_causal()
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, Di) each
        xs, z = self.x_norm(xs), self.z_norm(z)
        if state is None:
            K = self.opts.d_conv
            state = MambaState(xs.new_zeros(xs.shape[0], self.d_inner, K - 1),
                               xs.new_zeros(xs.shape[0], self.d_inner, self.opts.d_state, dtype=torch.float32))
        fused = self.opts.use_mamba_ssm and _selective_state_update is not None and x_t.is_cuda
        self.decode_backend = "mamba_ssm_step" if fused else "torch_step"
        y, state = _direction_step(self.fwd, xs, z, state, fused)
        return self.out_proj(y.to(xs.dtype)), state

    def mixing_flops(self, seq_len: float) -> MixingFlops:
        """Constant in T. Per direction, per token, forward (Di = d_inner, N = d_state, R = dt_rank,
        K = d_conv); x3 for forward + backward:

        - matmul: the Δ projection dt @ W_Δᵀ (`dt_weight` is a plain parameter, not an nn.Linear, so
          not in 6N): 2·Di·R; the read-out y = Σ_n C_n h_n (an einsum): 2·Di·N
        - elementwise: the depthwise causal conv (an nn.Conv1d, not in 6N), K taps and the bias: 2K·Di;
          the Δ bias: Di; Δ·u: Di; per channel and state, Δ·A, (Δu)·B and h = a·h + b: 4·Di·N;
          the D skip (a multiply-add): 2·Di; the gate y·SiLU(z): Di

        Bidirectional: both directions, plus their mean (2·Di); with `bidir_share` the one x_proj runs
        on both directions but 6N counts its weights once, so its second run is added (matmul).
        Left out: exp, softplus and SiLU (like activations), A = −exp(A_log) (per step, not per token),
        pad masks, and the implementations' extra work, which is not model FLOPs: the log-depth scan's
        ~3 multiply-adds per state where the recurrence needs 1, the states recomputed in the backward
        (checkpointing), and the hand-written backward's einsums over broadcast axes (the gradients of
        Δ·A and (Δu)·B, which FlopCounterMode sees as contractions).
        """
        Di, N, R, K = self.d_inner, self.opts.d_state, self.dt_rank, self.opts.d_conv
        n_dir = 1 if self.causal else 2
        matmul = n_dir * (2 * Di * R + 2 * Di * N)
        elementwise = n_dir * (2 * K * Di + Di + Di + 4 * Di * N + 2 * Di + Di)
        if not self.causal:
            elementwise += 2 * Di  # the mean of the two directions
            if self.bwd is None:  # shared x_proj: its second run is not in 6N
                matmul += 2 * self.fwd.x_proj.weight.numel()
        return MixingFlops(matmul=3.0 * matmul, elementwise=3.0 * elementwise)

    def state_floats(self, seq_len: int) -> int:
        """Per direction: the SSM state d_inner x d_state plus the conv history (d_conv - 1) x d_inner.

        Constant in T. A bidirectional layer runs two scans, so it carries two such states.
        """
        per_dir = self.d_inner * self.opts.d_state + (self.opts.d_conv - 1) * self.d_inner
        return per_dir * (1 if self.causal else 2)
