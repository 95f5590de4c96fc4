"""Three evidence scripts the README and docs/ quote but no test ran: `benchmarks.scan_eager_calls` (the PyTorch calls
around the Triton kernels in one compiled mixer step), `benchmarks.compile_times` (torch.compile's cost per
training step over successive batch lengths) and `benchmarks.measure_lr_sweep` (whether short runs pick the
full budget's learning rate). Their figures are never asserted; what is tested is that they count, time and
compare what they say: warm-ups off the count, launches of the counted step only, nested aten calls counted
but not as a host's, the bf16 autocast a GPU step runs under, each step between two syncs, the graphs
compiled after each step, a fresh seeded model for every run, and every flag reaching the measurement.
Stand-ins replace the profiler, the compiler, the trainer and the clock. `benchmarks.scan_memory` joins the
help and run-as-a-module tests (its measurement's tests are in test_bench.py)."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from benchmarks import compile_times as ct
from benchmarks import scan_eager_calls as sec
from benchmarks import scan_memory as sm
from fixtures.clock import Clock


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


@pytest.mark.parametrize("module", [sec, ct, sm])
def test_each_script_says_what_it_measures_in_its_help(module, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0 and module.__doc__.splitlines()[0] in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("module", [sec, ct, sm])
def test_each_script_runs_as_a_module(module):
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", module.__name__, "--help"], capture_output=True, text=True, timeout=120,
                         cwd=root)
    assert out.returncode == 0 and module.__doc__.splitlines()[0] in " ".join(out.stdout.split())


def test_compile_times_time_each_step_between_syncs_and_count_the_graphs_after_it(monkeypatch):
    clock, events, marked = Clock(), [], []
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


# ---------------------------------------------------------------- measure_lr_sweep


def test_the_lr_measurement_runs_every_rate_at_the_full_budget_and_each_fraction_and_says_which_agree(
        monkeypatch, capsys, tmp_path):
    """benchmarks.measure_lr_sweep (the sweep defaults' evidence): per mixer, a fresh seeded model for every
    run, the grid's plan and training settings, full runs with the grid's dev checks and short runs with the
    sweep's, one JSON line per run, then the best rate of each and whether the short runs agree."""
    from benchmarks import measure_lr_sweep as mls
    from core.presets import get_preset
    from harness.lr_sweep import SHORT_EVAL_POINTS, Trial

    preset = get_preset("tiny")
    losses = {  # (mixer, budget, lr) -> dev loss; None: diverged
        ("attention", "tokens=1000", 1e-3): 3.0, ("attention", "tokens=1000", 3e-3): 2.5,
        ("attention", "tokens=1000", 1e-2): None,
        ("attention", "tokens=100", 1e-3): 4.0, ("attention", "tokens=100", 3e-3): 4.5,
        ("attention", "tokens=100", 1e-2): 5.0,
        ("mamba", "tokens=1000", 1e-3): 2.0, ("mamba", "tokens=1000", 3e-3): 2.2, ("mamba", "tokens=1000", 1e-2): 2.4,
        ("mamba", "tokens=100", 1e-3): 4.0, ("mamba", "tokens=100", 3e-3): 4.4, ("mamba", "tokens=100", 1e-2): 4.8}
    clock, plans, trainings, models = Clock(), [], [], []

    class Context:
        def __init__(self, **kw):
            self.kw = kw

        def plan(self, cell):
            plans.append((cell, self.kw))
            return types.SimpleNamespace(data=types.SimpleNamespace(train="TRAIN", dev="DEV"), preset=preset,
                                         objective="OBJECTIVE", model_cfg=f"cfg-{cell.mixer}")

    class LM:
        def __init__(self, cfg):
            self.cfg, self.seed = cfg, torch.initial_seed()
            torch.rand(1)  # the generator moves on: a model not seeded again would differ

        def to(self, device):
            self.device = device
            return self

    def train_trial(make_model, objective, train_set, dev_set, tcfg, device, eval_points):
        trainings.append((objective, train_set, dev_set, tcfg, device.type, eval_points))

        def trial(lr, budget):
            models.append(make_model())
            clock.now += 1.25
            return Trial(lr=lr, dev_loss=losses.get((models[-1].cfg[4:], str(budget), lr), 9.0), tokens=int(budget.amount),
                         seconds=1.25)

        return trial

    monkeypatch.setattr(mls, "RunContext", Context)
    monkeypatch.setattr(mls, "LM", LM)
    monkeypatch.setattr(mls, "resolve_device", lambda name: torch.device("cpu"))
    monkeypatch.setattr(mls, "time", clock)
    monkeypatch.setattr(mls.lr_sweep, "train_trial", train_trial)
    argv = ["--data-dir", str(tmp_path / "jsquad"), "--cache-dir", str(tmp_path / "cache"), "--budget", "tokens=1000",
            "--rates", "1e-3,3e-3,1e-2", "--fracs", "0.1,0.5", "--mixers", "attention,mamba", "--objective", "diffusion",
            "--seed", "7"]
    assert mls.main(argv) == 0
    cells = [c for c, _ in plans]
    assert [(c.task, c.mixer, c.objective, c.preset, c.budget, c.seed) for c in cells] == [
        ("jsquad", m, "diffusion", "tiny", "tokens=1000", 7) for m in ("attention", "mamba")]
    assert plans[0][1] == {"device": torch.device("cpu"), "data_dir": tmp_path / "jsquad", "cache_dir": tmp_path / "cache",
                           "grid": "", "progress": False}
    # the full runs with the grid's dev checks, then the short ones with the sweep's
    assert [t[5] for t in trainings] == [10, SHORT_EVAL_POINTS, SHORT_EVAL_POINTS] * 2
    assert all(t[:3] == ("OBJECTIVE", "TRAIN", "DEV") and t[4] == "cpu" for t in trainings)
    tcfg = trainings[0][3]
    assert (tcfg.batch_size, tcfg.lr, tcfg.seed, tcfg.progress) == (preset.batch_size, preset.lr, 7, False)
    assert len(models) == 18 and all(m.seed == 7 and m.device.type == "cpu" for m in models)  # each run fresh
    out = capsys.readouterr().out.splitlines()
    runs = [json.loads(ln) for ln in out[:18]]
    assert runs[0] == {"mixer": "attention", "frac": 1.0, "lr": 1e-3, "dev_loss": 3.0, "tokens": 1000, "seconds": 1.2}
    assert [(r["mixer"], r["frac"], r["lr"]) for r in runs] == [
        (m, f, lr) for m in ("attention", "mamba") for f in (1.0, 0.1, 0.5) for lr in (1e-3, 3e-3, 1e-2)]
    assert runs[5]["tokens"] == 100 and runs[8]["tokens"] == 500  # a tenth, a half of the budget
    assert {r["seconds"] for r in runs} == {1.2}  # each run's own wall time
    assert out[18:] == ["", "mixer | best rate (full budget) | short runs at 0.1 | short runs at 0.5 | full-run dev loss by rate",
                        "attention | 0.003 | 0.001 (differs) | 0.001 (differs) | 0.001: 3.000, 0.003: 2.500, 0.01: diverged",
                        "mamba | 0.001 | 0.001 | 0.001 | 0.001: 2.000, 0.003: 2.200, 0.01: 2.400"]
    plans.clear()
    mls.main(["--data-dir", str(tmp_path)])  # the defaults: every mixer, autoregressive, seed 0, 4 rates, 2 fractions
    assert [c.mixer for c, _ in plans] == ["attention", "gated_context", "mamba", "wave_interference",
                                           "wave_modulation", "wave_wavelet"]
    assert {(c.objective, c.preset, c.budget, c.seed) for c, _ in plans} == {("autoregressive", "tiny", "tokens=100000", 0)}
    assert plans[0][1]["cache_dir"] == Path.home() / ".cache" / "wavebench"
    assert "short runs at 0.1 | short runs at 0.25 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mls.main([])  # the data folder is required
