"""The benchmarks write well-formed rows (CPU: tiny sizes); OOM stops a mixer cleanly; the CPU memory
measure sees what it should; CUDA-only paths are checked on CUDA."""
from __future__ import annotations

import math

import pytest
import torch

import mixers
from benchmarks import common
from benchmarks import loss_memory as blm
from benchmarks import scaling as bs
from core.registry import UnknownNameError
from core.results import read_rows
from reports.load import check_row


def _well_formed(row: dict, fields: tuple[str, ...]) -> None:
    check_row(row, "row")  # what the report requires
    for k in ("key", "bench", "status", "device", "versions", "git_commit", "started_at", *fields):
        assert k in row, k
    assert isinstance(row["versions"], dict) and "torch" in row["versions"]


def test_scaling_bench_writes_a_row_per_mixer_and_length(tmp_path):
    out = tmp_path / "results" / bs.RESULTS_NAME
    cfg = bs.ScalingConfig(d_model=64, lengths=[16, 32], tokens=32, reps=1)
    rows = bs.run(cfg, torch.device("cpu"), out, log=lambda s: None)
    assert read_rows(out) == rows
    assert sorted((r["mixer"], r["seq_len"]) for r in rows) == sorted((m, L) for m in mixers.names() for L in (16, 32))
    assert len({r["key"] for r in rows}) == len(rows)
    for r in rows:
        _well_formed(r, ("mixer", "seq_len", "batch_size", "ms_per_step", "tokens_per_s", "peak_mem_bytes", "mem_measure"))
        assert r["status"] == "ok", r["error"]
        assert r["batch_size"] == 32 // r["seq_len"] and r["d_model"] == 64 and r["causal"] is True
        assert r["ms_per_step"] > 0 and math.isclose(r["ms_per_seq"], r["ms_per_step"] / r["batch_size"])
        assert math.isclose(r["tokens_per_s"], 32 / (r["ms_per_step"] / 1000))
        assert r["params"] == sum(p.numel() for p in mixers.build(r["mixer"], 64, True).parameters())
        assert r["peak_mem_bytes"] is None or r["peak_mem_bytes"] > 0
        assert "profiler" in r["mem_measure"]  # CPU: says which measure, never a cuda number


def test_scaling_bench_stops_a_mixer_at_its_first_oom(tmp_path, monkeypatch):
    real = bs.measure
    tried = []

    def fake(name, L, cfg, device):
        tried.append(L)
        if L >= 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
        return real(name, L, cfg, device)

    monkeypatch.setattr(bs, "measure", fake)
    cfg = bs.ScalingConfig(mixers=["attention"], d_model=64, lengths=[16, 32, 64], tokens=64, reps=1)
    rows = bs.run(cfg, torch.device("cpu"), tmp_path / "s.jsonl", log=lambda s: None)
    assert tried == [16, 32]  # 64 never attempted
    assert [(r["seq_len"], r["status"]) for r in rows] == [(16, "ok"), (32, "failed")]
    assert rows[1]["error"].startswith("OutOfMemoryError")


def test_scaling_cli_and_default_lengths(tmp_path):
    assert bs.default_lengths(16384) == [256, 512, 1024, 2048, 4096, 8192, 16384]
    assert bs.main(["--out", str(tmp_path), "--mixers", "attention", "--lengths", "8,16", "--d-model", "32",
                    "--reps", "1"]) == 0
    assert [r["seq_len"] for r in read_rows(tmp_path / "results" / bs.RESULTS_NAME)] == [8, 16]
    with pytest.raises(UnknownNameError, match="^unknown mixer 'nope'"):
        bs.main(["--out", str(tmp_path), "--mixers", "nope"])


def test_loss_memory_bench_rows_agree_and_see_the_logits(tmp_path):
    out = tmp_path / blm.RESULTS_NAME
    cfg = blm.LossMemoryConfig(impls=["chunked", "plain"], vocab_sizes=[512], tokens=[64, 8192], d_model=16, reps=1)
    rows = blm.run(cfg, torch.device("cpu"), out, log=lambda s: None)
    assert read_rows(out) == rows and len(rows) == 4
    by = {(r["impl"], r["n_tokens"]): r for r in rows}
    for r in rows:
        _well_formed(r, ("impl", "vocab_size", "n_tokens", "ms_fwd_bwd", "peak_mem_bytes", "mem_measure", "loss"))
        assert r["status"] == "ok" and r["ms_fwd_bwd"] > 0
    for n in (64, 8192):
        assert by[("chunked", n)]["loss"] == pytest.approx(by[("plain", n)]["loss"], rel=1e-5)
    # 8192 tokens x 512 vocabulary = 16 MiB of fp32 logits: plain holds them all, chunked 4096 rows at a time
    logits = 4 * 8192 * 512
    plain, chunked = by[("plain", 8192)]["peak_mem_bytes"], by[("chunked", 8192)]["peak_mem_bytes"]
    if plain is None:
        pytest.skip("torch.profiler gave no memory events here")
    assert plain >= logits and chunked < plain


def test_loss_memory_bench_refuses_paths_this_device_cannot_run():
    assert "cce" not in blm.runnable_impls(torch.device("cpu"))
    assert {"chunked", "plain"} <= set(blm.runnable_impls(torch.device("cpu")))
    with pytest.raises(ValueError, match="cannot run on cpu"):
        blm.LossMemoryConfig(impls=["cce"]).resolved(torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown loss path"):
        blm.LossMemoryConfig(impls=["fast"]).resolved(torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cce_uses_less_memory_than_plain_on_cuda(tmp_path):
    cfg = blm.LossMemoryConfig(impls=["cce", "plain"], vocab_sizes=[32000], tokens=[8192], d_model=256, reps=2)
    rows = {r["impl"]: r for r in blm.run(cfg, torch.device("cuda"), tmp_path / "l.jsonl", log=lambda s: None)}
    assert rows["cce"]["status"] == "ok" and rows["plain"]["status"] == "ok"
    assert rows["cce"]["loss"] == pytest.approx(rows["plain"]["loss"], rel=1e-2)  # bf16 hidden states
    assert rows["cce"]["peak_mem_bytes"] < rows["plain"]["peak_mem_bytes"] / 4
    assert rows["plain"]["mem_measure"].startswith("cuda")


def test_scan_memory_bench_runs_and_counts_the_states_the_forward_keeps(tmp_path, monkeypatch):
    """benchmarks.scan_memory (the Mamba memory table of docs/cuda-kernels.md) on stubbed launches: the states it reports
    kept for the backward are one (Di, N) state per stretch of CKPT positions of every chunk. Its import
    of the stub broke once when the stub moved (benchmarks.common); this runs the command."""
    import json

    st = pytest.importorskip("mixers._scan_triton")
    if st.triton is None:
        pytest.skip("needs Triton")
    import mixers._linear_scan_triton as lst
    from benchmarks import scan_memory

    # the stub replaces the kernels and selects Triton's CPU path: restored after the test
    monkeypatch.setattr(st, "_kernels", st._kernels)
    monkeypatch.setattr(lst, "_kernels", lst._kernels)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "m.json"
    scan_memory.main(["--presets", "tiny", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["rows"], r["length"]) for r in rows] == list(scan_memory.SHAPES)
    for r in rows:
        ch = st.chunk_len(r["rows"], r["length"], r["d_inner"])
        stretches = -(-r["length"] // ch) * -(-ch // st.CKPT)
        assert r["saved_states_bytes"] == r["rows"] * stretches * r["d_inner"] * r["d_state"] * 4, r
        assert r["saved_bytes"] > r["saved_states_bytes"] and r["peak_bytes"] > 0


def test_scan_memory_measures_the_presets_step_both_ways_and_says_what_measured_it(tmp_path, monkeypatch, capsys):
    """benchmarks.scan_memory's command (measurements stubbed; the test above runs one for real): the shapes
    are the presets' 16,384 tokens per step as many short rows and as few long ones, every preset asked is
    measured, on the scan's CPU path with its launches stubbed, and the file says what measured it."""
    import json
    import sys

    from benchmarks import scan_memory
    asked, stubbed = [], []
    monkeypatch.setattr(scan_memory, "measure", lambda preset, rows, length: asked.append((preset, rows, length))
                        or {"preset": preset, "rows": rows, "length": length})
    monkeypatch.setattr(scan_memory, "stub_triton_launches", lambda: stubbed.append(True))
    assert scan_memory.SHAPES == ((32, 512), (2, 8192))  # the mixer-alone sweep's ends at the grid's budget
    assert {rows * length for rows, length in scan_memory.SHAPES} == {16384}
    out = tmp_path / "r" / "sm.json"
    scan_memory.main(["--presets", "small,tiny", "--out", str(out)])
    assert asked == [("small", 32, 512), ("small", 2, 8192), ("tiny", 32, 512), ("tiny", 2, 8192)] and stubbed
    text = out.read_text(encoding="utf-8")
    assert text.startswith('{\n "meta"') and text.endswith("}\n")  # indented, a last newline
    data = json.loads(text)
    assert data["rows"] == [{"preset": p, "rows": r, "length": n} for p, r, n in asked]
    meta = data["meta"]
    assert meta["command"] == f"python -m benchmarks.scan_memory --presets small,tiny --out {out}"
    assert meta["device"].startswith("cpu") and meta["unit"] == "bytes, one layer and direction"
    assert {"versions", "commit"} <= set(meta)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [json.dumps(r) for r in data["rows"]] + [f"wrote {out}"]
    asked.clear()
    monkeypatch.setattr(sys, "argv", ["scan_memory.py", "--presets", "base"])
    scan_memory.main()  # run as a script: its command line
    assert [a[0] for a in asked] == ["base", "base"]
    asked.clear()
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    scan_memory.main([])  # the defaults: the grid's two presets, no file
    assert [a[0] for a in asked] == ["small", "small", "base", "base"] and sorted(tmp_path.rglob("*")) == before
    assert not capsys.readouterr().out.splitlines()[-1].startswith("wrote")


def test_scan_memory_counts_the_states_it_keeps_and_what_one_step_holds(monkeypatch):
    """One measurement with the scan itself stood in for: the states are the largest tensor it saves beyond its
    inputs, the bytes kept are everything it saves, the peak is of one forward and backward, the row names the
    scan's checkpoint stride. A stand-in keeps two of its inputs and one (B, T, Di, N) state."""
    from benchmarks import scan_memory
    import mixers.mamba as mm

    class Scan(torch.autograd.Function):  # y = u * delta, keeping its inputs and one (B, T, Di, N) fp32 state
        @staticmethod
        def forward(ctx, u, delta, A, B, C):
            ctx.save_for_backward(u, delta, u.new_zeros(*u.shape, A.shape[1]))
            return u * delta

        @staticmethod
        def backward(ctx, g):
            u, delta, _ = ctx.saved_tensors
            return g * delta, g * u, None, None, None

    peaks = []

    def peak_memory(step, device):
        step()  # one forward and backward runs under the measure
        peaks.append(device)
        return 123, "stub"

    monkeypatch.setattr(mm, "selective_scan_triton", lambda u, delta, A, B, C: Scan.apply(u, delta, A, B, C))
    monkeypatch.setattr(scan_memory, "peak_memory", peak_memory)
    row = scan_memory.measure("tiny", 2, 8)
    d_inner, n = row["d_inner"], row["d_state"]
    assert d_inner == mm.Mamba.Options().expand * 64 and n == mm.Mamba.Options().d_state  # tiny: d_model 64
    assert row["saved_states_bytes"] == 2 * 8 * d_inner * n * 4  # the state, (B, T, Di, N) fp32
    assert row["saved_bytes"] == row["saved_states_bytes"] + 2 * (2 * 8 * d_inner * 4)  # and u and delta
    assert row["peak_bytes"] == 123 and row["mem_measure"] == "stub" and peaks == [torch.device("cpu")]
    assert (row["rows"], row["length"], row["preset"], row["scan"], row["bench"]) == (2, 8, "tiny", "triton_scan",
                                                                                      "scan_memory")
    assert row["ckpt"] == scan_memory.st.CKPT


def test_measured_row_keeps_only_the_failures_keep_accepts(tmp_path):
    """A failure `keep` accepts (an OOM at this size) is a failed row, appended; any other error is raised,
    never written as if it were a measurement."""
    cpu = torch.device("cpu")

    def oom():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def bug():
        raise KeyError("a bug, not a result")

    out = tmp_path / "b.jsonl"
    row = common.measured_row("t", cpu, {"n": 1}, oom, out, keep=common.is_oom)
    assert row["status"] == "failed" and row["error"].startswith("OutOfMemoryError: CUDA out of memory")
    with pytest.raises(KeyError, match="a bug"):
        common.measured_row("t", cpu, {"n": 2}, bug, out, keep=common.is_oom)
    assert [r["n"] for r in read_rows(out)] == [1]  # the raised one wrote nothing
    ok = common.measured_row("t", cpu, {"n": 3}, lambda: {"ms": 1.5}, None, keep=common.is_oom)
    assert ok["status"] == "ok" and ok["ms"] == 1.5 and ok["error"] is None


def test_only_an_out_of_memory_error_is_an_oom():
    """A benchmark keeps an OOM at one size as a failed row and goes on; any other error is a bug and
    stops it. CUDA's and Python's memory errors and the allocators' messages are OOMs; a RuntimeError
    about anything else, or another type that mentions memory, is not."""
    oom = [torch.cuda.OutOfMemoryError("x"), MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"),
           RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")]
    not_oom = [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("out of memory"), KeyError("x")]
    assert [common.is_oom(e) for e in oom] == [True] * 4
    assert [common.is_oom(e) for e in not_oom] == [False] * 3


def test_a_benchmarks_end_runs_it_into_its_results_and_redraws_the_reports_when_asked(tmp_path, monkeypatch, capsys):
    import reports

    runs, drawn = [], []
    monkeypatch.setattr(reports, "write_reports", lambda res, rep: drawn.append((res, rep)) or [rep / "r.md"])
    cpu = torch.device("cpu")
    assert common.run_and_report("Scaling", "bench_x.jsonl", lambda *a: runs.append(a), "cfg", cpu, tmp_path,
                                 report=False) == 0
    assert runs == [("cfg", cpu, tmp_path / "results" / "bench_x.jsonl")] and drawn == []
    assert capsys.readouterr().out == f"Scaling benchmark on cpu: rows -> {tmp_path / 'results' / 'bench_x.jsonl'}\n"
    common.run_and_report("Scaling", "bench_x.jsonl", lambda *a: runs.append(a), "cfg", cpu, str(tmp_path), report=True)
    assert drawn == [(tmp_path / "results", tmp_path / "reports")]
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {tmp_path / 'reports' / 'r.md'}"


def test_the_cpu_peak_is_the_most_bytes_held_at_once():
    """On CPU the peak is read off the profiler's allocation events: two tensors held together count both,
    a tensor freed before the next is allocated counts once."""
    cpu = torch.device("cpu")

    def one_after_the_other():
        a = torch.empty(1000)
        del a
        return torch.empty(300)

    assert common.peak_memory(lambda: [torch.empty(1000), torch.empty(500)], cpu) == (6000, common.CPU_MEASURE)
    assert common.peak_memory(one_after_the_other, cpu) == (4000, common.CPU_MEASURE)


def test_a_benchmark_rows_key_is_its_configuration_in_any_order():
    """A rerun of a configuration supersedes its old row by key, however the caller ordered its fields."""
    cpu = torch.device("cpu")
    a = common.bench_row("scaling", cpu, {"mixer": "mamba", "seq_len": 256})
    b = common.bench_row("scaling", cpu, {"seq_len": 256, "mixer": "mamba"})
    c = common.bench_row("scaling", cpu, {"mixer": "mamba", "seq_len": 512})
    assert a["key"] == b["key"] != c["key"] and a["key"].startswith("scaling-")


def _bench_cli(monkeypatch, module, argv: list[str], device: torch.device):
    """`module.main(argv)` up to the run: the configuration, device, root and --report it would run with."""
    got = []
    monkeypatch.setattr(module, "resolve_device", lambda name: device)
    monkeypatch.setattr(module, "run_and_report",
                        lambda label, name, run, cfg, dev, out, report: got.append((cfg, dev, out, report)) or 0)
    assert module.main(argv) == 0
    return got[0]


def test_the_gpu_checks_benchmark_commands_give_the_sizes_the_issue_names(tmp_path, monkeypatch):
    """The GPU check runs both benchmarks by their command lines (benchmarks/gpu_check.py's plan): every flag
    must reach the configuration, which on CUDA resolves to issue 14's sizes: Mamba alone first, 256 ... 8,192
    at 16,384 tokens a step, 5 timed steps after 2 warm-ups; every loss path the GPU runs at 8k/32k vocabulary
    and 4,096/16,384 tokens, in bf16 hidden states."""
    from benchmarks import gpu_check as gc

    cuda = torch.device("cuda")
    parts = {p.name: p.argv for p in gc.plan(tmp_path, tmp_path, dry=False, budget=None, eval_limit=None)}

    def flags(part: str, module: str) -> list[str]:  # what follows `python -m <module>` in the part's command
        return parts[part][parts[part].index(module) + 1:]

    cfg, dev, out, report = _bench_cli(monkeypatch, bs, flags("bench_scaling", "benchmarks.scaling"), cuda)
    assert (dev, out, report) == (cuda, str(tmp_path), False)
    r = cfg.resolved(cuda)
    assert r.mixers[0] == "mamba" and sorted(r.mixers) == mixers.names()
    assert (r.lengths, r.tokens, r.reps, r.warmup, r.max_seconds, r.causal, r.d_model) == \
        ([256, 512, 1024, 2048, 4096, 8192], 16384, 5, 2, 5.0, True, 256)

    cfg, dev, out, report = _bench_cli(monkeypatch, blm, flags("bench_loss_memory", "benchmarks.loss_memory"), cuda)
    monkeypatch.setattr(blm, "runnable_impls", lambda device: list(blm.IMPLS))  # (cce needs a real GPU to resolve)
    r = cfg.resolved(cuda)
    assert (r.impls, r.vocab_sizes, r.tokens, r.reps, r.warmup, r.d_model) == \
        (list(blm.IMPLS), [8000, 32000], [4096, 16384], 5, 2, 512)


def test_the_benchmarks_flags_reach_their_configuration_and_default_as_the_dataclass_does(tmp_path, monkeypatch):
    """Each flag of the two benchmarks' command lines sets its field; without flags, the command line and the
    configuration's own defaults agree (a script building the configuration gets what the command runs),
    and on a GPU the defaults are the CUDA sizes, on CPU the quick ones."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cfg, _, _, report = _bench_cli(monkeypatch, bs, ["--mixers", "mamba,attention", "--d-model", "64", "--max-len",
                                                     "1024", "--tokens", "2048", "--bidirectional", "--reps", "4",
                                                     "--warmup", "0", "--max-seconds", "1.5", "--report"], cpu)
    assert report is True and cfg == bs.ScalingConfig(mixers=["mamba", "attention"], d_model=64,
                                                      lengths=[256, 512, 1024], tokens=2048, causal=False, reps=4,
                                                      warmup=0, max_seconds=1.5)
    assert _bench_cli(monkeypatch, bs, [], cpu)[0] == bs.ScalingConfig(mixers=mixers.names())
    cfg = _bench_cli(monkeypatch, bs, ["--lengths", "64,32"], cpu)[0]
    assert cfg == bs.ScalingConfig(mixers=mixers.names(), lengths=[64, 32]) and cfg.resolved(cpu).lengths == [32, 64]
    default = bs.ScalingConfig()
    assert (default.resolved(cuda).lengths[-1], default.resolved(cuda).reps) == (16384, 10)
    assert (default.resolved(cpu).lengths, default.resolved(cpu).reps, default.resolved(cpu).tokens) == \
        ([256, 512, 1024, 2048], 3, 2048)

    cfg, _, _, report = _bench_cli(monkeypatch, blm, ["--impls", "plain,chunked", "--vocab", "8e3,512", "--tokens",
                                                      "64", "--d-model", "16", "--reps", "2", "--warmup", "1",
                                                      "--report"], cpu)
    assert report is True and cfg == blm.LossMemoryConfig(impls=["plain", "chunked"], vocab_sizes=[8000, 512],
                                                          tokens=[64], d_model=16, reps=2, warmup=1)
    assert _bench_cli(monkeypatch, blm, [], cpu)[0] == blm.LossMemoryConfig()
    monkeypatch.setattr(blm, "runnable_impls", lambda device: ["chunked", "plain"])
    default = blm.LossMemoryConfig()
    assert (default.resolved(cuda).tokens, default.resolved(cuda).reps) == ([4096, 16384, 32768], 10)
    assert (default.resolved(cpu).tokens, default.resolved(cpu).reps) == ([256, 1024], 3)


def test_a_scaling_run_with_an_unknown_mixer_runs_nothing(tmp_path):
    """The names are checked before the first row: a typo in the last name must not cost the others' run."""
    with pytest.raises(UnknownNameError, match="^unknown mixer 'nope'"):
        bs.main(["--out", str(tmp_path), "--mixers", "attention,nope", "--lengths", "8", "--d-model", "8"])
    assert not (tmp_path / "results").exists()


def _tiny_scaling(**kw) -> bs.ScalingConfig:
    """attention alone at L = 8, two rows a step, one timed step."""
    return bs.ScalingConfig(**{"mixers": ["attention"], "d_model": 32, "lengths": [8], "tokens": 16, "reps": 1, **kw})


def _tiny_loss() -> blm.LossMemoryConfig:
    """the plain loss path at V = 64, 32 tokens, one timed call."""
    return blm.LossMemoryConfig(impls=["plain"], vocab_sizes=[64], tokens=[32], d_model=8, reps=1)


def test_the_benchmark_rows_on_cpu_say_fp32_and_their_derived_figures_follow_their_times(monkeypatch):
    """On CPU both benchmarks run in fp32 (the CUDA rows: bf16 autocast, bf16 hidden states) and say so; a
    row's tokens/s and fp32 logit bytes are computed from its own time and sizes, and each row has its log
    line."""
    cpu = torch.device("cpu")
    lines: list[str] = []
    seen = []
    real = blm._loss_fn
    monkeypatch.setattr(blm, "_loss_fn",
                        lambda impl: lambda h, w, y: seen.append((h.dtype, w.dtype)) or real(impl)(h, w, y))
    rows = bs.run(_tiny_scaling(), cpu, log=lines.append)
    assert rows[0]["dtype"] == "fp32" and len(lines) == 1
    assert lines[0].startswith("  attention            L=     8 B=  2 ") and " ms/step " in lines[0]
    lines.clear()
    r = blm.run(_tiny_loss(), cpu, log=lines.append)[0]
    assert r["dtype"] == "fp32" and len(lines) == 1
    assert lines[0].startswith("  V=     64 N=    32 plain ") and f" loss {r['loss']:.5f}" in lines[0]
    assert math.isclose(r["tokens_per_s"], 32 / (r["ms_fwd_bwd"] / 1000)) and r["logits_bytes_fp32"] == 4 * 32 * 64
    assert set(seen) == {(torch.float32, torch.float32)}


def test_the_benchmarks_log_a_row_without_a_peak_a_failed_row_and_a_stop_that_was_no_oom(monkeypatch):
    """A row whose profiler gave no memory events logs `n/a`; a failed row logs its error; a mixer stopped by an
    error that is not an OOM (a bug, not a size too big) says so."""
    cpu = torch.device("cpu")
    lines: list[str] = []
    for module in (bs, blm):
        monkeypatch.setattr(module, "peak_memory", lambda fn, device: (None, "no events"))
    bs.run(_tiny_scaling(), cpu, log=lines.append)
    blm.run(_tiny_loss(), cpu, log=lines.append)
    assert lines[0].endswith(" tok/s  peak n/a") and " peak n/a  loss " in lines[1]

    def fails(*a):
        raise RuntimeError("CUDA out of memory")

    lines.clear()
    for module in (bs, blm):
        monkeypatch.setattr(module, "measure", fails)
    bs.run(_tiny_scaling(), cpu, log=lines.append)
    rows = blm.run(_tiny_loss(), cpu, log=lines.append)
    assert rows[0]["status"] == "failed"
    assert lines == ["  attention            L=     8 FAILED OutOfMemoryError: CUDA out of memory",
                     "  V=     64 N=    32 plain        FAILED OutOfMemoryError: CUDA out of memory"]
    lines.clear()
    monkeypatch.setattr(bs, "measure", lambda *a: {}[0])
    bs.run(_tiny_scaling(lengths=[8, 16]), cpu, log=lines.append)
    assert lines == ["  attention            L=     8 FAILED KeyError: 0",
                     "  attention: stopped (not an out-of-memory error)"]
