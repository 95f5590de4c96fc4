"""Two evidence scripts the README quotes but no test ran: `benchmarks.scan_eager_calls` (the PyTorch calls
around the Triton kernels in one compiled mixer step) and `benchmarks.compile_times` (torch.compile's cost
per training step over successive batch lengths). Their figures are never asserted; what is tested is that
they count and time what they say: warm-ups off the count, launches of the counted step only, nested aten
calls counted but not as a host's, the bf16 autocast a GPU step runs under, each step between two syncs,
the graphs compiled after each step, and every flag reaching the measurement. Stand-ins replace the
profiler, the compiler and the clock."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import compile_times as ct
from benchmarks import scan_eager_calls as sec


class _Event:
    def __init__(self, name: str, parent: "_Event | None" = None):
        self.name, self.cpu_parent = name, parent


class _FakeProfile:
    """torch.profiler.profile's stand-in: its events are the ones given, whatever ran inside."""

    active = False

    def __init__(self, events):
        self._events = events

    def __enter__(self):
        _FakeProfile.active = True
        return self

    def __exit__(self, *exc):
        _FakeProfile.active = False

    def events(self):
        return self._events


def test_eager_calls_count_the_profiled_step_only_nested_calls_apart_and_its_launches(monkeypatch):
    top = _Event("aten::linear")
    events = [top, _Event("aten::addmm", top), _Event("aten::t", top),  # two calls made by another: not a host's
              _Event("aten::mul", _Event("autograd::engine::evaluate_function: MulBackward0")),  # the backward's
              _Event("aten::add"), _Event("cudaLaunchKernel"), _Event("autograd::engine::evaluate_function")]
    launches: list = [("stale", {})]
    calls, backwards, seen = [], [], {}

    class Mixer(torch.nn.Module):
        backend = "triton_scan"

        def forward(self, x, pad):
            seen.update(shape=tuple(x.shape), pad=pad.clone(), grad=x.requires_grad,
                        autocast=torch.is_autocast_enabled("cpu"), dtype=torch.get_autocast_dtype("cpu"))
            calls.append(_FakeProfile.active)
            launches.append(("grid", {"profiled": _FakeProfile.active}))
            y = x * 2
            y.register_hook(lambda g: backwards.append(_FakeProfile.active))
            return y

    def build(name, d_model, causal, **kw):
        seen.update(build=(name, d_model, causal, kw), seed=torch.initial_seed())
        return Mixer()

    monkeypatch.setattr(sec.mixers, "build", build)
    monkeypatch.setattr(torch, "compile", lambda m: seen.update(compiled=m) or m)
    monkeypatch.setattr(torch.profiler, "profile", lambda: _FakeProfile(events))
    row = sec.count(16, False, 3, 12, mixer="gated_context", scan="pairwise", launches=launches)
    assert seen["build"] == ("gated_context", 16, False, {"scan": "pairwise"}) and seen["seed"] == 0
    assert isinstance(seen["compiled"], Mixer)  # the step counted is the compiled mixer's
    assert calls == [False, False, False, True]  # compile and recompile warm-ups off the count, then one step
    assert backwards == calls  # each a forward and a backward
    assert launches == [("grid", {"profiled": True})]  # the counted step's launches only
    assert seen["autocast"] and seen["dtype"] == torch.bfloat16 and seen["grad"]  # as on a GPU, with a backward
    assert seen["shape"] == (3, 12, 16)
    assert seen["pad"][0].all() and not seen["pad"][1:, :5].any() and seen["pad"][1:, 5:].all()  # padded rows
    assert {k: row[k] for k in ("mixer", "scan", "causal", "d_model", "batch", "length")} == {
        "mixer": "gated_context", "scan": "triton_scan", "causal": False, "d_model": 16, "batch": 3, "length": 12}
    assert (row["aten_calls"], row["top_level"], row["launches"]) == (5, 3, 1)
    assert "git_commit" in row


def test_eager_calls_run_each_mixer_and_scan_it_has_both_ways_and_skip_the_rest(monkeypatch, capsys):
    made, counted = [], []

    def build(name, d_model, causal, scan):
        made.append((name, scan))
        if (name, scan) == ("mamba", "pairwise"):
            raise ValueError("mamba has no pairwise scan")

    def count(d_model, causal, batch, length, mixer, scan, launches):
        counted.append((mixer, scan, causal, d_model, batch, length))
        return {"mixer": mixer, "scan": scan, "causal": causal}

    monkeypatch.setattr(sec, "stub_triton_launches", lambda: ["launches"])
    monkeypatch.setattr(sec.mixers, "build", build)
    monkeypatch.setattr(sec, "count", count)
    sec.main(["--mixers", "gated_context, mamba,", "--scans", "triton,pairwise", "--d-model", "32", "--batch", "4",
              "--length", "8"])
    assert made == [("gated_context", "triton"), ("gated_context", "pairwise"), ("mamba", "triton"), ("mamba", "pairwise")]
    assert counted == [("gated_context", "triton", True, 32, 4, 8), ("gated_context", "triton", False, 32, 4, 8),
                       ("gated_context", "pairwise", True, 32, 4, 8), ("gated_context", "pairwise", False, 32, 4, 8),
                       ("mamba", "triton", True, 32, 4, 8), ("mamba", "triton", False, 32, 4, 8)]
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [(r["mixer"], r["scan"], r["causal"]) for r in lines] == [c[:3] for c in counted]
    counted.clear()
    sec.main([])  # the defaults: mamba's Triton scan, both ways, d_model 64, 2 rows of 40
    assert counted == [("mamba", "triton", True, 64, 2, 40), ("mamba", "triton", False, 64, 2, 40)]


@pytest.mark.parametrize("module", [sec, ct])
def test_each_script_says_what_it_measures_in_its_help(module, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0 and module.__doc__.splitlines()[0] in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("module", [sec, ct])
def test_each_script_runs_as_a_module(module):
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", module.__name__, "--help"], capture_output=True, text=True, timeout=120,
                         cwd=root)
    assert out.returncode == 0 and module.__doc__.splitlines()[0] in " ".join(out.stdout.split())


class _Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_compile_times_time_each_step_between_syncs_and_count_the_graphs_after_it(monkeypatch):
    clock, events, marked = _Clock(), [], []
    step_s = iter([30.0, 12.0, 0.2504, 0.5])  # compile, recompile, then two compiled steps
    frames = iter([1, 2, 2, 3])
    asked = {}

    def compile_for_training(model, scope, backend, dynamic):
        asked.update(model=model, scope=scope, dynamic=dynamic, backend=backend, seed=torch.initial_seed(),
                     reset=list(events))

        def step(ids):
            events.append(("step", tuple(ids.shape)))
            clock.now += next(step_s)
            backend.frame_count = next(frames)
            return model(ids)

        return step, "model"

    monkeypatch.setattr(ct, "compile_for_training", compile_for_training)
    monkeypatch.setattr(ct, "time", clock)
    monkeypatch.setattr(ct, "sync", lambda device: events.append("sync"))
    monkeypatch.setattr(ct.torch._dynamo, "maybe_mark_dynamic", lambda t, dim: marked.append((tuple(t.shape), dim)))
    monkeypatch.setattr(ct.torch._dynamo, "reset", lambda: events.append("reset"))
    torch.manual_seed(123)
    row = ct.measure("gated_context", False, [57, 64, 91, 122], 3, "tiny", torch.device("cpu"), dynamic=True,
                     mark=True, scope="model")
    # dynamo's caches emptied and the weights seeded before this mixer compiles
    assert asked["reset"] == ["reset"] and asked["seed"] == 0
    assert events[1:] == ["sync", ("step", (3, 57)), "sync", "sync", ("step", (3, 64)), "sync",
                      "sync", ("step", (3, 91)), "sync", "sync", ("step", (3, 122)), "sync"]
    assert row["seconds"] == [30.0, 12.0, 0.25, 0.5] and row["graphs_compiled"] == [1, 2, 2, 3]
    assert row["after_second_step_s"] == 0.75  # the steps after the two warm-ups a budget does not charge
    assert marked == [((3, T), d) for T in (57, 64, 91, 122) for d in (0, 1)]  # rows and length, before each call
    assert (asked["scope"], asked["dynamic"]) == ("model", True)
    assert not asked["model"].cfg.causal and asked["model"].cfg.mixer == "gated_context"
    assert {k: row[k] for k in ("mixer", "causal", "scope", "dynamic", "mark_dynamic", "lengths", "rows")} == {
        "mixer": "gated_context", "causal": False, "scope": "model", "dynamic": True, "mark_dynamic": True,
        "lengths": [57, 64, 91, 122], "rows": 3}
    marked.clear()
    frames, step_s = iter([1]), iter([1.0])
    ct.measure("attention", True, [40], 2, "tiny", torch.device("cpu"))  # not asked to mark: nothing marked
    assert marked == [] and asked["scope"] == "blocks" and asked["dynamic"] is None and asked["model"].cfg.causal


def test_compile_times_measure_every_mixer_asked_with_its_flags_and_write_the_file(monkeypatch, tmp_path, capsys):
    got = []

    def measure(mixer, causal, lengths, rows, preset, device, dynamic, mark, scope):
        got.append((mixer, causal, lengths, rows, preset, device.type, dynamic, mark, scope))
        return {"mixer": mixer}

    monkeypatch.setattr(ct, "measure", measure)
    out = tmp_path / "deep" / "er" / "ct.json"  # its folders made
    argv = ["--mixers", "attention, mamba", "--lengths", "33,48,", "--rows", "2", "--preset", "small", "--bidirectional",
            "--dynamic", "--mark-dynamic", "--scope", "model", "--device", "cpu", "--out", str(out)]
    assert ct.main(argv) == 0
    assert got == [(name, False, [33, 48], 2, "small", "cpu", True, True, "model") for name in ("attention", "mamba")]
    text = out.read_text()
    data = json.loads(text)
    assert text.startswith('{\n "meta"') and text.endswith("}\n")  # indented, a last newline
    assert data["rows"] == [{"mixer": "attention"}, {"mixer": "mamba"}]
    assert data["meta"]["preset"] == "small" and data["meta"]["command"] == "python -m benchmarks.compile_times " + " ".join(argv)
    assert {"device", "versions", "git_commit"} <= set(data["meta"])
    printed = capsys.readouterr().out.splitlines()
    assert printed == ['{"mixer": "attention"}', '{"mixer": "mamba"}', f"-> {out}"]
    got.clear()
    monkeypatch.setattr(sys, "argv", ["compile_times.py", "--mixers", "mamba", "--out", str(out)])
    ct.main()  # run as a script: its command line
    assert [g[0] for g in got] == ["mamba"]
    assert json.loads(out.read_text())["meta"]["command"].endswith(f"--mixers mamba --out {out}")
    got.clear()
    ct.main(["--out", str(out)])  # the defaults: every mixer, causal, the trainer's compilation
    import mixers

    assert [g[0] for g in got] == mixers.names()
    auto = ct.resolve_device("auto").type  # cuda where there is one
    assert all(g[1:] == (True, [57, 64, 91, 122, 33], 4, "tiny", auto, None, False, "blocks") for g in got)
