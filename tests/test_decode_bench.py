"""`benchmarks.decode`: what its rows say is what it measured. The prefill and the rerun path are timed
by `time_ms` after an untimed warm-up; each decoding step is timed alone between two syncs, after a prefill
that is not timed; the state's bytes are read after the prompt; the derived figures (median, minimum,
tokens/s, speed-up) come from the times given; a mixer's batch stops at its first out-of-memory context;
the command line's defaults are the CPU's and the GPU's sizes. Times come from a fake clock and the model
is a stand-in that records its calls (tests/test_decode.py runs the benchmark on real models)."""
from __future__ import annotations

import types

import pytest
import torch

import mixers
from benchmarks import decode as bd
from benchmarks.scaling import default_lengths
from fixtures.clock import Clock


class FakeLM:
    """A decoding LM that logs every call and advances a fake clock: a step takes the next of `step_ms`."""

    def __init__(self, clock: Clock, events: list, step_ms: list[float]):
        self.cfg = types.SimpleNamespace(vocab_size=50)
        self.clock, self.events, self.step_ms = clock, events, list(step_ms)
        self.blocks = [types.SimpleNamespace(mixer=types.SimpleNamespace(decode_backend=b)) for b in ("b2", "b1", "b2")]
        self.prompts: list[torch.Tensor] = []
        self.steps = 0

    def prefill(self, prompt):
        self.events.append("prefill")
        self.prompts.append(prompt)
        return None, {"kv": [torch.zeros(prompt.shape[1], 4)], "n": torch.zeros(2, dtype=torch.int64)}

    def step(self, nxt, states):
        self.events.append("step")
        self.steps += 1
        if self.clock.timing:
            self.clock.now += self.step_ms.pop(0) / 1000
        states = dict(states)
        states["kv"] = states["kv"] + [torch.zeros(1, 4)]  # the state grows: its bytes after the prompt are reported
        return None, states

    def __call__(self, ids, pad_mask):
        self.events.append(("rerun", tuple(ids.shape), pad_mask))
        return torch.arange(ids.shape[1], dtype=torch.float32)[None, :, None].expand(ids.shape[0], -1, 3)  # h[:, t] = t

    def logits(self, h):
        self.events.append(("logits", h[0, 0].item()))  # which position the head reads
        return h

    def state_floats(self, T):
        return 7 * T

    def decode_paths(self):
        return ["state", "x"]


@pytest.fixture
def bench(monkeypatch):
    """The fake clock, the event log (steps, syncs, timed calls) and the patched benchmark."""
    clock = Clock()
    clock.timing = False  # whether a sync has opened a timed window
    events: list = []

    def fake_time_ms(fn, device, reps, first=None):
        events.append(("time_ms", reps))
        fn()
        n = sum(1 for e in events if isinstance(e, tuple) and e[0] == "time_ms")
        return 40.0 if n % 2 else 900.0  # a measure's first timing is its prefill's, its second the rerun's

    def fake_sync(device):
        events.append("sync")
        clock.timing = not clock.timing  # a sync opens a timed window, the next closes it

    def fake_peak(fn, device):
        events.append("peak")
        fn()
        return 1234, "fake"

    monkeypatch.setattr(bd, "time", clock)
    monkeypatch.setattr(bd, "time_ms", fake_time_ms)
    monkeypatch.setattr(bd, "sync", fake_sync)
    monkeypatch.setattr(bd, "peak_memory", fake_peak)
    return clock, events


def _cfg(**kw) -> bd.DecodeConfig:
    base = dict(mixers=["attention"], contexts=[8], batches=[2], preset="tiny", steps=3, reps=2, rerun=True)
    return bd.DecodeConfig(**{**base, **kw})


def test_each_step_is_timed_alone_after_an_untimed_warm_up_and_prefill(bench):
    clock, events = bench
    model = FakeLM(clock, events, [5.0, 1.0, 3.0, 2.0, 4.0, 6.0])
    row = bd.measure(model, 8, 2, _cfg(), torch.device("cpu"))
    # warm-up: one prefill and three steps, none of them timed; then the prefill's own timing
    assert events[:6] == ["prefill", "step", "step", "step", ("time_ms", 2), "prefill"]
    # each repetition: an untimed prefill, then every step between two syncs
    rep = ["prefill"] + ["sync", "step", "sync"] * 3
    assert events[6:6 + 2 * len(rep)] == rep + rep
    # the peak of one more step; the rerun path (the whole context + 1) once untimed, then timed
    # the rerun path: the whole context + 1 through the model, then the head on its last position
    rerun = [("rerun", (2, 9), None), ("logits", 8.0)]
    assert events[6 + 2 * len(rep):] == ["peak", "step", *rerun, ("time_ms", 2), *rerun]
    assert row["step_ms"] == pytest.approx(3.5) and row["step_ms_min"] == pytest.approx(1.0)  # median of six
    assert row["tokens_per_s"] == pytest.approx(2 / 3.5 * 1000)  # a step makes one token for each of B sequences
    assert row["prefill_ms"] == 40.0 and row["rerun_ms"] == 900.0 and row["speedup"] == pytest.approx(900 / 3.5)
    assert row["peak_mem_bytes"] == 1234 and row["mem_measure"] == "fake"


def test_the_state_is_weighed_after_the_prompt_and_the_prompt_is_seeded(bench):
    clock, events = bench
    model = FakeLM(clock, events, [1.0] * 6)
    row = bd.measure(model, 8, 2, _cfg(), torch.device("cpu"))
    assert row["state_bytes"] == 8 * 4 * 4 + 2 * 8  # the prompt's 8 rows of 4 fp32 and the int64 counter
    assert row["state_floats"] == 2 * 7 * 8  # the claim per sequence, times the batch
    assert row["decode_path"] == "state,x" and row["backend"] == "b1,b2"
    prompt = model.prompts[0]
    assert prompt.shape == (2, 8) and int(prompt.min()) >= 10 and int(prompt.max()) < 50  # no special id
    assert all(torch.equal(p, prompt) for p in model.prompts)  # one prompt for every prefill
    again = FakeLM(clock, [], [1.0] * 6)
    bd.measure(again, 8, 2, _cfg(), torch.device("cpu"))
    assert torch.equal(again.prompts[0], prompt)  # seeded
    other = FakeLM(clock, [], [1.0] * 6)
    bd.measure(other, 8, 2, _cfg(seed=1), torch.device("cpu"))
    assert not torch.equal(other.prompts[0], prompt)


def test_without_the_rerun_path_there_is_no_rerun_time_or_speedup(bench):
    clock, events = bench
    row = bd.measure(FakeLM(clock, events, [2.0] * 2), 8, 1, _cfg(steps=1, reps=2, rerun=False), torch.device("cpu"))
    assert row["rerun_ms"] is None and row["speedup"] is None and not any(e[0] == "rerun" for e in events
                                                                           if isinstance(e, tuple))
    assert row["tokens_per_s"] == pytest.approx(500.0)


def test_a_batch_stops_at_its_first_out_of_memory_context_and_the_next_mixer_still_runs(monkeypatch):
    """Each mixer gets a seeded causal LM of the preset; at its first OOM a batch's larger contexts are
    skipped (they would fail too) while its next batch starts again from the smallest; other errors raise."""
    calls: list = []
    weights: list[tuple[str, torch.Tensor]] = []

    def fake_measure(model, T, B, cfg, device):
        name = model.blocks[0].mixer.__class__.__name__
        weights.append((name, next(model.parameters()).detach().clone()))
        calls.append((name, B, T))
        assert not model.training and all(b.mixer.causal for b in model.blocks)
        if T >= 16 and B == 1 and "Attention" in name:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return {"prefill_ms": 1.0, "step_ms": 2.0, "state_bytes": 2**20, "rerun_ms": 8.0, "speedup": 4.0}

    monkeypatch.setattr(bd, "measure", fake_measure)
    freed: list = []
    monkeypatch.setattr(bd, "free", freed.append)  # after each mixer (each row frees in measured_row too)
    lines: list[str] = []
    cfg = _cfg(mixers=["attention", "gated_context"], contexts=[8, 16, 32], batches=[1, 4])
    rows = bd.run(cfg, torch.device("cpu"), None, log=lines.append)
    assert freed == [torch.device("cpu")] * 2
    names = [c[0] for c in calls]
    att, gc = names[0], names[-1]
    assert calls == [(att, 1, 8), (att, 1, 16), (att, 4, 8), (att, 4, 16), (att, 4, 32),
                     (gc, 1, 8), (gc, 1, 16), (gc, 1, 32), (gc, 4, 8), (gc, 4, 16), (gc, 4, 32)]
    assert [r["status"] for r in rows] == ["ok", "failed"] + ["ok"] * 9
    assert rows[1]["error"].startswith("OutOfMemoryError") and rows[1]["context"] == 16 and rows[1]["batch"] == 1
    assert [r["mixer"] for r in rows] == ["attention"] * 5 + ["gated_context"] * 6
    assert rows[0]["dtype"] == "float32" and rows[0]["preset"] == "tiny" and rows[0]["steps"] == 3 and rows[0]["reps"] == 2
    assert lines[1].startswith("  attention          B=  1 T=    16 FAILED OutOfMemoryError")
    assert "prefill      1.00 ms" in lines[0] and "step   2.000 ms" in lines[0] and "state     1.00 MiB" in lines[0]
    assert lines[0].endswith("8.00 ms rerun (4.0x)")
    torch.manual_seed(123)
    bd.run(_cfg(mixers=["attention"], contexts=[8], batches=[4]), torch.device("cpu"), None, log=lines.append)
    assert weights[-1][0] == att and torch.equal(weights[-1][1], weights[0][1])  # seeded whatever the global seed
    bd.run(_cfg(mixers=["attention"], contexts=[8], batches=[4], seed=1), torch.device("cpu"), None, log=lines.append)
    assert not torch.equal(weights[-1][1], weights[0][1])  # by the configuration's seed

    def broken(model, T, B, cfg, device):
        raise ValueError("a bug, not a size")

    monkeypatch.setattr(bd, "measure", broken)
    with pytest.raises(ValueError, match="a bug"):
        bd.run(_cfg(), torch.device("cpu"), None, log=lines.append)


def _main_cfg(monkeypatch, argv, device="cpu") -> bd.DecodeConfig:
    got = {}

    def fake_report(label, name, run, cfg, dev, out, report):
        got.update(label=label, name=name, cfg=cfg, device=dev, out=out, report=report)
        return 0

    monkeypatch.setattr(bd, "run_and_report", fake_report)
    monkeypatch.setattr(bd, "resolve_device", lambda s: torch.device(device))
    assert bd.main(argv) == 0
    assert got["name"] == bd.RESULTS_NAME and got["device"] == torch.device(device)
    return got


def test_the_command_lines_defaults_are_the_cpus_and_the_gpus_sizes(monkeypatch):
    set_threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", set_threads.append)
    cpu = _main_cfg(monkeypatch, [])
    assert set_threads == []  # torch's own thread count unless --threads says otherwise
    assert cpu["cfg"] == bd.DecodeConfig(mixers=mixers.names(), contexts=default_lengths(2048), batches=[1, 8],
                                         preset="tiny", steps=16, reps=3, rerun=True)
    assert cpu["cfg"].contexts == [256, 512, 1024, 2048] and cpu["out"] == "." and cpu["report"] is False
    assert cpu["label"].startswith("decode (tiny preset, ")
    gpu = _main_cfg(monkeypatch, [], device="cuda")
    assert gpu["cfg"].contexts == default_lengths(16384) and gpu["cfg"].contexts[-1] == 16384
    assert gpu["cfg"].batches == [1, 32] and gpu["cfg"].preset == "small"


def test_every_flag_reaches_the_configuration(monkeypatch):
    threads = torch.get_num_threads()
    try:
        got = _main_cfg(monkeypatch, ["--mixers", " gated_context, attention ,", "--contexts", "64, 128", "--batches",
                                      "3", "--preset", "small", "--steps", "5", "--reps", "7", "--no-rerun",
                                      "--threads", "1", "--out", "o", "--report"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert got["cfg"] == bd.DecodeConfig(mixers=["gated_context", "attention"], contexts=[64, 128], batches=[3],
                                         preset="small", steps=5, reps=7, rerun=False)
    assert got["out"] == "o" and got["report"] is True and got["label"] == "decode (small preset, 1 threads)"
    assert _main_cfg(monkeypatch, ["--mixers", "all"])["cfg"].mixers == mixers.names()


def test_an_unknown_mixer_is_refused_before_anything_runs(monkeypatch):
    ran = []
    monkeypatch.setattr(bd, "run_and_report", lambda *a: ran.append(a) or 0)
    with pytest.raises(ValueError, match="^unknown mixer 'no_such_mixer'; registered: attention, "):
        bd.main(["--mixers", "attention,no_such_mixer"])
    assert ran == []
