from __future__ import annotations

import pytest
import torch

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


def test_cut_cross_entropy_torch_compile_matches_fallback():
    """CCE (its CPU-capable torch_compile impl) and the fallback: same loss, same gradients."""
    pytest.importorskip("cut_cross_entropy")
    h, w, y, g = _case()
    cce = _grads(lambda a, b, c: token_nll(a, b, c, "cce_compile"), h, w, y, g)
    fb = _grads(lambda a, b, c: token_nll(a, b, c, "chunked"), h, w, y, g)
    for a, b in zip(cce, fb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cce_kernel_matches_fallback_on_cuda():
    pytest.importorskip("cut_cross_entropy")
    h, w, y, g = (t.cuda() if t is not None else t for t in _case())
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    cce = _grads(lambda a, b, c: token_nll(a, b, c, "cce"), h, w, y, g)
    fb = _grads(lambda a, b, c: token_nll(a, b, c, "chunked"), h, w, y, g)
    for a, b in zip(cce, fb):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_impl_resolution():
    assert resolve_impl("auto", torch.device("cpu")) == "chunked"
    with pytest.raises(ValueError, match="unknown loss"):
        resolve_impl("magic", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="needs CUDA"):
        resolve_impl("cce", torch.device("cpu"))
