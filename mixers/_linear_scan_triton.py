"""A first-order linear recurrence in Triton: what gated_context runs on CUDA.

    c_t = a_t c_{t-1} + b_t      (c_{-1} = 0),   per sequence and channel

Why a kernel: in PyTorch the recurrence is a log-depth pairwise scan (mixers/gated_context.py), about
6 log2(T) whole-tensor calls forward and as many again in autograd's backward, per layer: at T = 512
that is ~100 small launches a layer, and on a GPU a launch costs more than the arithmetic. The
profiler counted 5,116 operator calls in the forward + loss + backward of a compiled training step for
gated_context at the small preset, against 844 for attention (benchmarks/profile_step.py, on CPU;
docs/cpu-evidence.md), so the mixer would rank slow on a GPU for our scan, not
for its design. Here one program walks one stretch of positions for a block of channels with the state
in a register: one read of a and b and one write of c per position, 1 to 3 launches forward and as many
backward, whatever T.

Chunks: a walk is sequential in T, so when a step holds few long sequences, (sequences x channel
blocks) alone would leave most of a GPU idle. A sequence is then cut into chunks walked in parallel:
each chunk first from zero (SUMMARY: the state it adds, S, and the product of its decays, P; all but
the last chunk, whose summary no carry reads), then a short walk over the chunks gives the state entering
each (`carry`), and a second walk from that state writes the outputs. The backward is the same
recurrence run backwards (the adjoint of a linear recurrence):

    g_t = dL/dc_t + a_{t+1} g_{t+1},    dL/db_t = g_t,    dL/da_t = g_t c_{t-1}

chunked the same way, with the same products P. The forward's outputs c are what the backward reads
for c_{t-1}: no state is stored beyond the output itself, which the caller keeps anyway.

Precision: fp32 throughout, like the pairwise scan (products of gates in [0, 1], no logs). The walks
are software-pipelined (`tl.range(num_stages=STAGES)`): the next positions' loads are in flight while
the state advances. Tests run the kernels on CPU through Triton's interpreter (TRITON_INTERPRET=1,
tests/test_linear_scan_triton.py) against the step-by-step loop; the kernels are built on first use,
so the interpreter can be chosen after import.
"""
from __future__ import annotations

import functools

import torch

from mixers import _ops

# `available` and TARGET_PROGRAMS (a sequence is cut into chunks when sequences x channel blocks are
# fewer) are this scan's too
from mixers._scan_triton import (OPTIONS, TARGET_PROGRAMS, available, fill_chunk_len, interpreting,  # noqa: F401
                                 triton, tl)

BLOCK_C = 128  # channels per program: one fp32 state each, one per thread at 4 warps
MIN_CHUNK = 32  # chunks are more than half this long (`fill_chunk_len`): shorter walks spend more on the carry
STAGES = 3  # software-pipeline stages of the walks; 1: each step waits for its own loads


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """(forward walk, backward walk, carry), jitted on first use (the key: the interpreter flag).

    The walks: program (b, channel block, chunk) over the chunk's CH positions before T. T and CH are
    not specialised on, or Triton would compile a variant per divisibility of each by 16, i.e. again
    for new batch lengths inside the budgeted clock; C (the channels) is fixed per model."""

    @triton.jit(do_not_specialize=["T", "CH"])
    def walk_fwd(a_ptr, b_ptr, init_ptr, c_ptr, S_ptr, P_ptr, T, C, CH,
                 SUMMARY: tl.constexpr, BC: tl.constexpr, STAGES: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        ch = tl.program_id(1) * BC + tl.arange(0, BC)  # (BC,)
        k = tl.program_id(2)
        slot = (b * tl.num_programs(2) + k) * C + ch  # this chunk's place in (B, nC, C)
        m = ch < C
        if SUMMARY:
            h = tl.zeros((BC,), dtype=tl.float32)
            p = tl.full((BC,), 1.0, dtype=tl.float32)
        else:
            h = tl.load(init_ptr + slot, mask=m, other=0.0)
        steps = tl.maximum(tl.minimum(CH, T - k * CH), 0)
        if SUMMARY:  # no carry reads what the last chunk adds (the walk from its true state writes c): not walked
            steps = tl.where(k == tl.num_programs(2) - 1, 0, steps)
        for i in tl.range(0, steps, num_stages=STAGES):
            off = (b * T + k * CH + i) * C + ch
            at = tl.load(a_ptr + off, mask=m, other=1.0)
            h = at * h + tl.load(b_ptr + off, mask=m, other=0.0)
            if SUMMARY:
                p = p * at
            else:
                tl.store(c_ptr + off, h, mask=m)
        if SUMMARY:
            tl.store(S_ptr + slot, h, mask=m)
            tl.store(P_ptr + slot, p, mask=m)

    @triton.jit(do_not_specialize=["T", "CH"])
    def walk_bwd(a_ptr, gc_ptr, c_ptr, init_ptr, da_ptr, db_ptr, Q_ptr, T, C, CH,
                 SUMMARY: tl.constexpr, BC: tl.constexpr, STAGES: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        ch = tl.program_id(1) * BC + tl.arange(0, BC)
        k = tl.program_id(2)
        slot = (b * tl.num_programs(2) + k) * C + ch
        m = ch < C
        # r: what position t receives from the future, a_{t+1} g_{t+1}; from the chunks after this one
        if SUMMARY:
            r = tl.zeros((BC,), dtype=tl.float32)
        else:
            r = tl.load(init_ptr + slot, mask=m, other=0.0)
        L = tl.maximum(tl.minimum(CH, T - k * CH), 0)
        steps = L
        if SUMMARY:  # no carry reads what chunk 0 passes left (the walk from its true adjoint writes da, db)
            steps = tl.where(k == 0, 0, L)
        for i in tl.range(0, steps, num_stages=STAGES):
            t = k * CH + L - 1 - i  # from the chunk's last position
            off = (b * T + t) * C + ch
            g = tl.load(gc_ptr + off, mask=m, other=0.0) + r  # g_t
            if not SUMMARY:
                tl.store(db_ptr + off, g, mask=m)
                c_prev = tl.load(c_ptr + off - C, mask=m & (ch * 0 + t > 0), other=0.0)  # c_{t-1}; c_{-1} = 0
                tl.store(da_ptr + off, g * c_prev, mask=m)
            r = tl.load(a_ptr + off, mask=m, other=1.0) * g
        if SUMMARY:
            tl.store(Q_ptr + slot, r, mask=m)

    @triton.jit(do_not_specialize=["nC"])
    def carry(S_ptr, P_ptr, init_ptr, C, nC, REVERSE: tl.constexpr, BC: tl.constexpr):
        """The state entering each chunk: chunk k maps a state h passing through it to P_k h + S_k.
        Forward from the first chunk (which gets 0); REVERSE (the adjoint) from the last. The chunk met last
        (the last forward, the first in REVERSE) is read only into the h after the last store: its summary
        walk is skipped and leaves S = 0 (and P = 1 forward), finite, so that h stays finite."""
        b = tl.program_id(0).to(tl.int64)
        ch = tl.program_id(1) * BC + tl.arange(0, BC)
        m = ch < C
        h = tl.zeros((BC,), dtype=tl.float32)
        for i in range(nC):
            if REVERSE:
                k = nC - 1 - i
            else:
                k = i
            slot = (b * nC + k) * C + ch
            tl.store(init_ptr + slot, h, mask=m)
            h = tl.load(P_ptr + slot, mask=m, other=1.0) * h + tl.load(S_ptr + slot, mask=m, other=0.0)

    return walk_fwd, walk_bwd, carry


def chunk_len(Bsz: int, T: int, C: int) -> int:
    """Positions per chunk: the whole sequence when (sequences x channel blocks) alone give about
    TARGET_PROGRAMS programs, else cut so they do (`fill_chunk_len`)."""
    return fill_chunk_len(Bsz * _ops.cdiv(C, BLOCK_C), T, MIN_CHUNK)


def _forward(a: torch.Tensor, b: torch.Tensor, CH: int, stages: int) -> tuple[torch.Tensor, torch.Tensor]:
    """c (B, T, C) and the chunks' decay products P (B, nC, C)."""
    Bsz, T, C = a.shape
    nC = triton.cdiv(T, CH)
    fwd, _, carry = _kernels(interpreting())
    grid = (Bsz, triton.cdiv(C, BLOCK_C), nC)
    c = torch.empty_like(b)
    if nC > 1:
        S, P = a.new_empty(Bsz, nC, C), a.new_empty(Bsz, nC, C)
        fwd[grid](a, b, S, c, S, P, T, C, CH, SUMMARY=True, BC=BLOCK_C, STAGES=stages, **OPTIONS)
        init = torch.empty_like(S)
        carry[grid[:2]](S, P, init, C, nC, REVERSE=False, BC=BLOCK_C, **OPTIONS)
    else:  # P is not read with one chunk: (B, 1, C) ones (an operator's outputs must be defined)
        P = a.new_ones(Bsz, 1, C)
        init = a.new_zeros(Bsz, 1, C)
    fwd[grid](a, b, init, c, init, init, T, C, CH, SUMMARY=False, BC=BLOCK_C, STAGES=stages, **OPTIONS)
    return c, P


def _backward(a: torch.Tensor, c: torch.Tensor, P: torch.Tensor, gc: torch.Tensor, CH: int,
              stages: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/da, dL/db), each (B, T, C), from dL/dc (B, T, C)."""
    Bsz, T, C = a.shape
    nC = triton.cdiv(T, CH)
    _, bwd, carry = _kernels(interpreting())
    grid = (Bsz, triton.cdiv(C, BLOCK_C), nC)
    da, db = torch.empty_like(a), torch.empty_like(a)
    if nC > 1:  # the adjoint each chunk passes left from zero, then what each chunk receives from the right
        Q = a.new_empty(Bsz, nC, C)
        bwd[grid](a, gc, c, Q, da, db, Q, T, C, CH, SUMMARY=True, BC=BLOCK_C, STAGES=stages, **OPTIONS)
        init = torch.empty_like(Q)
        carry[grid[:2]](Q, P, init, C, nC, REVERSE=True, BC=BLOCK_C, **OPTIONS)
    else:
        init = a.new_zeros(Bsz, 1, C)
    bwd[grid](a, gc, c, init, da, db, init, T, C, CH, SUMMARY=False, BC=BLOCK_C, STAGES=stages, **OPTIONS)
    return da, db


# (device, C, stages) whose chunked variants have been compiled. Triton compiles a variant on its first
# launch; a step whose batch first needs chunks (few long rows) would otherwise compile them inside the
# budgeted clock, so the first call compiles every variant on a two-chunk dummy (warm-up steps are not
# budgeted). The compiled kernels are cached by Triton itself.
_WARM: set[tuple] = set()


def _warm(device: torch.device, C: int, stages: int) -> None:
    key = (str(device), C, stages)
    if key in _WARM:
        return
    a = torch.full((1, 2, C), 0.5, device=device)
    c, P = _forward(a, torch.ones_like(a), 1, stages)
    _backward(a, c, P, torch.ones_like(a), 1, stages)
    _WARM.add(key)


def _fwd_op(a: torch.Tensor, b: torch.Tensor, chunk: int, stages: int) -> tuple[torch.Tensor, torch.Tensor]:
    _warm(a.device, a.shape[2], stages)
    c, P = _forward(a, b, chunk, stages)
    return c, P.view(-1)


def _fwd_fake(a, b, chunk, stages):
    """P is flat: as (B, nC, C), the contiguity check of its chunk dimension guards on the count being 1."""
    return torch.empty_like(b), a.new_empty(a.shape[0] * _ops.cdiv(a.shape[1], chunk) * a.shape[2])


def _fwd_setup(ctx, inputs, output) -> None:
    a, _, ctx.chunk, ctx.stages = inputs
    c, P = output
    ctx.mark_non_differentiable(P)
    ctx.save_for_backward(a, c, P)


def _fwd_backward(ctx, gc, _gP):
    a, c, P = ctx.saved_tensors
    da, db = _BWD(a, c, P, gc.float().contiguous(), ctx.chunk, ctx.stages)
    return da, db, None, None


def _bwd_op(a: torch.Tensor, c: torch.Tensor, P: torch.Tensor, gc: torch.Tensor, chunk: int,
            stages: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward(a, c, P.view(a.shape[0], -1, a.shape[2]), gc, chunk, stages)  # P: (B, nC, C) again


def _bwd_fake(a, c, P, gc, chunk, stages):
    return torch.empty_like(a), torch.empty_like(a)


# the walk as two custom operators (mixers/_ops.py): single nodes of a compiled graph, no graph break
_BWD = _ops.define("linear_scan_bwd", _bwd_op, _bwd_fake)
_FWD = _ops.define("linear_scan_fwd", _fwd_op, _fwd_fake, _fwd_backward, _fwd_setup)


class LinearScan:
    """c (B, T, C) fp32 from a, b (B, T, C) fp32 contiguous (the caller casts). `chunk`: positions per
    chunk (None: `chunk_len`: SymInt arithmetic when traced, no guard on T); `stages`: the walks' pipeline
    stages (None: STAGES). Differentiable, through the custom operators `wavebench::linear_scan_fwd` /
    `_bwd`; the backward reads c_{t-1} from the output c and the chunks' decay products P."""

    @staticmethod
    def apply(a, b, chunk=None, stages=None):
        return _FWD(a, b, chunk or chunk_len(*a.shape), stages or STAGES)[0]


@_ops.graph_break_when_disabled
def linear_scan_triton(a: torch.Tensor, b: torch.Tensor, chunk: int | None = None,
                       stages: int | None = None) -> torch.Tensor:
    """Solve c_t = a_t c_{t-1} + b_t (c_{-1} = 0) along dim 1: a, b (B, T, ...) -> c (B, T, ...) fp32.
    CUDA (or Triton's interpreter) only. Inside a compiled model the walk is a custom operator, one node of
    the block's graph (mixers/_ops.py); with `WAVEBENCH_SCAN_OPS=0` this function runs eagerly instead
    (`_ops.graph_break_when_disabled`: a graph break), as the pairwise scan does."""
    if not available(a.device):
        raise RuntimeError("the triton linear scan needs CUDA and Triton (or TRITON_INTERPRET=1); use scan=pairwise")
    shape = b.shape
    if shape[1] == 0:
        return b.float()
    flat = lambda t: t.float().reshape(shape[0], shape[1], -1).contiguous()  # noqa: E731  (B, T, C)
    with torch.autocast(a.device.type, enabled=False):
        return LinearScan.apply(flat(a), flat(b), chunk, stages).view(shape)
