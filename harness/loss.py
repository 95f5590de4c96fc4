"""Output loss: per-token negative log-likelihood from hidden states and the classifier matrix.

One place decides the path, and the run records it:
- "cce":           Cut Cross-Entropy's Triton kernel (CUDA only). Never materialises the logits.
- "cce_compile":   Cut Cross-Entropy's `impl="torch_compile"`, the one that runs on CPU (compiles
                   slowly: ~15 s per new shape here).
- "chunked":       exact fallback in plain PyTorch: logits for a chunk of tokens at a time, recomputed
                   in the backward pass, so at most `chunk x V` logits exist at once (not N x V).
- "auto":          "cce" on CUDA when the package imports, else "chunked".

The "cce" path calls the kernel's entry below the package's public function (`_cce_direct`: that
function waits for the GPU at every step), pads rows to a multiple of 16 and, at the first call per
classifier, compiles the variants every row count needs (`_warm_cce`): no Triton compilation, and no
host sync, inside a budgeted step.

All paths return fp32 per-token NLL (N,) so objectives can weight tokens (1/t in diffusion).

Dtypes (mixed precision). The residual stream, and so the final hidden state, is fp32 under autocast
(the embedding is fp32 and the final RMSNorm keeps its input dtype), and the tied classifier is an fp32
parameter. Under autocast every path therefore casts both to the autocast dtype (`compute_dtype`) before
the matmuls: CCE's CUDA kernel demands bf16/fp16 embeddings and a classifier of the same dtype, and the
other paths then do the same math. Without autocast the hidden states' dtype decides (a bf16 `h` with an
fp32 `w`, as the loss-memory benchmark feeds them, runs in bf16). Softmax statistics (log-sum-exp,
gradients of the logits) are fp32 in every path; the returned NLL is fp32.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

LOSS_IMPLS = ("auto", "cce", "cce_compile", "chunked")


def _cce():
    try:
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy
    except Exception:  # pragma: no cover - depends on the machine
        return None


_CCE_PARAMS = {"targets", "valids", "softcap", "reduction", "filter_eps", "shift", "batch_shape"}


def _cce_kernel():
    """The `cce` path as call(e (N, D), c (V, D), targets (N,)) -> (N,) NLL: the kernel's entry below the
    public function when it is the one this was written against, else the public function."""
    direct = _cce_direct()
    if direct is not None:
        return direct
    lce = _cce()
    return lambda e, c, targets: lce(e, c, targets, reduction="none", impl="cce", filter_eps=None)


@functools.lru_cache(maxsize=1)
def _cce_direct():
    """The `cce` kernel's entry below the public `linear_cross_entropy`, or None where it is not the one
    this was written against (cut-cross-entropy 25.1: `cce.linear_cross_entropy_apply` and `CCEParams`).

    Why: the public function first looks for ignored targets with `(targets != ignore_index).nonzero()`,
    which on CUDA waits for the GPU, at every step: the host could no longer queue steps ahead of the GPU
    (the trainer keeps no other sync in a step). Our targets are never ignored (padding rows have target
    0 and are cut off), so the kernel is called with `valids=None`, as the public function itself passes
    when every target is valid."""
    try:
        import dataclasses

        from cut_cross_entropy.cce import CCEParams, linear_cross_entropy_apply

        if {f.name for f in dataclasses.fields(CCEParams)} != _CCE_PARAMS:
            return None
    except Exception:  # pragma: no cover - depends on the package's version
        return None

    def call(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        params = CCEParams(targets=targets, valids=None, softcap=None, reduction="none", filter_eps=None,
                           shift=False, batch_shape=targets.shape)
        return linear_cross_entropy_apply(e.contiguous(), c, params)

    return call


# The cce kernels take integers that depend on the row count B (rows padded to a multiple of 16, below):
# in 25.1 the forward's lock count cdiv(B, 128) and the backward's cdiv(B, cdiv(D, 64)). Triton compiles
# a variant per class of each integer argument (1, a multiple of 16, other), so a step whose B first falls
# in another class compiled again, inside the budgeted clock, at a random step. The first call per
# classifier (device, shape, dtype) therefore runs forward and backward once at row counts that give
# every class of both integers (it falls in the warm-up steps, which are off the clock).
_CCE_WARM: set[tuple] = set()


def cce_warm_rows(D: int) -> list[int]:
    """Row counts (multiples of 16) whose cdiv(B, 128) and cdiv(B, cdiv(D, 64)) take every class."""
    nd = -(-D // 64)
    return sorted({16, 272, 2048, 16 * nd, 16 * nd + 16})


def _warm_cce(kernel, w: torch.Tensor) -> None:
    key = (str(w.device), tuple(w.shape), w.dtype)
    if key in _CCE_WARM:
        return
    with torch.enable_grad():
        for B in cce_warm_rows(w.shape[1]):
            e = torch.zeros(B, w.shape[1], device=w.device, dtype=w.dtype, requires_grad=True)
            c = w.detach().requires_grad_(True)
            kernel(e, c, torch.zeros(B, dtype=torch.long, device=w.device)).sum().backward()
    _CCE_WARM.add(key)  # only once it ran: a warm-up that failed (an OOM: its cell fails) is tried again


def resolve_impl(impl: str, device: torch.device) -> str:
    if impl not in LOSS_IMPLS:
        raise ValueError(f"unknown loss implementation {impl!r}; choose from {', '.join(LOSS_IMPLS)}")
    if impl == "auto":
        return "cce" if device.type == "cuda" and _cce() is not None else "chunked"
    if impl in ("cce", "cce_compile") and _cce() is None:
        raise RuntimeError("cut-cross-entropy is not importable here; use --loss chunked")
    if impl == "cce" and device.type != "cuda":
        raise RuntimeError("the cce kernel needs CUDA; on CPU use --loss cce_compile or chunked")
    return impl


def compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype the output-layer matmuls run in: the autocast dtype when autocast is on for h's device,
    else h's own dtype (see the module docstring)."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return h.dtype


class _ChunkedNLL(torch.autograd.Function):
    """Exact cross-entropy without holding N x V logits: forward keeps only log-sum-exp per token;
    backward recomputes each chunk's logits, softmax and gradients."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
        # h and w share one dtype (token_nll casts them); matmuls run in it, statistics in fp32
        N = h.shape[0]
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32 statistics (fp64 stays fp64: gradcheck)
        lse = torch.empty(N, dtype=acc, device=h.device)
        tgt = torch.empty(N, dtype=acc, device=h.device)
        for s in range(0, N, chunk):
            logits = (h[s : s + chunk] @ w.t()).to(acc)  # (n, V)
            lse[s : s + chunk] = torch.logsumexp(logits, -1)
            tgt[s : s + chunk] = logits.gather(1, y[s : s + chunk, None]).squeeze(1)
        ctx.save_for_backward(h, w, y, lse)
        ctx.chunk = chunk
        return lse - tgt

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        # runs outside autocast: every matmul takes operands of h's dtype (bf16 stays bf16, with the
        # matmul's own fp32 accumulation); the classifier gradient is summed over chunks in fp32
        h, w, y, lse = ctx.saved_tensors
        chunk = ctx.chunk
        gh = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        acc = lse.dtype
        gw = torch.zeros(w.shape, dtype=acc, device=w.device) if ctx.needs_input_grad[1] else None
        for s in range(0, h.shape[0], chunk):
            hs = h[s : s + chunk]
            p = torch.exp((hs @ w.t()).to(acc) - lse[s : s + chunk, None])  # softmax (n, V), fp32
            p[torch.arange(hs.shape[0], device=h.device), y[s : s + chunk]] -= 1.0
            p *= g[s : s + chunk, None].to(acc)  # dL/dlogits
            p = p.to(h.dtype)
            if gh is not None:
                gh[s : s + chunk] = p @ w
            if gw is not None:
                gw += (p.t() @ hs).to(acc)
        return gh, (gw.to(w.dtype) if gw is not None else None), None, None


# The cce kernels are Triton kernels that specialise on the row count's divisibility by 16: a step whose
# row count falls in the class not yet seen would compile new variants (seconds on a GPU) inside the
# budgeted clock, at a random step. Rows are padded to a multiple of 16, so one variant serves every step.
CCE_ROWS_MULTIPLE = 16


def token_nll(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, impl: str, chunk: int = 4096) -> torch.Tensor:
    """h: (N, D) hidden states, w: (V, D) classifier, y: (N,) targets -> (N,) fp32 NLL.

    `impl` must be resolved already (see `resolve_impl`).
    """
    if h.shape[0] == 0:
        return h.new_zeros(0, dtype=torch.float32)
    dt = compute_dtype(h)
    h, w = h.to(dt), w.to(dt)  # differentiable casts: the fp32 parameter gets an fp32 gradient
    if impl == "chunked":
        return _ChunkedNLL.apply(h, w, y, chunk)
    N = h.shape[0]
    pad = (-N) % CCE_ROWS_MULTIPLE if impl == "cce" else 0
    if pad:  # padding rows (target 0): their NLL is cut off below, so they get no gradient and add none
        h, y = F.pad(h, (0, 0, 0, pad)), F.pad(y, (0, pad))
    if impl == "cce":
        kernel = _cce_kernel()
        _warm_cce(kernel, w)
        return kernel(h, w, y).float()[:N]
    # filter_eps=None: no gradient filtering, so the gradients match the exact path
    return _cce()(h, w, y, reduction="none", impl="torch_compile", filter_eps=None).float()[:N]


def plain_nll(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The textbook reference (materialises all logits): used by tests and the loss-memory benchmark."""
    dt = compute_dtype(h)
    return F.cross_entropy((h.to(dt) @ w.to(dt).t()).float(), y, reduction="none")
