from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.loss import plain_nll, resolve_impl, token_nll


def _case(n=37, d=16, v=50, dtype=torch.float32):
    torch.manual_seed(0)
    h = torch.randn(n, d, dtype=dtype, requires_grad=True)
    w = torch.randn(v, d, dtype=dtype, requires_grad=True)
    y = torch.randint(0, v, (n,))
    g = torch.randn(n, dtype=dtype)  # arbitrary per-token weights, as diffusion's 1/t
    return h, w, y, g


def _grads(fn, h, w, y, g):
    h.grad = w.grad = None
    loss = fn(h, w, y)
    (loss * g).sum().backward()
    return loss.detach(), h.grad.clone(), w.grad.clone()


def test_chunked_matches_plain_cross_entropy_and_gradients():
    h, w, y, g = _case()
    ref = _grads(plain_nll, h, w, y, g)
    got = _grads(lambda a, b, c: token_nll(a, b, c, "chunked", chunk=8), h, w, y, g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_passes_gradcheck_in_float64():
    h, w, y, _ = _case(n=9, d=5, v=7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: token_nll(a, b, y, "chunked", chunk=4), (h, w))


@pytest.mark.parametrize("frozen", ["hidden", "classifier"])
def test_chunked_gives_the_one_gradient_asked_when_the_other_input_is_frozen(frozen):
    """A frozen classifier (or frozen features) still trains the other side: the backward must key each
    gradient on its own input's flag, not on the other's."""
    h, w, y, g = _case()
    (h if frozen == "hidden" else w).requires_grad_(False)
    trained = w if frozen == "hidden" else h
    (plain_nll(h, w, y) * g).sum().backward()
    ref, trained.grad = trained.grad.clone(), None
    (token_nll(h, w, y, "chunked", chunk=8) * g).sum().backward()
    torch.testing.assert_close(trained.grad, ref, rtol=1e-5, atol=1e-5)


def test_cut_cross_entropy_torch_compile_matches_fallback():
    """CCE (its CPU-capable torch_compile impl) and the fallback: same loss, same gradients."""
    pytest.importorskip("cut_cross_entropy")
    h, w, y, g = _case()
    cce = _grads(lambda a, b, c: token_nll(a, b, c, "cce_compile"), h, w, y, g)
    fb = _grads(lambda a, b, c: token_nll(a, b, c, "chunked"), h, w, y, g)
    for a, b in zip(cce, fb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _bf16_case_against_exact(device: str, impl: str) -> None:
    """`impl` as the grid runs it (bf16 autocast, fp32 hidden states and classifier) against the exact NLL of
    the same bf16-rounded operands, in fp32. The cce kernel accumulates in fp32, so its NLL should be that to ~1e-5;
    the chunked path's logits come out of a bf16 matmul (2^-8 relative rounding); both paths' gradients pass
    through bf16 (as the reference's own casts do). Without autocast the kernel would get fp32 inputs, which
    its backward rejects ('Backwards requires embeddings to be bf16 or fp16')."""
    h, w, y, g = (t.to(device) for t in _case())
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()

    def under_autocast(a, b, c):
        with torch.autocast(device, dtype=torch.bfloat16):
            return token_nll(a, b, c, impl)

    def exact(a, b, c):
        return F.cross_entropy(a.bfloat16().float() @ b.bfloat16().float().t(), c, reduction="none")

    got, want = _grads(under_autocast, h, w, y, g), _grads(exact, h, w, y, g)
    tol = {"nll": 1e-2 if impl == "cce" else 3e-2, "dh": 3e-2, "dw": 3e-2}  # of the largest value; CPU: <= 0.7%
    for (name, t), a, b in zip(tol.items(), got, want):
        assert a.dtype == torch.float32 and a.device == b.device, (name, a.dtype)
        torch.testing.assert_close(a, b, rtol=t, atol=t * float(b.abs().max()), msg=f"{impl} {name}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cce_kernel_matches_the_exact_loss_on_cuda_under_bf16_autocast():
    pytest.importorskip("cut_cross_entropy")
    _bf16_case_against_exact("cuda", "cce")
    _bf16_case_against_exact("cuda", "chunked")


def test_chunked_matches_the_exact_loss_under_bf16_autocast():
    """The CUDA test's comparison, on CPU with the path that runs here: the reference and tolerances hold."""
    _bf16_case_against_exact("cpu", "chunked")


def test_chunked_sums_the_classifier_gradient_over_many_chunks_in_fp32():
    """The grid's chunked loss on CUDA: bf16 autocast, and a batch of many chunks (chunk=4096 rows of a
    batch of tens of thousands of tokens). Each chunk's classifier gradient comes out of a bf16 matmul; the
    sum over chunks must be kept in fp32, since a bf16 running sum rounds at every chunk, by a step that
    grows with the sum (the test above has one chunk, where the two agree).

    Here the same 16 rows fill all 32 chunks, so every chunk adds the same bf16 contribution c: an fp32
    sum is exactly 32 c (13 significant bits), a bf16 one is off by ~1-3%. The reference is the fp32 sum
    of the chunks' contributions, 32 x the gradient of one chunk by the same path; the exact fp32 loss of
    the bf16-rounded operands checks that contribution itself to bf16 precision."""
    torch.manual_seed(0)
    chunk, n_chunks, d, v = 16, 32, 32, 64
    h1, y1 = torch.randn(chunk, d), torch.randint(0, v, (chunk,))
    w = torch.randn(v, d, requires_grad=True)

    def w_grad(h, y):
        w.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            token_nll(h, w, y, "chunked", chunk=chunk).sum().backward()
        assert w.grad.dtype == torch.float32
        return w.grad.clone()

    got = w_grad(h1.repeat(n_chunks, 1), y1.repeat(n_chunks))
    torch.testing.assert_close(got, n_chunks * w_grad(h1, y1), rtol=1e-6, atol=0)  # bf16 sum: ~2e-2 off

    wr = w.detach().bfloat16().float().requires_grad_()
    F.cross_entropy(h1.bfloat16().float() @ wr.t(), y1, reduction="sum").backward()
    torch.testing.assert_close(got, n_chunks * wr.grad, rtol=3e-2, atol=3e-2 * float(got.abs().max()))


def test_impl_resolution():
    assert resolve_impl("auto", torch.device("cpu")) == "chunked"
    assert resolve_impl("chunked", torch.device("cpu")) == "chunked"  # only cce itself needs CUDA
    with pytest.raises(ValueError, match="unknown loss"):
        resolve_impl("magic", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="needs CUDA"):
        resolve_impl("cce", torch.device("cpu"))


def test_auto_resolves_to_the_cce_kernel_on_cuda_only_when_the_package_imports(monkeypatch):
    """The grid's default `--loss auto` on a GPU: the cce kernel where cut-cross-entropy imports (the
    row's memory and speed figures assume it), the exact chunked path where it does not, and chunked on
    CPU even with the package. The import probe is stood in for; a cuda device object needs no GPU."""
    from harness import loss as loss_mod

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(loss_mod, "_cce", lambda: object())  # the package imports
    assert resolve_impl("auto", cuda) == "cce"
    assert resolve_impl("auto", cpu) == "chunked"
    monkeypatch.setattr(loss_mod, "_cce", lambda: None)  # it does not
    assert resolve_impl("auto", cuda) == "chunked"


@pytest.mark.parametrize("impl", ["cce", "cce_compile"])
def test_asking_for_cce_without_the_package_is_a_one_line_error(monkeypatch, impl):
    """`--loss cce` or `cce_compile` where cut-cross-entropy does not import: an error that says what to
    pass instead, before any cell trains (not an ImportError deep in the first step)."""
    from harness import loss as loss_mod

    monkeypatch.setattr(loss_mod, "_cce", lambda: None)
    with pytest.raises(RuntimeError, match="not importable here; use --loss chunked"):
        resolve_impl(impl, torch.device("cuda"))


def test_the_cce_path_falls_back_to_the_public_function_on_another_package_version(monkeypatch):
    """Where the kernel's entry is not the one this was written against (`_cce_direct` gives None), the cce
    path calls the package's public function: per-token NLL (reduction none) on the cce kernel, with no
    gradient filtering, so values and gradients stay exact."""
    from harness import loss as loss_mod

    seen = []

    def public(e, c, targets, **kw):
        seen.append(kw)
        return plain_nll(e, c, targets)

    monkeypatch.setattr(loss_mod, "_cce_direct", lambda: None)
    monkeypatch.setattr(loss_mod, "_cce", lambda: public)
    kernel = loss_mod._cce_kernel()
    h, w, y, _ = _case(n=12, d=8, v=30)
    torch.testing.assert_close(kernel(h, w, y), plain_nll(h, w, y))
    assert seen == [{"reduction": "none", "impl": "cce", "filter_eps": None}]


def test_no_rows_give_an_empty_fp32_loss_without_calling_the_kernel(monkeypatch):
    """A batch whose rows hold no target token (every answer cut off, say) has no loss to compute: an
    empty fp32 vector, which sums to 0. The cce kernel (a stand-in here: the Triton kernel needs CUDA) is
    not launched on zero rows, nor warmed up for them."""
    from harness import loss as loss_mod

    calls = []
    monkeypatch.setattr(loss_mod, "_cce_kernel", lambda: lambda e, c, t: calls.append(e.shape) or plain_nll(e, c, t))
    monkeypatch.setattr(loss_mod, "_CCE_WARM", set())
    for impl in ("cce", "chunked"):
        out = token_nll(torch.randn(0, 8, dtype=torch.bfloat16), torch.randn(30, 8), torch.zeros(0, dtype=torch.long), impl)
        assert out.shape == (0,) and out.dtype == torch.float32
    assert calls == []


# --- mixed precision: what the CUDA kernel demands, checked on CPU -------------------------------------


def _kernel_stand_in(calls: list):
    """A stand-in for the cce kernel (`harness.loss._cce_kernel`'s call) that asserts what its CUDA kernel
    asserts (embeddings bf16/fp16, classifier of the same dtype), then computes the exact NLL."""

    def lce(e, c, targets):
        assert e.dtype in (torch.bfloat16, torch.float16), f"Backwards requires embeddings to be bf16 or fp16 (got {e.dtype})"
        assert c.dtype == e.dtype, f"classifier {c.dtype} != embeddings {e.dtype}"
        calls.append((e.dtype, c.dtype))
        return plain_nll(e, c, targets)

    return lce


@pytest.mark.parametrize("objective", ["autoregressive", "diffusion"])
def test_lm_loss_under_bf16_autocast_gives_the_kernel_bf16_inputs(monkeypatch, objective):
    """Regression of the CUDA failure 'Backwards requires embeddings to be bf16 or fp16': under autocast
    the LM's final hidden state is fp32 (fp32 residual stream), so the loss must cast it (and the tied
    classifier) to the autocast dtype before the kernel. CPU autocast stands in for CUDA's."""
    from harness import loss as loss_mod
    from harness import objectives
    from core.data import SeqSet, SpecialTokens
    from harness.model import LM, LMConfig

    calls: list = []
    monkeypatch.setattr(loss_mod, "_cce_kernel", lambda: _kernel_stand_in(calls))
    special = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)
    obj = objectives.build(objective, special, "cce")
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=40, d_model=32, n_layers=2, mixer="attention", causal=obj.causal, mlp_hidden=64))
    data = SeqSet.from_lists([[2, 7, 8, 4, 9, 3], [2, 11, 4, 12, 13, 3]], [[False] * 4 + [True] * 2] * 2, pad_id=0)
    batch = data.batch(__import__("numpy").arange(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = obj.loss(model, batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert calls and all(c == (torch.bfloat16, torch.bfloat16) for c in calls)
    assert torch.isfinite(loss) and model.embed.weight.grad.dtype == torch.float32  # fp32 master weights


@pytest.mark.parametrize("impl", ["chunked", "plain", "cce_compile"])
def test_every_loss_path_takes_bf16_hidden_states_with_an_fp32_classifier(impl):
    """What benchmarks.loss_memory feeds on CUDA (bf16 h, fp32 parameter w, no autocast): every path
    runs (no 'mat1 and mat2 must have the same dtype'), returns fp32 NLL and fp32/bf16 gradients, and
    agrees with the fp32 reference to bf16 precision."""
    if impl == "cce_compile":
        pytest.importorskip("cut_cross_entropy")
    h, w, y, g = _case(n=40, d=16, v=50)
    ref = _grads(plain_nll, h, w, y, g)
    hb = h.detach().bfloat16().requires_grad_()
    fn = plain_nll if impl == "plain" else (lambda a, b, c: token_nll(a, b, c, impl, **({"chunk": 16} if impl == "chunked" else {})))
    hb.grad = w.grad = None
    nll = fn(hb, w, y)
    (nll * g).sum().backward()
    assert nll.dtype == torch.float32 and hb.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    torch.testing.assert_close(nll.detach(), ref[0], rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(hb.grad.float(), ref[1], rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(w.grad, ref[2], rtol=5e-2, atol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["cce", "chunked"])
def test_lm_loss_backward_under_cuda_autocast(impl):
    """The grid's path on CUDA: LM + objective under bf16 autocast, backward through the loss kernel."""
    if impl == "cce":
        pytest.importorskip("cut_cross_entropy")
    from harness import objectives
    from core.data import SeqSet, SpecialTokens
    from harness.model import LM, LMConfig
    from core.env import autocast

    special = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)
    data = SeqSet.from_lists([[2, 7, 8, 4, 9, 3], [2, 11, 4, 12, 3]], [[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1]], 0).to("cuda")
    dev = torch.device("cuda")
    for name in ("autoregressive", "diffusion"):
        obj = objectives.build(name, special, impl)
        model = LM(LMConfig(vocab_size=40, d_model=32, n_layers=2, mixer="attention", causal=obj.causal,
                            mlp_hidden=64)).to(dev)
        with autocast(dev):
            loss = obj.loss(model, data.batch(__import__("numpy").arange(2)), torch.Generator(device=dev).manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(model.embed.weight.grad).all()


def test_cce_rows_are_padded_to_one_kernel_variant_with_the_same_numbers(monkeypatch):
    """Triton specialises the cce kernels on the row count's divisibility by 16, so a new class of row
    count compiled new variants mid-run, inside the budget. The kernel now always sees a multiple of 16;
    the returned NLL and every gradient are those of the unpadded rows."""
    from harness import loss as loss_mod

    seen: list = []

    def lce(e, c, targets):
        seen.append(e.shape[0])
        return plain_nll(e, c, targets)

    monkeypatch.setattr(loss_mod, "_cce_kernel", lambda: lce)
    for n in (1, 15, 16, 17, 40):
        h, w, y, g = _case(n=n, d=8, v=30)
        ref = _grads(plain_nll, h, w, y, g)
        got = _grads(lambda a, b, c: token_nll(a, b, c, "cce"), h, w, y, g)
        assert seen[-1] % loss_mod.CCE_ROWS_MULTIPLE == 0 and seen[-1] - n < loss_mod.CCE_ROWS_MULTIPLE
        for r, t in zip(ref, got):
            assert t.shape == r.shape
            torch.testing.assert_close(t, r, rtol=1e-5, atol=1e-6)


def test_the_cce_path_calls_the_kernel_without_the_public_functions_host_sync(monkeypatch):
    """cut-cross-entropy's public function looks for ignored targets with `nonzero()`, which on CUDA waits
    for the GPU at every step. Our targets are never ignored, so token_nll calls the kernel's entry below it
    with valids=None. Here the autograd Function under it is a stand-in (the Triton kernel needs CUDA) that
    checks what it is given, and the valids search raises: the public function would hit it, token_nll not."""
    cce = pytest.importorskip("cut_cross_entropy.cce")
    from harness import loss as loss_mod

    def no_valids_search(*a, **k):
        raise AssertionError("the valids search (nonzero: a host sync on CUDA) ran")

    given = []

    def apply(e, c, params):
        given.append(params)
        return plain_nll(e, c, params.targets)

    monkeypatch.setattr(cce, "_build_flat_valids", no_valids_search)
    monkeypatch.setattr(cce.LinearCrossEntropyFunction, "apply", staticmethod(apply))
    monkeypatch.setattr(loss_mod, "_CCE_WARM", set())
    loss_mod._cce_direct.cache_clear()
    monkeypatch.setattr(loss_mod, "_cce_direct", loss_mod._cce_direct.__wrapped__)  # no cached entry
    with pytest.raises(AssertionError, match="valids search"):  # the seam is real: the public path syncs
        cce.cce_linear_cross_entropy(torch.randn(16, 8), torch.randn(30, 8), torch.zeros(16, dtype=torch.long))
    h, w, y, g = _case(n=40, d=8, v=30)
    ref, got = _grads(plain_nll, h, w, y, g), _grads(lambda a, b, c: token_nll(a, b, c, "cce"), h, w, y, g)
    for r, t in zip(ref, got):
        torch.testing.assert_close(t, r, rtol=1e-5, atol=1e-6)
    p = given[-1]
    assert p.valids is None and p.reduction == "none" and p.filter_eps is None and not p.shift
    assert p.softcap is None and tuple(p.batch_shape) == (48,)  # 40 rows padded to a multiple of 16


def _lock_class(n: int) -> str:
    """How Triton specialises an integer argument: 1, a multiple of 16, or neither."""
    return "1" if n == 1 else "16" if n % 16 == 0 else "other"


@pytest.mark.parametrize("D", [64, 96, 129, 200, 256, 320, 448, 512, 1000, 1024, 2048])
def test_the_first_cce_call_compiles_every_row_count_class(monkeypatch, D):
    """The cce kernels (cut-cross-entropy 25.1) take cdiv(B, 128) (forward) and cdiv(B, cdiv(D, 64))
    (backward) as integers, which Triton specialises: a step whose row count first gave another class
    compiled inside the budget. The first call per classifier runs, forward and backward (even under
    no_grad, as in a dev check, with both inputs needing their gradient), every class either integer
    takes at any padded row count; later calls run only themselves. Widths whose cdiv(D, 64) is no
    power of two (96, 129, 200, 320, 448, 1000) are where a row count's class is easy to miss."""
    from harness import loss as loss_mod

    calls = []

    def kernel(e, c, targets):
        calls.append((e.shape[0], torch.is_grad_enabled() and e.requires_grad and c.requires_grad))
        return plain_nll(e, c, targets)

    monkeypatch.setattr(loss_mod, "_cce_kernel", lambda: kernel)
    monkeypatch.setattr(loss_mod, "_CCE_WARM", set())
    nd = -(-D // 64)
    fwd_bwd = lambda B: (_lock_class(-(-B // 128)), _lock_class(-(-B // nd)))  # noqa: E731
    every = {fwd_bwd(B) for B in range(16, 1 << 16, 16)}
    for rows in (40, 100):
        with torch.no_grad():
            token_nll(torch.randn(rows, D), torch.randn(50, D), torch.zeros(rows, dtype=torch.long), "cce")
        if rows == 40:
            warm, last = calls[:-1], calls[-1]
            assert last == (48, False) and all(grad for _, grad in warm), calls
            assert all(B > 0 and B % 16 == 0 for B, _ in warm), warm  # row counts a real step can have
            covered = {fwd_bwd(B) for B, _ in warm}
            assert {f for f, _ in every} <= {f for f, _ in covered} and {b for _, b in every} <= {b for _, b in covered}
        else:
            assert calls[-1] == (112, False) and len(calls) == len(warm) + 2, calls  # no second warm-up


def test_a_cce_warm_up_that_failed_is_run_again(monkeypatch):
    """The warm-up is remembered only once it ran: one that failed (an OOM fails its cell) marked the
    classifier warm, and the next cell's steps compiled the kernel's variants inside their budget."""
    from harness import loss as loss_mod

    calls, fail = [], [True]

    def kernel(e, c, targets):
        calls.append(e.shape[0])
        if fail[0] and len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return plain_nll(e, c, targets)

    monkeypatch.setattr(loss_mod, "_cce_kernel", lambda: kernel)
    monkeypatch.setattr(loss_mod, "_CCE_WARM", set())
    args = torch.randn(40, 64), torch.randn(50, 64), torch.zeros(40, dtype=torch.long)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        token_nll(*args, "cce")
    fail[0] = False
    calls.clear()
    token_nll(*args, "cce")
    assert calls[:-1] == loss_mod.cce_warm_rows(64) and calls[-1] == 48  # warmed in full, then the call

