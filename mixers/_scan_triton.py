"""The selective scan in Triton: what Mamba runs on CUDA when mamba-ssm is not installed.

The recurrence (mixers/mamba.py), per sequence b, channel d and state n:

    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t,    y_t = <C_t, h_t>

Why a kernel: in PyTorch the scan is many whole-tensor passes over (B, T, Di, N) per layer (the
parallel scan's sweeps, the exp, the products, the backward's second scan), each a kernel launch and
a round trip through GPU memory. Here one program owns one sequence and a block of BD channels, keeps
their (BD, N) state in registers and walks the sequence once: one read of the inputs and one write of
y per position, as mamba-ssm's CUDA kernel does, in about 1 launch per layer and direction. A walk is
sequential, so each step would wait for its own inputs' loads; its loop is software-pipelined instead
(STAGES: the next positions' inputs load asynchronously while the state advances), as mamba-ssm loads a
chunk of positions at a time.

Backward (the adjoint of a linear recurrence is the same recurrence run backwards):
    g_t = C_t gy_t + a_{t+1} g_{t+1}   (g_{T-1} also gets dL/dh_T),     g_t = dL/dh_t
    dL/d(Δ_t A) = g_t a_t h_{t-1},  dL/d(Δ_t u_t) = <g_t, B_t>,  dL/dB_t = Σ_d g_t Δ_t u_t,  dL/dC_t = Σ_d h_t gy_t
The backward needs every state h_t. Keeping them all, (B, T, Di, N) fp32, would cost 0.5 GiB per layer
and direction at the small preset's 16,384 tokens (1 GiB at base), held from the forward to the
backward: a Mamba row's peak VRAM would then measure our kernel, not Mamba (mamba-ssm keeps none). So
the forward stores only the state entering each stretch of CKPT = 16 positions (1/16 of that), and the
backward, stretch by stretch from the last, first recomputes the stretch's 16 states from the stored
one into a scratch of 17 states per (sequence, chunk), then walks them in reverse. The scratch is
reused by every stretch, so it holds one stretch (and the state before it) per program: 34 MiB at the
small preset, written and read back at once, where the kept states were written in the forward and
read in the backward.
The price: one more forward walk inside the backward (an exp and a few FMAs per state), the cost
mamba-ssm pays too. Registers stay below spilling (the ahead-of-time compile test checks it). dB and
dC are sums over channels, so the programs of one sequence add into them atomically (fp32).

Precision: fp32 throughout, as the PyTorch scans. Tests run these kernels on CPU through Triton's
interpreter (TRITON_INTERPRET=1, tests/test_scan_triton.py) against `selective_scan_reference`; the kernels
are built on first use, so the interpreter can be chosen after import.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch

from mixers import _ops

try:  # Triton ships with CUDA builds of PyTorch; absent elsewhere
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the machine
    triton = None
    tl = None

BLOCK_D = 32  # channels per program: (32, N) fp32 states in registers


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: torch.device) -> bool:
    """Whether the kernels can run on `device`: CUDA with Triton, or any device under the interpreter."""
    return triton is not None and (device.type == "cuda" or interpreting())


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """(forward, backward, carry) jitted on first use; the cache key is the interpreter flag, read when jitted.

    The forward and the backward walk one chunk of CH positions of one sequence for BD channels: program
    (b, channel block, chunk), in stretches of K positions (a shorter last one; positions past T are
    not walked). With SUMMARY the walk starts from zero and stores only what the chunk does to a
    state passing through it (the forward: the state it adds, S; the backward: the adjoint it adds, Q),
    except in the one chunk whose summary no carry reads (the last forward, the first backward), which
    it does not walk; otherwise it starts from the state carried in (`init`, from the carry kernel) and
    stores the outputs.

    With KEEP the forward stores the state entering each stretch (`hk`, (B, nC · nK, Di, N)); the
    backward's walk recomputes a stretch's states from it into its scratch `work` and reads them back in
    reverse. Its threads hand those states to each other through memory, hence the two barriers.

    T, CH and K are not specialised on: Triton would otherwise compile a variant per divisibility of
    each by 16, i.e. again for new batch lengths, inside the budgeted clock. Di and N are fixed per model."""

    @triton.jit(do_not_specialize=["T", "CH", "K"])
    def scan_fwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, init_ptr, y_ptr, hk_ptr, S_ptr, T, Di, N, CH, K,
                 KEEP: tl.constexpr, SUMMARY: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
                 STAGES: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1) * BD + tl.arange(0, BD)  # (BD,)
        c = tl.program_id(2)
        nC = tl.num_programs(2)
        n = tl.arange(0, BN)  # (BN,)
        md, mn = d < Di, n < N
        m2 = md[:, None] & mn[None, :]
        dn = d[:, None] * N + n[None, :]  # (BD, BN) offsets in a (Di, N) matrix
        state = (b * nC + c) * Di * N + dn  # this chunk's (Di, N) slot in (B, nC, Di, N)
        nK = (CH + K - 1) // K  # stretches of K positions per chunk
        A = tl.load(A_ptr + dn, mask=m2, other=0.0)
        if SUMMARY:
            h = tl.zeros((BD, BN), dtype=tl.float32)
        else:
            h = tl.load(init_ptr + state, mask=m2, other=0.0)
        # the chunk's positions before T; STAGES > 1: the loads of the next positions are in flight (cp.async)
        # while the state advances, which it cannot do before its inputs arrive
        steps = tl.maximum(tl.minimum(CH, T - c * CH), 0)
        if SUMMARY:  # no carry reads what the last chunk adds (the state after it is the walk's): not walked
            steps = tl.where(c == nC - 1, 0, steps)
        for i in tl.range(0, steps, num_stages=STAGES):
            t = c * CH + i
            if KEEP:  # the state entering each stretch of K: the backward recomputes the stretch's from it
                if i % K == 0:
                    tl.store(hk_ptr + ((b * nC + c) * nK + i // K) * Di * N + dn, h, mask=m2)
            row = (b * T + t) * Di  # (b, t) in the (B, T, Di) tensors
            dt = tl.load(delta_ptr + row + d, mask=md, other=0.0)
            ut = tl.load(u_ptr + row + d, mask=md, other=0.0)
            Bt = tl.load(B_ptr + (b * T + t) * N + n, mask=mn, other=0.0)
            h = tl.exp(dt[:, None] * A) * h + (dt * ut)[:, None] * Bt[None, :]
            if not SUMMARY:
                Ct = tl.load(C_ptr + (b * T + t) * N + n, mask=mn, other=0.0)
                tl.store(y_ptr + row + d, tl.sum(h * Ct[None, :], axis=1), mask=md)
        tl.store(S_ptr + state, h, mask=m2)  # SUMMARY: S_c; else the state after the chunk

    @triton.jit(do_not_specialize=["T", "CH", "K"])
    def scan_bwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, hk_ptr, work_ptr, gy_ptr, init_ptr,
                 du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, Q_ptr, T, Di, N, CH, K,
                 SUMMARY: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, STAGES: tl.constexpr,
                 RSTAGES: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1) * BD + tl.arange(0, BD)
        c = tl.program_id(2)
        nC = tl.num_programs(2)
        n = tl.arange(0, BN)
        md, mn = d < Di, n < N
        m2 = md[:, None] & mn[None, :]
        dn = d[:, None] * N + n[None, :]
        state = (b * nC + c) * Di * N + dn
        nK = (CH + K - 1) // K
        # this program's scratch: the K + 1 states of one stretch, work[i] = h_{t0 + i - 1}, in (B, nC, K + 1, Di, N)
        work = work_ptr + (b * nC + c) * (K + 1) * Di * N + dn
        A = tl.load(A_ptr + dn, mask=m2, other=0.0)
        if SUMMARY:
            g = tl.zeros((BD, BN), dtype=tl.float32)
        else:
            g = tl.load(init_ptr + state, mask=m2, other=0.0)  # a_{t+1} g_{t+1} from the chunks after
        dA = tl.zeros((BD, BN), dtype=tl.float32)
        for jj in range(nK):  # the stretches from the last
            j = nK - 1 - jj
            t0 = c * CH + j * K
            L = tl.maximum(tl.minimum(tl.minimum(K, CH - j * K), T - t0), 0)
            if SUMMARY:  # no carry reads what chunk 0 passes left (the adjoint before it is the walk's): not walked
                L = tl.where(c == 0, 0, L)
            if not SUMMARY:  # recompute the stretch's states from the one the forward stored before it
                h = tl.load(hk_ptr + ((b * nC + c) * nK + j) * Di * N + dn, mask=m2 & (dn * 0 + t0 < T), other=0.0)
                tl.store(work, h, mask=m2)
                # pipelined as the forward's walk; the reverse walk below only with RSTAGES > 1 (BWD_STAGES)
                for i in tl.range(0, L, num_stages=STAGES):
                    row = (b * T + t0 + i) * Di
                    dt = tl.load(delta_ptr + row + d, mask=md, other=0.0)
                    ut = tl.load(u_ptr + row + d, mask=md, other=0.0)
                    Bt = tl.load(B_ptr + (b * T + t0 + i) * N + n, mask=mn, other=0.0)
                    h = tl.exp(dt[:, None] * A) * h + (dt * ut)[:, None] * Bt[None, :]
                    tl.store(work + (i + 1) * Di * N, h, mask=m2)
                tl.debug_barrier()  # every thread's states written before any thread reads them back
            for i in tl.range(0, L, num_stages=RSTAGES):
                t = t0 + L - 1 - i
                row = (b * T + t) * Di
                dt = tl.load(delta_ptr + row + d, mask=md, other=0.0)
                gyt = tl.load(gy_ptr + row + d, mask=md, other=0.0)
                Ct = tl.load(C_ptr + (b * T + t) * N + n, mask=mn, other=0.0)
                g = g + gyt[:, None] * Ct[None, :]  # g_t
                a = tl.exp(dt[:, None] * A)
                if not SUMMARY:
                    ut = tl.load(u_ptr + row + d, mask=md, other=0.0)
                    Bt = tl.load(B_ptr + (b * T + t) * N + n, mask=mn, other=0.0)
                    h_prev = tl.load(work + (L - 1 - i) * Di * N, mask=m2, other=0.0)  # h_{t-1}
                    gla = g * a * h_prev  # dL/d(Δ_t A)
                    dA += gla * dt[:, None]
                    gdu = tl.sum(g * Bt[None, :], axis=1)  # dL/d(Δ_t u_t), (BD,)
                    tl.store(ddelta_ptr + row + d, tl.sum(gla * A, axis=1) + gdu * ut, mask=md)
                    tl.store(du_ptr + row + d, gdu * dt, mask=md)
                    tl.atomic_add(dB_ptr + (b * T + t) * N + n, tl.sum(g * (dt * ut)[:, None], axis=0), mask=mn,
                                  sem="relaxed")
                    # read back, not carried over from the last step's h_prev: carrying it took the sm_80 code
                    # to 128 registers and a 24-byte spill under Triton 3.6 (the H200's), not under CI's 3.9
                    h_t = tl.load(work + (L - i) * Di * N, mask=m2, other=0.0)
                    tl.atomic_add(dC_ptr + (b * T + t) * N + n, tl.sum(h_t * gyt[:, None], axis=0), mask=mn,
                                  sem="relaxed")
                g = g * a  # a_t g_t: what position t - 1 receives
            if not SUMMARY:
                tl.debug_barrier()  # every read of this stretch's states done before the next overwrites them
        tl.store(Q_ptr + state, g, mask=m2)  # SUMMARY: Q_c; else what leaves the chunk (chunk 0: dL/dh0)
        if not SUMMARY:
            tl.store(dA_ptr + state, dA, mask=m2)  # per (sequence, chunk); summed by the caller

    @triton.jit(do_not_specialize=["nC"])
    def scan_carry(dsum_ptr, A_ptr, S_ptr, first_ptr, init_ptr, Di, N, nC,
                   REVERSE: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
        """The state entering each chunk, from the chunk summaries: chunk c maps a state h passing
        through it to exp(A ΣΔ_c) h + S_c (products of decays commute: one exp of the summed Δ).
        Forward: chunk 0 gets `first` (h0), chunk c what chunk c-1 passes on; REVERSE (the adjoint)
        runs from the last chunk, which gets dL/dh_T. Program (b, channel block); nC steps in registers:
        one launch, where a PyTorch loop over the chunks was three per chunk."""
        b = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1) * BD + tl.arange(0, BD)
        n = tl.arange(0, BN)
        md, mn = d < Di, n < N
        m2 = md[:, None] & mn[None, :]
        dn = d[:, None] * N + n[None, :]
        A = tl.load(A_ptr + dn, mask=m2, other=0.0)
        h = tl.load(first_ptr + b * Di * N + dn, mask=m2, other=0.0)
        for i in range(nC):
            if REVERSE:
                c = nC - 1 - i
            else:
                c = i
            state = (b * nC + c) * Di * N + dn
            tl.store(init_ptr + state, h, mask=m2)
            s = tl.load(dsum_ptr + (b * nC + c) * Di + d, mask=md, other=0.0)  # ΣΔ over chunk c, (BD,)
            h = tl.exp(s[:, None] * A) * h + tl.load(S_ptr + state, mask=m2, other=0.0)

    return scan_fwd, scan_bwd, scan_carry


# enough programs to fill a GPU: a sequence is cut into chunks when (sequences x channel blocks) is fewer
TARGET_PROGRAMS = 1024
MIN_CHUNK = 64
# positions per stretch: the forward stores the state entering each, the backward recomputes the rest
CKPT = 16
# software-pipelined stages of the forward walks and the backward's recompute walk (Triton's
# `tl.range(num_stages=...)`: the inputs of the next positions load asynchronously while the state
# advances); 1: each step waits for its own loads
STAGES = 3
# compile options of every launch (not constexprs). The walks' dependent chain, h = a h + b, is one fused
# multiply-add per step; Triton 3.9 warns that its default turns that fusion off in 3.10 (a multiply, then
# an add: a longer chain per step), so the scans ask for it rather than inherit a default
OPTIONS = {"enable_fp_fusion": True}
# the backward walk's launch shape: channels per program and warps per program. The reverse walk sums over
# channels twice per position (dB_t, dC_t) and over the state once or twice; with 4 warps (Triton's default)
# each channel sum crosses warps through shared memory, and the sm_90 code has 12 barriers (BAR.SYNC; 10
# under Triton 3.6) in the loop's body: 12 waits for every warp of the program per position. With one warp
# of 8 channels the body has 2, and four times the programs share the work (each adds its partial sums into
# dB and dC: four times the reductions). Which is faster is the GPU's call (the GPU check's
# bench_scan_stages, variant `triton_bwd_1warp`); the default stays what the first GPU check ran
BWD_BLOCK_D = BLOCK_D
BWD_WARPS = 4
# the reverse walk's software-pipeline stages (1: each step waits for its own loads, the default). At 3 its loads
# in flight took the sm_90 code to 144 registers under Triton 3.6 and the sm_80 code to an 8-byte spill; at 2,
# 122-128 registers and no spill on 4 warps of 32 channels, 110-122 on one warp of 8 (sm_80 and sm_90, Triton
# 3.6 and 3.9). The GPU check's bench_scan_stages times 2 on both shapes (variants `triton_bwd_pipelined`,
# `triton_bwd_1warp_pipelined`)
BWD_STAGES = 1


def chunk_len(Bsz: int, T: int, Di: int, target: int | None = None) -> int:
    """Positions per chunk: the whole sequence when the sequences and channel blocks alone give about
    `target` programs (None: TARGET_PROGRAMS), else cut so they do (`fill_chunk_len`).
    Chunking costs one more walk (the summary pass), but keeps a GPU busy when a step holds few long
    sequences, so the time per token stays flat in T at a fixed number of tokens per step. Where the
    balance lies (how many resident programs a GPU needs to be busy) is the GPU's to say: Mamba's
    `triton_programs` option sets `target`, and the GPU check times 256 against the default."""
    return fill_chunk_len(Bsz * _ops.cdiv(Di, BLOCK_D), T, MIN_CHUNK, target)


def fill_chunk_len(programs: int, T: int, min_chunk: int, target: int | None = None) -> int:
    """Positions per chunk when a walk over whole rows would launch `programs` programs (rows x channel
    blocks): the whole row when that is about `target` programs (None: TARGET_PROGRAMS), else cut into at
    most cdiv(target, programs) chunks of equal length (a row's last may be shorter), as many as chunks of
    `min_chunk` positions allow: when cut, more than min_chunk / 2 positions each. T >= 1 (both callers
    answer an empty sequence without a walk). Shared with gated_context's walk.

    Only + and // on the sizes, no min or max: under torch.compile this length is SymInt arithmetic that
    the saved states' sizes carry into the graph's size guards, and inductor's on-disk graph cache re-checks
    a loaded graph's guards by evaluating them with Python's min / max on the traced sizes, where each
    comparison adds a guard. With `max(1, min(T // min_chunk, ...))` chunks, a graph loaded from the cache
    came back guarded on T < 2 * min_chunk (the batch is one chunk), and the first chunked batch after a
    cache hit (the GPU check's cells, after its warm-up) recompiled the model (tests/test_scan_triton.py:
    the one-graph test on a warm cache, and a test that the traced length holds no Min or Max)."""
    longest = min_chunk * _ops.cdiv(T, min_chunk * _ops.cdiv(target or TARGET_PROGRAMS, programs))
    return _ops.cdiv(T, _ops.cdiv(T, longest))  # the chunks `longest` needs, made equal (so never past T)


# (kernel, device, Di, N) whose chunked (SUMMARY) variant has been compiled. A batch of few long rows
# needs it, and Triton compiles a variant on its first launch: if that came at a later step it would be
# seconds of compilation inside the budgeted clock, so the first launch of a kernel compiles both
# variants (the warm-up steps are not budgeted). Compiled kernels are cached by Triton itself.
_WARM: set[tuple] = set()


def launch_meta(N: int) -> dict[str, int]:
    """The kernels' block sizes for d_state N: BD channels per program, the state padded to a power of
    two (Triton's blocks must be; the interpreter does not check it, the GPU compiler does)."""
    return dict(BD=BLOCK_D, BN=triton.next_power_of_2(N))


def _warm(kind: str, kernel, make_args: Callable[[], tuple], device: torch.device, Di: int, N: int, meta: dict,
          grid: tuple, **variant) -> None:
    """Launch a chunked-path variant of `kernel` once (its output discarded: the arguments `make_args`
    builds write only scratch). The arguments are built only then: a warm kernel costs no allocation."""
    key = (kind, str(device), Di, N, tuple(sorted(meta.items())), tuple(sorted(variant.items())))
    if key not in _WARM:
        kernel[grid](*make_args(), **variant, **meta, **OPTIONS)
        _WARM.add(key)


def _carry(decay_sum: torch.Tensor, A: torch.Tensor, S: torch.Tensor, first: torch.Tensor,
           reverse: bool) -> torch.Tensor:
    """The state entering each chunk, (B, nC, Di, N), from the chunk summaries S (B, nC, Di, N), the
    chunks' summed Δ (B, nC, Di) and the state entering the first chunk walked (B, Di, N): `scan_carry`."""
    Bsz, nC, Di, N = S.shape
    init = torch.empty_like(S)
    carry = _kernels(interpreting())[2]
    carry[(Bsz, triton.cdiv(Di, BLOCK_D))](decay_sum, A, S, first, init, Di, N, nC, REVERSE=reverse,
                                           **launch_meta(N), **OPTIONS)
    return init


def _warm_carry(kind: str, A: torch.Tensor, first: torch.Tensor, reverse: bool) -> None:
    """Compile `scan_carry`'s variant at the first single-chunk call, as `_warm` does the walks'."""
    Bsz, Di, N = first.shape

    def args() -> tuple:
        scratch = first.new_zeros(Bsz, 1, Di, N)
        return first.new_zeros(Bsz, 1, Di), A, scratch, first, scratch.clone(), Di, N, 1

    _warm(kind, _kernels(interpreting())[2], args, first.device, Di, N, launch_meta(N),
          (Bsz, triton.cdiv(Di, BLOCK_D)), REVERSE=reverse)


def _forward(u, delta, A, B, C, h0, CH: int, K: int, stages: int, keep: bool):
    """y (B, T, Di), h_T (B, Di, N), the state entering each stretch (B, nC · nK, Di, N) (with `keep`, else
    a placeholder of 1 element; the slots of stretches that would start past T are not written) and the
    chunks' summed Δ (B, nC, Di)."""
    Bsz, T, Di = u.shape
    N = A.shape[1]
    nC, nK = triton.cdiv(T, CH), triton.cdiv(CH, K)
    fwd = _kernels(interpreting())[0]
    grid = (Bsz, triton.cdiv(Di, BLOCK_D), nC)
    meta = {**launch_meta(N), "STAGES": stages}
    y = torch.empty_like(u)
    hk = u.new_empty(Bsz, nC * nK, Di, N) if keep else u.new_empty(1)  # the state entering each stretch
    out = u.new_empty(Bsz, nC, Di, N)
    # (B, nC, Di): the carry's decays (one chunk: zeros, never read; an operator's outputs must be defined)
    dsum = _chunk_sums(delta, CH, nC) if nC > 1 else delta.new_zeros(Bsz, 1, Di)
    if nC > 1:  # what each chunk adds to a state from zero, then the states entering the chunks
        fwd[grid](u, delta, A, B, C, out, y, hk, out, T, Di, N, CH, K, KEEP=False, SUMMARY=True, **meta,
                  **OPTIONS)
        init = _carry(dsum, A, out, h0, reverse=False).contiguous()
    else:
        init = h0[:, None].contiguous()
        def args() -> tuple:
            scratch = u.new_empty(Bsz, 1, Di, N)
            return u, delta, A, B, C, scratch, y, hk, scratch, T, Di, N, CH, K, False

        _warm("fwd", fwd, args, u.device, Di, N, meta, grid, SUMMARY=True)
        _warm_carry("carry", A, h0, reverse=False)
    fwd[grid](u, delta, A, B, C, init, y, hk, out, T, Di, N, CH, K, KEEP=keep, SUMMARY=False, **meta,
              **OPTIONS)
    return y, out[:, -1].contiguous(), hk, dsum


def _backward(u, delta, A, B, C, hk, dsum, gy, ghT, CH: int, K: int, stages: int, bwd_block: int, bwd_warps: int,
              bwd_stages: int):
    """(du, dΔ, dA, dB, dC, dh0) from dL/dy (B, T, Di) and dL/dh_T (B, Di, N), fp32 contiguous."""
    Bsz, T, Di = u.shape
    N = A.shape[1]
    nC = triton.cdiv(T, CH)
    bwd = _kernels(interpreting())[1]
    grid = (Bsz, triton.cdiv(Di, bwd_block), nC)
    meta = {**launch_meta(N), "STAGES": stages, "BD": bwd_block, "RSTAGES": bwd_stages,
            "num_warps": bwd_warps}  # (num_warps: a launch option)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dA = u.new_empty(Bsz, nC, Di, N)
    dB, dC = torch.zeros_like(B), torch.zeros_like(C)
    out = u.new_empty(Bsz, nC, Di, N)
    if nC > 1:  # the adjoint each chunk adds from zero, then the adjoint entering each chunk from the right
        bwd[grid](u, delta, A, B, C, hk, out, gy, out, du, ddelta, dA, dB, dC, out, T, Di, N, CH, K,
                  SUMMARY=True, **meta, **OPTIONS)
        init = _carry(dsum, A, out, ghT, reverse=True).contiguous()
    else:
        init = ghT[:, None].contiguous()
        def args() -> tuple:
            scratch = u.new_empty(Bsz, 1, Di, N)
            return u, delta, A, B, C, hk, scratch, gy, scratch, du, ddelta, dA, dB, dC, scratch, T, Di, N, CH, K

        _warm("bwd", bwd, args, u.device, Di, N, meta, grid, SUMMARY=True)
        _warm_carry("carry_reverse", A, ghT, reverse=True)
    work = u.new_empty(Bsz, nC, K + 1, Di, N)  # one stretch's states per (sequence, chunk)
    bwd[grid](u, delta, A, B, C, hk, work, gy, init, du, ddelta, dA, dB, dC, out, T, Di, N, CH, K,
              SUMMARY=False, **meta, **OPTIONS)
    return du, ddelta, dA.sum((0, 1)), dB, dC, out[:, 0].contiguous()


# The scan as two custom operators (mixers/_ops.py: single nodes of a compiled graph, no graph break). Their
# shape functions take the chunk length as given (a SymInt under tracing: `chunk_len` is SymInt-safe)
def _fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            h0: torch.Tensor, chunk: int, ckpt: int, stages: int, bwd_block: int, bwd_warps: int, bwd_stages: int,
            keep: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    y, hT, hk, dsum = _forward(u, delta, A, B, C, h0, chunk, ckpt, stages, keep)
    return y, hT, hk.view(-1), dsum.view(-1)


def _fwd_fake(u, delta, A, B, C, h0, chunk, ckpt, stages, bwd_block, bwd_warps, bwd_stages, keep):
    """The saved states and sums are flat: as (B, nC, ...) tensors, the contiguity check of a dimension whose
    size is the chunk count guards on that count being 1, i.e. a recompile when a batch is first chunked."""
    Bsz, T, Di = u.shape
    N = A.shape[1]
    nC, nK = _ops.cdiv(T, chunk), _ops.cdiv(chunk, ckpt)
    hk = u.new_empty(Bsz * nC * nK * Di * N) if keep else u.new_empty(1)
    return torch.empty_like(u), u.new_empty(Bsz, Di, N), hk, delta.new_empty(Bsz * nC * Di)


def _fwd_setup(ctx, inputs, output) -> None:
    u, delta, A, B, C, _, *options, keep = inputs
    _, _, hk, dsum = output
    ctx.mark_non_differentiable(hk, dsum)
    ctx.set_materialize_grads(False)  # no zeros for the outputs nobody differentiates (h_T, usually)
    ctx.save_for_backward(u, delta, A, B, C, hk, dsum)
    ctx.options = options  # chunk, ckpt, stages, bwd_block, bwd_warps, bwd_stages


def _fwd_backward(ctx, gy, ghT, _ghk, _gdsum):
    u, delta, A, B, C, hk, dsum = ctx.saved_tensors
    Bsz, _, Di = u.shape
    gy = torch.zeros_like(u) if gy is None else gy.float().contiguous()
    ghT = u.new_zeros(Bsz, Di, A.shape[1]) if ghT is None else ghT.float().contiguous()
    grads = _BWD(u, delta, A, B, C, hk, dsum, gy, ghT, *ctx.options)
    return (*grads, None, None, None, None, None, None, None)


def _bwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            hk: torch.Tensor, dsum: torch.Tensor, gy: torch.Tensor, ghT: torch.Tensor, chunk: int, ckpt: int,
            stages: int, bwd_block: int, bwd_warps: int, bwd_stages: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    Bsz, _, Di = u.shape  # the saved tensors as `_forward` made them: (B, nC · nK, Di, N), (B, nC, Di)
    return _backward(u, delta, A, B, C, hk.view(Bsz, -1, Di, A.shape[1]), dsum.view(Bsz, -1, Di), gy, ghT, chunk,
                     ckpt, stages, bwd_block, bwd_warps, bwd_stages)


def _bwd_fake(u, delta, A, B, C, hk, dsum, gy, ghT, *options):
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), torch.empty_like(ghT))


_BWD = _ops.define("selective_scan_bwd", _bwd_op, _bwd_fake)
_FWD = _ops.define("selective_scan_fwd", _fwd_op, _fwd_fake, _fwd_backward, _fwd_setup)


class TritonScan:
    """y (B, T, Di) and h_T (B, Di, N) of the scan, fp32; inputs as `selective_scan_reference`'s, fp32
    and contiguous (the caller casts), h0 given. `chunk`: positions per chunk (None: `chunk_len`);
    `ckpt`: positions per stretch, whose first state the forward stores for the backward (None: CKPT);
    `stages`: the pipeline stages of the walks that run forward in time (None: STAGES); `bwd_block`,
    `bwd_warps`, `bwd_stages`: the backward walk's channels and warps per program and its reverse walk's
    pipeline stages (None: BWD_BLOCK_D, BWD_WARPS, BWD_STAGES).

    Differentiable, through the custom operators `wavebench::selective_scan_fwd` / `_bwd` (traced as single
    nodes by torch.compile). The forward keeps the stretches' states only when a gradient will be asked."""

    @staticmethod
    def apply(u, delta, A, B, C, h0, chunk=None, ckpt=None, stages=None, bwd_block=None, bwd_warps=None,
              bwd_stages=None):
        keep = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C, h0))
        y, hT, _, _ = _FWD(u, delta, A, B, C, h0, chunk or chunk_len(*u.shape), ckpt or CKPT, stages or STAGES,
                           bwd_block or BWD_BLOCK_D, bwd_warps or BWD_WARPS, bwd_stages or BWD_STAGES, keep)
        return y, hT


def _chunk_sums(delta: torch.Tensor, CH: int, nC: int) -> torch.Tensor:
    """(B, nC, Di): Σ Δ over each chunk's positions (the last chunk padded with Δ = 0)."""
    Bsz, T, Di = delta.shape
    pad = nC * CH - T
    d = torch.nn.functional.pad(delta, (0, 0, 0, pad)) if pad else delta
    return d.view(Bsz, nC, CH, Di).sum(2)
