"""The two benchmarks behind issue 14's CPU evidence, which every session reports: `benchmarks.profile_step`
(host time and operator calls per training step; the padding table) and `benchmarks.mamba_scan` (the
parallel scan against the chunk loop). Their figures are never asserted; what is tested is that they
measure what their tables say: the warm-ups left out of the timing, each timed step closed by a sync, the
operator counts of one step and of its forward + loss + backward, every flag reaching the step it times,
both scans on one set of weights, and the rows' derived figures (speed-up, batch, tokens/s) read off the
times they were given. Times come from a fake clock, never from the machine."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from benchmarks import mamba_scan as ms
from benchmarks import profile_step as ps
from core.data import SeqSet
from fixtures.clock import Clock
from fixtures.markdown import table


# ---------------------------------------------------------------- profile_step


def test_the_profiled_batch_is_full_length_seeded_and_ends_in_its_answer():
    b = ps.fixed_batch(50, 3, 10, torch.device("cpu"))
    assert b.ids.shape == b.pad_mask.shape == b.target.shape == (3, 10)
    assert b.pad_mask.all() and b.n_tokens == 30  # no padding: every position is a real token
    assert int(b.ids.min()) >= 6 and int(b.ids.max()) < 50  # never one of the six special ids
    # the answer: the last quarter of each row, rounded up (10 -> 3), and max_target says so
    assert b.target[:, 7:].all() and not b.target[:, :7].any() and b.max_target == 3
    assert torch.equal(ps.fixed_batch(50, 3, 10, torch.device("cpu")).ids, b.ids)  # seeded
    assert not torch.equal(ps.fixed_batch(50, 3, 10, torch.device("cpu"), seed=1).ids, b.ids)
    two = ps.fixed_batch(50, 2, 10, torch.device("cpu"), answer_len=2)
    assert two.target[:, 8:].all() and not two.target[:, :8].any() and two.max_target == 2
    whole = ps.fixed_batch(50, 2, 10, torch.device("cpu"), answer_len=99)  # at most the row
    assert whole.target.all() and whole.max_target == 10
    one = ps.fixed_batch(50, 2, 10, torch.device("cpu"), answer_len=1)
    assert one.target[:, 9].all() and one.target.sum() == 2 and one.max_target == 1
    # the ids are every ordinary id and no special one: the six special ids are distinct and below them
    assert set(ps.fixed_batch(8, 4, 64, torch.device("cpu")).ids.unique().tolist()) == {6, 7}
    special = [ps.SPECIAL.pad, ps.SPECIAL.unk, ps.SPECIAL.bos, ps.SPECIAL.eos, ps.SPECIAL.sep, ps.SPECIAL.mask]
    assert sorted(special) == list(range(6))


def test_a_profiled_step_is_the_trainers_step_and_its_forward_backward_stops_before_the_optimizer(monkeypatch):
    compiled = []

    def fake_compile(model, scope="blocks"):
        compiled.append(scope)

        class Compiled:  # what the step must call: the compiled model, not the eager one
            def __call__(self, *a, **k):
                compiled.append("called")
                return model(*a, **k)

            def __getattr__(self, name):  # the rest of the model (its head's weight), as torch.compile's wrapper
                return getattr(model, name)
        return Compiled(), "the compile watch"

    batches = []
    real_batch = ps.fixed_batch
    monkeypatch.setattr(ps, "compile_for_training", fake_compile)
    monkeypatch.setattr(ps, "fixed_batch", lambda *a, **k: batches.append(k) or real_batch(*a, **k))
    step = ps.make_step("mamba", "autoregressive", "tiny", 2, 16, torch.device("cpu"),
                        mixer_opts={"scan": "chunked"})
    assert compiled == []  # eager unless asked
    model = _model(step)
    assert batches == [{"answer_len": 0}]  # by default the last quarter of each row is the answer
    twin = _model(ps.make_step("mamba", "autoregressive", "tiny", 2, 16, torch.device("cpu"),
                               mixer_opts={"scan": "chunked"}))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))  # seeded
    assert {b.mixer.opts.scan for b in model.blocks} == {"chunked"}  # --mixer-opt reached the mixer
    before = [p.detach().clone() for p in model.parameters()]
    loss = step.forward_backward()
    assert loss.requires_grad is False and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # backward ran ...
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # ... and no optimizer step
    loss2 = step()
    assert torch.isfinite(loss2) and all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # AdamW stepped
    compiled_step = ps.make_step("attention", "diffusion", "tiny", 2, 16, torch.device("cpu"), compile=True,
                                 scope="model")
    assert compiled == ["model"]  # --compile and --compile-scope reach the trainer's compile
    assert torch.isfinite(compiled_step.forward_backward()) and compiled[1:] == ["called"]


def _model(step) -> torch.nn.Module:
    """The LM a step made by make_step trains (held by its closure)."""
    return next(c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, torch.nn.Module))


def test_profile_times_only_the_steps_after_the_warmups_each_closed_by_a_sync_and_counts_one_steps_ops(monkeypatch):
    clock, events = Clock(), []
    t, u = torch.zeros(4), torch.ones(4)
    durations = iter([100.0, 100.0, 0.001, 0.007, 0.004, 0.0])  # two warm-ups, three timed steps, the profiled one

    def step():
        events.append("step")
        clock.now += next(durations)
        for _ in range(5):
            t.add_(u)

    def forward_backward():
        events.append("fb")
        for _ in range(2):
            t.add_(u)

    def sync(device):
        events.append("sync")
        clock.now += 0.010  # the device's queued work: a timed step waits for it

    step.forward_backward = forward_backward
    monkeypatch.setattr(ps, "time", clock)
    monkeypatch.setattr(ps, "sync", sync)
    r = ps.profile(step, torch.device("cpu"), warmup=2, steps=3)
    assert events == ["step", "step", "sync", "step", "sync", "step", "sync", "step", "sync",
                      "step", "sync", "fb", "sync"]
    assert r["ms_per_step"] == pytest.approx(14.0)  # median of 11, 17, 14 ms: the sync's 10 ms inside each
    assert (r["aten_ops_per_step"], r["aten_ops_fwd_bwd"]) == (5, 2)  # aten::add_ each; nothing else counted
    assert r["graph_calls"] == 0  # eager: no compiled graph entered


def _padding_table(monkeypatch, capsys, data_dir, lengths: list[int]) -> tuple[dict, list[str], dict[str, list[str]]]:
    """profile_step's padding table on a training split of rows of these lengths, 128 wide: what the task was
    asked for, the lines printed, and each batching's cells (rows/batch, real tokens/batch, padding, shapes)."""
    seen = {}

    class Task:
        def prepare(self, ctx):
            seen.update(data_dir=ctx.data_dir, vocab=ctx.vocab_size, max_len=ctx.max_len)
            n = len(lengths)
            train = SeqSet(torch.full((n, 128), 7), torch.zeros(n, 128, dtype=torch.bool), np.array(lengths))
            return types.SimpleNamespace(train=train)

    import tasks

    monkeypatch.setattr(tasks, "build", lambda name: Task() if name == "jsquad" else None)
    ps.padding_table(str(data_dir), "tiny")
    text = capsys.readouterr().out
    header, rows = table(text, "training split:", first="batching")
    return seen, text.splitlines(), {r["batching"]: [r[h] for h in header[1:]] for r in rows}


def test_the_padding_table_counts_what_each_batching_computes(monkeypatch, capsys, tmp_path):
    """40 rows of 33 tokens (a length no rounding fits) in a set 128 wide: rounded up to 64, every batch
    computes 64 columns for 33 real ones; unrounded, none is padding; a token budget of 2,048 takes all 40
    rows at once (1,320 tokens), or 32 when each is 64 wide."""
    seen, lines, rows = _padding_table(monkeypatch, capsys, tmp_path, [33] * 40)
    assert seen == {"data_dir": tmp_path, "vocab": 4000, "max_len": 256}  # the tiny preset's sizes
    assert lines[0] == "training split: 40 sequences, 1,320 tokens, mean length 33.0 (preset tiny)"
    # rows/batch, real tokens/batch, padding, distinct batch shapes (over the table's three epochs)
    assert rows == {
        "old: 8 rows, lengths rounded up to 64 (CUDA)": ["8.0", "264", "48.4%", "1"],
        "old: 8 rows, no rounding (CPU)": ["8.0", "264", "0.0%", "1"],
        "new: token budget 2048, no rounding (the default)": ["40.0", "1,320", "0.0%", "1"],
        "CUDA graphs until 2026-12-01: token budget, lengths rounded up to 64": ["20.0", "660", "48.4%", "2"],
        "CUDA graphs: fixed shapes (2048 // W rows, W a multiple of 64)": ["32.0", "1,056", "48.4%", "1"]}
    # mixed lengths (20, 33, 90): the default batches are cut to their rows (several shapes), and pad less than
    # any batching that rounds widths up to 64
    _, _, rows = _padding_table(monkeypatch, capsys, tmp_path, [33] * 30 + [90] * 10 + [20] * 24)
    pad = {k: float(v[2].rstrip("%")) for k, v in rows.items()}
    default = "new: token budget 2048, no rounding (the default)"
    assert int(rows[default][3]) > 1 and all(pad[default] < v for k, v in pad.items() if "rounded up to 64" in k
                                             or "fixed shapes" in k)


def test_every_flag_reaches_the_step_it_profiles_and_each_mixer_gets_a_row(monkeypatch, capsys):
    made, threads = [], []

    def fake_make_step(*args):
        made.append(args)
        return args[0]

    def fake_profile(step, device, warmup, steps):
        return {"ms_per_step": 1234.56 if step == "attention" else 7.0, "aten_ops_per_step": 4429,
                "aten_ops_fwd_bwd": 3068, "graph_calls": 14 if step == "attention" else 0}

    monkeypatch.setattr(ps, "make_step", fake_make_step)
    monkeypatch.setattr(ps, "profile", fake_profile)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    assert ps.main(["--mixers", "attention, mamba", "--objective", "diffusion", "--preset", "tiny", "--batch", "3",
                    "--seq-len", "40", "--loss", "plain", "--answer-len", "5", "--compile", "--compile-scope",
                    "model", "--mixer-opt", "mamba.scan=chunked", "--threads", "2", "--steps", "7",
                    "--warmup", "1"]) == 0
    cpu = torch.device("cpu")
    assert made == [("attention", "diffusion", "tiny", 3, 40, cpu, "plain", True, 5, "model", {}),
                    ("mamba", "diffusion", "tiny", 3, 40, cpu, "plain", True, 5, "model", {"scan": "chunked"})]
    assert threads == [2]
    out = capsys.readouterr().out.splitlines()
    assert out == ["| mixer | host ms/step (median of 7) | aten ops/step | of which forward + loss + backward "
                   "| compiled graph calls/step |",
                   "|---|---:|---:|---:|---:|",
                   "| attention | 1234.6 | 4,429 | 3,068 | 14 |", "| mamba | 7.0 | 4,429 | 3,068 | 0 |"]
    made.clear()
    ps.main(["--mixers", "attention"])  # the defaults: the trainer's own (eager here, each block when compiled)
    assert made == [("attention", "autoregressive", "small", 8, 256, cpu, "chunked", False, 0, "blocks", {})]
    assert threads == [2, 1]


def test_the_profile_warms_up_and_times_as_told_and_routes_padding_to_its_table(monkeypatch, capsys):
    told, padded = [], []
    monkeypatch.setattr(ps, "make_step", lambda *a: None)
    monkeypatch.setattr(ps, "profile", lambda step, device, warmup, steps: told.append((warmup, steps)) or
                        {"ms_per_step": 1.0, "aten_ops_per_step": 1, "aten_ops_fwd_bwd": 1, "graph_calls": 0})
    monkeypatch.setattr(ps, "padding_table", lambda data_dir, preset: padded.append((data_dir, preset)))
    ps.main(["--mixers", "attention", "--warmup", "4", "--steps", "9"])
    ps.main(["--mixers", "attention"])
    assert told == [(4, 9), (3, 5)]
    assert ps.main(["--padding", "some/dir", "--preset", "base"]) == 0
    assert padded == [("some/dir", "base")] and len(told) == 2  # the padding table instead of any step


def test_stubbed_kernels_are_counted_and_said(monkeypatch, capsys):
    """--stub-kernels: the Triton scans' launches replaced (exact host counts around the kernels on CPU);
    the table says how many were stubbed, and nothing is said without the flag."""
    launches = []
    monkeypatch.setattr(ps, "stub_triton_launches", lambda: launches)
    monkeypatch.setattr(ps, "make_step", lambda *a: None)
    monkeypatch.setattr(ps, "profile", lambda *a: launches.extend([1, 2, 3]) or
                        {"ms_per_step": 1.0, "aten_ops_per_step": 1, "aten_ops_fwd_bwd": 1, "graph_calls": 0})
    ps.main(["--mixers", "attention", "--stub-kernels"])
    assert capsys.readouterr().out.splitlines()[-1] == \
        "(Triton kernel launches stubbed out: 3 in all the steps above, warm-ups included)"
    ps.main(["--mixers", "attention"])
    assert "stubbed" not in capsys.readouterr().out


# ---------------------------------------------------------------- mamba_scan


def test_the_two_scans_run_on_one_set_of_weights_and_agree():
    cpu = torch.device("cpu")
    ref = ms.build("parallel", 8, cpu, None)
    chunked = ms.build("chunked", 8, cpu, ref.state_dict())
    assert (ref.backend, chunked.backend) == ("torch_parallel_scan", "torch_chunked_scan")
    assert chunked.opts.chunk_size == 64 and chunked.opts.checkpoint_chunks  # the previous default, as it was
    x = torch.randn(2, 80, 8)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), chunked(x), rtol=1e-4, atol=1e-5)  # same weights, same function
    moved = {k: v + 1 for k, v in ref.state_dict().items()}  # a state unlike the seed's: loaded, not re-drawn
    assert torch.equal(ms.build("chunked", 8, cpu, moved).in_proj.weight, moved["in_proj.weight"])
    # the grid's autoregressive Mamba, on the PyTorch scans even where mamba-ssm imports: a past output never
    # sees a later token
    assert ref.causal and not ref.opts.use_mamba_ssm and not chunked.opts.use_mamba_ssm
    y2 = x.clone()
    y2[:, 60:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(ref(x)[:, :60], ref(y2)[:, :60])
    # the Triton variants differ from the default Triton scan in the one option each names
    base, unpiped, fewer = (ms.build(v, 8, cpu, None).opts for v in ("triton", "triton_unpipelined", "triton_programs_256"))
    assert (unpiped.triton_stages, unpiped.triton_programs) == (1, base.triton_programs) and base.triton_stages != 1
    assert (fewer.triton_stages, fewer.triton_programs) == (base.triton_stages, 256) and base.triton_programs != 256
    # the backward's variants differ in its launch shape and its reverse walk's stages, nothing else
    shape = lambda o: (o.triton_bwd_block_d, o.triton_bwd_warps, o.triton_bwd_stages)  # noqa: E731
    assert shape(base) == (32, 4, 1)
    for v, want in (("triton_bwd_1warp", (8, 1, 1)), ("triton_bwd_pipelined", (32, 4, 2)),
                    ("triton_bwd_1warp_pipelined", (8, 1, 2))):
        o = ms.build(v, 8, cpu, None).opts
        assert shape(o) == want and (o.triton_stages, o.triton_programs) == (base.triton_stages, base.triton_programs)
    # without a state: seeded, so two builds are one model
    assert torch.equal(ms.build("parallel", 8, cpu, None).in_proj.weight, ms.build("chunked", 8, cpu, None).in_proj.weight)


def test_a_timed_call_is_a_forward_or_a_backward_to_the_input_and_every_parameter_in_fp32_on_cpu(monkeypatch):
    syncs, seen, grads = [], [], []
    monkeypatch.setattr(ms, "sync", syncs.append)
    m = torch.nn.Linear(4, 4)
    frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)
    m.register_parameter("frozen", frozen)
    m.register_forward_hook(lambda mod, inp, out: seen.append(
        (torch.is_grad_enabled(), inp[0].requires_grad, torch.is_autocast_enabled("cpu"))))
    for name in ("weight", "bias"):
        getattr(m, name).register_hook(lambda g, name=name: grads.append(name))
    x = torch.randn(2, 3, 4)
    ms.step_fn(m, x, train=False)()
    assert seen == [(False, False, False)] and grads == [] and len(syncs) == 1
    ms.step_fn(m, x, train=True)()
    assert seen[1] == (True, True, False) and sorted(grads) == ["bias", "weight"] and len(syncs) == 2
    assert not x.requires_grad and m.weight.grad is None  # autograd.grad: nothing accumulates between calls


def test_the_scan_alone_runs_on_the_mixers_shapes_with_decaying_states(monkeypatch):
    got, syncs = [], []
    real = ms.mamba.selective_scan_parallel

    def spy(*xs):
        got.append(xs)
        y = real(*xs)
        y.register_hook(lambda g: got.append("backward"))  # the gradient flows back through the scan
        return y

    monkeypatch.setattr(ms.mamba, "selective_scan_parallel", spy)
    monkeypatch.setattr(ms, "sync", syncs.append)
    ms.scan_alone_fn(2, 12, 6, 4, torch.device("cpu"))()
    u, delta, A, B, C, D, z = got[0]
    assert got[1:] == ["backward"]
    assert [tuple(t.shape) for t in got[0]] == [(2, 12, 6), (2, 12, 6), (6, 4), (2, 12, 4), (2, 12, 4), (6,), (2, 12, 6)]
    assert (delta > 0).all() and (A < 0).all()  # positive steps, negative rates: a stable, decaying scan
    assert float(delta.detach().mean()) < 0.5  # small steps, as the mixer's own init gives
    assert all(t.requires_grad for t in got[0]) and len(syncs) == 1


def test_variants_are_interleaved_after_one_untimed_call_each_and_their_medians_reported(monkeypatch):
    clock, order = Clock(), []
    monkeypatch.setattr(ms, "time", clock)

    def fn(name, durations):
        it = iter(durations)

        def once():
            order.append(name)
            clock.now += next(it)
        return once

    got = ms.interleaved_ms({"a": fn("a", [9.0, 0.001, 0.005, 0.003]), "b": fn("b", [9.0, 0.002, 0.002, 0.009])}, 3)
    assert order == ["a", "b"] * 4  # warm-ups, then rounds A B A B
    assert got == pytest.approx({"a": 3.0, "b": 2.0})


def _run(tmp_path, monkeypatch, argv, fake_ms):
    """mamba_scan.main with `interleaved_ms` replaced: each fn still runs once; the times are `fake_ms`'s."""
    calls = []

    def fake(fns, repeats):
        for f in fns.values():
            f()
        calls.append((list(fns), repeats))
        return {k: fake_ms(k) for k in fns}

    monkeypatch.setattr(ms, "interleaved_ms", fake)
    out = tmp_path / "sub" / "scan.json"
    ms.main([*argv, "--d-model", "8", "--out", str(out)])
    return json.loads(out.read_text()), calls


def test_the_comparison_rows_derive_the_speedup_from_both_scans_times(tmp_path, monkeypatch, capsys):
    models = []
    real_step = ms.step_fn
    monkeypatch.setattr(ms, "step_fn", lambda m, x, train: models.append((m, tuple(x.shape), train)) or
                        real_step(m, x, train))
    data, calls = _run(tmp_path, monkeypatch, ["--parts", "compare", "--length", "40", "--repeats", "4"],
                       {"parallel": 3.0, "chunked": 7.04}.get)
    assert [r["mode"] for r in data["compare"]] == ["forward", "forward+backward"] and data["sweep"] == []
    for r in data["compare"]:
        assert (r["length"], r["batch"], r["parallel_ms"], r["chunked_ms"]) == (40, 1, 3.0, 7.0)
        assert r["speedup_parallel_vs_chunked"] == 2.35  # chunked over parallel: above 1, the parallel scan wins
        assert r["backends"] == {"parallel": "torch_parallel_scan", "chunked": "torch_chunked_scan"}
    assert calls == [(["parallel", "chunked"], 4)] * 2
    assert [(s, t) for _, s, t in models] == [((1, 40, 8), False)] * 2 + [((1, 40, 8), True)] * 2
    a, b = models[0][0], models[1][0]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    meta = data["meta"]
    assert meta["d_model"] == 8 and meta["causal"] is True and meta["dtype"] == "float32" and meta["repeats"] == 4
    assert meta["command"].startswith("python -m benchmarks.mamba_scan --parts compare --length 40")
    printed = capsys.readouterr().out.splitlines()
    assert [json.loads(p)["mode"] for p in printed[:2]] == ["forward", "forward+backward"]
    assert printed[-1] == f"wrote {tmp_path / 'sub' / 'scan.json'}"


def test_the_sweep_doubles_the_length_at_a_fixed_token_count_and_reports_each_scans_flatness(tmp_path, monkeypatch,
                                                                                           capsys):
    shapes, alone = [], []
    real_step, real_alone = ms.step_fn, ms.scan_alone_fn
    monkeypatch.setattr(ms, "step_fn", lambda m, x, train: shapes.append((m.backend, tuple(x.shape), train)) or
                        real_step(m, x, train))
    monkeypatch.setattr(ms, "scan_alone_fn", lambda *a: alone.append(a[:4]) or real_alone(*a))
    data, calls = _run(tmp_path, monkeypatch, ["--parts", "sweep", "--tokens", "32", "--min-length", "16",
                                               "--max-length", "64", "--repeats", "2"],
                       {"parallel": 4.04, "chunked": 8.0, "parallel_scan_alone": 1.0}.get)
    assert data["compare"] == []
    got = [(r["scan"], r["length"], r["batch"], r["tokens"], r["ms"], r["tokens_per_s"]) for r in data["sweep"]]
    # batch = tokens // length, at least 1: 2 x 16, 1 x 32, and 1 x 64 (more tokens than asked, said by `tokens`)
    # ms to 0.1 (4.04 -> 4.0), tokens/s from the unrounded time (32 / 4.04 ms = 7,921)
    assert got == [("parallel", 16, 2, 32, 4.0, 7921), ("chunked", 16, 2, 32, 8.0, 4000),
                   ("parallel_scan_alone", 16, 2, 32, 1.0, 32000),
                   ("parallel", 32, 1, 32, 4.0, 7921), ("chunked", 32, 1, 32, 8.0, 4000),
                   ("parallel_scan_alone", 32, 1, 32, 1.0, 32000),
                   ("parallel", 64, 1, 64, 4.0, 15842), ("chunked", 64, 1, 64, 8.0, 8000),
                   ("parallel_scan_alone", 64, 1, 64, 1.0, 64000)]
    assert calls == [(["parallel", "chunked", "parallel_scan_alone"], 2)] * 3
    mixer = ms.build("parallel", 8, torch.device("cpu"), None)
    assert alone == [(b, n, mixer.d_inner, mixer.opts.d_state) for b, n in ((2, 16), (1, 32), (1, 64))]  # its shapes
    # the mixer's rows are forward + backward at (batch, length, d_model); both scans on the same input
    assert shapes == [(b, s, True) for s in ((2, 16, 8), (1, 32, 8), (1, 64, 8))
                      for b in ("torch_parallel_scan", "torch_chunked_scan")]
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(ln) for ln in out[:9]] == data["sweep"]  # each row printed as it is measured
    assert out[-4:-1] == ["parallel: tokens/s max/min over lengths = 2.00", "chunked: tokens/s max/min over lengths = 2.00",
                          "parallel_scan_alone: tokens/s max/min over lengths = 2.00"]
    data, calls = _run(tmp_path, monkeypatch, ["--parts", "sweep", "--tokens", "32", "--min-length", "32",
                                               "--max-length", "32", "--sweep-scans", "chunked", "--scan-alone", "0"],
                       lambda k: 2.0)
    assert [(r["scan"], r["length"]) for r in data["sweep"]] == [("chunked", 32)] and calls == [(["chunked"], 3)]
    assert capsys.readouterr().out.splitlines()[-2] == "chunked: tokens/s max/min over lengths = 1.00"


@pytest.mark.parametrize("killed_at", [2, 4], ids=["compare", "sweep"])
def test_a_run_cut_short_keeps_every_row_it_measured(tmp_path, monkeypatch, killed_at):
    """The GPU check kills its parts at their time limits: the file holds each row as it is measured, the
    comparison's forward row before its forward + backward one, the sweep's first length before its second."""
    n = {"calls": 0}

    def fake(fns, repeats):
        n["calls"] += 1
        if n["calls"] == killed_at:
            raise KeyboardInterrupt
        return {k: 2.0 for k in fns}

    monkeypatch.setattr(ms, "interleaved_ms", fake)
    out = tmp_path / "scan.json"
    with pytest.raises(KeyboardInterrupt):
        ms.main(["--length", "16", "--tokens", "16", "--min-length", "16", "--max-length", "32", "--scan-alone", "0",
                 "--d-model", "8", "--out", str(out)])
    data = json.loads(out.read_text())
    if killed_at == 2:
        assert [r["mode"] for r in data["compare"]] == ["forward"] and data["sweep"] == []
    else:
        assert [r["mode"] for r in data["compare"]] == ["forward", "forward+backward"]
        assert [(r["scan"], r["length"]) for r in data["sweep"]] == [("parallel", 16), ("chunked", 16)]


def test_a_run_that_measures_nothing_still_writes_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ms, "interleaved_ms", lambda fns, repeats: pytest.fail("nothing to time"))
    out = tmp_path / "scan.json"
    ms.main(["--parts", "sweep", "--min-length", "64", "--max-length", "32", "--d-model", "8", "--out", str(out)])
    data = json.loads(out.read_text())
    assert (data["compare"], data["sweep"]) == ([], []) and "loadavg_end" in data["meta"]


def test_the_defaults_are_issue_14s_sizes(tmp_path, monkeypatch):
    """Without flags: the comparison at L = 4,096 (the CPU evidence every session reports), the sweep over
    256 ... 8,192 (the span Mamba must be flat on) at 8,192 tokens a step, d_model 128."""
    shapes = []
    monkeypatch.setattr(ms, "step_fn", lambda m, x, train: shapes.append((tuple(x.shape), train)) or (lambda: None))
    monkeypatch.setattr(ms, "scan_alone_fn", lambda *a: lambda: None)
    monkeypatch.setattr(ms, "interleaved_ms", lambda fns, repeats: {k: 1.0 for k in fns})
    ms.main(["--out", str(tmp_path / "scan.json")])
    compare = sorted({s for s, t in shapes if s[0] == 1 and s[1] == 4096})
    assert compare == [(1, 4096, 128)]
    sweep = list(dict.fromkeys(s for s, t in shapes if t))[1:]  # after the comparison's forward + backward
    assert sweep == [(32, 256, 128), (16, 512, 128), (8, 1024, 128), (4, 2048, 128), (2, 4096, 128), (1, 8192, 128)]


@pytest.mark.filterwarnings("ignore:'benchmarks.mamba_scan' found in sys.modules")  # runpy, on a module imported above
def test_run_as_a_script_it_records_its_own_command_line(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    out = tmp_path / "scan.json"
    argv = ["--parts", "sweep", "--sweep-scans", "parallel", "--scan-alone", "0", "--d-model", "8", "--tokens", "16",
            "--min-length", "16", "--max-length", "16", "--repeats", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["benchmarks/mamba_scan.py", *argv])
    runpy.run_module("benchmarks.mamba_scan", run_name="__main__")
    assert json.loads(out.read_text())["meta"]["command"] == " ".join(["python -m benchmarks.mamba_scan", *argv])
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["benchmarks/mamba_scan.py", "--help"])
    with pytest.raises(SystemExit):
        runpy.run_module("benchmarks.mamba_scan", run_name="__main__")
    words = " ".join(capsys.readouterr().out.split())  # argparse rewraps the description
    assert "Speed of the Mamba mixer alone: the parallel PyTorch scan vs. the old chunk loop." in words


def test_an_unknown_scan_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "scan.json"
    with pytest.raises(SystemExit, match="unknown scan.s. nope; choose from parallel, chunked, triton"):
        ms.main(["--sweep-scans", "parallel,nope", "--out", str(out)])
    assert not out.exists()
