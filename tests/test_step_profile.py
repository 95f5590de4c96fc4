"""The profiled training step (`--profile-step`, harness/step_profile.py): what it measures, and that
taking it changes no other figure of the run (one step per stage, off the clock, charged)."""
from __future__ import annotations

import pytest
import torch

from harness import objectives
from harness.budget import Budget
from harness.model import LM, LMConfig
from harness.step_profile import TOP, busy_fraction, count_events, kind_of, summarize
from harness.train import TrainConfig, train
from test_budget_train import SPECIAL, _toy_data  # the copy task: learnable in a few steps


# names as CUDA kernels are reported by torch.profiler on a GPU (cuBLAS on sm90, cuDNN's and PyTorch's
# attention, inductor's fused code, the mixers' Triton scans, eager ATen kernels, the fused AdamW)
NAMED = {
    "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNT": "matmul",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1": "matmul",
    "ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_stages_64x3_tn": "matmul",
    "triton_tem_fused_mm_0": "matmul",
    "cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128_4x1x1_kernel0_0": "attention",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false>, true>": "attention",
    "fmha_cutlassB_bf16_aligned_64x64_k64_sm80(PyTorchMemEffAttention::AttentionBackwardKernel)": "attention",
    "triton_poi_fused__scaled_dot_product_efficient_attention_0": "compiled elementwise",
    "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1": "compiled elementwise",
    "triton_per_fused_native_layer_norm_2": "compiled elementwise",
    "scan_fwd": "scan", "scan_bwd": "scan", "scan_carry": "scan", "walk_fwd": "scan", "walk_bwd": "scan",
    "carry": "scan",
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>": "optimizer",
    "Memcpy HtoD (Pinned -> Device)": "copy and fill",
    "Memset (Device)": "copy and fill",
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, 1>>":
        "copy and fill",
    "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl<MulFunctor<float>>>": "eager elementwise",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float>>>":
        "eager elementwise",
    "some_vendor_kernel": "other",
}


@pytest.mark.parametrize("name", list(NAMED))
def test_a_kernel_is_sorted_into_its_kind_by_name(name):
    assert kind_of(name) == NAMED[name]


def test_the_summary_sums_kernel_time_by_kind_and_names_the_longest():
    kernels = [("scan_bwd", 3000.0, 8), ("nvjet_a", 1500.0, 40), ("nvjet_b", 500.0, 20),
               ("triton_poi_fused_add_0", 250.0, 16), ("gone", 99.0, 0)]  # no launches: not counted
    kernels += [(f"triton_per_fused_{i}", 10.0, 1) for i in range(TOP)]
    s = summarize(kernels, host_ops=321, wall_ms=12.3456, tokens=4096, device="cuda")
    assert s["kernels"] == 8 + 40 + 20 + 16 + TOP and s["host_ops"] == 321 and s["tokens"] == 4096
    assert s["kernel_ms"] == pytest.approx(5.25 + TOP * 0.01)
    assert s["by_kind_ms"] == pytest.approx({"scan": 3.0, "matmul": 2.0, "compiled elementwise": 0.25 + TOP * 0.01})
    assert list(s["by_kind_ms"]) == ["scan", "matmul", "compiled elementwise"]  # longest first
    assert len(s["top"]) == TOP and [t["name"] for t in s["top"][:4]] == ["scan_bwd", "nvjet_a", "nvjet_b",
                                                                       "triton_poi_fused_add_0"]
    assert s["top"][0] == {"name": "scan_bwd", "kind": "scan", "ms": 3.0, "calls": 8}
    cpu = summarize(None, host_ops=5, wall_ms=1.0, tokens=10, device="cpu")  # no device timeline: no kernel figures
    assert cpu["kernels"] is cpu["kernel_ms"] is cpu["by_kind_ms"] is cpu["top"] is None and cpu["host_ops"] == 5


def test_busy_fraction_is_kernel_time_over_the_clocked_time_of_the_steps_tokens():
    p = {"kernel_ms": 5.0, "tokens": 1000}
    assert busy_fraction(p, 1e-5) == pytest.approx(0.5)  # 1,000 tokens at 10 us each: 10 ms, 5 of them busy
    assert busy_fraction(p, 2.5e-6) == pytest.approx(2.0)  # (more than 1: the clocked steps overlapped)
    assert busy_fraction({"kernel_ms": None, "tokens": 1000}, 1e-5) is None  # a CPU: no kernels
    assert busy_fraction(p, None) is None and busy_fraction({}, 1e-5) is None  # no step timed


class _Event:
    """A raw profiler event as `count_events` reads it (torch's _KinetoEvent: methods, not fields)."""

    def __init__(self, name, device, ns=0):
        self._name, self._device, self._ns = name, device, ns

    def name(self):
        return self._name

    def device_type(self):
        return self._device

    def duration_ns(self):
        return self._ns


def test_kernels_are_the_device_events_summed_by_name_and_host_calls_the_cpus_aten_events():
    from torch.autograd import DeviceType

    events = [_Event("aten::mm", DeviceType.CPU), _Event("aten::add", DeviceType.CPU),
              _Event("cudaLaunchKernel", DeviceType.CPU),  # the runtime call on the host: neither
              _Event("CompiledFunction", DeviceType.CPU), _Event("CompiledFunctionBackward", DeviceType.CPU),
              _Event("nvjet_x", DeviceType.CUDA, 1500), _Event("nvjet_x", DeviceType.CUDA, 500),
              _Event("scan_fwd", DeviceType.CUDA, 4000)]
    kernels, host_ops, graphs = count_events(events, torch.device("cuda"))
    assert host_ops == 2 and graphs == 2 and sorted(kernels) == [("nvjet_x", 2.0, 2), ("scan_fwd", 4.0, 1)]  # us
    assert count_events(events, torch.device("cpu")) == (None, 2, 2)  # off CUDA: no kernel figures
    # a CUDA step with no kernel recorded: no device timeline (CUPTI absent), not an idle GPU (busy 0%)
    assert count_events(events[:5], torch.device("cuda")) == (None, 2, 2)


def test_the_host_calls_of_a_real_profile_are_key_averages_count_and_a_few_redispatches():
    """The raw events, read instead of `key_averages()` (which builds the event tree: 30x slower), count the
    `aten::` calls `benchmarks.profile_step` counts, plus the few that tree merges: an op's inner call of
    the same name (`aten::div_` inside `aten::div_`), which it drops as duplicates. Not 5% more."""
    from core.quiet import no_profiler_chatter

    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=2, mixer="attention", causal=True, mlp_hidden=64))
    with no_profiler_chatter(), torch.profiler.profile() as prof:
        model(torch.randint(0, 20, (2, 8))).float().sum().backward()
    _, host_ops, _ = count_events(prof.profiler.kineto_results.events(), torch.device("cpu"))
    averaged = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    assert averaged > 100 and averaged <= host_ops <= 1.05 * averaged


def _train(profile: bool, step_clock, cost=None):
    """A seconds budget on a virtual clock (0.01 s a token: no real time): (result, each step's tokens)."""
    per_step = []

    def costed(run, stage, batch):
        per_step.append(batch.n_tokens)
        return (cost or (lambda *a: 0.0))(run, stage, batch) + 0.01 * batch.n_tokens

    step_clock(costed)
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=2, mixer="attention", causal=True, mlp_hidden=64))
    cfg = TrainConfig(batch_size=8, progress=False, eval_points=1, profile=profile)
    res = train(model, objectives.build("autoregressive", SPECIAL, "chunked"), _toy_data(), _toy_data(8, seed=1),
                Budget.parse("seconds=12"), cfg, torch.device("cpu"))
    return res, per_step


def test_one_step_of_the_stage_is_profiled_after_its_warm_up_off_the_clock_and_charged(step_clock):
    """Eager on CPU: one warm-up step, then the profile at the stage's fourth step (its warm-up and two more,
    STEADY_FROM). That step is off the clock like the warm-up, and a time budget charges its tokens at the
    clocked rate: the run trains as many tokens as without the profile (a profile taken on the clock would
    charge the profiler's overhead; an uncharged one would train for free)."""
    plain, _ = _train(False, step_clock)
    res, per_step = _train(True, step_clock)
    assert "profile" not in plain.stages[0] and plain.warm_steps == 1
    p = res.stages[0]["profile"]
    assert res.warm_steps == 2 and res.warm_tokens == per_step[0] + per_step[3]
    assert p["tokens"] == per_step[3] and p["device"] == "cpu" and p["host_ops"] > 100  # a whole step's operators
    assert p["kernels"] is None and p["busy_frac"] is None  # a CPU reports no kernels
    assert res.train_seconds == pytest.approx(0.01 * (res.tokens_seen - res.warm_tokens))
    assert res.warm_charged_seconds == pytest.approx(0.01 * res.warm_tokens)
    assert res.tokens_seen == plain.tokens_seen and res.steps == plain.steps


def test_a_profiled_step_that_compiled_is_not_kept_and_the_next_step_is_profiled(step_clock):
    """A compilation inside the profiled step would show the compiler, not the step: that step counts as a
    late compile (off the clock, as any), and the stage's next step is profiled instead."""

    def compiles_at_the_fourth(run, stage, batch):
        if stage.steps == 3:
            run.compiled_in_step = True  # what the compile watch sets when torch.compile starts work
        return 0.0

    res, per_step = _train(True, step_clock, compiles_at_the_fourth)
    assert res.late_compiles == 1 and res.warm_steps == 3
    assert res.stages[0]["profile"]["tokens"] == per_step[4]


def test_a_step_that_fails_while_profiled_leaves_no_profiler_running(step_clock, monkeypatch):
    """Out of memory (say) in the profiled step fails the cell, and the grid goes on to the next cell in the
    same process: a profiler left running there would make the next cell's profile fail to start."""
    import harness.train as ht

    real = ht._Run._forward_backward

    def fails_when_profiled(self, stage, batch):
        if stage.steps == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, stage, batch)

    monkeypatch.setattr(ht._Run, "_forward_backward", fails_when_profiled)
    with pytest.raises(torch.OutOfMemoryError):
        _train(True, step_clock)
    assert not torch._C._autograd._profiler_enabled()
    with torch.profiler.profile() as prof:  # the next profile starts and records
        torch.ones(2).sum()
    assert any(e.key == "aten::sum" for e in prof.key_averages())


def test_a_profiler_that_cannot_start_costs_the_cell_only_its_profile(step_clock, monkeypatch):
    """No CUPTI on a GPU machine (say): the step trains unprofiled and off the clock as planned, the stage's
    profile says why it is missing, and no later step is taken off the clock to try again, even when that
    step also compiled (where a working profile is retried)."""
    import torch.profiler as tp

    def refuses(*a, **k):
        raise RuntimeError("CUPTI_ERROR_INSUFFICIENT_PRIVILEGES (simulated)")

    def compiles_at_the_fourth(run, stage, batch):
        if stage.steps == 3:
            run.compiled_in_step = True
        return 0.0

    plain, _ = _train(False, step_clock)
    monkeypatch.setattr(tp, "profile", refuses)
    res, per_step = _train(True, step_clock, compiles_at_the_fourth)
    p = res.stages[0]["profile"]
    assert p["error"].startswith("the profiler did not start: RuntimeError: CUPTI") and p["busy_frac"] is None
    assert p["tokens"] == per_step[3] and res.warm_steps == 2 and res.late_compiles == 1  # one attempt
    assert res.tokens_seen == plain.tokens_seen


def test_a_trace_that_cannot_be_read_costs_the_cell_only_its_profile(step_clock, monkeypatch):
    """The profiler stopped but its events unreadable (an API that moved, say): the profile says so, the
    profiler is off, and training goes on as without a profile."""
    import harness.step_profile as sp

    def unreadable(events, device):
        raise AttributeError("'_KinetoEvent' object has no attribute 'device_type' (simulated)")

    plain, _ = _train(False, step_clock)
    monkeypatch.setattr(sp, "count_events", unreadable)
    res, per_step = _train(True, step_clock)
    assert res.stages[0]["profile"]["error"].startswith("the profiler's trace could not be read: AttributeError")
    assert not torch._C._autograd._profiler_enabled()
    assert res.tokens_seen == plain.tokens_seen and res.warm_steps == 2


def _graph_calls(mixer: str) -> tuple[int, int]:
    """(compiled graph calls of one profiled step, the tiny preset's blocks) of a compiled `mixer` step."""
    from benchmarks.profile_step import make_step
    from core.presets import get_preset
    from harness.model import matched_config
    from harness.step_profile import StepProfiler

    torch._dynamo.reset()  # graphs compiled under another setting are not reused
    step = make_step(mixer, "autoregressive", "tiny", 2, 16, torch.device("cpu"), compile=True)
    for _ in range(3):  # compiled, then recompiled with dynamic lengths
        step()
    prof = StepProfiler(torch.device("cpu"))
    prof.start()
    step()
    p = get_preset("tiny")
    return prof.stop(32)["graph_calls"], matched_config(p, mixer, True, p.vocab_size, {}).n_layers


def test_a_compiled_step_counts_a_graph_pair_per_block_and_more_per_graph_break(monkeypatch, torch_config):
    """`graph_calls`: each compiled block is one forward and one backward graph (attention: a pair per block
    and the final norm's). Mamba's scan runs eagerly inside its block (a graph break, three calls deep):
    split at every frame between the block and the scan (dynamo's old way), a block is 5 graphs each way
    under torch 2.13; with graph breaks resumed where they happen (`nest_graph_breaks`, what the trainer
    sets where torch has it), 2: one before the scan, one after."""
    import torch._dynamo.config as dynamo_config

    import harness.compiling as hcomp

    calls, layers = _graph_calls("attention")
    assert calls == 2 * (layers + 1)
    if not hasattr(dynamo_config, "nested_graph_breaks"):
        pytest.skip(f"torch {torch.__version__} has no nested graph breaks")
    calls, layers = _graph_calls("mamba")
    assert calls == 2 * (2 * layers + 1)
    torch_config(dynamo_config, "nested_graph_breaks", True)  # (restored after the test)
    monkeypatch.setenv("WAVEBENCH_NESTED_GRAPH_BREAKS", "0")  # the old way, asked for
    split, _ = _graph_calls("mamba")
    assert split > calls and hcomp.graph_breaks_nested() is False
    torch._dynamo.reset()
