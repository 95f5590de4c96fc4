"""CUDA-only paths held on CPU: what the grid's cells, the peak-memory figures and attention do on a GPU,
simulated with stand-ins for the CUDA calls (the CI has no GPU; a change green on CPU once broke every GPU
cell). Each test names the GPU behaviour it holds; a `torch.device("cuda")` object needs no GPU."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import harness.cell as cell_mod
import mixers
import mixers.attention as attn_mod
from benchmarks import common
from core import env

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _recorder(calls: list, name: str, result=None):
    """A stand-in for a torch.cuda function: records (name, args) and returns `result`."""

    def fn(*args, **kwargs):
        calls.append((name, *args))
        return result

    return fn


# --- harness/cell.py --------------------------------------------------------------------------------


def test_tf32_is_enabled_on_cuda_only(monkeypatch):
    """On a GPU a cell lets fp32 matmuls (what autocast leaves in fp32) use TF32 tensor cores, precision
    "high", and its row records tf32=True; on CPU nothing is set and the row says False."""
    calls: list = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", _recorder(calls, "precision"))
    assert cell_mod.enable_tf32(CPU) is False and calls == []
    assert cell_mod.enable_tf32(CUDA) is True
    assert calls == [("precision", "high")]


def test_cudnn_attention_is_set_on_cuda_either_way_and_untouched_on_cpu(monkeypatch):
    """On a GPU a cell sets whether SDPA may use cuDNN's attention, off unless asked (--sdpa-cudnn: cuDNN
    plans each new shape anew, and a grid's batch lengths vary), and sets it either way: the switch is global
    to the process, so a cell that allowed it must not leave it on for the next. On CPU nothing is set."""
    calls: list = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", _recorder(calls, "cudnn_sdp"))
    assert cell_mod.allow_cudnn_attention(CPU, True) is None and calls == []
    assert cell_mod.allow_cudnn_attention(CUDA, True) is True
    assert cell_mod.allow_cudnn_attention(CUDA, False) is False
    assert calls == [("cudnn_sdp", True), ("cudnn_sdp", False)]


def test_release_syncs_and_empties_the_cache_and_returns_a_sticky_error(monkeypatch):
    """After each cell on a GPU: wait for the queued work (an error still queued shows in the cell that
    caused it), then hand the allocator's cache back before the next cell's peak-memory window. A sticky
    CUDA error (illegal address, device-side assert) is returned as the row's error, never raised: raised,
    it killed the grid in the cell's cleanup and lost the row (tests/test_grid.py holds what the grid does
    with the text). On CPU nothing CUDA is called."""
    calls: list = []
    monkeypatch.setattr(torch.cuda, "synchronize", _recorder(calls, "synchronize"))
    monkeypatch.setattr(torch.cuda, "empty_cache", _recorder(calls, "empty_cache"))
    assert cell_mod.release(CPU) is None and calls == []
    assert cell_mod.release(CUDA) is None
    assert calls == [("synchronize", CUDA), ("empty_cache",)]

    def sticky(device=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be ...")

    monkeypatch.setattr(torch.cuda, "synchronize", sticky)
    assert cell_mod.release(CUDA) == "RuntimeError: CUDA error: an illegal memory access was encountered"


def test_a_training_wait_on_cuda_synchronizes_that_device_and_on_cpu_calls_nothing(monkeypatch):
    """`harness.train.device_sync` is how the budget waits for queued GPU work (a warm-up step, a drain
    before a dev check): on CUDA it must synchronize the device it is given, else the host's clock stops
    while the GPU still works and the budget undercounts. (tests/test_step.py stands in the whole function.)
    Beneath it, `core.env.sync`, with which every timed span ends (the budget's clock, the benchmarks): on
    CPU nothing CUDA is called (a CPU-only torch would raise)."""
    import harness.train as train_mod

    calls: list = []
    monkeypatch.setattr(torch.cuda, "synchronize", _recorder(calls, "synchronize"))
    for wait in (train_mod.device_sync, env.sync):
        calls.clear()
        wait(CPU)
        assert calls == []
        wait(CUDA)
        assert calls == [("synchronize", CUDA)]


# --- core/env.py ------------------------------------------------------------------------------------


def test_peak_memory_window_on_cuda_reads_the_allocators_peak(monkeypatch):
    """A row's peak VRAM: the window opens by resetting CUDA's peak statistics (else the figure is the
    process's peak, an earlier cell's included) and returns the bytes allocated at that moment; the peak is
    the allocator's max_memory_allocated, not what is allocated when it is read. On CPU both are None,
    never a made-up number, and nothing CUDA is called."""
    calls: list = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", _recorder(calls, "reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", _recorder(calls, "allocated", 1_000))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", _recorder(calls, "max", 7_000))
    assert env.reset_peak_memory(CPU) is None and env.peak_memory(CPU) is None and calls == []
    assert env.reset_peak_memory(CUDA) == 1_000
    assert calls[0] == ("reset", CUDA)
    assert env.peak_memory(CUDA) == 7_000
    assert calls[-1] == ("max", CUDA)


def test_autocast_is_bf16_on_cuda_and_off_on_cpu(monkeypatch):
    """The grid trains and evaluates under CUDA's bf16 autocast (the cce kernel and the MFU figures assume
    it); on CPU in plain fp32 (CPU bf16 is slow and not what the figures measure). Recorded, not entered:
    torch.autocast("cuda") on a machine without CUDA disables itself."""
    calls: list = []
    monkeypatch.setattr(torch, "autocast", lambda device_type, **kw: calls.append((device_type, kw)) or "ctx")
    assert env.autocast(CUDA) == "ctx" and env.autocast(CPU) == "ctx"
    assert calls == [("cuda", {"dtype": torch.bfloat16}), ("cpu", {"enabled": False})]


def test_gpu_slug_and_device_names_name_the_processor(monkeypatch):
    """File and grid names carry the GPU's slug (an H200's figures never land in an A100's file): lower
    case, runs of other characters one dash, none at either end, without the vendor; '' off CUDA. A CPU is
    named by /proc/cpuinfo's first model name (else the platform's), with the threads torch uses."""
    names = iter(["NVIDIA H200", "NVIDIA A100-SXM4-80GB (MIG 1g.10gb)"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev: next(names))
    env.device_name.cache_clear()  # cached per device string: clear before and after the stand-ins
    try:
        assert env.gpu_slug(CUDA) == "h200" and env.device_name("cuda") == "NVIDIA H200"
        env.device_name.cache_clear()
        assert env.gpu_slug(CUDA) == "a100-sxm4-80gb-mig-1g-10gb"
        assert env.gpu_slug(CPU) == ""

        threads = torch.get_num_threads()
        cpuinfo = "processor\t: 0\nmodel name\t: Test CPU: rev 2\nprocessor\t: 1\nmodel name\t: Other CPU\n"
        monkeypatch.setattr(env.Path, "read_text", lambda self, *a, **k: cpuinfo)
        assert env.device_name("cpu") == f"cpu: Test CPU: rev 2 ({threads} threads)"
        env.device_name.cache_clear()

        def unreadable(self, *a, **k):
            raise OSError("no /proc here")

        monkeypatch.setattr(env.Path, "read_text", unreadable)
        monkeypatch.setattr(env.platform, "processor", lambda: "")
        monkeypatch.setattr(env.platform, "machine", lambda: "x86_64")
        assert env.device_name("cpu") == f"cpu: x86_64 ({threads} threads)"
    finally:
        env.device_name.cache_clear()


# --- mixers/attention.py ----------------------------------------------------------------------------


def _sdpa_spy(monkeypatch) -> list:
    """Records the attn_mask of every F.scaled_dot_product_attention call (then runs the real one)."""
    masks: list = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        masks.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return masks


def test_padded_bidirectional_attention_gives_sdpa_a_key_padding_mask(monkeypatch):
    """Masked diffusion trains bidirectional attention on padded batches: the mask SDPA gets is the
    (B, 1, 1, T) key-padding mask, broadcast over queries. A (B, 1, T, T) mask gives the same numbers, but
    on CUDA SDPA turns it into a (B, 1, T, T) bias per layer (memory quadratic in T, another kernel)."""
    masks = _sdpa_spy(monkeypatch)
    torch.manual_seed(0)
    m = mixers.build("attention", 64, False)
    B, T = 2, 7
    pad_mask = torch.ones(B, T, dtype=torch.bool)
    pad_mask[0, :3] = pad_mask[1, 5:] = False
    m(torch.randn(B, T, 64), pad_mask)
    assert len(masks) == 1 and m.backend == "sdpa"
    assert masks[0].dtype == torch.bool and tuple(masks[0].shape) == (B, 1, 1, T)
    assert torch.equal(masks[0][:, 0, 0], pad_mask)


class _OnCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA (what `Attention.forward` checks before flash-attn), and so
    does every tensor computed from it."""

    @property
    def is_cuda(self) -> bool:
        return True


def test_flash_attn_path_gets_its_layout_and_the_causal_flag(monkeypatch):
    """On CUDA, with flash-attn installed, bf16 (the grid's autocast) and no padding, attention runs
    `flash_attn_func`: q, k, v in its (B, T, H, hd) layout, bf16 with a contiguous last dimension (what its
    kernel demands), `causal` as the mixer's, and its output gives the SDPA path's numbers. With padding it
    falls back to SDPA (flash_attn_func takes no mask). The package is stood in for by SDPA in its layout."""
    calls: list = []

    def flash_attn_func(q, k, v, causal=False):
        calls.append(causal)
        assert q.shape == k.shape == v.shape == (B, T, m.n_heads, m.opts.head_dim)
        assert {q.dtype, k.dtype, v.dtype} == {torch.bfloat16} and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        bhtd = lambda t: t.transpose(1, 2)  # noqa: E731
        return bhtd(F.scaled_dot_product_attention(bhtd(q), bhtd(k), bhtd(v), is_causal=causal))

    monkeypatch.setattr(attn_mod, "_flash_attn_func", flash_attn_func)
    B, T = 2, 5  # T != heads, so a missed transpose cannot pass
    for causal in (True, False):
        torch.manual_seed(0)
        m = mixers.build("attention", 64, causal)
        x = torch.randn(B, T, 64)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            want = m(x)
            assert m.backend == "sdpa" and not calls  # a CPU tensor: never flash-attn
            got = m(x.as_subclass(_OnCuda))
            assert m.backend == "flash_attn" and calls == [causal]
            m(x.as_subclass(_OnCuda), torch.ones(B, T, dtype=torch.bool))
            assert m.backend == "sdpa" and calls == [causal]  # padding: SDPA
        torch.testing.assert_close(got.as_subclass(torch.Tensor), want, rtol=0, atol=0)
        calls.clear()


def test_mamba_fused_kernels_get_their_layouts_and_give_the_pytorch_scans_numbers(monkeypatch):
    """On CUDA with mamba-ssm (and causal-conv1d) installed, the forward runs `causal_conv1d_fn(x (B, C, T),
    weight (C, K), bias, activation="silu")` and `selective_scan_fn(u, delta (B, Di, T), A (Di, N), B, C
    (B, N, T), D, z (B, Di, T), delta_bias=None, delta_softplus=False)` (Δ is already softplus'd), channels
    before time, and says so in `backend`. Stand-ins with those layouts, built from the PyTorch conv and
    reference scan, must give the PyTorch path's numbers, causal and bidirectional, with and without pads.
    A decoding step takes `selective_state_update` on CUDA only (its contract: tests/test_decode.py)."""
    import mixers.mamba as mm

    B, T = 2, 5  # T differs from d_inner (128), d_state (16) and d_conv (4): a missed transpose cannot pass
    seen: list[str] = []

    def causal_conv1d_fn(x, weight, bias, activation=None):
        assert x.shape == (B, 128, T) and weight.shape[0] == 128 and activation == "silu" and x.is_contiguous()
        assert 2 <= weight.shape[1] <= 4  # the widths causal-conv1d takes
        seen.append("conv")
        return F.silu(mm.causal_depthwise_conv(x.transpose(1, 2), weight, bias)).transpose(1, 2)

    def selective_scan_fn(u, delta, A, Bm, Cm, D, z, delta_bias=None, delta_softplus=True):
        assert u.shape == delta.shape == z.shape == (B, 128, T) and Bm.shape == Cm.shape == (B, 16, T)
        assert A.shape == (128, 16) and D.shape == (128,) and delta_bias is None and not delta_softplus
        seen.append("scan")
        t = lambda v: v.transpose(1, 2)  # noqa: E731
        return t(mm.selective_scan_reference(t(u), t(delta), A, t(Bm), t(Cm), D, t(z)))

    monkeypatch.setattr(mm, "_causal_conv1d_fn", causal_conv1d_fn)
    monkeypatch.setattr(mm, "_selective_scan_fn", selective_scan_fn)
    pads = torch.tensor([[True] * T, [False, False] + [True] * (T - 2)])
    for causal in (True, False):
        torch.manual_seed(0)
        m = mixers.build("mamba", 64, causal)
        with torch.no_grad():
            for d in (m.fwd, m.bwd):  # D starts at ones: random, so that a misplaced D would show
                if d is not None:
                    d.D.normal_()
        x = torch.randn(B, T, 64)
        for mask in (None, pads):
            with torch.no_grad():
                want = m(x, mask)
                assert m.backend == "torch_parallel_scan" and not seen  # a CPU tensor: never the kernels
                got = m(x.as_subclass(_OnCuda), mask)
            assert m.backend == "mamba_ssm" and seen == ["conv", "scan"] * (1 if causal else 2)
            real = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
            torch.testing.assert_close(got.as_subclass(torch.Tensor)[real], want[real], rtol=1e-5, atol=1e-5)
            seen.clear()
    for K in (2, 3, 5):  # causal-conv1d's widths are 2 to 4; a wider conv runs in PyTorch beside the fused scan
        m = mixers.build("mamba", 64, True, d_conv=K)
        with torch.no_grad():
            m(torch.randn(B, T, 64).as_subclass(_OnCuda))
        assert seen == (["conv", "scan"] if K <= 4 else ["scan"])
        seen.clear()
    monkeypatch.setattr(mm, "_selective_state_update", lambda h, x, *a, **k: seen.append("step") or torch.zeros_like(x))
    x_t = torch.randn(B, 64)
    for x_t, backend in ((x_t, "torch_step"), (x_t.as_subclass(_OnCuda), "mamba_ssm_step")):
        with torch.no_grad():
            m.step(x_t)
        assert m.decode_backend == backend and seen == ([] if backend == "torch_step" else ["step"])


# --- benchmarks/common.py ---------------------------------------------------------------------------


def test_a_benchmarks_warm_up_and_timed_calls_wait_for_the_gpu(monkeypatch):
    """CUDA calls return before the GPU has run them: the warm-up waits for its queued work (else it lands
    in the first timed call), and each timed call starts and ends on a sync (else the clock measures the
    launch, not the work). On CPU nothing CUDA is called."""
    calls: list = []
    monkeypatch.setattr(torch.cuda, "synchronize", _recorder(calls, "synchronize"))
    fn = _recorder(calls, "fn")
    common.warm_up(fn, CUDA, 2)
    assert calls == [("fn",), ("fn",), ("synchronize", CUDA)]
    calls.clear()
    common.time_ms(fn, CUDA, 2)
    assert calls == [("synchronize", CUDA), ("fn",), ("synchronize", CUDA)] * 2
    calls.clear()
    common.time_ms(fn, CUDA, 0)  # no repetition asked: one call all the same, a median needs one time
    assert calls.count(("fn",)) == 1
    calls.clear()
    assert common.time_ms(fn, CUDA, 0, first=[3.0]) == 3.0 and calls == []  # the given time suffices
    common.warm_up(fn, CPU, 1)
    common.time_ms(fn, CPU, 1)
    assert calls == [("fn",), ("fn",)]


def test_a_benchmarks_peak_on_cuda_is_the_allocators_peak_above_what_the_call_started_with(monkeypatch):
    """The loss-memory table's figure on a GPU: the queue drained, the peak statistics reset (else an earlier
    configuration's peak is read), what is allocated before the call (inputs, parameters) subtracted from
    the allocator's peak after it, read once the call's work has run."""
    calls: list = []
    monkeypatch.setattr(torch.cuda, "synchronize", _recorder(calls, "synchronize"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", _recorder(calls, "reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", _recorder(calls, "allocated", 1_000))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", _recorder(calls, "max", 7_000))
    assert common.peak_memory(_recorder(calls, "fn"), CUDA) == (6_000, common.CUDA_MEASURE)
    assert calls == [("synchronize", CUDA), ("reset", CUDA), ("allocated", CUDA), ("fn",), ("synchronize", CUDA),
                     ("max", CUDA)]


def test_each_benchmark_configuration_hands_the_gpus_cache_back_ok_or_failed(monkeypatch):
    """After each configuration (a length, a loss path) the cached blocks go back: an OOM at one size must
    not leave the next size's peak, or its chance to fit, to the allocator's leftovers. On CPU nothing
    CUDA is called."""
    calls: list = []
    monkeypatch.setattr(torch.cuda, "empty_cache", _recorder(calls, "empty_cache"))
    common.free(CPU)
    assert calls == []
    common.free(CUDA)
    assert calls == [("empty_cache",)]

    freed: list = []
    monkeypatch.setattr(common, "free", freed.append)

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    assert common.measured_row("t", CPU, {"n": 1}, lambda: {"ms": 1.0})["status"] == "ok"
    assert common.measured_row("t", CPU, {"n": 2}, oom, keep=common.is_oom)["status"] == "failed"
    assert freed == [CPU, CPU]
