"""Benchmarks time only warmed-up calls: the first calls (CUDA context, autotuning, compilation,
allocator) are run untimed, so a slow first call neither enters a figure nor ends a mixer's curve.

A fake clock makes this exact: every fake step advances it by 10 s while warming up and by 1 ms after."""
from __future__ import annotations

import pytest
import torch

from benchmarks import common as bench_common
from core.quiet import no_profiler_chatter
from benchmarks import loss_memory as blm
from benchmarks import scaling as bs


class _Clock:
    def __init__(self, slow_calls: int):
        self.t, self.calls, self.slow_calls = 0.0, 0, slow_calls

    def tick(self) -> None:
        self.calls += 1
        self.t += 10.0 if self.calls <= self.slow_calls else 0.001


def test_scaling_bench_excludes_warm_up_steps_from_timing_and_from_the_stop_rule(tmp_path, monkeypatch):
    clock = _Clock(slow_calls=2)
    monkeypatch.setattr(bench_common.time, "perf_counter", lambda: clock.t)
    real_step = bs._step

    def step(module, x, g, device):
        clock.tick()
        return real_step(module, x, g, device)

    monkeypatch.setattr(bs, "_step", step)
    cfg = bs.ScalingConfig(mixers=["attention"], d_model=32, lengths=[8, 16], tokens=16, reps=3, warmup=2,
                           max_seconds=5.0)
    rows = bs.run(cfg, torch.device("cpu"), tmp_path / "s.jsonl", log=lambda s: None)
    # the 10 s warm-up calls are not in the figure, and did not stop the mixer at its first length
    assert [r["seq_len"] for r in rows] == [8, 16] and all(r["status"] == "ok" for r in rows)
    assert abs(rows[0]["ms_per_step"] - 1.0) < 1e-6 and rows[0]["warmup"] == 2 and rows[0]["note"] is None


def test_scaling_bench_still_stops_after_a_slow_warmed_up_step(tmp_path, monkeypatch):
    clock = _Clock(slow_calls=10**9)  # every call slow, warmed up or not
    monkeypatch.setattr(bench_common.time, "perf_counter", lambda: clock.t)
    real_step = bs._step
    monkeypatch.setattr(bs, "_step", lambda *a: (clock.tick(), real_step(*a))[1])
    cfg = bs.ScalingConfig(mixers=["attention"], d_model=32, lengths=[8, 16], tokens=16, reps=3, warmup=1,
                           max_seconds=5.0)
    rows = bs.run(cfg, torch.device("cpu"), tmp_path / "s.jsonl", log=lambda s: None)
    assert [r["seq_len"] for r in rows] == [8] and "longer lengths skipped" in rows[0]["note"]
    assert rows[0]["reps"] == 1  # its figure is that one timed step


def test_loss_memory_bench_excludes_warm_up_calls(tmp_path, monkeypatch):
    clock = _Clock(slow_calls=2)
    monkeypatch.setattr(bench_common.time, "perf_counter", lambda: clock.t)
    real = blm._loss_fn

    def loss_fn(impl):
        fn = real(impl)
        return lambda h, w, y: (clock.tick(), fn(h, w, y))[1]

    monkeypatch.setattr(blm, "_loss_fn", loss_fn)
    cfg = blm.LossMemoryConfig(impls=["chunked"], vocab_sizes=[50], tokens=[16], d_model=8, reps=3, warmup=2)
    (row,) = blm.run(cfg, torch.device("cpu"), tmp_path / "l.jsonl", log=lambda s: None)
    assert row["status"] == "ok" and abs(row["ms_fwd_bwd"] - 1.0) < 1e-6 and row["warmup"] == 2


def test_time_ms_is_the_median_of_its_calls(monkeypatch):
    """One slow call among the timed ones (a GC pause, a context switch) moves the median, not the figure."""
    clock = {"t": 0.0}
    durations = iter([0.001, 0.100, 0.001, 0.002, 0.500])  # seconds per call
    monkeypatch.setattr(bench_common.time, "perf_counter", lambda: clock["t"])

    def fn():
        clock["t"] += next(durations)

    cpu = torch.device("cpu")
    assert abs(bench_common.time_ms(fn, cpu, 3) - 1.0) < 1e-9  # median of 1, 100, 1 ms
    assert abs(bench_common.time_ms(fn, cpu, 2, first=[3.0]) - 3.0) < 1e-9  # median of 3 (given), 2, 500 ms


def test_profiled_calls_pass_on_stderr_but_the_profilers_own_chatter(capfd):
    """torch's profiler prints `USDT:` start and stop lines from C++ for every profiled call (torch 2.13),
    straight to file descriptor 2: the benchmarks' tables came out buried in them. Inside
    `no_profiler_chatter` those lines go, and whatever else reaches descriptor 2 (C++ or Python, a real
    warning) comes out after the body, in order, also when the body raises."""
    import os
    import sys

    with no_profiler_chatter():
        os.write(2, b"USDT:2026-12-01 18:45:00 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"from C++\n")
        print("from Python", file=sys.stderr)  # (under capfd Python's stderr is pytest's, not descriptor 2)
        with torch.profiler.profile():
            torch.ones(3).sum()
        os.write(2, b"USDT: profiler_stop\nfrom C++ again\n")
    err = capfd.readouterr().err
    assert "USDT" not in err and [ln for ln in err.splitlines() if "C++" in ln] == ["from C++", "from C++ again"]
    assert "from Python" in err
    with pytest.raises(RuntimeError, match="boom"), no_profiler_chatter():
        os.write(2, b"USDT: profiler_stop\nbefore the error\n")
        raise RuntimeError("boom")
    os.write(2, b"after\n")  # descriptor 2 is stderr again
    assert capfd.readouterr().err == "before the error\nafter\n"


def test_filtering_the_profilers_chatter_leaves_no_descriptor_open():
    """Each profiled call duplicates descriptor 2 to restore it after: a benchmark profiles once per
    configuration, and a duplicate left open per call would run a long sweep out of descriptors."""
    import os

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd to count descriptors in")
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with no_profiler_chatter():
            pass
    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_scaling_row_times_exactly_its_reps_after_its_warm_up_on_the_seeds_inputs(monkeypatch):
    """warmup untimed steps, then `reps` timed ones (the first of them also decides the stop rule: it is not
    timed twice), then one for the peak; the module and inputs are the seed's, so a rerun measures the same
    step and another seed another."""
    seen = []
    real_step = bs._step

    def step(module, x, g, device):
        seen.append((x.detach().sum().item(), next(module.parameters()).detach().sum().item()))
        return real_step(module, x, g, device)

    monkeypatch.setattr(bs, "_step", step)
    cpu = torch.device("cpu")
    cfg = bs.ScalingConfig(mixers=["attention"], d_model=32, lengths=[8], tokens=16, reps=3, warmup=2).resolved(cpu)
    row = bs.measure("attention", 8, cfg, cpu)
    assert len(seen) == 2 + 3 + 1 and row["reps"] == 3 and row["warmup"] == 2
    first = seen[0]
    seen.clear()
    bs.measure("attention", 8, cfg, cpu)
    assert seen[0] == first
    seen.clear()
    cfg.seed = 1
    bs.measure("attention", 8, cfg, cpu)
    assert seen[0][0] != first[0] and seen[0][1] != first[1]


def test_a_mixer_alone_runs_in_fp32_on_cpu():
    """bf16 autocast is the CUDA rows' precision (as the grid trains); a CPU row is fp32, as its `dtype`
    says: CPU bf16 autocast would time another, slower path."""
    dtypes = []
    module = torch.nn.Linear(4, 4)
    module.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    x = torch.randn(2, 3, 4, requires_grad=True)
    grads = bs._step(module, x, torch.randn(2, 3, 4), torch.device("cpu"))
    assert dtypes == [torch.float32] and [g.shape for g in grads] == [x.shape, (4, 4), (4,)]
