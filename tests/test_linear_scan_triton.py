"""gated_context's Triton walk (mixers/_linear_scan_triton.py), the CUDA default, held to the step-by-step
loop. On CPU the kernels run in Triton's interpreter (the tests named *interp*, in a subprocess with
TRITON_INTERPRET=1: `test_the_interpreter_suite`) and are compiled ahead of time for A100 and H100/H200
code; the tests named *cuda* repeat the check on the compiled kernels (run by the GPU check)."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

import mixers
import mixers._linear_scan_triton as lst
import mixers.gated_context as gc
from benchmarks.common import NoLaunch
from test_gated_context import D, assert_same_mixer
from test_scan_triton import (_frame_bytes, _sass_ops, assert_unspecialised_lengths, compiled_lm_run,
                              gpu_compiler, guarded_kernels, recorded_launches, run_interpreter_suite)

INTERP = lst.triton is not None and lst.interpreting()


@pytest.mark.skipif(lst.triton is None or INTERP, reason="needs Triton; the suite itself runs once")
def test_the_interpreter_suite():
    run_interpreter_suite(Path(__file__), min_passed=26)


@pytest.mark.skipif(lst.triton is None or INTERP, reason="needs Triton (compiled, not interpreted)")
@pytest.mark.parametrize("arch", [80, 90])  # A100, H100 / H200
def test_the_linear_scan_kernels_compile_to_gpu_code_without_a_gpu(arch):
    """Every variant the scan launches compiles to a cubin for the named GPU with the ptxas Triton ships
    (the interpreter never lowers a kernel): the walks pipelined (cp.async), the state never spilled."""
    compile = gpu_compiler(arch)
    fwd, bwd, carry = lst._kernels(False)
    for kernel, flag in ((fwd, "SUMMARY"), (bwd, "SUMMARY"), (carry, "REVERSE")):
        for on, stages in itertools.product((True, False), (lst.STAGES, 1)):
            consts = {flag: on, "BC": lst.BLOCK_C, **({} if kernel is carry else {"STAGES": stages})}
            compiled = compile(kernel, consts)
            assert len(compiled.asm["cubin"]) > 0, (kernel.fn.__name__, consts)
            # the walks' next positions load while the state advances; the carry's few steps are not pipelined
            pipelined = "cp.async" in compiled.asm["ptx"]
            assert pipelined == (kernel is not carry and stages > 1), (kernel.fn.__name__, consts)
            frame = _frame_bytes(compiled.asm["cubin"])
            assert frame is None or frame == 0, (kernel.fn.__name__, consts, f"{frame} bytes of stack")
            # no atomic, memory fence or L1 invalidation: each program owns its outputs (Mamba's backward, which
            # sums across programs, has its own check)
            assert _sass_ops(compiled.asm["cubin"]) in (None, set()), (kernel.fn.__name__, consts)


def _inputs(T: int, seed: int, Bsz: int = 3, C: int = 140, gates: str = "random"):
    """a in [0, 1] (gates; 'extremes': 0 and 1 only, as closed and open gates and pads), b ~ N(0, 1):
    (B, T, 2, C / 2), the mixer's (sequence, position, direction, channel) layout. C = 140: a full block of
    128 channels and a partial one."""
    g = torch.Generator().manual_seed(seed)
    shape = (Bsz, T, 2, C // 2)
    a = torch.rand(shape, generator=g) if gates == "random" else torch.randint(0, 2, shape, generator=g).float()
    return a.requires_grad_(), torch.randn(shape, generator=g).requires_grad_()


def _check(a, b, **kw):
    c, ref = lst.linear_scan_triton(a, b, **kw), gc.loop_scan(a, b)
    assert c.shape == ref.shape and c.dtype == torch.float32
    torch.testing.assert_close(c, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(ref)
    got = torch.autograd.grad((c * w).sum(), (a, b))
    want = torch.autograd.grad((ref * w).sum(), (a, b))
    for name, x, y in zip("ab", got, want):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=f"gradient of {name}")


def _check_against_float64(a, b, **kw):
    """The walk against the pairwise scan in float64: the fp32 kernel's honest yardstick on a GPU (the loop is
    slow at 8,192). At T = 1 the pairwise scan returns b, so a is no part of its graph and its gradient is
    zero (materialized: asking for it plainly raises), as the walk's must be: c_0 = a_0 * 0 + b_0."""
    c = lst.linear_scan_triton(a, b, **kw)
    a64, b64 = (t.detach().double().requires_grad_() for t in (a, b))
    ref = gc.pairwise_scan(a64, b64)
    torch.testing.assert_close(c.double(), ref, rtol=1e-4, atol=1e-4)
    w = torch.randn_like(ref)
    got = torch.autograd.grad((c * w.float()).sum(), (a, b))
    want = torch.autograd.grad((ref * w).sum(), (a64, b64), allow_unused=True, materialize_grads=True)
    for name, x, y in zip("ab", got, want):
        scale = float(y.abs().max().clamp_min(1.0))
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-4 * scale, msg=f"gradient of {name}")


# the CUDA test's own check, here where CI runs it: it raised at T = 1 on the H200 (gpu_check/, 2026-12-04)
@pytest.mark.parametrize("T", [1, 2, 37])
def test_interp_linear_scan_equals_the_float64_pairwise_scan(interpreter, T):
    _check_against_float64(*_inputs(T, seed=T, Bsz=2, C=10))


# chunk None: one walk (or, at T = 70, two chunks of 35: 3 x 2 programs are few); 4 / 8: chunks with a
# ragged last one, a chunk longer than T, and equal chunks
@pytest.mark.parametrize("T,chunk", [(1, None), (2, None), (13, None), (70, None), (19, 4), (19, 8), (8, 4),
                                     (3, 8), (33, 1)])
def test_interp_linear_scan_equals_the_loop(interpreter, T, chunk):
    _check(*_inputs(T, seed=T), chunk=chunk)


@pytest.mark.parametrize("gates", ["extremes", "random"])
@pytest.mark.parametrize("stages", [1, 2])
def test_interp_closed_and_open_gates_and_other_pipeline_depths(interpreter, gates, stages):
    """Gates of exactly 0 (forget everything) and 1 (a pad: pass through), chunked, at 1 and 2 stages."""
    _check(*_inputs(21, seed=5, gates=gates), chunk=6, stages=stages)


@pytest.mark.parametrize("T,chunk", [(19, 4), (8, 4), (21, 7)])
def test_interp_the_summary_walks_skip_the_chunk_no_carry_reads(interpreter, monkeypatch, T, chunk):
    """The carry never uses what the last chunk adds to a state (forward) nor what the first passes left
    (backward): the last c and dL/da, dL/db of chunk 0 come from the walks from the true states. Those two
    summary walks are skipped (at two chunks, half of each summary pass), leaving finite stand-ins (S = 0,
    P = 1, Q = 0: the backward's carry multiplies the forward's P of the last chunk by a zero adjoint); every
    other summary must be the chunk's true one, and values and gradients the loop's."""
    seen = []
    fwd, bwd, carry = lst._kernels(True)

    class Spy:
        def __getitem__(self, grid):
            def launch(S, P, *args, REVERSE, **kw):
                seen.append((REVERSE, S.clone(), P.clone(), grid))
                return carry[grid](S, P, *args, REVERSE=REVERSE, **kw)
            return launch

    monkeypatch.setattr(lst, "_kernels", lambda interpret: (fwd, bwd, Spy()))
    monkeypatch.setattr(lst, "_WARM", {("cpu", 140, lst.STAGES)})  # no warm-up call among the recorded ones
    a, b = _inputs(T, seed=T)
    gc_ = torch.randn(a.shape)  # dL/dc
    _check(a, b, chunk=chunk)  # values and gradients: the loop's
    seen.clear()
    lst.linear_scan_triton(a, b, chunk=chunk).backward(gc_)
    (forward, S, P, grid), (backward, Q, P2, grid2) = seen
    nC = -(-T // chunk)
    assert (forward, backward, S.shape[1], Q.shape[1]) == (False, True, nC, nC)
    # one sequential walk over the chunks per (row, channel block): not one per chunk, each redoing it all
    assert grid == grid2 == (3, 2), (grid, grid2)
    assert not S[:, -1].any() and (P[:, -1] == 1).all() and not Q[:, 0].any()  # not walked
    torch.testing.assert_close(P2, P)  # the backward's carry runs on the forward's products
    flat = lambda t: t.detach().reshape(t.shape[0], T, -1)  # noqa: E731  (B, T, C), the kernels' layout
    a_, b_, g_ = flat(a), flat(b), flat(gc_)
    for c in range(nC):
        part = slice(c * chunk, (c + 1) * chunk)
        if c < nC - 1:  # what chunk c adds to a state from zero, and its decays' product
            torch.testing.assert_close(S[:, c], gc.loop_scan(a_[:, part], b_[:, part])[:, -1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(P[:, c], a_[:, part].prod(1), rtol=1e-5, atol=1e-6)
        if c > 0:  # the adjoint chunk c passes left from zero: sum over its t of dL/dc_t times a_start..a_t
            want = (g_[:, part] * a_[:, part].cumprod(1)).sum(1)
            torch.testing.assert_close(Q[:, c], want, rtol=1e-5, atol=1e-5)
            assert Q[:, c].abs().amin() > 0


@pytest.mark.skipif(lst.triton is None, reason="needs Triton")
def test_the_walks_are_not_specialised_on_what_a_new_batch_length_changes():
    assert_unspecialised_lengths(lst._kernels(False), fixed={"C"})


def test_the_chunks_fill_the_gpu_and_never_get_short():
    if lst.triton is None:
        pytest.skip("Triton is not installed")
    # the small preset's rows (32 x 512, 2 channel blocks = 64 programs) are cut into 16 chunks of 32; many
    # short rows are not cut; 2 x 8192 into enough chunks for about TARGET_PROGRAMS programs; a chunk is
    # more than half MIN_CHUNK long (fill_chunk_len)
    assert lst.chunk_len(32, 512, 256) == 32
    assert lst.chunk_len(1024, 16, 256) == 16
    ch = lst.chunk_len(2, 8192, 256)
    programs = 2 * 2 * (-(-8192 // ch))
    assert ch >= lst.MIN_CHUNK and lst.TARGET_PROGRAMS <= programs < 2 * lst.TARGET_PROGRAMS
    assert 2 * min(lst.chunk_len(1, T, 256) for T in range(32, 3000, 7)) > lst.MIN_CHUNK
    # a wide model: one row already gives 8 channel blocks of programs, so it needs 8x fewer chunks (of 64)
    ch = lst.chunk_len(1, 8192, 1024)
    assert ch > lst.MIN_CHUNK and lst.TARGET_PROGRAMS <= 8 * -(-8192 // ch) < 2 * lst.TARGET_PROGRAMS, ch


@pytest.mark.parametrize("T,chunk", [(19, 4), (9, None)])
def test_interp_no_launch_touches_memory_outside_its_tensors(interpreter, monkeypatch, T, chunk):
    """Every launch (the walks, chunked and not; the carry; the first call's warm-ups) writes only inside its
    tensors and reads nothing outside them (test_scan_triton.guarded_kernels says why the values alone
    cannot show it under the interpreter); values and gradients stay the loop's."""
    report, kernels = guarded_kernels(lst._kernels(True))
    monkeypatch.setattr(lst, "_kernels", lambda interpret: kernels)
    monkeypatch.setattr(lst, "_WARM", set())  # the warm-up launches guarded too
    _check(*_inputs(T, seed=T), chunk=chunk)
    assert report["launches"] >= 6 and not report["outside"], report


def test_interp_the_first_call_compiles_the_chunked_variants_too(interpreter, monkeypatch):
    """A step of few long rows runs the chunked kernels (SUMMARY walks, the carry); Triton compiles a
    variant at its first launch, which must not fall in a budgeted step: the first call, even with one
    chunk, launches every variant once; later single-chunk calls launch only the main walks."""
    launches, kernels = recorded_launches(lst._kernels(True))
    monkeypatch.setattr(lst, "_kernels", lambda interpret: kernels)
    monkeypatch.setattr(lst, "_WARM", set())
    chunked = {("fwd", True), ("bwd", True), ("carry", False), ("carry", True)}
    for first in (True, False):
        launches.clear()
        _check(*_inputs(9, seed=3))  # one chunk
        assert chunked <= set(launches) if first else not chunked & set(launches), launches
        assert {("fwd", False), ("bwd", False)} <= set(launches)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_interp_gated_context_on_the_triton_walk_equals_the_pairwise_scan(interpreter, causal):
    """The whole mixer, padding included, by option: outputs and every parameter's gradient."""
    torch.manual_seed(0)
    tri = mixers.build("gated_context", D, causal, scan="triton")
    ref = mixers.build("gated_context", D, causal, scan="pairwise")
    assert_same_mixer(tri, ref)
    assert tri.backend == "triton_scan" and ref.backend == "pairwise_scan"


def test_interp_decoding_on_the_triton_walk_equals_the_full_forward(interpreter):
    """prefill (the prompt through the walk) then step: the same outputs as one forward over everything."""
    torch.manual_seed(1)
    m = mixers.build("gated_context", D, True, scan="triton").eval()
    x = torch.randn(2, 12, D)
    with torch.no_grad():
        full = m(x)
        y, ctx = m.prefill(x[:, :8])
        steps = []
        for t in range(8, 12):
            y_t, ctx = m.step(x[:, t], ctx)
            steps.append(y_t)
    torch.testing.assert_close(y, full[:, :8], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 8:], rtol=1e-5, atol=1e-5)


def test_interp_the_walk_operators_pass_opcheck(interpreter):
    """The walk's custom operators (mixers/_ops.py) against torch.library.opcheck: schema, the shape
    functions against the kernels' real outputs (one chunk and three), the autograd registration, and
    AOTAutograd tracing them with dynamic shapes, gradients compared with eager."""
    a, b = (t.detach().reshape(2, 19, -1).contiguous() for t in _inputs(19, seed=4, Bsz=2))
    fwd, bwd = torch.ops.wavebench.linear_scan_fwd, torch.ops.wavebench.linear_scan_bwd
    for chunk in (19, 7):
        torch.library.opcheck(fwd, (a.clone().requires_grad_(), b.clone().requires_grad_(), chunk, 2))
        c, P = fwd(a, b, chunk, 2)
        assert P.shape == (2 * lst.triton.cdiv(19, chunk) * 140,)
        torch.library.opcheck(bwd, (a, c, P, torch.randn_like(c), chunk, 2))


def test_interp_a_compiled_gated_context_on_the_triton_walk_stops_recompiling(interpreter):
    """torch.compile (the CUDA default) around the walk, a custom operator whose shape function takes the
    chunk length as SymInt arithmetic: new batch lengths (odd and even: what made a traced pairwise scan
    recompile) must not recompile. (One graph, values against eager: test_scan_triton.py's
    test_interp_a_compiled_block_on_the_triton_scan_is_one_graph_and_equals_eager.)"""
    steps = compiled_lm_run("gated_context", ((3, 20), (2, 27), (4, 13), (3, 34), (2, 51)))
    frames = [n for *_, n in steps]
    assert frames[0] >= 1 and frames[-1] == frames[1], frames


@pytest.mark.skipif(lst.triton is None, reason="needs Triton")
def test_the_walk_issues_as_many_operator_calls_and_launches_at_any_length(monkeypatch):
    """Issue 14's measure of a step's host cost: PyTorch operator calls, each a launch on a GPU. The pairwise
    scan's grow as log2(T), forward and backward; the walk's are a fixed few allocations and kernel
    launches whatever T. Counted here with the kernels stubbed out (on CPU they would run in the
    interpreter, whose own argument copies would count as calls too)."""
    from torch.profiler import ProfilerActivity, profile

    launches = []
    monkeypatch.setattr(lst, "_kernels", lambda interpret: (NoLaunch(launches),) * 3)
    monkeypatch.setattr(lst, "available", lambda device: True)
    lst.linear_scan_triton(*_inputs(4, seed=0, Bsz=2))  # the first call's compile launches, not counted

    def calls(scan, T: int, **kw) -> tuple[int, int]:
        a, b = _inputs(T, seed=0, Bsz=2)
        w = torch.randn(a.shape)  # dL/dc, as a layer above would send it
        launches.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            scan(a, b, **kw).backward(w)
        return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")), len(launches)

    walk = [calls(lst.linear_scan_triton, T, chunk=8) for T in (64, 512)]  # 8 and 64 chunks
    pairwise = [calls(gc.pairwise_scan, T)[0] for T in (64, 512)]
    assert walk[0] == walk[1] and walk[0][1] == 6, walk  # summary walk, carry, walk; each way
    assert pairwise[1] > pairwise[0] and walk[1][0] + walk[1][1] < pairwise[1] / 4, (walk, pairwise)


def test_auto_picks_triton_on_cuda_and_the_pairwise_scan_elsewhere(monkeypatch):
    m = mixers.build("gated_context", D, True)
    assert m.opts.scan == "auto"
    monkeypatch.setattr(lst, "available", lambda device: device.type == "cuda")
    assert m._scan_name(torch.device("cuda")) == "triton"
    assert m._scan_name(torch.device("cpu")) == "pairwise"
    m(torch.randn(1, 4, D))
    assert m.backend == "pairwise_scan"  # what ran, for the row
    # a CPU where Triton runs (its interpreter, a CPU backend): not what the kernel was written for
    monkeypatch.setattr(lst, "available", lambda device: True)
    assert m._scan_name(torch.device("cpu")) == "pairwise"
    monkeypatch.setattr(lst, "available", lambda device: False)  # CUDA without Triton
    assert m._scan_name(torch.device("cuda")) == "pairwise"
    assert mixers.build("gated_context", D, True, scan="loop")._scan_name(torch.device("cuda")) == "loop"


@pytest.mark.skipif(lst.triton is None, reason="needs Triton")
def test_an_empty_sequence_is_answered_without_a_launch(monkeypatch):
    """T = 0 (no positions): c is empty, fp32, in b's shape; no kernel is launched (a launch of a zero-size
    grid, or the (B, 0, -1) reshape before it, would fail)."""
    launches = []
    monkeypatch.setattr(lst, "_kernels", lambda interpret: (NoLaunch(launches),) * 3)
    monkeypatch.setattr(lst, "available", lambda device: True)
    a, b = (t.detach().half() for t in _inputs(0, seed=0))
    c = lst.linear_scan_triton(a, b)
    assert (c.shape, c.dtype, launches) == ((3, 0, 2, 70), torch.float32, [])


@pytest.mark.skipif(INTERP or torch.cuda.is_available(), reason="the walk can run here")
def test_the_triton_walk_says_where_it_cannot_run():
    with pytest.raises(RuntimeError, match="needs CUDA and Triton"):
        lst.linear_scan_triton(*_inputs(3, seed=0))
    with pytest.raises(ValueError, match="scan must be one of auto, pairwise, loop, triton"):
        mixers.build("gated_context", D, True, scan="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("T,chunk,stages", [(1, None, None), (37, None, None), (600, None, None), (600, 64, None),
                                            (1000, 96, 1), (8192, None, None)])
def test_linear_scan_equals_the_loop_on_cuda(T, chunk, stages):
    _check_against_float64(*(t.detach().cuda().requires_grad_() for t in _inputs(T, seed=T, Bsz=2, C=300)),
                           chunk=chunk, stages=stages)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_gated_context_lm_trains_on_the_triton_walk_on_cuda_under_bf16_autocast(causal):
    from core.presets import PRESETS
    from harness.model import LM, matched_config

    torch.manual_seed(0)
    model = LM(matched_config(PRESETS["tiny"], "gated_context", causal, 100)).cuda()
    ids = torch.randint(0, 100, (4, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = model(ids)
    h.float().square().mean().backward()
    assert model.backends() == ["triton_scan"], model.backends()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
