"""Mamba's Triton scan (mixers/_scan_triton.py), the CUDA default without mamba-ssm, held to the step-by-
step recurrence. On CPU the kernels run in Triton's interpreter: the same kernel code, executed with
NumPy, so values, gradients, masking of partial channel / state blocks and the atomic sums are checked
here; the CUDA tests (named *cuda*, run by the GPU check) repeat the check on the compiled kernels and in
a bf16-autocast LM.

The interpreter must be chosen before Triton is imported (its standard library is decorated then), so
the tests named *interp* run in a subprocess with TRITON_INTERPRET=1 (`test_the_interpreter_suite`)."""
from __future__ import annotations

import inspect
import itertools
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import mixers
import mixers._ops
import mixers._scan_triton as st
import mixers.mamba as mm
from harness.compiling import major_minor
from test_compile import assert_bf16_gradients_agree
from test_mamba import REGIMES, _assert_grads_close, _build, _grads, extreme_inputs, scan_inputs

# True in the subprocess that set TRITON_INTERPRET before anything imported Triton
INTERP = st.triton is not None and st.interpreting()


@pytest.mark.skipif(st.triton is None or INTERP, reason="needs Triton; the suite itself runs once")
def test_the_interpreter_suite():
    run_interpreter_suite(Path(__file__), min_passed=34)


def run_interpreter_suite(test_file: Path, min_passed: int) -> None:
    """Every *interp* test of `test_file` in a fresh process under TRITON_INTERPRET=1: all must pass, none skip."""
    broken = _interpreter_breakage()
    if broken:
        pytest.skip(broken)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "interp and not suite",
                        str(test_file.resolve())], cwd=Path(__file__).resolve().parents[1],
                       env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=900)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    passed = re.search(r"(\d+) passed", last)
    assert passed and int(passed.group(1)) >= min_passed and "skipped" not in last, last


# a loop over a run-time integer, as the scan's `for i in range(CH)`: Triton's interpreter turns the
# integer into a 1-element array and calls int() on it, which NumPy >= 2.4 refuses (Triton 3.6, the
# CUDA image's, with NumPy 2.4; Triton 3.9 works)
PROBE = """
import torch, triton, triton.language as tl
@triton.jit
def count(x_ptr, n):
    for i in range(n):
        tl.store(x_ptr + i, i)
x = torch.zeros(3)
count[(1,)](x, 3)
assert x.tolist() == [0.0, 1.0, 2.0], x
"""


def _interpreter_breakage() -> str:
    """Why this Triton's interpreter cannot run the kernels here ('' if it can). Only that known
    incompatibility skips: any other failure of the probe leaves the suite to run and say what broke."""
    r = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, "TRITON_INTERPRET": "1"},
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and "only 0-dimensional arrays can be converted" in r.stderr:
        import numpy

        return (f"Triton {st.triton.__version__}'s interpreter cannot loop over a run-time integer with NumPy "
                f"{numpy.__version__} (NumPy < 2.4 or a newer Triton can); the kernels still compile in "
                "the ahead-of-time compile tests (*_compile_to_gpu_code_without_a_gpu)")
    return ""


# the kernel variants the autograd function launches: (KEEP, SUMMARY) forward, SUMMARY backward, REVERSE carry
FWD_VARIANTS = [dict(KEEP=False, SUMMARY=True), dict(KEEP=True, SUMMARY=False), dict(KEEP=False, SUMMARY=False)]
BWD_VARIANTS = [dict(SUMMARY=True), dict(SUMMARY=False)]
CARRY_VARIANTS = [dict(REVERSE=False), dict(REVERSE=True)]  # the chunks' carry, forward and adjoint


def _ast_source(ASTSource, kernel, consts: dict):
    """The kernel's source for Triton's ahead-of-time compiler, in each of its three APIs: Triton >= 3.3
    names every argument (constexprs by name, apart), 3.2 (torch 2.6) takes them as named constants,
    3.0 / 3.1 (torch 2.4 / 2.5) number the arguments and leave the constexprs out of the signature."""
    ty = lambda a: "*fp32" if a.endswith("_ptr") else "i32"  # noqa: E731
    names = kernel.arg_names
    sig = {a: "constexpr" if a in consts else ty(a) for a in names}
    if "constexprs" in inspect.signature(ASTSource).parameters:
        return ASTSource(fn=kernel, signature=sig, constexprs=consts)
    if major_minor(st.triton.__version__) >= (3, 2):
        return ASTSource(fn=kernel, signature=sig, constants=consts)
    sig = {i: ty(a) for i, a in enumerate(names) if a not in consts}
    return ASTSource(fn=kernel, signature=sig, constants={names.index(a): c for a, c in consts.items()})


def gpu_compiler(arch: int, options: dict | None = None):
    """`compile(kernel, constexprs)` -> Triton's compiled kernel for sm_<arch>, made on this machine with
    Triton's ahead-of-time compiler and the ptxas it ships (no GPU needed); skips where there are none.
    `options`: the compile options, by default those the scans launch with (`st.OPTIONS`)."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip(f"Triton {st.triton.__version__} has no ahead-of-time compile API here")
    ptxas = Path(st.triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not (ptxas.exists() or os.environ.get("TRITON_PTXAS_PATH")):
        pytest.skip("this Triton ships no ptxas")
    opts = dict(st.OPTIONS if options is None else options)
    return lambda kernel, consts: st.triton.compile(_ast_source(ASTSource, kernel, consts),
                                                    target=GPUTarget("cuda", arch, 32), options=opts)


@pytest.mark.skipif(st.triton is None or INTERP, reason="needs Triton (compiled, not interpreted)")
@pytest.mark.parametrize("arch", [80, 90])  # A100, H100 / H200
def test_the_scan_kernels_compile_to_gpu_code_without_a_gpu(arch):
    """The interpreter runs the kernels' code with NumPy; it never lowers them. Triton's ahead-of-time
    compiler does, with the ptxas Triton ships, for a named GPU and no GPU present: every variant the
    scan launches must compile to a cubin, so a kernel the GPU's compiler rejects fails here, on CPU,
    not in a GPU machine's first minutes."""
    compile = gpu_compiler(arch)
    fwd, bwd, carry = st._kernels(False)
    kernels = ((fwd, FWD_VARIANTS), (bwd, BWD_VARIANTS), (carry, CARRY_VARIANTS))
    for (kernel, variants), N in itertools.product(kernels, (16, 5)):
        for v in variants:  # d_state 16 (the presets') and 5 (the interpreter tests'), blocks as launched
            consts = {**v, **st.launch_meta(N), **({} if kernel is carry else {"STAGES": st.STAGES}),
                      **({"RSTAGES": st.BWD_STAGES} if kernel is bwd else {})}
            compiled = compile(kernel, consts)
            assert len(compiled.asm["cubin"]) > 0, (kernel.fn.__name__, v, N)
            # the forward walks' inputs load ahead, asynchronously (cp.async), while the state advances: the
            # point of STAGES, and what Triton's pipeliner must do with `tl.range(num_stages=...)`
            pipelined = "cp.async" in compiled.asm["ptx"]
            assert pipelined == (kernel is fwd or (kernel is bwd and not v["SUMMARY"])), (kernel.fn.__name__, v)
            # the backward's threads hand a stretch's recomputed states to each other through memory: a
            # barrier after writing them, one after reading them (the interpreter runs no threads)
            barriers = compiled.asm["ttir"].count("barrier")
            assert barriers == (2 if kernel is bwd and not v["SUMMARY"] else 0), (kernel.fn.__name__, v, barriers)
            # the design's premise: a program's (BD, N) states stay in registers. ptxas spills to the stack
            # frame (0 or 8 bytes here under Triton 3.1 to 3.9); a thread's share of one (32, 16) state is
            # 16 bytes. Carrying h_t in a register in the backward spilled 24 under Triton 3.6 (the H200's),
            # 128 channels per program 96 under 3.9)
            frame = _frame_bytes(compiled.asm["cubin"])
            assert frame is None or frame < 16, (kernel.fn.__name__, v, f"{frame} bytes of stack and local memory")
            # the backward's dB and dC sums: relaxed reductions (the thread goes on). Triton's default order
            # (acq_rel) made each an `atom.acq_rel`, which in the GPU code (SASS) is a fence of all the
            # thread's memory operations (MEMBAR.ALL.GPU), the atomic's round trip (ATOMG) and an L1
            # invalidation (CCTL.IVALL): two per position inside the walk's sequential loop. The PTX is
            # `red.relaxed` under Triton 3.9 but `atom.relaxed` under 3.6 (the H200's), whose result ptxas
            # then drops: the SASS, where cuobjdump ships, is a RED either way, with no fence
            atomics = set(re.findall(r"\b(?:atom|red)\.global\.[a-z0-9_.]+", compiled.asm["ptx"]))
            relaxed = {f"{op}.global.gpu.relaxed.add.f32" for op in ("atom", "red")}
            assert (atomics and atomics <= relaxed if kernel is bwd and not v["SUMMARY"] else not atomics), \
                (kernel.fn.__name__, v, atomics)
            sass = _sass_ops(compiled.asm["cubin"])
            if sass is not None:
                wanted = {"RED" if arch < 90 else "REDG"} if kernel is bwd and not v["SUMMARY"] else set()
                assert sass == wanted, (kernel.fn.__name__, v, arch, sass)
    # and with one stage, each step waits for its own loads: no asynchronous copy at all
    plain = compile(fwd, {**FWD_VARIANTS[1], **st.launch_meta(16), "STAGES": 1})
    assert "cp.async" not in plain.asm["ptx"]
    # the backward's other launch shapes, which the GPU check times (`triton_bwd_*`): one warp of 8 channels and
    # the reverse walk pipelined, each alone and both. Each compiles and keeps its state in registers; one warp
    # waits at fewer barriers (the PTX's bar.sync: 7 against 17 under Triton 3.9, 8 against 16 under 3.6; in the
    # sm_90 SASS of the reverse walk's loop, 2 per step against 12 and 10); a pipelined reverse walk loads ahead
    # (more cp.async than the recompute walk's alone)
    ptx = {}
    for block, warps, rstages in ((st.BWD_BLOCK_D, st.BWD_WARPS, st.BWD_STAGES), (8, 1, 1), (st.BWD_BLOCK_D,
                                  st.BWD_WARPS, 2), (8, 1, 2)):
        shape = gpu_compiler(arch, {**st.OPTIONS, "num_warps": warps})
        for v in BWD_VARIANTS:
            compiled = shape(bwd, {**v, **st.launch_meta(16), "BD": block, "STAGES": st.STAGES, "RSTAGES": rstages})
            frame = _frame_bytes(compiled.asm["cubin"])
            assert frame is None or frame < 16, (block, warps, rstages, v, f"{frame} bytes of stack and local memory")
            if not v["SUMMARY"]:
                ptx[block, warps, rstages] = compiled.asm["ptx"]
    assert st.BWD_STAGES == 1 and (st.BWD_BLOCK_D, st.BWD_WARPS) == (32, 4)
    bars = {k: p.count("bar.sync") for k, p in ptx.items()}
    assert bars[8, 1, 1] < bars[32, 4, 1] and bars[8, 1, 2] < bars[32, 4, 2], bars
    copies = {k: p.count("cp.async") for k, p in ptx.items()}
    assert copies[32, 4, 2] > copies[32, 4, 1] and copies[8, 1, 2] > copies[8, 1, 1], copies


@pytest.mark.skipif(st.triton is None or INTERP, reason="needs Triton (compiled, not interpreted)")
def test_the_walks_fuse_multiply_and_add_whatever_tritons_default(monkeypatch):
    """A walk's dependent chain, h = a h + b, is one fused multiply-add per step (`fma.rn.f32` in the PTX).
    Triton 3.9 warns that its default turns fusion off in 3.10: with that default already off
    (TRITON_DEFAULT_FP_FUSION=0, read where Triton has it), the scans' compile options keep the FMAs, for
    Mamba's scan and gated_context's walk alike; without the options they go (where the knob exists)."""
    import mixers._linear_scan_triton as lst

    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "0")
    knob = hasattr(getattr(st.triton, "knobs", None), "language") and \
        hasattr(st.triton.knobs.language, "default_fp_fusion")
    walks = [(st._kernels(False)[0], {**FWD_VARIANTS[1], **st.launch_meta(16), "STAGES": st.STAGES}),
             (lst._kernels(False)[0], {"SUMMARY": False, "BC": lst.BLOCK_C, "STAGES": lst.STAGES})]
    for kernel, consts in walks:
        assert "fma.rn.f32" in gpu_compiler(90)(kernel, consts).asm["ptx"], kernel.fn.__name__
        if knob:  # the control: the default alone (off here) unfuses them, so the options are what keeps them
            assert "fma.rn.f32" not in gpu_compiler(90, options={})(kernel, consts).asm["ptx"], kernel.fn.__name__


def test_every_launch_of_both_scans_asks_for_fused_multiply_add(monkeypatch):
    """The compile options reach every launch (forward, backward, carry, the first call's warm-ups), for
    both scans, on single-chunk and chunked rows: counted with the launches stubbed (no Triton run)."""
    import mixers._linear_scan_triton as lst

    if st.triton is None:
        pytest.skip("needs Triton")
    from benchmarks.common import NoLaunch

    launches = []
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the scans' CPU path (read at each call), never run here
    monkeypatch.setattr(st, "_kernels", lambda interpret: (NoLaunch(launches),) * 3)
    monkeypatch.setattr(lst, "_kernels", lambda interpret: (NoLaunch(launches),) * 3)
    monkeypatch.setattr(st, "_WARM", set())
    monkeypatch.setattr(lst, "_WARM", set())
    for chunk in (None, 4):  # one chunk (with the first call's warm-ups), then 3 chunks
        x = {k: v.requires_grad_() for k, v in scan_inputs(9, seed=1, Di=33).items()}
        mm.selective_scan_triton(**x, chunk=chunk).sum().backward()
        a = torch.rand(2, 9, 5, requires_grad=True)
        lst.linear_scan_triton(a, torch.randn(2, 9, 5, requires_grad=True), chunk=chunk).sum().backward()
    seen = [{k: kw.get(k) for k in st.OPTIONS} for _, kw in launches]
    assert len(seen) >= 20 and all(o == st.OPTIONS for o in seen), seen


def test_a_warm_scan_allocates_no_warm_up_scratch(monkeypatch):
    """The first single-chunk call compiles the chunked variants too (`_warm`, below); later calls must skip
    that whole path, the scratch tensors included. The carry's check once looked up a key that `_warm` never
    stored, so every single-chunk call (the common one: many short rows) allocated and zero-filled three
    scratch tensors each way, per layer and direction: launches on a GPU. Nor does it sum Δ over chunks (the
    carry's decays: a pad and a sum, for several chunks only). Kernels stubbed (launches recorded)."""
    if st.triton is None:
        pytest.skip("needs Triton")
    from benchmarks.common import NoLaunch

    launches, warmed, sums = [], [], []
    real_sums = st._chunk_sums
    monkeypatch.setattr(st, "_chunk_sums", lambda *a: sums.append(a[1:]) or real_sums(*a))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the scans' CPU path (read at each call), never run here
    monkeypatch.setattr(st, "_kernels", lambda interpret: (NoLaunch(launches),) * 3)
    monkeypatch.setattr(st, "_WARM", set())
    real = st._warm

    def warm(kind, kernel, make_args, *a, **k):  # records each warm-up whose scratch is built
        return real(kind, kernel, lambda: warmed.append(kind) or make_args(), *a, **k)

    monkeypatch.setattr(st, "_warm", warm)
    for call in range(3):
        launches.clear(), warmed.clear()
        x = {k: v.requires_grad_() for k, v in scan_inputs(9, seed=1, Di=33).items()}
        mm.selective_scan_triton(**x).sum().backward()  # one chunk
        if call == 0:  # each chunked variant once, and the two walks
            assert sorted(warmed) == ["bwd", "carry", "carry_reverse", "fwd"] and len(launches) == 6, (warmed, launches)
        else:  # the two walks, nothing else
            assert warmed == [] and len(launches) == 2, (warmed, launches)
        assert sums == [], sums


def _cuobjdump(cubin: bytes, flag: str) -> str | None:
    """What the cuobjdump Triton ships prints for a cubin (`-sass`, `-res-usage`); None where it ships none."""
    tool = Path(st.triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(tool), flag, str(path)], capture_output=True, text=True).stdout


def _sass_ops(cubin: bytes) -> set[str] | None:
    """The atomics, fences and cache controls in a cubin's GPU code (SASS; None without cuobjdump): what the
    memory-order choice compiles to, whatever the PTX says."""
    out = _cuobjdump(cubin, "-sass")
    return None if out is None else set(re.findall(r"\b(MEMBAR|CCTL|ATOMG?|REDG?)\b", out))


def _frame_bytes(cubin: bytes) -> int | None:
    """Stack + local memory per thread of a cubin's kernel (None without cuobjdump)."""
    found = re.search(r"STACK:(\d+).*LOCAL:(\d+)", _cuobjdump(cubin, "-res-usage") or "")
    return int(found.group(1)) + int(found.group(2)) if found else None


# Di = 40: a full block of 32 channels and a partial one; N = 5: a state block of 8 with 3 masked;
# chunk: one walk (None at these sizes), or chunks of 4 / 8 positions with a ragged last one;
# ckpt: stretches of 16 positions (None), or of 4 / 3 (several per chunk, a short last one, and
# stretches wholly past T in the last chunk), each recomputed from its first state in the backward
@pytest.mark.parametrize("T,chunk,ckpt", [(1, None, None), (2, None, None), (13, None, None), (19, 4, None),
                                          (19, 8, None), (8, 4, None), (3, 8, None), (37, None, None),
                                          (13, None, 4), (19, 8, 3), (8, 4, 4), (3, 8, 3)])
def test_interp_triton_scan_equals_reference(interpreter, T, chunk, ckpt):
    x = scan_inputs(T, seed=T, Bsz=2, Di=40, N=5)
    y_ref, h_ref = mm.selective_scan_reference(**x, return_last_state=True)
    # the default pipelined walks, and unpipelined ones (stages 1) in two cases (the interpreter runs both
    # the same way: what differs on a GPU, the compiled loop, is the AOT test's and the CUDA test's)
    for stages in (None, 1) if T in (19, 37) else (None,):
        y, h = mm.selective_scan_triton(**x, return_last_state=True, chunk=chunk, ckpt=ckpt, stages=stages)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
        _assert_grads_close(_grads(mm.selective_scan_triton, x, chunk=chunk, ckpt=ckpt, stages=stages),
                            _grads(mm.selective_scan_reference, x), f"T={T} chunk={chunk} ckpt={ckpt} stages={stages}")


@pytest.mark.parametrize("bwd_block,bwd_warps,bwd_stages", [(8, 1, 1), (16, 2, 2), (64, 8, 1)])
@pytest.mark.parametrize("T,chunk,ckpt", [(37, None, None), (19, 8, 3)])
def test_interp_the_backward_on_other_launch_shapes_equals_reference(interpreter, monkeypatch, T, chunk, ckpt,
                                                                     bwd_block, bwd_warps, bwd_stages):
    """The backward walk's channels and warps per program and its reverse walk's stages (`bwd_block`,
    `bwd_warps`, `bwd_stages`; the GPU check's `triton_bwd_*` variants): every backward launch takes them (the
    grid has Di / bwd_block channel blocks; Di = 40: five full blocks of 8, two of 16 and a partial one, one
    partial block of 64), and the gradients stay the reference's (the blocks' partial sums of dB and dC add
    up). The interpreter runs a pipelined loop as a plain one: the AOT test compiles it."""
    fwd, bwd, carry = st._kernels(True)
    seen = []

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                seen.append((tuple(grid), kw["BD"], kw.get("num_warps"), kw["RSTAGES"], kw["SUMMARY"]))
                return bwd[grid](*args, **kw)
            return launch

    monkeypatch.setattr(st, "_kernels", lambda interpret: (fwd, Spy(), carry))
    monkeypatch.setattr(st, "_WARM", set())  # the first call's warm-up launch too
    x = scan_inputs(T, seed=T + bwd_block, Bsz=2, Di=40, N=5)
    _grads(mm.selective_scan_triton, x, chunk=chunk, ckpt=ckpt)  # the default shape first: its warm-up is its own
    seen.clear()
    got = _grads(mm.selective_scan_triton, x, chunk=chunk, ckpt=ckpt, bwd_block=bwd_block, bwd_warps=bwd_warps,
                 bwd_stages=bwd_stages)
    _assert_grads_close(got, _grads(mm.selective_scan_reference, x), f"T={T} bwd_block={bwd_block} warps={bwd_warps}")
    n_chunks = -(-T // (chunk or T))
    assert seen and {launch[:4] for launch in seen} == {((2, -(-40 // bwd_block), n_chunks), bwd_block, bwd_warps,
                                                         bwd_stages)}
    # the summary walk (one chunk: its warm-up, compiled for this shape even after the default's) and the main one
    assert {launch[4] for launch in seen} == {True, False}


@pytest.mark.parametrize("T,chunk,ckpt", [(37, None, None), (19, 8, 3)])
def test_interp_the_backward_keeps_one_state_per_stretch_not_every_state(interpreter, T, chunk, ckpt):
    """What the forward saves for the backward: the state entering each stretch of `ckpt` positions
    (B · chunks x stretches · Di · N values), not every state (B, T, Di, N), which was 0.5 GiB per layer and
    direction at the small preset's 16,384 tokens; the backward recomputes a stretch's states."""
    x = scan_inputs(T, seed=1, Bsz=2, Di=40, N=5)
    x = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = mm.selective_scan_triton(**x, chunk=chunk, ckpt=ckpt)
    y.square().sum().backward()
    K, CH = ckpt or st.CKPT, chunk or T
    stretches = -(-T // CH) * -(-CH // K)
    # handed over flat by the scan's custom operator (mixers/_ops.py), beside the chunks' summed Δ (B · nC · Di)
    flat = sorted(s[0] for s in saved if len(s) == 1)
    assert flat[-1] == 2 * stretches * 40 * 5 and 2 * -(-T // CH) * 40 in flat, saved
    assert max(math.prod(s) for s in saved) < 2 * T * 40 * 5, saved  # no tensor of every state


@pytest.mark.parametrize("T,chunk", [(19, 8), (8, 4), (64, 16)])
def test_interp_the_summary_walks_skip_the_chunk_no_carry_reads(interpreter, monkeypatch, T, chunk):
    """The carry over the chunks' summaries never uses what the last chunk adds to a state (forward) nor what
    the first passes left (backward): the state after the last chunk and dL/dh0 come from the walks from the
    true states. Those two summaries are therefore not walked, which at two chunks (the mixer-alone sweep's
    L = 512) halves each summary pass's work; every other summary must be the chunk's true one."""
    x = scan_inputs(T, seed=3, Bsz=2, Di=40, N=5)
    seen = []
    carry = st._carry

    def spy(decay_sum, A, S, first, reverse):
        seen.append((reverse, S.clone()))
        return carry(decay_sum, A, S, first, reverse)

    monkeypatch.setattr(st, "_carry", spy)
    grads = _grads(mm.selective_scan_triton, x, chunk=chunk)
    (forward, S), (backward, Q) = seen
    nC = -(-T // chunk)
    assert (forward, backward, S.shape[1], Q.shape[1]) == (False, True, nC, nC)
    assert not S[:, -1].any() and not Q[:, 0].any()  # the two summaries no carry reads: not walked
    for c in range(nC - 1):  # what chunk c adds to a state from zero: the reference scan over it alone
        part = {k: x[k][:, c * chunk:(c + 1) * chunk] for k in ("u", "delta", "B", "C")}
        _, h = mm.selective_scan_reference(**part, A=x["A"], return_last_state=True)
        torch.testing.assert_close(S[:, c], h, rtol=1e-5, atol=1e-5)
        assert Q[:, c + 1].abs().amin() > 0  # every chunk after the first passes an adjoint left
    _assert_grads_close(grads, _grads(mm.selective_scan_reference, x), f"T={T} chunk={chunk}")


def test_long_sequences_are_cut_into_chunks_that_fill_the_gpu():
    if st.triton is None:
        pytest.skip("Triton is not installed")
    # enough sequences (128 x 16 channel blocks = 2,048 programs): one walk per sequence; the small
    # preset's 32 x 512 (512 programs) is cut in two; 2 x 8192 into enough chunks for about
    # TARGET_PROGRAMS programs again, in equal chunks of more than MIN_CHUNK / 2 positions
    assert st.chunk_len(128, 128, 512) == 128
    assert st.chunk_len(32, 512, 512) == 256
    ch = st.chunk_len(2, 8192, 512)
    programs = 2 * (512 // st.BLOCK_D) * (-(-8192 // ch))
    assert ch >= st.MIN_CHUNK and st.TARGET_PROGRAMS <= programs < 2 * st.TARGET_PROGRAMS
    assert st.chunk_len(1, 100, 32) == 50  # one program: 100 positions in two chunks (not one, nor 64 + 36)
    assert [st.chunk_len(1, T, 32) for T in (1, 37, 64)] == [1, 37, 64]  # a short row is one chunk, itself
    for Bsz, Di, target in ((1, 32, None), (3, 64, None), (8, 512, 256), (40, 1024, None), (2, 96, 4)):
        programs = Bsz * (-(-Di // st.BLOCK_D))
        most = -(-(target or st.TARGET_PROGRAMS) // programs)  # chunks a row needs for about `target` programs
        for T in range(1, 3000, 13):
            ch = st.chunk_len(Bsz, T, Di, target)
            n = -(-T // ch)
            assert ch <= T and n <= most and (n == 1 or 2 * ch > st.MIN_CHUNK), (Bsz, Di, target, T, ch)
            assert n == 1 or T - (n - 1) * ch <= ch, (Bsz, Di, target, T, ch)  # (the last is the short one)
            # chunks of about MIN_CHUNK where `most` of them cover the row, else over half of `most` chunks
            assert n == -(-T // st.MIN_CHUNK) if T <= most * st.MIN_CHUNK else 2 * n > most, (Bsz, Di, target, T, ch)


def test_the_chunk_length_is_computed_without_a_min_or_a_max():
    """Under torch.compile the chunk length is SymInt arithmetic on the traced sizes, carried by the saved
    states' sizes into the guards that inductor's graph cache re-checks on a load with Python's min and max:
    each comparison there adds a guard (the batch is one chunk) and a recompile at the first chunked batch.
    Traced with symbolic sizes, the length is an expression with no Min or Max in it, and computing it adds
    no guard."""
    if st.triton is None:
        pytest.skip("Triton is not installed")
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    Bsz, T = (env.create_symintnode(env.create_symbol(v, ConstantSource(f"s{v}")), hint=v)
              for v in (3, 700))
    for ch in (st.chunk_len(Bsz, T, 64), st.chunk_len(Bsz, T, 64, 256), st.fill_chunk_len(Bsz * 2, T, 32)):
        expr = ch.node.expr
        assert not expr.atoms(torch.utils._sympy.functions.Max, torch.utils._sympy.functions.Min), expr
    assert not env.guards, env.guards


@pytest.mark.skipif(st.triton is None, reason="needs Triton")
def test_the_kernels_are_not_specialised_on_what_a_new_batch_length_changes():
    assert_unspecialised_lengths(st._kernels(False), fixed={"Di", "N"})


def assert_unspecialised_lengths(kernels, fixed: set[str]) -> None:
    """Triton compiles a variant per value class of each integer argument it specialises on (== 1, a
    multiple of 16): specialised on a length or a chunk count, a batch of a new length would compile a new
    variant on the GPU, inside the budgeted clock, which the first call's warm-up cannot foresee. So every
    integer argument that moves with the batch's length (T; CH and K, from it; nC, the chunks) must be left
    unspecialised, and those `fixed` per model (channels, state size) are specialised on for free. The
    interpreter ignores the flag: only this check sees it."""
    lengths = {"T", "CH", "K", "nC"}
    for kernel in kernels:
        ints = {p.name for p in kernel.params if not p.name.endswith("_ptr") and not p.is_constexpr}
        free = {p.name for p in kernel.params if p.do_not_specialize}
        assert free == ints & lengths and ints - lengths <= fixed, (kernel.fn.__name__, ints, free)


@pytest.mark.parametrize("regime", REGIMES)
def test_interp_triton_scan_extreme_delta(interpreter, regime):
    """As the PyTorch scans' test: Δ ≈ 0, Δ large (decays underflow to 0), both, and Δ = 0 (a pad)."""
    x = extreme_inputs(regime, 21)
    torch.testing.assert_close(mm.selective_scan_triton(**x, chunk=8, ckpt=3), mm.selective_scan_reference(**x),
                               rtol=1e-5, atol=1e-5)
    _assert_grads_close(_grads(mm.selective_scan_triton, x, chunk=8, ckpt=3), _grads(mm.selective_scan_reference, x),
                        regime)


def test_interp_triton_scan_without_a_last_state_gradient(interpreter):
    """Only y used (the mixer's case): the backward gets no gradient for h_T and must treat it as 0."""
    x = {k: v.clone().requires_grad_(True) for k, v in scan_inputs(9, seed=2, Di=33).items()}
    mm.selective_scan_triton(**x, chunk=4).square().sum().backward()
    got = {k: v.grad for k, v in x.items()}
    for v in x.values():
        v.grad = None
    mm.selective_scan_reference(**x).square().sum().backward()
    _assert_grads_close(got, {k: v.grad for k, v in x.items()}, "y only")


# the compile-time arguments that make a kernel variant of the scans (each variant compiles at its first launch)
VARIANT_ARGS = ("KEEP", "SUMMARY", "REVERSE", "BD", "BN", "STAGES", "RSTAGES", "num_warps")


def recorded_launches(kernels: tuple, variants: list | None = None) -> tuple[list, tuple]:
    """(launches, the forward, backward and carry kernels wrapped): each launch runs and appends
    (kernel name, its SUMMARY or REVERSE flag) to `launches`, and to `variants` (if given) the kernel's
    name with every compile-time argument it was given (`VARIANT_ARGS`, by keyword or by position)."""
    launches = []

    class Recorder:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **kw):
                launches.append((self.name, kw.get("SUMMARY", kw.get("REVERSE"))))
                if variants is not None:
                    bound = {**dict(zip(self.kernel.arg_names, args)), **kw}
                    variants.append((self.name, tuple((k, bound[k]) for k in VARIANT_ARGS if k in bound)))
                return self.kernel[grid](*args, **kw)
            return launch

    return launches, tuple(Recorder(n, k) for n, k in zip(("fwd", "bwd", "carry"), kernels))


def guarded_kernels(kernels: tuple) -> tuple[dict, tuple]:
    """(report, the kernels wrapped): each launch runs on copies of its tensors placed inside NaN margins as
    long as themselves (4,096 elements at least); after it what the launch wrote goes back to the tensors,
    and a margin element no longer NaN is recorded in report["outside"] as (kernel, argument position).

    Why: the interpreter runs a kernel on the tensors' host memory, so a program that writes outside its
    tensor lands in unrelated memory and, unlike on a GPU, does not fault: the values can still come out
    right. A read outside gets NaN, which the values then show. One copy per tensor keeps an argument
    passed twice aliased."""
    report = {"launches": 0, "outside": []}

    class Guarded:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kw):
                copies = {}  # data_ptr -> (position, tensor, margined buffer, the copy in it, margin)

                def guard(i, t):
                    if not isinstance(t, torch.Tensor) or t.numel() == 0:
                        return t
                    if t.data_ptr() not in copies:
                        assert t.is_contiguous() and t.is_floating_point(), (self.kernel.fn.__name__, i)
                        pad = max(4096, t.numel())
                        buf = torch.full((t.numel() + 2 * pad,), float("nan"), dtype=t.dtype)
                        copy = buf[pad:pad + t.numel()].view(t.shape)
                        copies[t.data_ptr()] = (i, t, buf, copy.copy_(t), pad)
                    return copies[t.data_ptr()][3]

                out = self.kernel[grid](*(guard(i, a) for i, a in enumerate(args)), **kw)
                report["launches"] += 1
                for i, t, buf, copy, pad in copies.values():
                    if not torch.equal(copy, t):  # what the launch wrote (an input saved for the backward
                        t.copy_(copy)             # must keep its version: copy back only what changed)
                    if not (buf[:pad].isnan().all() and buf[-pad:].isnan().all()):
                        report["outside"].append((self.kernel.fn.__name__, i))
                return out
            return launch

    return report, tuple(Guarded(k) for k in kernels)


@pytest.mark.parametrize("T,chunk,ckpt", [(19, 4, 3), (19, 8, None), (13, None, 4)])
def test_interp_no_launch_touches_memory_outside_its_tensors(interpreter, monkeypatch, T, chunk, ckpt):
    """Every launch of the scan (the walks, chunked and not; the carry; the first call's warm-ups) writes
    only inside its tensors and reads nothing outside them; values and gradients stay the reference's."""
    report, kernels = guarded_kernels(st._kernels(True))
    monkeypatch.setattr(st, "_kernels", lambda interpret: kernels)
    monkeypatch.setattr(st, "_WARM", set())  # the warm-up launches guarded too
    x = scan_inputs(T, seed=T, Bsz=2, Di=40, N=5)
    y, h = mm.selective_scan_triton(**x, return_last_state=True, chunk=chunk, ckpt=ckpt)
    y_ref, h_ref = mm.selective_scan_reference(**x, return_last_state=True)
    torch.testing.assert_close((y, h), (y_ref, h_ref), rtol=1e-5, atol=1e-5)
    _assert_grads_close(_grads(mm.selective_scan_triton, x, chunk=chunk, ckpt=ckpt),
                        _grads(mm.selective_scan_reference, x), f"T={T} chunk={chunk} ckpt={ckpt}")
    assert report["launches"] >= 6 and not report["outside"], report


def test_interp_each_backward_program_keeps_its_stretch_in_its_own_scratch(interpreter, monkeypatch):
    """On a GPU the backward's programs run at once, each recomputing a stretch's states into its own slot of
    `work` (B, nC, K + 1, Di, N); slots that overlap would race. The interpreter runs programs one after
    another, so overlapping slots still give the right gradients: the slots are read here instead. After
    the walk, program (b, c) holds the states around its chunk's first stretch (walked last): h_{t0 - 1}
    (h0 before chunk 0) up to h_{t0 + L - 1}, t0 = c CH, L = min(K, T - t0)."""
    T, CH, K = 19, 8, 3  # three chunks, the last one short
    fwd, bwd, carry = st._kernels(True)
    seen = []

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, SUMMARY, **kw):
                out = bwd[grid](*args, SUMMARY=SUMMARY, **kw)
                if not SUMMARY:
                    seen.append(args[6].clone())  # work
                return out
            return launch

    monkeypatch.setattr(st, "_kernels", lambda interpret: (fwd, Spy(), carry))
    x = scan_inputs(T, seed=4, Bsz=2, Di=40, N=5)
    y, h = mm.selective_scan_triton(**{**x, "u": x["u"].clone().requires_grad_()}, return_last_state=True,
                                    chunk=CH, ckpt=K)
    (y.sum() + h.sum()).backward()
    (work,) = seen
    states = [x["h0"]]  # h_{-1} = h0, then h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t
    for t in range(T):
        dt = x["delta"][:, t, :, None]
        states.append(torch.exp(dt * x["A"]) * states[-1] + dt * x["u"][:, t, :, None] * x["B"][:, t, None, :])
    assert work.shape == (2, 3, K + 1, 40, 5)
    for c in range(3):
        t0 = c * CH
        L = min(K, T - t0)
        want = torch.stack(states[t0:t0 + L + 1], 1)  # h_{t0 - 1} .. h_{t0 + L - 1}
        torch.testing.assert_close(work[:, c, :L + 1], want, rtol=1e-5, atol=1e-5, msg=f"chunk {c}")


def test_interp_the_first_launch_compiles_the_chunked_variant_too(interpreter, monkeypatch):
    """A step of few long rows runs the chunked (SUMMARY) kernels; Triton compiles a variant at its first
    launch, which must not fall in a budgeted step: the first single-chunk call launches it too, once,
    and its outputs stay the reference's."""
    variants = []
    launches, kernels = recorded_launches(st._kernels(True), variants)
    monkeypatch.setattr(st, "_kernels", lambda interpret: kernels)
    monkeypatch.setattr(st, "_WARM", set())
    x = scan_inputs(9, seed=3, Di=33)
    chunked = [("fwd", True), ("bwd", True), ("carry", False), ("carry", True)]  # what only few long rows run
    for first in (True, False):
        launches.clear()
        got = _grads(mm.selective_scan_triton, x)  # one chunk: T = 9
        assert all(v in launches for v in chunked) == first and any(v in launches for v in chunked) == first, launches
        assert ("fwd", False) in launches and ("bwd", False) in launches
        _assert_grads_close(got, _grads(mm.selective_scan_reference, x), f"first={first}")
        if first:
            warmed = set(variants)
    torch.testing.assert_close(mm.selective_scan_triton(**x), mm.selective_scan_reference(**x), rtol=1e-5, atol=1e-5)
    # and the warm-up launched the very variants a chunked call runs (a flag given otherwise, KEEP=True say,
    # compiles a variant nothing else launches, and the chunked one still compiles at its first launch)
    variants.clear()
    _grads(mm.selective_scan_triton, x, chunk=4)  # 3 chunks
    assert set(variants) <= warmed, set(variants) - warmed


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_interp_mamba_with_the_triton_scan_equals_the_reference_scan(interpreter, causal):
    """The whole mixer, padding included (left pads causal, right pads bidirectional), by option."""
    torch.manual_seed(0)
    x = torch.randn(2, 11, 32)
    pad = torch.ones(2, 11, dtype=torch.bool)
    pad[1, :3] = False if causal else pad[1, :3]
    pad[1, -3:] = pad[1, -3:] if causal else False
    ref = _build(causal, scan="reference")
    tri = _build(causal, scan="triton")
    y_ref, y = ref(x, pad), tri(x, pad)
    assert tri.backend == "triton_scan"
    torch.testing.assert_close(y[pad], y_ref[pad], rtol=1e-4, atol=1e-5)


def test_interp_a_compiled_mamba_on_the_triton_scan_stops_recompiling(interpreter):
    """torch.compile (the CUDA default) around the Triton scan, a custom operator whose shape function takes
    the chunk length as SymInt arithmetic: new batch shapes must not recompile it (tests/test_compile.py's
    contract, here for the path CPU runs never take)."""
    steps = compiled_lm_run("mamba", ((3, 20), (2, 27), (4, 13), (3, 34)))
    frames = [n for *_, n in steps]
    assert frames[0] >= 1 and frames[-1] == frames[1], frames


def compiled_lm_run(mixer: str, shapes, backend: str = "eager", compiled: bool = True,
                    autocast: torch.dtype | None = None) -> list[tuple]:
    """[(loss, {parameter name: gradient}, frames compiled so far)] after each training step of a one-block
    LM of `mixer` on its Triton scan, for batches of the given (rows, length), rows after the first ending in
    3 pads (right padding: a causal LM drops the mask, as for the trainer's autoregressive batches), the ids
    and the loss's weights seeded by the length (so an eager and a compiled run see the same batches). The
    loss weighs the output by fixed random weights, not its square: the output leaves the final RMSNorm,
    whose square barely depends on its input (with it every gradient before the norm was noise, the delta
    path's ~1e-13, under any tolerance); and the parameters start away from their init (gains of one), so
    each gradient counts. `backend`: what compiles the frames dynamo counts ("eager": dynamo's graphs run as
    traced; "inductor": the CUDA path's). `autocast`: the forward under CPU autocast to that dtype, as the
    trainer runs it on CUDA."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    from harness.model import LM, LMConfig

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=97, d_model=16, n_layers=1, mixer=mixer, causal=True, mlp_hidden=32,
                        mixer_opts={"scan": "triton"}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    counter = CompileCounterWithBackend(backend)
    step = torch.compile(model, backend=counter) if compiled else model
    out = []
    for rows, T in shapes:
        ids = torch.randint(0, 97, (rows, T), generator=torch.Generator().manual_seed(T))
        pad_mask = torch.arange(T)[None, :] < torch.tensor([T] + [T - 3] * (rows - 1))[:, None]
        w = torch.randn(rows, T, 16, generator=torch.Generator().manual_seed(1000 + T))
        model.zero_grad()
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = (step(ids, pad_mask).float() * w).sum()
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, counter.frame_count))
    assert model.blocks[0].mixer.backend == "triton_scan"
    return out


def test_interp_the_scan_operators_pass_opcheck(interpreter):
    """The scan's custom operators (mixers/_ops.py) against torch.library.opcheck: schema, the shape
    functions against the kernels' real outputs (one chunk and three, with short stretches), the autograd
    registration, and AOTAutograd tracing them with dynamic shapes, gradients compared with eager. (Lengths
    whose every stretch starts before T: the slots of stretches past T are never written, so never equal.)"""
    x = {k: v.contiguous() for k, v in scan_inputs(18, Bsz=2, Di=40, N=5).items()}
    fwd, bwd = torch.ops.wavebench.selective_scan_fwd, torch.ops.wavebench.selective_scan_bwd
    for chunk, ckpt in ((18, 16), (6, 4)):
        args = tuple(x[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C", "h0"))
        torch.library.opcheck(fwd, (*args, chunk, ckpt, 2, 32, 4, 1, True))
        y, hT, hk, dsum = fwd(*(t.detach() for t in args), chunk, ckpt, 2, 32, 4, 1, True)
        assert hk.shape == (2 * st.triton.cdiv(18, chunk) * st.triton.cdiv(chunk, ckpt) * 40 * 5,)
        g = (torch.randn_like(y), torch.randn_like(hT))
        torch.library.opcheck(bwd, (*(t.detach() for t in args[:5]), hk, dsum, *g, chunk, ckpt, 2, 32, 4, 1))


def test_an_operator_defined_twice_is_the_same_operator():
    """`mixers._ops.define` on a name already defined (a module imported again: a test re-importing
    `mixers`, a notebook cell run twice) returns the operator there. torch (2.11, 2.13) would accept a
    second definition and replace the first, dropping its backward: the next backward through it fails.
    Here the first definition is what runs, values and gradients."""
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def other(x: torch.Tensor) -> torch.Tensor:  # a second body under the same name: never registered
        return x * 3

    def backward(ctx, g):
        return g * 2

    name = f"define_twice_probe_{os.getpid()}"
    op = mixers._ops.define(name, double, lambda x: torch.empty_like(x), backward,
                            lambda ctx, inputs, output: None)
    again = mixers._ops.define(name, other, lambda x: torch.empty_like(x))
    assert again is op is getattr(torch.ops.wavebench, name)
    x = torch.arange(3.0, requires_grad=True)
    again(x).sum().backward()
    assert again(x).tolist() == [0.0, 2.0, 4.0] and x.grad.tolist() == [2.0, 2.0, 2.0]


# what a host does when it reads a device value: each waits for the GPU, and fails a CUDA graph's capture
HOST_READS = ("_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique",
              "_unique2", "repeat_interleave", "allclose")


def test_the_scan_operators_never_read_a_device_value(monkeypatch):
    """Inside a compiled block the Triton scans' operators now sit in the graph that a CUDA graph captures
    (`--cuda-graphs`, the GPU check's grid_graphs part), where a host read of a device value (`.item()`, the
    truth of a tensor, a data-dependent shape) fails the capture, and elsewhere stalls the stream once per
    layer. Every aten call of both operators at every depth (the profiler's events), forward and backward,
    one chunk and several, the first call (its warm-up launches) and a later one, kernels stubbed: none
    reads a device value."""
    if st.triton is None:
        pytest.skip("needs Triton")
    import mixers._linear_scan_triton as lst
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.common import NoLaunch

    launches = []
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the scans' CPU path (read at each call), never run here
    for mod in (st, lst):
        monkeypatch.setattr(mod, "_kernels", lambda interpret: (NoLaunch(launches),) * 3)
        monkeypatch.setattr(mod, "_WARM", set())
    seen = set()
    for T, chunk in ((37, None), (37, 8), (37, None)):  # one chunk (with the first call's warm-ups), 5, one again
        x = {k: v.requires_grad_() for k, v in scan_inputs(T, seed=1, Di=33).items()}
        a = torch.rand(2, T, 40, requires_grad=True)
        b = torch.randn(2, T, 40, requires_grad=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            y, h = mm.selective_scan_triton(**x, return_last_state=True, chunk=chunk)
            (y.sum() + h.sum()).backward()
            lst.linear_scan_triton(a, b, chunk=chunk).sum().backward()
        names = {e.key.removeprefix("aten::") for e in prof.key_averages() if e.key.startswith("aten::")}
        assert not names & set(HOST_READS), sorted(names & set(HOST_READS))
        seen |= {e.key for e in prof.key_averages()}
    # the profiler saw inside the operators: their own calls, the chunk sums' pad, the allocations
    assert {"wavebench::selective_scan_bwd", "wavebench::linear_scan_fwd", "aten::constant_pad_nd",
            "aten::new_empty"} <= seen and launches, sorted(seen)


@pytest.mark.parametrize("mixer", ["mamba", "gated_context"])
def test_interp_a_compiled_block_on_the_triton_scan_is_one_graph_and_equals_eager(interpreter, monkeypatch, mixer,
                                                                                 torch_config, tmp_path):
    """Issue 14's remaining graph break: as custom operators the Triton scans are single nodes of the
    compiled graph, so a one-block LM compiles to one forward graph (dynamo's count; with
    WAVEBENCH_SCAN_OPS=0's graph break, more), and inductor's code around them, with the lengths dynamic
    and the sequence cut into 1 to 9 chunks, gives eager's losses and gradients, compiling no more after the
    second length. The same again from inductor's on-disk graph cache (as the GPU check's cells load what its
    warm-up compiled): a loaded graph re-checks its size guards, and while the chunk length was a min / max
    of the sizes that check guarded on the batch being one chunk, and the first chunked batch recompiled."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # an empty cache, that the first compile fills
    torch_config(inductor_config, "fx_graph_cache", True)  # (restored after the test)
    shapes = ((2, 20), (3, 27), (2, 130), (2, 260))  # Mamba: 1, 1, 3, 5 chunks; gated_context: 1, 1, 5, 9
    eager = compiled_lm_run(mixer, shapes, compiled=False)
    for cache in ("cold", "warm"):
        hits = counters["inductor"]["fxgraph_cache_hit"]
        compiled = compiled_lm_run(mixer, shapes, "inductor")
        loaded = counters["inductor"]["fxgraph_cache_hit"] - hits
        assert (loaded > 0) == (cache == "warm"), (cache, loaded)  # the second run compiled from the cache
        for (l0, g0, _), (l1, g1, _) in zip(eager, compiled):
            torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-6)
            assert g1.keys() == g0.keys()
            for name, g in g0.items():
                torch.testing.assert_close(g1[name], g, rtol=1e-3, atol=1e-5, msg=f"gradient of {name}")
        # the first shape, then the dynamic one: each ONE graph (no break), and no compile after that
        assert [n for *_, n in compiled] == [1, 2, 2, 2], (cache, [n for *_, n in compiled])
    monkeypatch.setattr(mixers._ops, "ENABLED", False)  # the graph-break path, as WAVEBENCH_SCAN_OPS=0 sets it
    split = compiled_lm_run(mixer, shapes, "inductor")
    assert split[-1][2] > 2, [n for *_, n in split]


@pytest.mark.parametrize("mixer", ["mamba", "gated_context"])
def test_interp_a_compiled_block_on_the_triton_scan_trains_under_bf16_autocast(interpreter, mixer):
    """The GPU's path as CPU can run it: the trainer runs a compiled model's forward under bf16 autocast, so
    inside the block's graph the projections hand the scan operators bf16 tensors, which the mixer casts to
    fp32 around the operator (the kernels read fp32; the operators' shape functions promise fp32 outputs).
    On CUDA only the GPU check's tests see this; here CPU autocast, inductor and the interpreted kernels, one
    batch of one chunk and one of several: the compiled model's loss and gradients agree with the eager
    model's under the same autocast (bf16 rounds differently in and out of a graph, hence the CUDA test's
    criteria: cosine > 0.99, norms within 5%), and the block stays one graph (no break around the operator)."""
    shapes = ((2, 20), (2, 130))  # Mamba: 1 and 3 chunks; gated_context: 1 and 5
    eager = compiled_lm_run(mixer, shapes, compiled=False, autocast=torch.bfloat16)
    compiled = compiled_lm_run(mixer, shapes, "inductor", autocast=torch.bfloat16)
    assert [n for *_, n in compiled] == [1, 2], [n for *_, n in compiled]
    for (l0, g0, _), (l1, g1, _) in zip(eager, compiled):
        torch.testing.assert_close(l1, l0, rtol=2e-2, atol=1.0)  # a sum of ~10^3 bf16-rounded terms
        assert g1.keys() == g0.keys()
        assert_bf16_gradients_agree((name, g1[name], g) for name, g in g0.items())


@pytest.mark.parametrize("scan_ops", [True, False], ids=["custom_ops", "graph_break"])
def test_interp_a_compiled_mamba_runs_only_the_kernels_outside_its_graphs(interpreter, monkeypatch, scan_ops):
    """Inside a compiled Mamba the kernels are one custom-operator node of the block's graph (with
    WAVEBENCH_SCAN_OPS=0, a graph break), and whatever runs outside the graphs runs eagerly, a GPU launch
    per operation (the cause of issue 14's slow steps). The fp32 casts of the scan's inputs and the D skip /
    SiLU(z) gate after it must be traced into the compiled graphs either way: the graphs hold both SiLUs of
    the direction (the conv's, and the gate's that ran eagerly before)."""
    import torch._dynamo

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(mixers._ops, "ENABLED", scan_ops)
    torch._dynamo.reset()
    m = _build(True, scan="triton")
    x = torch.randn(2, 11, 32, requires_grad=True)
    torch.compile(m, backend=record)(x).sum().backward()
    calls = [n for g in graphs for n in g.graph.nodes if n.op in ("call_function", "call_method")]
    silus = [n for n in calls if "silu" in str(n.target)]
    ops = [n for n in calls if "wavebench" in str(n.target)]
    assert m.backend == "triton_scan" and len(silus) == 2, [str(n.target) for n in calls]
    # one graph with the operator in it; else the graphs around the break (2 with nested graph breaks, 4 without)
    assert (len(graphs) == 1) == scan_ops and len(ops) == scan_ops, (len(graphs), [str(n.target) for n in ops])


def test_auto_picks_triton_on_cuda_and_the_parallel_scan_elsewhere(monkeypatch):
    m = _build(True)
    assert m.opts.scan == "auto"
    monkeypatch.setattr(st, "available", lambda device: device.type == "cuda")
    assert m._scan_name(torch.device("cuda")) == "triton"
    assert m._scan_name(torch.device("cpu")) == "parallel"
    m(torch.randn(1, 4, 32))
    assert m.backend == "torch_parallel_scan"  # what ran, for the row
    monkeypatch.setattr(st, "available", lambda device: True)  # a CPU where Triton runs (its interpreter)
    assert m._scan_name(torch.device("cpu")) == "parallel"
    monkeypatch.setattr(st, "available", lambda device: False)  # CUDA without Triton
    assert m._scan_name(torch.device("cuda")) == "parallel"
    assert _build(True, scan="chunked")._scan_name(torch.device("cuda")) == "chunked"  # an explicit choice stays


@pytest.mark.skipif(INTERP or torch.cuda.is_available(), reason="the scan can run here")
def test_the_triton_scan_says_where_it_cannot_run():
    with pytest.raises(RuntimeError, match="needs CUDA and Triton"):
        mm.selective_scan_triton(**scan_inputs(3))
    with pytest.raises(ValueError, match="scan must be one of auto, triton"):
        mixers.build("mamba", 32, True, scan="fast")


# ckpt None: stretches of 16, a short one ending each chunk of 37 or 67 (T = 600 is cut into 9); 5 / 7
# as well; on CUDA the backward's barriers between a stretch's recompute and its reverse walk run for real
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# bwd: the backward walk's (channels, warps) per program and its reverse walk's stages, None: the default
@pytest.mark.parametrize("T,chunk,ckpt,stages,bwd", [(1, None, None, None, None), (37, None, None, None, None),
                                                     (600, None, None, None, None), (600, 64, None, None, None),
                                                     (1000, 96, None, None, None), (1000, 96, 5, None, None),
                                                     (600, None, 7, None, None), (600, 64, None, 1, None),
                                                     (37, None, 5, 2, None), (600, 64, None, None, (8, 1, 1)),
                                                     (37, None, 5, None, (8, 1, 2)), (1000, 96, 5, None, (16, 2, 1)),
                                                     (600, None, None, None, (32, 4, 2))])
def test_triton_scan_equals_reference_on_cuda(T, chunk, ckpt, stages, bwd):
    x = {k: v.cuda() for k, v in scan_inputs(T, seed=T, Bsz=2, Di=70, N=16).items()}
    ref = {k: v.double() for k, v in x.items()}  # float64 reference: the fp32 kernel's honest yardstick
    y_ref, h_ref = mm.selective_scan_reference(**ref, return_last_state=True)
    y, h = mm.selective_scan_triton(**x, return_last_state=True, chunk=chunk, ckpt=ckpt, stages=stages)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.double(), h_ref, rtol=1e-4, atol=1e-4)
    shape = dict(zip(("bwd_block", "bwd_warps", "bwd_stages"), bwd or (None, None, None)))
    got = _grads_cuda(mm.selective_scan_triton, x, chunk=chunk, ckpt=ckpt, stages=stages, **shape)
    want = _grads_cuda(mm.selective_scan_reference, ref)
    for k in want:
        scale = float(want[k].abs().max().clamp_min(1.0))
        torch.testing.assert_close(got[k].double(), want[k], rtol=1e-4, atol=1e-4 * scale, msg=f"gradient of {k}")


def _grads_cuda(fn, x, **kw):
    x = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    y, h = fn(**x, return_last_state=True, **kw)
    # the same weights for the fp32 kernel and the float64 reference: drawn in float64, then cast (a generator
    # draws other numbers for another dtype, so drawing in each run's own dtype weighs two different losses)
    g = torch.Generator(device=y.device).manual_seed(9)
    w_y = torch.randn(y.shape, generator=g, device=y.device, dtype=torch.float64).to(y.dtype)
    w_h = torch.randn(h.shape, generator=g, device=h.device, dtype=torch.float64).to(h.dtype)
    ((y * w_y).sum() + (h * w_h).sum()).backward()
    return {k: v.grad for k, v in x.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mamba_lm_trains_on_the_triton_scan_on_cuda_under_bf16_autocast():
    from core.presets import PRESETS
    from harness.model import LM, matched_config

    if mm._selective_scan_fn is not None:
        pytest.skip("mamba-ssm is installed: it runs instead of the Triton scan")
    torch.manual_seed(0)
    model = LM(matched_config(PRESETS["tiny"], "mamba", True, 100)).cuda()
    ids = torch.randint(0, 100, (4, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = model(ids)
    h.float().square().mean().backward()
    assert model.backends() == ["triton_scan"], model.backends()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_interp_the_mixer_hands_its_pipeline_stages_to_the_scan(interpreter, monkeypatch):
    """`--mixer-opt mamba.triton_stages=1` (the way back if a GPU finds the pipelined walks slower) must
    reach the kernels' launch, and the default must be the module's STAGES."""
    seen = []
    real = mm.selective_scan_triton
    monkeypatch.setattr(mm, "selective_scan_triton", lambda *a, **k: seen.append(k.get("stages")) or real(*a, **k))
    x = torch.randn(2, 9, 16)
    for opts in ({}, {"triton_stages": 1}):
        m = mixers.build("mamba", 16, True, use_mamba_ssm=False, scan="triton", **opts)
        m(x).sum().backward()
    assert seen == [st.STAGES, 1]


def test_the_mixer_hands_its_chunking_target_to_the_scan(monkeypatch):
    """`--mixer-opt mamba.triton_programs=N` (the GPU check times 256 against the default) must set the chunks
    the kernels get: at one sequence of 512 and 2 channel blocks (2 programs a walk), the default's ~1,024
    programs cut it into T / MIN_CHUNK = 8 chunks, ~8 programs into 4, and 2 (already there) not at all. The
    kernels are stubbed: only the chunk length handed to them is checked, eagerly, as the scan computes it. The
    backward's launch shape goes the same way."""
    if st.triton is None:
        pytest.skip("Triton is not installed")
    chunks = []

    shapes = []

    class Stub:
        @staticmethod
        def apply(u, delta, A, B, C, h0, chunk, ckpt, stages, bwd_block, bwd_warps, bwd_stages):
            chunks.append(chunk)
            shapes.append((bwd_block, bwd_warps, bwd_stages))
            return torch.zeros_like(u), h0

    monkeypatch.setattr(st, "TritonScan", Stub)
    monkeypatch.setattr(st, "available", lambda device: True)
    x = torch.randn(1, 512, 32)  # d_inner 64: 2 blocks of BLOCK_D = 32
    assert st.BLOCK_D == 32 and st.MIN_CHUNK == 64 and st.TARGET_PROGRAMS == 1024
    for programs in (None, 8, 2):
        opts = {} if programs is None else {"triton_programs": programs}
        m = mixers.build("mamba", 32, True, use_mamba_ssm=False, scan="triton", **opts)
        assert m.opts.triton_programs == (programs or st.TARGET_PROGRAMS)
        with torch.no_grad():
            m(x)
    assert chunks == [64, 128, 512]
    # and the backward walk's launch shape (`--mixer-opt mamba.triton_bwd_block_d=8`, `...triton_bwd_warps=1`,
    # `...triton_bwd_stages=2`)
    with torch.no_grad():
        mixers.build("mamba", 32, True, use_mamba_ssm=False, scan="triton", triton_bwd_block_d=8,
                     triton_bwd_warps=1, triton_bwd_stages=2)(x)
    assert shapes == [(st.BWD_BLOCK_D, st.BWD_WARPS, st.BWD_STAGES)] * 3 + [(8, 1, 2)]
    assert st.chunk_len(32, 512, 512) == 256 and st.chunk_len(32, 512, 512, target=256) == 512  # L = 512 of the sweep


def test_interp_the_stage_benchmark_times_both_walks(interpreter, tmp_path):
    """The GPU check's bench_scan_stages (benchmarks.mamba_scan: the Mamba mixer on the Triton scan,
    pipelined and not, chunked for ~1,024 programs and ~256, its backward on 4 warps of 32 channels and on one
    of 8 with its reverse walk pipelined or not, interleaved), run here at toy sizes through
    the interpreter: every row written."""
    import json

    from benchmarks import mamba_scan

    out = tmp_path / "stages.json"
    variants = ["triton", "triton_unpipelined", "triton_programs_256", "triton_bwd_1warp", "triton_bwd_pipelined",
                "triton_bwd_1warp_pipelined"]  # the first GPU check's, then the next one's
    mamba_scan.main(["--parts", "sweep", "--sweep-scans", ",".join(variants),
                     "--scan-alone", "0", "--d-model", "8", "--tokens", "32", "--min-length", "16",
                     "--max-length", "32", "--repeats", "1", "--device", "cpu", "--out", str(out)])
    rows = json.loads(out.read_text())["sweep"]
    assert sorted((r["scan"], r["length"]) for r in rows) == sorted((v, L) for v in variants for L in (16, 32))
    assert mamba_scan.build("triton_unpipelined", 8, torch.device("cpu"), None).opts.triton_stages == 1
    assert mamba_scan.build("triton_programs_256", 8, torch.device("cpu"), None).opts.triton_programs == 256


def test_interp_an_access_past_every_argument_fails_the_launch(interpreter):
    """The interpreter suites' bounds check (tests/interp_bounds.py, installed by the `interpreter` fixture):
    a lane the mask admits past the end of its tensor fails the launch, load or store, even when no lane
    keeps the value read; lanes the mask leaves out may point anywhere. Without it, the Mamba scan's
    mutant 254 (its backward's state load admitting every lane of a partial channel block) passed every
    value test; with it, 21 of this file's interpreter tests fail on it (docs/testing.md)."""
    triton, tl = st.triton, st.tl

    @triton.jit
    def masked_copy(x_ptr, y_ptr, n_load, n_store, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        v = tl.load(x_ptr + i, mask=i < n_load, other=0.0)
        tl.store(y_ptr + i, tl.where(i < n_store, v, 0.0), mask=i < n_store)

    x, y = torch.arange(5.0), torch.zeros(5)  # (20 bytes each; CPU tensors are 64-byte aligned: never adjacent)
    masked_copy[(1,)](x, y, 5, 5, BLOCK=8)  # 8 lanes, the 3 past the end masked off: fine
    assert y.tolist() == x.tolist()
    with pytest.raises(Exception, match="out-of-bounds load: 3 of 8"):
        masked_copy[(1,)](x, y, 8, 5, BLOCK=8)  # the 3 extra values are never kept: only the check sees them
    with pytest.raises(Exception, match="out-of-bounds store: 2 of 7"):
        masked_copy[(1,)](x, y, 5, 7, BLOCK=8)
    buf = torch.arange(12.0)  # views of one storage: a read past the first, into the gap, is inside the storage,
    masked_copy[(1,)](buf[:5], buf[7:], 7, 5, BLOCK=8)  # which is the bound (a stated limit of the check)
    assert buf[7:].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
