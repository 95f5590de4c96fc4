"""Reports from synthetic results rows: every column, every figure, best values marked, failures
shown, references sorted among models, benchmark sections, and clear errors for malformed files."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.results import ResultsFileError, append_row
from reports import write_reports

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(mixer, objective, key=None, status="ok", task="jsquad", protocol="jsquad-offline", metrics=None, **kw):
    curve = [{"frac": f, "step": int(10 * f), "tokens": int(20000 * f), "train_loss": 6 - 2 * f, "dev_loss": 6.2 - 2 * f}
             for f in (0.25, 0.5, 0.75, 1.0)]
    row = {
        "schema": 1, "key": key or f"{task}-{mixer}-{objective}-{kw.get('seed', 0)}-{kw.get('norm', 'pre')}",
        "grid": "g", "task": task, "protocol": protocol, "mixer": mixer, "objective": objective, "seed": 0,
        "preset": "tiny", "budget": "tokens=20000", "norm": "pre", "status": status, "error": None,
        "params": 500_000, "tokens_seen": 20_100, "device": "cpu: test", "versions": {"torch": "2.x"},
        "git_commit": "abc123", "metrics": metrics or {}, "loss_curve": curve if status == "ok" else [],
        "world_size": 1, "started_at": "2026-01-01T00:00:00+00:00",
        "timing": {"prepare_s": 1.0, "train_s": 12.5, "dev_s": 3.25, "eval_s": 40.0} if status == "ok" else {},
        "train": {"seconds": 11.5, "warm_seconds": 1.0} if status == "ok" else {},
        "data": {"train_questions": 4000, "dev_questions": 400, "train_tokens": 600000, "eval_questions": 500,
                 "eval_questions_total": 4420, "tokenizer": {"vocab_size": 4000, "normalization": "identity"},
                 "vocab_size": 4000, "max_len": 256},
    }
    row.update(kw)
    return row


def _qa(em, f1, ppl=None, ppl_bound=None, tps=1000.0, latency=12.0, state=1000, eval_n=500):
    m = {"em": em, "f1": f1, "tokens_per_s": tps, "peak_mem_bytes": None, "gen_latency_ms": latency,
         "state_floats": state, "eval_n": eval_n}
    if ppl is not None:
        m["ppl"] = ppl
    if ppl_bound is not None:
        m["ppl_bound"] = ppl_bound
    return m


def _ref(name, kind, em, f1, eval_n=500, full=None, setting=""):
    ref = {"kind": kind, "rule": f"rule of {name}", "setting": setting, "identity": {}}
    if full:
        ref["full_split"] = full
    return _row(name, "none", key=f"ref-{name}", seed=None, preset=None, budget=None, norm=None, params=0,
                tokens_seen=0, loss_curve=[], metrics={"em": em, "f1": f1, "eval_n": eval_n}, reference=ref)


def grid_rows() -> list[dict]:
    rows = [
        _row("attention", "autoregressive", metrics=_qa(0.30, 0.52, ppl=8.5, tps=5200.0, latency=9.0)),
        _row("attention", "autoregressive", seed=1, metrics=_qa(0.28, 0.50, ppl=8.9, tps=5100.0, latency=9.5)),
        _row("wave_modulation", "autoregressive", metrics=_qa(0.10, 0.21, ppl=15.25, tps=9100.0, latency=4.0, state=64)),
        _row("attention", "diffusion", metrics=_qa(0.05, 0.12, ppl_bound=22.75, tps=4800.0, latency=30.0),
             objective_info={"steps": 16, "length": 24}),
        _row("wave_modulation", "autoregressive", norm="post", world_size=2,
             metrics=_qa(0.12, 0.25, ppl=14.0, tps=9000.0)),
        _row("mamba", "diffusion", status="failed", error="OutOfMemoryError: CUDA out of memory | tried 2 GiB"),
        _ref("title", "baseline", 0.11, 0.19, full={"em": 0.108, "f1": 0.187, "eval_n": 4420}),
        _ref("overlap_span", "baseline", 0.27, 0.47, full={"em": 0.262, "f1": 0.463, "eval_n": 4420}),
        _ref("tokenizer_ceiling", "ceiling", 0.99, 0.995, setting="identity, vocab 4000"),
    ]
    for i, r in enumerate(rows):  # distinct curves, so the figure can be looked at
        for p in r["loss_curve"]:
            p["dev_loss"] = round(6.2 - 2 * p["frac"] * (1 + r["metrics"].get("f1", 0)) + 0.05 * i, 4)
    for mixer, acc0 in (("attention", 0.99), ("wave_modulation", 0.6)):
        for L in (64, 128, 256):
            for D in (32, 64):
                rows.append(_row(mixer, "autoregressive", task="mqar", protocol="mqar", key=f"mqar-{mixer}-{L}-{D}",
                                 sweep={"seq_len": L, "d_model": D},
                                 metrics={"accuracy": acc0 * (64 / L) ** (0.1 if mixer == "attention" else 0.8)
                                          * (0.8 if D == 32 else 1.0),
                                          "ppl": 3.0, "tokens_per_s": 2e4, "peak_mem_bytes": 2**30,
                                          "gen_latency_ms": 1.0, "eval_n": 1000}))
    return rows


def bench_rows() -> tuple[list[dict], list[dict]]:
    base = {"mixer": None, "objective": None, "status": "ok", "error": None, "device": "cpu: test",
            "versions": {"torch": "2.x"}, "git_commit": "abc123"}
    scaling = []
    for mixer, power in (("attention", 2), ("wave_modulation", 1)):
        for L in (256, 512, 1024):
            ms = 1e-4 * L**power
            scaling.append({**base, "bench": "scaling", "key": f"s-{mixer}-{L}", "mixer": mixer, "seq_len": L,
                            "d_model": 64, "tokens_per_step": 1024, "batch_size": 1024 // L, "dtype": "fp32",
                            "causal": True, "ms_per_step": ms * 1024 // L, "ms_per_seq": ms,
                            "tokens_per_s": L / (ms / 1000), "peak_mem_bytes": 1000 * L**power,
                            "mem_measure": "test measure", "backend": "torch", "note": None})
    scaling.append({**base, "bench": "scaling", "key": "s-attention-2048", "mixer": "attention", "seq_len": 2048,
                    "d_model": 64, "status": "failed", "error": "OutOfMemoryError: CUDA out of memory"})
    loss = []
    for V in (8000, 32000):
        for N in (256, 1024):
            for impl, mem in (("chunked", 4 * V * 256), ("plain", 8 * N * V)):
                loss.append({**base, "bench": "loss_memory", "key": f"l-{impl}-{V}-{N}", "impl": impl,
                             "vocab_size": V, "n_tokens": N, "d_model": 64, "dtype": "fp32", "ms_fwd_bwd": N * V / 1e6,
                             "peak_mem_bytes": mem, "mem_measure": "test measure", "loss": 9.0})
    return scaling, loss


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    for r in grid_rows():
        append_row(root / "results" / "g.jsonl", r)
    scaling, loss = bench_rows()
    for r in scaling:
        append_row(root / "results" / "bench_scaling.jsonl", r)
    for r in loss:
        append_row(root / "results" / "bench_loss_memory.jsonl", r)
    paths = write_reports(root / "results", root / "reports")
    return root, paths


def _table(text: str, heading: str) -> list[str]:
    """The lines of the first table after `heading`."""
    after = text[text.index(heading):]
    lines = after.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| mixer"))
    out = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        out.append(ln)
    return out


def test_report_has_every_column_figure_and_header(report):
    root, paths = report
    readme = root / "reports" / "g" / "README.md"
    assert readme in paths and (root / "reports" / "benchmarks" / "README.md") in paths
    text = readme.read_text()
    qa = _table(text, "## jsquad · jsquad-offline")
    head = qa[0]
    for col in ("mixer", "objective", "EM", "F1", "ppl", "ppl bound (diffusion)", "vs best baseline", "peak VRAM",
                "train tok/s", "answer ms", "state floats at T", "params", "tokens seen", "budget", "device", "status",
                "norm", "seed", "GPUs"):
        assert f"| {col} |" in head, col
    # header: protocol, budget, device, versions
    for word in ("`jsquad-offline`", "train on `valid`", "`tokens=20000`", "`cpu: test`", "torch 2.x", "abc123"):
        assert word in text, word
    mqar = _table(text, "## mqar · mqar-sweep")
    assert "| accuracy |" in mqar[0] and "| seq len |" in mqar[0] and "| width |" in mqar[0]
    assert "| EM |" not in mqar[0]
    pngs = {p.name for p in (root / "reports" / "g").glob("*.png")}
    expected = {"jsquad-jsquad-offline_f1_by_mixer.png", "jsquad-jsquad-offline_loss_curves.png",
                "jsquad-jsquad-offline_quality_vs_speed.png", "mqar-mqar-sweep_loss_curves.png",
                "mqar-mqar-sweep_accuracy_vs_seq_len.png", "mqar-mqar-sweep_accuracy_vs_width.png",
                "scaling_cpu-test.png", "loss_memory_cpu-test.png"}
    assert expected <= pngs, expected - pngs
    for name in pngs:
        assert f"]({name})" in text, name  # every figure is linked from the page
        data = (root / "reports" / "g" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_best_values_marked_failures_shown_references_sorted(report):
    root, _ = report
    text = (root / "reports" / "g" / "README.md").read_text()
    qa = _table(text, "## jsquad · jsquad-offline")
    head = _cells(qa[0])
    rows = [dict(zip(head, _cells(ln))) for ln in qa[2:]]
    by = {(r["mixer"], r["objective"], r.get("seed"), r.get("norm")): r for r in rows}
    best = by[("attention", "autoregressive", "0", "pre")]
    assert best["F1"] == "**0.520**" and best["EM"] == "**0.300**" and best["ppl"] == "**8.50**"
    assert by[("attention", "autoregressive", "1", "pre")]["F1"] == "0.500"  # not best: not bold
    assert by[("attention", "diffusion", "0", "pre")]["ppl bound (diffusion)"] == "**22.75**"
    # speeds measured on a (shared) CPU: marked indicative, never bolded
    assert by[("wave_modulation", "autoregressive", "0", "pre")]["train tok/s"] == "~9,100"
    assert by[("wave_modulation", "autoregressive", "0", "pre")]["answer ms"] == "~4.0"
    assert "`~`: a speed measured on a CPU, indicative only" in text
    # where the time went: the budget's clock, the steps kept off it, and evaluation seconds per cell
    assert best["train s"] == "11.5" and best["warm-up s"] == "1.0" and best["eval s"] == "43.2"
    assert "| 12.5 |" in text.split("Run details per cell")[1]  # training's wall seconds, in the run details
    assert best["peak VRAM"] == "n/a"  # CPU rows: never a made-up number
    # the failed cell is shown, last, with its error (the "|" in it escaped)
    failed = rows[-1]
    assert failed["mixer"] == "mamba" and "OutOfMemoryError" in failed["status"] and "failed" in failed["status"]
    assert "CUDA out of memory \\| tried 2 GiB" in qa[-1]
    # references: italic, sorted among the models by F1, never bold
    names = [r["mixer"] for r in rows]
    assert names.index("*tokenizer_ceiling (identity, vocab 4000)*") == 0
    assert names.index("*overlap_span*") == 3  # below attention seeds 0 and 1 (0.52, 0.50), above the rest
    assert names.index("*title*") == 6  # F1 0.19: above the diffusion cell (0.12)
    assert not any("**" in r["F1"] for r in rows if r["mixer"].startswith("*"))
    # per cell: does it beat the best non-neural baseline (overlap_span, F1 0.47)?
    assert best["vs best baseline"] == "beats overlap_span (F1 +0.050)"
    assert by[("attention", "diffusion", "0", "pre")]["vs best baseline"] == "below overlap_span (F1 -0.350)"
    # full-split figures of the references, and the multi-seed summary
    assert "| *overlap_span* | baseline | 0.262 | 0.463 | 4420 |" in text
    # (mean ± half-width of the 95% t-interval: t_{0.975,1} = 12.706 times sd / sqrt(2) = 0.127)
    assert re.search(r"\| attention \| autoregressive \| pre \| 2 \| 0\.290 ± 0\.127 \(n=2\) \| 0\.510 ± 0\.127 \(n=2\)",
                     text)


def test_benchmark_sections(report):
    root, _ = report
    text = (root / "reports" / "g" / "README.md").read_text()
    assert "## Cost versus sequence length" in text and "## Output-loss memory" in text
    assert "| attention (torch) | 6.55 | 26.21 | 104.86 | **OOM** |" in text  # 1e-4 L^2 ms, stopped at 2048
    assert "| 32,000 | 1,024 | 125.0 MiB | 31.2 MiB · 32.8 ms | 250.0 MiB · 32.8 ms | 0.0e+00 |" in text
    bench_only = (root / "reports" / "benchmarks" / "README.md").read_text()
    assert "## Cost versus sequence length" in bench_only and "(scaling_cpu-test.png)" in bench_only


def test_malformed_file_is_refused_naming_the_line(tmp_path):
    res = tmp_path / "results"
    good = _row("attention", "autoregressive", metrics=_qa(0.3, 0.5, ppl=8.0))
    append_row(res / "g.jsonl", good)
    with open(res / "g.jsonl", "a") as f:
        f.write("\n")  # a blank line does not shift the count
        f.write(json.dumps({**good, "key": "b", "status": "done"}) + "\n")
    with pytest.raises(ResultsFileError, match=r"g\.jsonl:3: status must be one of ok, failed, got 'done'"):
        write_reports(res, tmp_path / "reports")

    (res / "g.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "metrics": {"f1": "high"}}) + "\n")
    with pytest.raises(ResultsFileError, match=r"g\.jsonl:2: metric 'f1' is not a number"):
        write_reports(res, tmp_path / "reports")

    (res / "g.jsonl").write_text(json.dumps(good) + "\n" + '{"key": "x", "status": "ok", "mix' + "\n")
    r = subprocess.run([sys.executable, "-m", "reports", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.startswith("error: ") and "g.jsonl:2: not a JSON object" in err and len(err.splitlines()) == 1


def test_report_lists_expected_but_missing_cells_and_ties_and_gpu_speeds(tmp_path):
    """A grid killed inside its last cell: the report says which expected cell has no row. Ties are not
    bold; a GPU speed is bold; the state-size header names T."""
    from harness.cell import Cell
    from core.results import write_expected

    results = tmp_path / "results" / "g.jsonl"
    cells = [Cell(task="jsquad", mixer=m, objective="autoregressive", preset="tiny", budget="tokens=1")
             for m in ("attention", "mamba", "gated_context")]
    write_expected(results, cells)
    gpu = {"device": "NVIDIA H200"}
    for c, tps in zip(cells[:2], (5000.0, 7000.0)):
        m = _qa(0.0, 0.1 if c.mixer == "attention" else 0.2, ppl=9.0, tps=tps)
        m["state_T"] = 158
        append_row(results, _row(c.mixer, c.objective, key=c.key(), metrics=m, **gpu))
    write_reports(tmp_path / "results", tmp_path / "reports")
    text = (tmp_path / "reports" / "g" / "README.md").read_text()
    assert "2 model cells (2 ok, 0 failed, **1 of 3 expected missing**)" in text
    assert "**Missing cells**" in text and "gated_context x autoregressive (seed 0)" in text
    qa = _table(text, "## jsquad")
    head = _cells(qa[0])
    rows = {r["mixer"]: r for r in (dict(zip(head, _cells(ln))) for ln in qa[2:])}
    assert rows["attention"]["EM"] == rows["mamba"]["EM"] == "0.000"  # a tie: no bold
    assert rows["attention"]["ppl"] == "9.00"
    assert rows["mamba"]["train tok/s"] == "**7,000**"  # measured on a GPU: bold
    assert "state floats at T=158" in head


def test_a_profiled_grid_shows_how_busy_each_cell_kept_the_gpu(tmp_path):
    """`--profile-step` rows: the task stage's profiled `busy_frac` in a "GPU busy" column (a row without a
    profile shows none); a grid whose rows have none (every CPU grid: no kernel timeline) has no column."""

    def cell(mixer, busy):
        task = {"stage": "task", **({"profile": {"kernel_ms": 1.0, "tokens": 10, "busy_frac": busy}} if busy else {})}
        return _row(mixer, "autoregressive", key=mixer, metrics=_qa(0.0, 0.3), device="NVIDIA H200",
                    train={"seconds": 1.0, "stages": [{"stage": "pretrain", "profile": {"busy_frac": 0.99}}, task]})

    for r in (cell("attention", 0.5487), cell("mamba", 0.0312), cell("gated_context", None)):
        append_row(tmp_path / "results" / "g.jsonl", r)
    write_reports(tmp_path / "results", tmp_path / "reports")
    qa = _table((tmp_path / "reports" / "g" / "README.md").read_text(), "## jsquad")
    head = _cells(qa[0])
    by = {r["mixer"]: r for r in (dict(zip(head, _cells(ln))) for ln in qa[2:])}
    assert by["attention"]["GPU busy"] == "54.9%" and by["mamba"]["GPU busy"] == "3.12%"  # the task stage's
    assert by["gated_context"]["GPU busy"] == "—"
    append_row(tmp_path / "results" / "h.jsonl", cell("attention", None))
    write_reports(tmp_path / "results", tmp_path / "reports")
    assert "GPU busy" not in (tmp_path / "reports" / "h" / "README.md").read_text()


def test_gpu_rows_show_mfu_compiled_and_pretraining_and_never_average_pretraining_variants(tmp_path, monkeypatch):
    """The columns a GPU row fills, and cells that differ only in pretraining: named apart everywhere (until
    2026-12-01 the seed aggregates averaged attention with and without pretraining as three 'seeds')."""
    import reports as rep

    titles = []
    for name in ("score_by_mixer", "loss_curves", "quality_vs_speed"):
        real = getattr(rep.figures, name)
        monkeypatch.setattr(rep.figures, name, lambda *a, _real=real, **k: titles.append(a[-2]) or _real(*a, **k))
    pre = {"sources": ["passages"], "frac": 0.5, "max_chars": 0}
    stages = [{"stage": "pretrain", "tokens_per_s": 2_500_000.0, "epochs": 151.2}, {"stage": "task"}]
    gpu = {"device": "NVIDIA H200"}

    def cell(mixer, f1, pretrain=None, mfu=0.1234, **train):
        m = {**_qa(0.0, f1, ppl=9.0, tps=2_000_000.0), "mfu": mfu, "peak_mem_bytes": 3 * 2**30}
        t = {"seconds": 20.0, "warm_seconds": 31.0, "compile": True, "compile_error": None, **train}
        if pretrain:
            t["stages"] = stages
        return _row(mixer, "autoregressive", key=f"{mixer}-{bool(pretrain)}", metrics=m, pretrain=pretrain,
                    train=t, **gpu)

    rows = [cell("attention", 0.30), cell("attention", 0.40, pre),
            cell("gated_context", 0.20, mfu=0.2, recompile_limit_hits=["recompile_limit (8): forward (x.py:1)"]),
            cell("gated_context", 0.25, pre, mfu=None, compile=False, compile_error="BackendCompilerFailed: x")]
    for r in rows:
        append_row(tmp_path / "results" / "g.jsonl", r)
    write_reports(tmp_path / "results", tmp_path / "reports")
    text = (tmp_path / "reports" / "g" / "README.md").read_text()
    qa = _table(text, "## jsquad")
    head = _cells(qa[0])
    by = {r["mixer"]: r for r in (dict(zip(head, _cells(ln))) for ln in qa[2:])}
    assert by["attention"]["MFU"] == "12.3%" and by["gated_context (pretrain passages 0.5)"]["MFU"] == "—"
    assert by["gated_context"]["MFU"] == "**20.0%**"  # a GPU's speed: the highest is bold
    assert by["attention"]["compiled"] == "compiled"
    assert by["gated_context"]["compiled"] == "compiled, partly eager (recompile limit)"
    assert by["gated_context (pretrain passages 0.5)"]["compiled"] == "eager (compile failed)"
    assert by["attention (pretrain passages 0.5)"]["pretrain tok/s (epochs)"] == "2,500,000 (151 epochs)"
    assert by["attention"]["train s"] == "20.0" and by["attention"]["warm-up s"] == "31.0"
    agg = _table(text, "### Across seeds")
    assert len(agg) == 2 + 4 and all("| 1 |" in ln for ln in agg[2:])  # four configurations, one run each
    assert any(ln.startswith("| attention (pretrain passages 0.5) | autoregressive | 1 | 0.000 (n=1") for ln in agg)
    details = text.split("Run details per cell")[1]
    assert "| gated_context (pretrain passages 0.5) | autoregressive | 0 |" in details
    assert titles and all("NVIDIA H200" in t for t in titles)  # every figure names its device


def test_a_grid_resumed_with_another_learning_rate_setting_never_averages_the_two(tmp_path):
    """One grid, attention seed 0 twice: at the preset's rate and with a rate sweep (a resume with another
    --lr gives another cell key). They are two configurations of one run each, named apart; a grid of one
    setting keeps plain names."""
    sweep = {"rates": [1e-3, 3e-3, 1e-2], "frac": 0.25, "short_budget": "tokens=5000", "best_lr": 1e-2,
             "best_dev_loss": 7.0, "tokens": 15000, "seconds": 3.0, "reused": 0,
             "table": [{"lr": x, "dev_loss": 7.5 - x, "tokens": 5000, "seconds": 1.0} for x in (1e-3, 3e-3, 1e-2)]}
    rows = [_row("attention", "autoregressive", key="a", metrics=_qa(0.0, 0.10, ppl=9.0), train={"lr": 3e-3}),
            _row("attention", "autoregressive", key="b", metrics=_qa(0.0, 0.20, ppl=8.0), train={"lr": 1e-2},
                 lr_sweep=sweep),
            _row("mamba", "autoregressive", key="c", metrics=_qa(0.0, 0.15, ppl=8.5), train={"lr": 3e-3})]
    for r in rows:
        append_row(tmp_path / "results" / "g.jsonl", r)
    write_reports(tmp_path / "results", tmp_path / "reports")
    text = (tmp_path / "reports" / "g" / "README.md").read_text()
    agg = _table(text, "### Across seeds")
    names = [_cells(ln)[0] for ln in agg[2:]]
    assert sorted(names) == ["attention (lr 0.003)", "attention (lr sweep 0.001,0.003,0.01 ×0.25)", "mamba (lr 0.003)"]
    assert all(_cells(ln)[2] == "1" for ln in agg[2:])  # one run each: no "n=2"
    # one setting throughout: plain names. A failed row (no `train`: no lr recorded) differs from none; a
    # mixer's own options (every mamba row's) and an objective's defaults (autoregressive's loss_on) are
    # compared within that mixer's and that objective's rows only, and the comparison with attention holds
    for r in rows:
        r.update(train={"lr": 3e-3}, lr_sweep=None)
    rows[2]["mixer_opts"] = {"d_state": 32}
    for r in rows[1:]:
        r["objective_opts"] = {"loss_on": "answer"}
    diffusion = _row("attention", "diffusion", key="d", metrics=_qa(0.0, 0.05, ppl_bound=20.0), train={"lr": 3e-3})
    failed = _row("gated_context", "autoregressive", key="f", status="failed", error="OutOfMemoryError: x")
    (tmp_path / "results" / "g.jsonl").unlink()
    for r in [*rows[1:], diffusion, failed]:
        append_row(tmp_path / "results" / "g.jsonl", r)
    write_reports(tmp_path / "results", tmp_path / "reports")
    text = (tmp_path / "reports" / "g" / "README.md").read_text()
    agg = _table(text, "### Across seeds")
    assert sorted(_cells(ln)[0] for ln in agg[2:]) == ["attention", "attention", "mamba"]
    mamba = next(ln for ln in agg if ln.startswith("| mamba |"))
    assert "n/a: no per-question scores" in mamba  # paired with attention's cell (not "no attention cell")
    assert "| gated_context | autoregressive |" in _table(text, "## jsquad")[-1]  # the failed row, plain


def test_a_cell_rerun_with_its_mixers_or_objectives_options_is_named_apart_within_that_mixer_or_objective(tmp_path):
    """A --mixer-opt (--objective-opt) rerun gives a cell of another key beside the first: the two are named
    by their options and never averaged as seeds. Options are compared within the mixer (objective) only:
    mamba's d_state says nothing about attention, diffusion's steps nothing about autoregressive rows."""
    rows = [_row("mamba", "autoregressive", key="m0", seed=0, metrics=_qa(0.0, 0.10, ppl=9.0), mixer_opts={"d_state": 32}),
            _row("mamba", "autoregressive", key="m1", seed=1, metrics=_qa(0.0, 0.20, ppl=8.0)),
            _row("attention", "autoregressive", key="a0", seed=0, metrics=_qa(0.0, 0.15, ppl=8.5)),
            _row("attention", "autoregressive", key="a1", seed=1, metrics=_qa(0.0, 0.16, ppl=8.4)),
            _row("attention", "diffusion", key="d0", seed=0, metrics=_qa(0.0, 0.05, ppl_bound=20.0),
                 objective_opts={"steps": 8}),
            _row("attention", "diffusion", key="d1", seed=1, metrics=_qa(0.0, 0.06, ppl_bound=19.0))]
    for r in rows:
        append_row(tmp_path / "results" / "g.jsonl", r)
    write_reports(tmp_path / "results", tmp_path / "reports")
    agg = _table((tmp_path / "reports" / "g" / "README.md").read_text(), "### Across seeds")
    got = sorted((_cells(ln)[0], _cells(ln)[1], _cells(ln)[2]) for ln in agg[2:])
    assert got == [("attention", "autoregressive", "2"), ("attention", "diffusion", "1"),
                   ("attention (steps=8)", "diffusion", "1"), ("mamba", "autoregressive", "1"),
                   ("mamba (d_state=32)", "autoregressive", "1")]


@pytest.mark.parametrize("change, names", [
    ({"budget": "tokens=40000"}, ["attention (budget tokens=20000)", "attention (budget tokens=40000)"]),
    ({"preset": "small"}, ["attention (preset small)", "attention (preset tiny)"]),
    ({"backend": {"loss": "cce"}}, ["attention (loss cce)", "attention (loss chunked)"]),
    ({"train": {"lr": 3e-3, "compile": False}}, ["attention (compiled)", "attention (eager)"]),
    ({"train": {"lr": 3e-3, "compile": True, "compile_mode": "reduce-overhead"}},
     ["attention (compiled reduce-overhead)", "attention (compiled)"]),
    ({"train": {"lr": 3e-3, "compile": True, "compile_scope": "model", "compile_scope_asked": "model"}},
     ["attention (compiled scope model)", "attention (compiled)"]),
    ({"train": {"lr": 3e-3, "compile": True, "compile_mode": "default", "compile_scope": "blocks",
                "dev_tokens_bound": 32768, "sdpa_cudnn": True}},
     ["attention (cuDNN attention)", "attention (no cuDNN attention)"]),
    ({"train": {"lr": 3e-3, "compile": True, "dev_tokens_bound": 4096}},
     ["attention (dev ≤32.8k tok)", "attention (dev ≤4.1k tok)"]),
    ({"train": {"lr": 3e-3, "compile": True, "compile_mode": "default", "compile_scope": "blocks",
                "dev_tokens_bound": 32768, "sdpa_cudnn": False, "dev_checks_bound": 40}},
     ["attention (10 dev checks)", "attention (40 dev checks)"]),
    ({"task_opts": {"eval_limit": "200"}}, ["attention (eval_limit=200)", "attention (eval_limit=500)"]),
    ({"device": "cuda: NVIDIA H100", "budget": "seconds=60"},
     ["attention (cuda: NVIDIA H100)", "attention (cuda: NVIDIA H200)"]),
    ({"world_size": 8, "budget": "seconds=60"},
     ["attention (cuda: NVIDIA H200 ×8)", "attention (cuda: NVIDIA H200)"]),
])
def test_a_grid_resumed_with_another_budget_preset_loss_compilation_or_evaluation_never_averages_them(
        tmp_path, change, names):
    """Each of these settings is in the cell key, so a grid resumed under its --grid name with another one
    trains new cells beside the first: two configurations, named apart and never averaged as seeds, while
    the first configuration's second seed still is. Where a cell ran counts only under a budget of the
    device's own seconds (there the device decides how much is trained)."""
    def row(seed, **kw):
        base = {"budget": "seconds=60" if "seconds" in change.get("budget", "") else "tokens=20000",
                "device": "cuda: NVIDIA H200", "backend": {"mixer": ["sdpa"], "loss": "chunked"},
                "train": {"lr": 3e-3, "compile": True, "compile_mode": "default", "compile_scope": "blocks",
                          "dev_tokens_bound": 32768, "sdpa_cudnn": False, "dev_checks_bound": 10},
                "task_opts": {"eval_limit": "500"}, "seed": seed}
        return _row("attention", "autoregressive", key=f"k{seed}{bool(kw)}",
                    metrics=_qa(0.0, 0.1 + 0.1 * seed + 0.05 * bool(kw), ppl=9.0), **{**base, **kw})
    for r in (row(0), row(1), row(0, **change)):
        append_row(tmp_path / "results" / "g.jsonl", r)
    write_reports(tmp_path / "results", tmp_path / "reports")
    agg = _table((tmp_path / "reports" / "g" / "README.md").read_text(), "### Across seeds")
    got = sorted((_cells(ln)[0], _cells(ln)[2]) for ln in agg[2:])
    assert [n for n, _ in got] == names
    seeds = dict(got)
    assert sorted(seeds.values()) == ["1", "2"]  # the first configuration's two seeds, averaged; the other alone


def test_a_row_from_before_dev_checks_is_a_row_of_10(tmp_path):
    """Before `--dev-checks` (2026-12-07) a row recorded no count: every cell took 10. A grid resumed since
    averages an old row with a new row of 10 as seeds of one configuration, and names it `10 dev checks`
    only beside a configuration of another count; a failed row records none and names nothing."""
    def row(key, seed, train, status="ok"):
        return _row("attention", "autoregressive", key=key, seed=seed, status=status,
                    metrics=_qa(0.0, 0.1 + 0.1 * seed, ppl=9.0) if status == "ok" else {},
                    train={"lr": 3e-3, **train})

    def names(rows):
        out = tmp_path / f"run{len(rows)}"
        for r in rows:
            append_row(out / "results" / "g.jsonl", r)
        write_reports(out / "results", out / "reports")
        text = (out / "reports" / "g" / "README.md").read_text()
        failed = [_cells(ln)[0] for ln in _table(text, "## jsquad") if "**failed**" in ln]
        return sorted((_cells(ln)[0], _cells(ln)[2]) for ln in _table(text, "### Across seeds")[2:]), failed

    rows = [row("old", 0, {}), row("new", 1, {"dev_checks_bound": 10}), row("bad", 2, {}, status="failed")]
    assert names(rows) == ([("attention", "2")], ["attention"])
    rows.append(row("forty", 0, {"dev_checks_bound": 40}))
    assert names(rows) == ([("attention (10 dev checks)", "2"), ("attention (40 dev checks)", "1")], ["attention"])


@pytest.mark.parametrize("budget", ["tokens=20000", "a100_seconds=60"])
def test_a_device_or_a_sweep_points_task_options_never_name_a_variant(tmp_path, budget):
    """A token budget trains the same tokens on any device, an A100-seconds budget is normalised across
    devices: seeds run on two GPUs, one of them under torchrun (which compiles the whole model whatever
    was asked), are still averaged. An MQAR sweep's points differ in the task's seq_len (the sweep column
    says so), not in a setting."""
    for seed, dev, ranks, scope in ((0, "cuda: NVIDIA H200", 1, "blocks"), (1, "cuda: NVIDIA H100", 8, "model")):
        append_row(tmp_path / "results" / "g.jsonl",
                   _row("attention", "autoregressive", key=f"k{seed}", seed=seed, device=dev, world_size=ranks,
                        budget=budget, metrics=_qa(0.0, 0.1, ppl=9.0),
                        train={"lr": 3e-3, "compile": True, "compile_scope": scope, "compile_scope_asked": "blocks"}))
    rows = [_row("mamba", "autoregressive", task="mqar", protocol="mqar", key=f"m{L}", grid="s",
                 task_opts={"seq_len": L, "n_pairs": 8}, sweep={"seq_len": L, "d_model": 32},
                 metrics={"accuracy": 0.5}) for L in (64, 128)]
    for r in rows:
        append_row(tmp_path / "results" / "s.jsonl", r)
    write_reports(tmp_path / "results", tmp_path / "reports")
    agg = _table((tmp_path / "reports" / "g" / "README.md").read_text(), "### Across seeds")
    assert [(_cells(ln)[0], _cells(ln)[2]) for ln in agg[2:]] == [("attention", "2")]
    text = (tmp_path / "reports" / "s" / "README.md").read_text()
    assert "mamba (" not in text and "| mamba |" in text


def test_the_committed_reports_are_what_the_report_code_makes_of_the_committed_rows(tmp_path):
    """The README links the committed reports as the project's results; they must not go stale when the report
    code changes (rebuild them with `python -m reports`, which reads the rows only). Every committed report's
    markdown is rebuilt from a copy of results/ and compared; the figures are not (PNG bytes vary with
    matplotlib). Reports of a reader's own local runs, untracked, are not the project's: left out."""
    tracked = subprocess.run(["git", "ls-files", "reports/*/README.md"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout: which reports are committed is unknown")
    committed = [Path(line).relative_to("reports") for line in tracked.stdout.split()]
    shutil.copytree(ROOT / "results", tmp_path / "results")
    write_reports(tmp_path / "results", tmp_path / "reports")
    def text(root: Path, p: Path) -> str | None:
        return (root / "reports" / p).read_text(encoding="utf-8") if (root / "reports" / p).is_file() else None

    stale = [str(p) for p in committed if text(tmp_path, p) is None or text(tmp_path, p) != text(ROOT, p)]
    assert len(committed) >= 4 and not stale, f"stale committed reports (run `python -m reports`): {stale}"


def test_a_report_of_a_grid_that_is_not_there_is_an_error_naming_the_grids_that_are(tmp_path):
    append_row(tmp_path / "results" / "g.jsonl", _row("attention", "autoregressive", metrics=_qa(0.0, 0.1, ppl=9.0)))
    with pytest.raises(ResultsFileError, match=r"no grid 'gg': no .*gg\.jsonl \(grids there: g\)"):
        write_reports(tmp_path / "results", tmp_path / "reports", "gg")
    append_row(tmp_path / "results" / "h.jsonl", _row("attention", "autoregressive", metrics=_qa(0.0, 0.1, ppl=9.0)))
    with pytest.raises(ResultsFileError, match=r"\(grids there: g, h\)$"):
        write_reports(tmp_path / "results", tmp_path / "reports", "gg")
    r = subprocess.run([sys.executable, "run_matrix.py", "--report-only", "--grid", "gg", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: no grid 'gg'") and len(r.stderr.splitlines()) == 1


def test_a_report_of_one_named_grid_writes_that_grid_only(tmp_path):
    """`--grid h` (what `run_matrix.py` passes after running grid h) reports grid h, with the benchmark
    sections every grid report carries, and leaves the other grids' reports and the benchmarks' own
    report as they were: none of them is read for it, so none can fail it."""
    res = tmp_path / "results"
    append_row(res / "g.jsonl", _row("attention", "autoregressive", metrics=_qa(0.0, 0.1, ppl=9.0)))
    append_row(res / "h.jsonl", _row("mamba", "autoregressive", grid="h", metrics=_qa(0.2, 0.3, ppl=7.0)))
    for r in bench_rows()[0]:
        append_row(res / "bench_scaling.jsonl", r)
    assert write_reports(res, tmp_path / "reports", "h") == [tmp_path / "reports" / "h" / "README.md"]
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["h"]
    text = (tmp_path / "reports" / "h" / "README.md").read_text()
    assert "| mamba |" in text and "| attention |" not in text and "## Cost versus sequence length" in text


def test_sweep_curves_draw_each_objective_apart(tmp_path, monkeypatch):
    """The Zoology curves average over seeds only: an MQAR sweep that runs both objectives draws a line
    per mixer and objective (they were averaged together)."""
    from reports import figures

    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: figs.append(fig) or path)
    rows = [_row("mamba", obj, task="mqar", protocol="mqar", key=f"{obj}-{L}", sweep={"seq_len": L, "d_model": 32},
                 metrics={"accuracy": acc}) for obj, acc in (("autoregressive", 0.9), ("diffusion", 0.1))
            for L in (64, 128)]
    assert figures.sweep_curves(rows, "accuracy", "seq_len", "d_model", "t", tmp_path / "s.png") is not None
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in figs[0].axes[0].get_lines()}
    assert lines == {"mamba · autoregressive": [0.9, 0.9], "mamba · diffusion": [0.1, 0.1]}


def test_score_figure_draws_ok_model_rows_only_and_seeds_with_a_t_interval(tmp_path, monkeypatch):
    """The bars are ok model rows (a failed row's leftover metric and a reference are not bars: references
    are lines across the axis); several seeds of a cell are one bar with the 95% t-interval."""
    from reports import figures

    drawn = {}
    monkeypatch.setattr(figures.sns, "barplot", lambda data=None, **k: drawn.update(data=data, **k))
    monkeypatch.setattr(figures, "_save", lambda fig, path: path)
    lines = []
    monkeypatch.setattr(figures, "_reference_lines", lambda ax, rows, key: lines.extend(
        r["mixer"] for r in rows if r.get("reference")))
    rows = [_row("attention", "autoregressive", key=f"a{s}", seed=s, metrics=_qa(0.2 + 0.1 * s, 0.5)) for s in (0, 1, 2)]
    rows += [_row("mamba", "autoregressive", key="m-failed", status="failed", metrics=_qa(0.9, 0.9)),
             _ref("majority", "baseline", 0.3, 0.4)]
    assert figures.score_by_mixer(rows, "em", "t", tmp_path / "s.png") is not None
    data = drawn["data"]
    assert sorted(set(data["mixer"])) == ["attention"] and len(data) == 3
    assert sorted(data["em"].round(6)) == [0.2, 0.3, 0.4]
    assert drawn["errorbar"] is figures._t_interval and lines == ["majority"]
    lo, hi = figures._t_interval([0.2, 0.3, 0.4])
    assert lo < 0.3 < hi and hi - 0.3 == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)


def test_speed_columns_are_model_cells_only():
    """A reference row shows no train tok/s, MFU, answer ms, state floats or params, even if it carries them."""
    from reports.columns import COLUMNS

    ref = _ref("majority", "baseline", 0.3, 0.4)
    ref["metrics"].update(tokens_per_s=5e5, mfu=0.3, gen_latency_ms=2.0, state_floats=10)
    ref["params"] = 10
    model = _row("attention", "autoregressive", metrics={**_qa(0.2, 0.5), "mfu": 0.3})
    cols = {c.key: c for c in COLUMNS}
    for key in ("tokens_per_s", "mfu", "latency", "state_floats", "params"):
        assert cols[key].get(ref) is None, key
        assert cols[key].get(model) is not None, key


def test_vs_best_baseline_reads_a_lower_is_better_metric_the_right_way():
    """With a metric where lower is better, the best baseline is the lowest and a model below it beats it."""
    from reports.tables import annotate_vs_baseline

    decl = [{"key": "err", "header": "error", "better": "min", "headline": True}]
    model = _row("attention", "autoregressive", metrics={"err": 0.2, "eval_n": 500}, task_metrics=decl)
    worse = _row("mamba", "autoregressive", key="m", metrics={"err": 0.5, "eval_n": 500}, task_metrics=decl)
    refs = [_ref(n, "baseline", 0, 0) for n in ("lo", "hi")]
    for ref, v in zip(refs, (0.3, 0.6)):
        ref["metrics"] = {"err": v, "eval_n": 500}
        ref["task_metrics"] = decl
    out = {r["key"]: r.get("_vs_baseline") for r in annotate_vs_baseline([model, worse, *refs], "err")}
    assert out["jsquad-attention-autoregressive-0-pre"] == "beats lo (error -0.100)"
    assert out["m"] == "below lo (error +0.200)"


def test_peak_vram_is_shown_for_ok_model_rows_only():
    """A failed cell's peak memory (an OOM's high-water mark) is no figure of the model: the column shows none."""
    from reports.columns import COLUMNS

    cols = {c.key: c for c in COLUMNS}
    ok = _row("attention", "autoregressive", metrics={**_qa(0.2, 0.5), "peak_mem_bytes": 3 * 2**30,
                                                    "eval_peak_mem_bytes": 2**30})
    failed = _row("mamba", "autoregressive", key="f", status="failed",
                  metrics={"peak_mem_bytes": 80 * 2**30, "eval_peak_mem_bytes": 2**30})
    assert cols["peak_mem"].fmt(cols["peak_mem"].get(ok)) == "3.0 GiB" and cols["eval_peak_mem"].get(ok) == 2**30
    assert cols["peak_mem"].get(failed) is None and cols["eval_peak_mem"].get(failed) is None


_BENCH_OK = {"bench": "scaling", "key": "s", "mixer": "attention", "objective": None, "status": "ok", "error": None,
             "device": "cpu: test"}
_GOOD = _row("attention", "autoregressive", metrics=_qa(0.3, 0.5, ppl=8.0))


@pytest.mark.parametrize("name, second, message", [
    ("bench_x.jsonl", {**_BENCH_OK, "key": "t", "bench": "speed"},
     r"bench_x\.jsonl:2: unknown bench 'speed' \(known: scaling, loss_memory, decode, span_answers\)"),
    ("g.jsonl", {**_GOOD, "key": "b", "metrics": [0.3, 0.5]}, r"g\.jsonl:2: metrics must be an object, got list"),
    ("g.jsonl", {**_GOOD, "key": "b", "loss_curve": [6.0, 5.5]}, r"g\.jsonl:2: loss_curve must be a list of objects"),
    ("g.jsonl", {**_GOOD, "key": "b", "loss_curve": {"frac": 1.0}}, r"g\.jsonl:2: loss_curve must be a list of objects"),
    ("g.jsonl", {**_GOOD, "key": "b", "metrics": {}}, r"g\.jsonl:2: an ok row has no metrics"),
    # a metric every model row has, beyond the task's declared ones: a report divides and ranks by them
    ("g.jsonl", {**_GOOD, "key": "b", "metrics": {**_GOOD["metrics"], "ppl": "8.0"}},
     r"g\.jsonl:2: metric 'ppl' is not a number: '8\.0'"),
    ("g.jsonl", {**_GOOD, "key": "b", "metrics": {**_GOOD["metrics"], "tokens_per_s": True}},
     r"g\.jsonl:2: metric 'tokens_per_s' is not a number: True"),
    ("bench_x.jsonl", _GOOD, r"bench_x\.jsonl:2: a grid row in a benchmark file \(rows with and without 'bench'\)"),
])
def test_a_row_a_report_cannot_use_is_refused_naming_file_and_line(tmp_path, name, second, message):
    """Each row a report would misread (a benchmark it has no section for, metrics or a loss curve of the
    wrong shape, an ok cell with no numbers, a perplexity or a speed that is text or a boolean, a file
    mixing benchmark and grid rows) is a one-line error
    naming the file and the line (the second; the first is a good row of the file's kind), never a
    report built from a part of the file or a traceback from deep in the figures."""
    first = _BENCH_OK if name.startswith("bench_") else _GOOD
    for row in (first, second):
        append_row(tmp_path / "results" / name, row)
    with pytest.raises(ResultsFileError, match=message):
        write_reports(tmp_path / "results", tmp_path / "reports")
    assert not (tmp_path / "reports").exists()  # nothing written from a file that was refused


@pytest.mark.parametrize("grid, rows", [("bench_scaling", [_BENCH_OK]), ("g", [])])
def test_a_report_of_a_file_with_no_grid_rows_says_so(tmp_path, grid, rows):
    """--grid naming a file that is there but holds no grid rows (a benchmark file, an empty grid file) is
    an error saying just that, not 'no such file' and not an empty success."""
    path = tmp_path / "results" / f"{grid}.jsonl"
    path.parent.mkdir()
    path.touch()
    for r in rows:
        append_row(path, r)
    with pytest.raises(ResultsFileError, match=rf"no grid '{grid}': .*{grid}\.jsonl holds no grid rows$"):
        write_reports(tmp_path / "results", tmp_path / "reports", grid)


def test_python_m_reports_prints_what_it_wrote_or_that_there_was_nothing(tmp_path, capsys):
    """`python -m reports` exits 0 and prints each README it wrote, one per line on stdout; with no results
    files it writes nothing and says so on stderr (a wrong --out must not look like a silent success)."""
    from reports.__main__ import main

    assert main(["--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == f"no results files in {tmp_path / 'results'}\n"
    assert not (tmp_path / "reports").exists()
    append_row(tmp_path / "results" / "g.jsonl", _ref("title", "baseline", 0.11, 0.19))
    assert main(["--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'reports' / 'g' / 'README.md'}\n" and err == ""
    assert (tmp_path / "reports" / "g" / "README.md").is_file()


def test_the_header_says_n_a_for_what_no_row_records(tmp_path):
    """A grid whose cells have not run yet (only its references are written): the header's per-cell fields
    (budget, preset) and a commit, package versions or times no row recorded say n/a, never an empty cell or 'None'."""
    ref = _ref("title", "baseline", 0.11, 0.19)
    ref["git_commit"] = None
    ref["versions"] = {}
    ref["started_at"] = None
    append_row(tmp_path / "results" / "g.jsonl", ref)
    write_reports(tmp_path / "results", tmp_path / "reports")
    text = (tmp_path / "reports" / "g" / "README.md").read_text()
    for field in ("budget (per cell)", "preset", "git commit", "packages", "rows written"):
        assert f"| {field} | n/a |" in text, field
    assert "| device | `cpu: test` |" in text  # (a field the reference does record is shown)


def test_vs_best_baseline_is_n_a_for_a_cell_scored_on_other_items():
    """A cell scored on another number of questions than every baseline is not compared with them (the
    difference would mix items): 'n/a (other eval items)'; a cell on the baselines' items is compared."""
    from reports.tables import annotate_vs_baseline

    sample = _row("attention", "autoregressive", key="s", metrics=_qa(0.3, 0.5, eval_n=200))
    same = _row("mamba", "autoregressive", key="m", metrics=_qa(0.3, 0.5, eval_n=500))
    out = {r["key"]: r.get("_vs_baseline")
           for r in annotate_vs_baseline([sample, same, _ref("title", "baseline", 0.1, 0.2, eval_n=500)], "f1")}
    assert out["s"] == "n/a (other eval items)"
    assert out["m"] == "beats title (f1 +0.300)"  # (rows without declarations: the metric by its key)


def _failed_bench(kind: str, **kw) -> dict:
    return {**_BENCH_OK, "bench": kind, "key": f"{kind}-failed", "status": "failed",
            "error": "OutOfMemoryError: CUDA out of memory", **kw}


@pytest.mark.parametrize("name, args, row", [
    ("sweep_curves", ("accuracy", "seq_len", "d_model", "t"),
     _row("mamba", "autoregressive", task="mqar", protocol="mqar", status="failed", sweep={"seq_len": 64, "d_model": 32},
          metrics={"accuracy": 0.5})),
    ("scaling", (), _failed_bench("scaling", seq_len=2048, d_model=64)),
    ("loss_memory", (), _failed_bench("loss_memory", impl="plain", vocab_size=8000, n_tokens=1024)),
    ("decode", (), _failed_bench("decode", context=1024, batch=1)),
])
def test_a_figure_with_no_ok_row_is_not_drawn(tmp_path, name, args, row):
    """Rows that all failed (a leftover metric included) give no figure: None, and no empty PNG on disk
    for the report to link."""
    from reports import figures

    path = tmp_path / "f.png"
    assert getattr(figures, name)([row], *args, path) is None
    assert not path.exists()


@pytest.mark.parametrize("kind, rows", [
    ("scaling", [_failed_bench("scaling", seq_len=2048, d_model=64)]),
    ("loss_memory", [_failed_bench("loss_memory", impl="plain", vocab_size=8000, n_tokens=1024, d_model=64)]),
    ("decode", [_failed_bench("decode", context=1024, batch=1, preset="tiny")]),
])
def test_a_benchmark_section_whose_rows_all_failed_links_no_figure(tmp_path, kind, rows):
    """The section still shows its table (the failures, named) but links no figure."""
    from reports import bench

    text = "\n".join(getattr(bench, f"{kind}_section")(rows, tmp_path))
    assert "**OOM**" in text and "![" not in text and not list(tmp_path.glob("*.png"))


def test_scaling_figure_says_n_a_where_no_row_measured_memory(tmp_path, monkeypatch):
    """On a device without a memory measure the memory panel says n/a (an empty panel would read as
    'no memory used'), and its title says why."""
    from reports import figures

    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: figs.append(fig) or path)
    rows = [{**_BENCH_OK, "key": f"s{L}", "seq_len": L, "d_model": 64, "tokens_per_step": 1024, "ms_per_seq": L / 100,
             "tokens_per_s": 1e5, "peak_mem_bytes": None} for L in (256, 512)]
    assert figures.scaling(rows, tmp_path / "s.png") is not None
    a_mem = figs[0].axes[2]
    assert [t.get_text() for t in a_mem.texts] == ["n/a"]
    assert a_mem.get_title() == "peak memory: n/a on this device"
    rows[0]["peak_mem_bytes"], rows[0]["mem_measure"] = 2**20, "allocator peak"
    assert figures.scaling(rows, tmp_path / "s.png") is not None
    assert list(figs[1].axes[2].texts) == [] and figs[1].axes[2].get_title() == "peak memory\n(allocator peak)"


def test_scaling_section_in_full_one_sub_section_per_device(tmp_path, monkeypatch):
    """Each device its own sub-section, in name order, each ending in a blank line: its setting and how
    its memory was measured ('n/a on this device' where no row measured any), then three tables by mixer
    and length: a length a mixer did not reach is blank, a failure is named and its error listed below,
    a row's note too. A mixer's backend follows its name. Figure names are slugs of at most 60 characters."""
    from reports import bench

    monkeypatch.setattr(bench.figures, "scaling", lambda rows, path: None)
    ok = {**_BENCH_OK, "d_model": 64, "tokens_per_step": 1024, "dtype": "fp32", "causal": True, "peak_mem_bytes": None}
    cpu, gpu = {**ok, "device": "cpu: Test"}, {**ok, "device": "NVIDIA H200", "causal": False}
    rows = [{**cpu, "key": "a256", "seq_len": 256, "ms_per_seq": 1.5, "tokens_per_s": 2e5, "backend": "sdpa"},
            {**cpu, "key": "a512", "seq_len": 512, "ms_per_seq": 4.0, "tokens_per_s": 1.3e5, "note": "fallback path"},
            {**cpu, "key": "m256", "mixer": "mamba", "seq_len": 256, "ms_per_seq": 2.0, "tokens_per_s": 1.3e5},
            {**gpu, "key": "g256", "mixer": "mamba", "seq_len": 256, "ms_per_seq": 0.1, "tokens_per_s": 2.6e6,
             "peak_mem_bytes": 2**20, "mem_measure": "allocator peak"},
            {**gpu, "key": "g512", "mixer": "mamba", "seq_len": 512, "status": "failed", "error": "RuntimeError: boom"},
            # out of memory is said in its cell and never listed below: the table already names it
            {**gpu, "key": "o512", "mixer": "attention", "seq_len": 512, "status": "failed",
             "error": "OutOfMemoryError: CUDA out of memory"}]
    assert bench.scaling_section(rows, tmp_path)[4:] == [
        "**NVIDIA H200**: d_model=64, 1024 tokens per step, fp32, bidirectional. Peak memory: allocator peak.", "",
        "| fwd+bwd ms per sequence | N=256 | N=512 |", "|---|---:|---:|",
        "| attention |  | **OOM** |", "| mamba | 0.10 | **failed** |", "",
        "| tokens / s | N=256 | N=512 |", "|---|---:|---:|", "| attention |  | **OOM** |", "| mamba | 2.6M | **failed** |", "",
        "| peak memory | N=256 | N=512 |", "|---|---:|---:|",
        "| attention |  | **OOM** |", "| mamba | 1.0 MiB | **failed** |", "",
        "- mamba at N=512: RuntimeError: boom", "",
        "**cpu: Test**: d_model=64, 1024 tokens per step, fp32, causal. Peak memory: n/a on this device.", "",
        "| fwd+bwd ms per sequence | N=256 | N=512 |", "|---|---:|---:|",
        "| attention (sdpa) | 1.50 | 4.00 |", "| mamba | 2.00 |  |", "",
        "| tokens / s | N=256 | N=512 |", "|---|---:|---:|",
        "| attention (sdpa) | 200k | 130k |", "| mamba | 130k |  |", "",
        "| peak memory | N=256 | N=512 |", "|---|---:|---:|",
        "| attention (sdpa) | n/a | n/a |", "| mamba | n/a |  |", "",
        "- attention at N=512: fallback path", ""]
    assert bench.slug("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb"
    assert len(bench.slug("cpu: " + "x" * 100)) == 60


def test_loss_memory_table_leaves_a_path_not_run_blank_and_names_a_failed_one(tmp_path, monkeypatch):
    """A (vocab, tokens) point one path was not run at is a blank cell; one it failed at says OOM (or
    failed); the loss spread needs two paths' losses (cce and plain at 256 tokens)."""
    from reports import bench

    monkeypatch.setattr(bench.figures, "loss_memory", lambda rows, path: None)
    base = {**_BENCH_OK, "bench": "loss_memory", "vocab_size": 8000, "d_model": 64, "dtype": "fp32",
            "mem_measure": "m", "loss": 9.0}
    rows = [{**base, "key": "c1", "impl": "chunked", "n_tokens": 1024, "peak_mem_bytes": 2**20, "ms_fwd_bwd": 2.0},
            {**base, "key": "p0", "impl": "plain", "n_tokens": 256, "peak_mem_bytes": 2**21, "ms_fwd_bwd": 1.0},
            {**base, "key": "p1", "impl": "plain", "n_tokens": 1024, "status": "failed",
             "error": "OutOfMemoryError: x"},
            {**base, "key": "x1", "impl": "other", "n_tokens": 1024, "status": "failed", "error": "RuntimeError: y"},
            {**base, "key": "k0", "impl": "cce", "n_tokens": 256, "peak_mem_bytes": 2**19, "ms_fwd_bwd": 0.5},
            # a path that ran where nothing measures memory (a CPU) says so in its cell, with its time
            {**base, "key": "c0", "impl": "chunked", "n_tokens": 256, "peak_mem_bytes": None, "ms_fwd_bwd": 1.5}]
    lines = bench.loss_memory_section(rows, tmp_path)
    # the four paths of harness/loss.py in their order, then any other
    assert "| vocab | tokens | fp32 logits | cce | chunked | plain | other | loss spread |" in lines
    assert "| 8,000 | 256 | 7.8 MiB | 512.0 KiB · 0.5 ms | n/a · 1.5 ms | 2.0 MiB · 1.0 ms |  | 0.0e+00 |" in lines
    assert "| 8,000 | 1,024 | 31.2 MiB |  | 1.0 MiB · 2.0 ms | **OOM** | **failed** | — |" in lines
    assert lines[-1] == ""  # a device's table ends in a blank line: the next device's line is no table row


def test_decode_table_tail_is_dashes_where_the_longest_context_failed(tmp_path, monkeypatch):
    """The columns at the longest context (rerun, speed-up, prefill, state) come from that context's row:
    where it failed they are dashes, never another context's numbers."""
    from reports import bench

    monkeypatch.setattr(bench.figures, "decode", lambda rows, path: None)
    base = {**_BENCH_OK, "bench": "decode", "batch": 1, "preset": "tiny", "d_model": 64, "n_layers": 2,
            "prefill_ms": 3.0, "rerun_ms": 8.0, "speedup": 8.0, "state_floats": 4096, "state_bytes": 2**14,
            "decode_path": "state", "backend": "sdpa_kv_cache"}
    rows = [{**base, "key": f"{m}{T}", "mixer": m, "context": T, "step_ms": 1.0} for m in ("attention", "mamba")
            for T in (256, 1024)]
    rows[1].update(status="failed", error="OutOfMemoryError: x")  # attention at 1,024
    # a mixer whose longest context ran without the rerun path (no rerun time, so no speed-up): dashes there only
    rows += [{**base, "key": "g1024", "mixer": "gated_context", "context": 1024, "step_ms": 2.0, "rerun_ms": None,
              "speedup": None}]
    lines = bench.decode_section(rows, tmp_path)
    assert "| attention | 1 | 1.000 | **OOM** | — | — | — | — | — | — |" in lines
    assert "| gated_context | 1 |  | 2.000 | — | — | 3.0 | 4.1k | 16.0 KiB | state (sdpa_kv_cache) |" in lines
    assert "| mamba | 1 | 1.000 | 1.000 | 8.00 | 8x | 3.0 | 4.1k | 16.0 KiB | state (sdpa_kv_cache) |" in lines
    assert lines[-1] == ""
    # the device's setting comes from a row that ran, not from a failed one listed first
    first_failed = [{**rows[1], "d_model": None, "n_layers": None}, rows[0], *rows[2:]]
    assert bench.decode_section(first_failed, tmp_path)[4].startswith("**cpu: test**: tiny preset (d_model=64, 2 layers)")


def test_numbers_change_format_at_their_documented_thresholds():
    """From 1,000 on a perplexity or a latency drops its decimals for thousands separators (1,000, not
    1000.00), seconds from 100 on; counts and bytes change unit exactly at each unit (1k, 1.0 KiB);
    a percentage keeps two decimals below 10% only."""
    from reports.columns import fmt_bytes, fmt_count, fmt_ms, fmt_pct, fmt_ppl, fmt_secs

    assert [fmt_ppl(v) for v in (999.99, 1000, 12345.6)] == ["999.99", "1,000", "12,346"]
    assert [fmt_ms(v) for v in (999.94, 1000, 1234.6)] == ["999.9", "1,000", "1,235"]
    assert [fmt_secs(v) for v in (99.94, 100, 1234.4)] == ["99.9", "100", "1,234"]
    assert [fmt_count(v) for v in (999, 1e3, 1e6, 1e9, 10_400_000, 2.5e9)] == ["999", "1k", "1M", "1B", "10.4M", "2.5B"]
    assert [fmt_bytes(v) for v in (1023, 2**10, 2**20, 2**30, 1.5 * 2**30, -2048)] == [
        "1023 B", "1.0 KiB", "1.0 MiB", "1.0 GiB", "1.5 GiB", "-2.0 KiB"]
    assert [fmt_pct(v) for v in (0.0999, 0.1, 0.153, 0.00123)] == ["9.99%", "10.0%", "15.3%", "0.12%"]


def test_a_grid_tables_number_columns_are_right_aligned_and_its_text_columns_left():
    from reports.tables import grid_table

    head, rule = grid_table(grid_rows())[0].splitlines()[:2]
    align = dict(zip((h.strip() for h in head.strip("|").split("|")), rule.strip("|").split("|")))
    assert {align[h] for h in ("ppl", "eval n", "params", "train tok/s")} == {"---:"}
    assert {align[h] for h in ("mixer", "norm", "budget", "device", "status")} == {"---"}


# ---- the grid table's helpers, one by one (the mutation audit of reports/tables.py found each unheld) ----

def test_state_floats_at_differing_lengths_name_each_rows_length_in_its_cell():
    """Where rows measured their state at different T the header cannot name one T: each cell does."""
    from reports.tables import grid_table

    a = _row("attention", "autoregressive", metrics={**_qa(0.3, 0.5), "state_T": 256})
    b = _row("mamba", "autoregressive", metrics={**_qa(0.2, 0.4, state=64), "state_T": 512})
    head, _, *body = grid_table([a, b])[0].splitlines()
    col = _cells(head).index("state floats at T")
    assert [_cells(line)[col] for line in body] == ["1k (T=256)", "**64 (T=512)**"]
    # one shared T: the header names it and the cells do not repeat it
    b["metrics"]["state_T"] = 256
    head, _, *body = grid_table([a, b])[0].splitlines()
    col = _cells(head).index("state floats at T=256")
    assert [_cells(line)[col] for line in body] == ["1k", "**64**"]


def test_the_legend_explains_cpu_speeds_and_decoding_paths_only_where_the_table_has_them():
    """`~` is explained when a model's speed was measured on a CPU (not for a GPU grid); the decoding
    paths when the table shows `answer ms` (a grid table always does; a table of other columns does not)."""
    from reports.tables import grid_table, legend

    rows = [_row(m, "autoregressive", device="NVIDIA H200", metrics=_qa(0.3, 0.5)) for m in ("attention", "mamba")]
    cols = grid_table(rows)[1]
    text = legend(cols, rows)
    assert "`train tok/s`" in text and "`~`" not in text and "- decoding path of `answer ms`" in text
    assert "- decoding path" not in legend([c for c in cols if c.key != "latency"], rows)
    rows[0]["device"] = "cpu: test"  # one speed measured on a CPU: the line that says what `~` means
    assert "- `~`: a speed measured on a CPU" in legend(grid_table(rows)[1], rows)


def test_settings_name_every_option_and_the_ranks_of_a_device_seconds_budget():
    from reports.tables import settings

    row = _row("attention", "autoregressive", budget="seconds=60", device="NVIDIA H200",
               mixer_opts={"window": 8, "heads": 2}, task_opts={"eval_limit": 500, "max_len": 256})
    del row["world_size"]  # an older row: one rank
    s = settings(row)
    assert (s["mixer_opts"], s["task_opts"], s["device"]) == ("heads=2, window=8", "eval_limit=500, max_len=256",
                                                              "NVIDIA H200")
    assert settings({**row, "world_size": 1})["device"] == "NVIDIA H200"
    assert settings({**row, "world_size": 2})["device"] == "NVIDIA H200 ×2"


def test_a_variant_joins_its_settings_and_the_shared_one_leaves_out_the_mixers_options():
    from reports.tables import mark_variants

    rows = [_row("attention", "autoregressive", key="a", train={"lr": 1e-3}, budget="tokens=1",
                 mixer_opts={"heads": 2}),
            _row("attention", "autoregressive", key="b", train={"lr": 3e-3}, budget="tokens=2",
                 mixer_opts={"heads": 4})]
    mark_variants(rows)
    assert rows[0]["_variant"] == "lr 0.001 · heads=2 · budget tokens=1"
    assert rows[0]["_shared_variant"] == "lr 0.001 · budget tokens=1"


def test_failed_rows_sort_last_even_with_a_metric_and_rows_without_the_metric_after_those_with():
    from reports.tables import sort_rows

    rows = [_row("mamba", "autoregressive", key="failed", status="failed", metrics={"f1": 0.9}),
            _row("wave_modulation", "autoregressive", key="none", metrics={"em": 0.1}),
            _row("attention", "autoregressive", key="half", metrics={"f1": 0.5})]
    assert [r["key"] for r in sort_rows(rows, "f1")] == ["half", "none", "failed"]


def test_full_split_table_sorts_by_the_first_metric_it_has_when_the_headline_is_missing():
    """Sorted by the headline metric when the full-split scores hold it, else by their first metric; a
    reference without that metric sorts last and shows a dash."""
    from reports.tables import full_split_table

    decl = [{"key": "f1", "header": "F1", "better": "max", "headline": True},
            {"key": "em", "header": "EM", "better": "max"}, {"key": "acc", "header": "acc", "better": "max"}]
    refs = []
    for n, full in (("c", {"acc": 0.99, "eval_n": 10}), ("b", {"em": 0.3, "acc": 0.9, "eval_n": 10}),
                    ("a", {"em": 0.5, "acc": 0.1, "eval_n": 10})):
        refs.append({**_ref(n, "baseline", 0, 0, full=full), "task_metrics": decl})
    assert full_split_table(refs).splitlines()[2:] == ["| *a* | baseline | 0.500 | 0.100 | 10 |",
                                                       "| *b* | baseline | 0.300 | 0.900 | 10 |",
                                                       "| *c* | baseline | — | 0.990 | 10 |"]


def test_reference_rules_once_no_decoding_path_n_a_and_a_cell_kept_on_one_line():
    from reports.tables import decode_paths_line, esc, reference_rules

    refs = [_ref("title", "baseline", 0, 0), _ref("overlap", "baseline", 0, 0)]
    assert reference_rules(refs + refs) == ["- *title* (baseline): rule of title",
                                            "- *overlap* (baseline): rule of overlap"]
    assert decode_paths_line([]).startswith("- decoding path of `answer ms`: n/a. ")
    assert esc("a|b\nc") == "a\\|b c"


def test_a_new_report_drops_the_figures_of_the_last_one_in_the_grid_and_the_benchmark_folders(tmp_path):
    """Figures are redrawn on every run: a PNG left from an earlier report (a mixer since dropped, a
    renamed figure) must not sit beside the new README as if it were current; other files stay."""
    results = tmp_path / "results"
    append_row(results / "g.jsonl", _row("attention", "autoregressive", metrics=_qa(0.3, 0.5, ppl=8.0)))
    for r in bench_rows()[0]:
        append_row(results / "bench_scaling.jsonl", r)
    for folder in ("g", "benchmarks"):
        (tmp_path / "reports" / folder).mkdir(parents=True)
        (tmp_path / "reports" / folder / "stale.png").write_bytes(PNG_MAGIC)
        (tmp_path / "reports" / folder / "notes.txt").write_text("kept")
    written = write_reports(results, tmp_path / "reports")
    assert [p.parent.name for p in written] == ["g", "benchmarks"]
    for folder in ("g", "benchmarks"):
        pngs = {p.name for p in (tmp_path / "reports" / folder).glob("*.png")}
        assert pngs and "stale.png" not in pngs, (folder, pngs)
        assert (tmp_path / "reports" / folder / "notes.txt").read_text() == "kept"


def test_the_data_line_describes_the_model_cells_data_and_a_references_only_where_no_model_has_any():
    """A reference row can carry the data of another preparation (its own tokenizer, a full split): the
    line above a table describes what the models were trained and scored on, and falls back to a
    reference's only when no model row records its data. A sample of the evaluation split says so; the
    whole split, or a row that does not record the split's size, does not."""
    from reports import _data_line

    ref = _ref("title", "baseline", 0.1, 0.2)
    ref["data"] = {"eval_questions": 4420}
    model = _row("attention", "autoregressive", metrics=_qa(0.3, 0.5))
    line = _data_line([ref, model])
    assert line.startswith("Data: 4,000 training / 400 dev questions") and "500 evaluation questions" in line
    del model["data"]
    assert _data_line([ref, model]) == "Data: 4,420 evaluation questions."
    assert _data_line([model]) is None
    model["data"] = {"train_questions": 10}  # a count the row does not record: n/a, not 0 and not 'None'
    assert _data_line([model]) == "Data: 10 training / 0 dev questions (n/a training tokens)."
    whole = _row("attention", "autoregressive", metrics=_qa(0.3, 0.5))  # scored on the whole split: no sample
    whole["data"].update(eval_questions=4420, eval_questions_total=4420)
    assert "; 4,420 evaluation questions; tokenizer" in _data_line([whole])
    whole["data"]["eval_questions"] = 500
    assert "; 500 evaluation questions (a seeded sample of 4,420); tokenizer" in _data_line([whole])
    assert "training paragraphs" not in _data_line([whole])
    whole["data"]["train_subset"] = {"frac": 0.05, "paragraphs": 1234, "of_paragraphs": 24680}  # train_frac
    assert ("training tokens); trained on a seeded 5% of the JSQuAD training paragraphs (1,234 of 24,680, "
            "`train_frac=0.05`; the tokenizer is the whole file's); 500 evaluation") in _data_line([whole])


@pytest.mark.parametrize("seeds, warned", [((0,), True), ((0, 1), False), ((0, 1, 2), False)])
def test_a_section_warns_that_one_seed_is_no_evidence_only_when_its_cells_ran_one_seed(tmp_path, monkeypatch, seeds,
                                                                                      warned):
    """Two seeds already give each cell a spread (the seed table's interval): the one-seed warning is for
    a section whose model cells all ran the same single seed."""
    import reports as rep

    for name in ("score_by_mixer", "loss_curves", "quality_vs_speed", "sweep_curves"):
        monkeypatch.setattr(rep.figures, name, lambda *a, **k: None)
    rows = [_row("attention", "autoregressive", seed=s, metrics=_qa(0.3, 0.5 + s / 100, ppl=8.0)) for s in seeds]
    text = "\n".join(rep.group_section("jsquad", "jsquad-offline", rows, tmp_path))
    assert ("One seed per cell" in text) is warned


def test_run_details_write_each_field_of_a_cell_and_a_dash_for_each_one_it_does_not_record():
    """The run details are the place a reader checks how a cell ran (its backends, loss path, where its best
    checkpoint was, its seconds): every recorded field in its cell, the objective's options without the
    loss path (its own column), and a dash, never 'None' or an empty cell, where a row records nothing."""
    from reports import _run_details

    full = _row("mamba", "diffusion", seed=2, metrics=_qa(0.1, 0.2), wall_s=70.04,
                backend={"mixer": ["torch_parallel_scan", "triton"], "loss": "cce"},
                train={"steps": 12, "epochs": 1.5, "best_fraction": 0.75, "best_dev_loss": 2.3456, "dev_tokens": 4096},
                objective_info={"steps": 16, "length": 24, "loss_impl": "cce"})
    bare = _row("attention", "autoregressive", metrics=_qa(0.1, 0.2), train={}, timing={})
    lines = _run_details([full, bare, _row("gated_context", "autoregressive", status="failed")])
    assert lines[-3:] == ["", "</details>", ""] and len(lines) == 4 + 2 + 3  # the failed cell has no line
    assert lines[4] == ("| attention | autoregressive | 0 | — | — | — | — | — | — | — | — | — | — | — | — | — |")
    assert lines[5] == ("| mamba | diffusion | 2 | steps=16, length=24 | torch_parallel_scan,triton | cce | 12 | 1.50 "
                        "| 75% of budget | 2.346 | 4,096 | 1.0 | 12.5 | 3.2 | 40.0 | 70.0 |")
    assert _run_details([_row("mamba", "diffusion", status="failed")]) == []


def test_span_answers_tables_join_the_seeds_of_one_training_setting_and_each_decoder_once():
    """Benchmark rows of one training setting run by several commands (seeds 0-1, then 2; another `--out`,
    `--mixers`, `--no-progress`) share one table and one mean per decoder; another budget is another table;
    a row written twice counts once (the later). A decoder is how the rows answered (`answers`): the default
    `span` counts under the named order it ran as, once per seed; `span` rows that answered two ways (the
    default changed between the commands) get a mean each, labelled with how they answered; `F1 − free`
    pairs each seed with its own free answers."""
    from reports.bench import span_answers_section, training_setting

    base = "--data-dir d --quick --budget tokens=3000"
    assert training_setting(f"{base} --mixers a,b --objectives diffusion --seeds 0,1 --out /x --no-progress "
                            "--cache-dir c") == base
    assert training_setting(f"--seeds=0,1 --out=/x {base}") == base
    assert training_setting(f"{base} --task-opt eval_limit=500") == f"{base} --task-opt eval_limit=500"
    assert training_setting(f"--seeds 0,1 {base} --no-progress --task-opt x=1") == f"{base} --task-opt x=1"

    def row(seed, way, f1, command, answers="span: exact", mixer="m", objective="diffusion"):
        return {"mixer": mixer, "objective": objective, "seed": seed, "split": "dev", "way": way, "f1": f1,
                "em": 0.0, "n": 10, "spans": 10, "empty": 0, "answers": answers, "status": "ok",
                "device": "cpu: test", "command": command}

    free = "none: free generation"
    first, second = f"{base} --seeds 0,1 --out /a --no-progress", f"{base} --mixers m --seeds 2 --out /b"
    rows = [row(0, "free", 0.1, first, free), row(1, "free", 0.9, first, free),
            row(1, "free", 0.3, first, free),  # seed 1 again: this row counts
            row(2, "free", 0.2, second, free),
            row(0, "span", 0.5, first, "span: relaxed"), row(1, "span", 0.7, first, "span: relaxed"),
            row(2, "span", 0.4, second),
            row(0, "free", 0.8, "--data-dir d --quick --budget tokens=9000 --seeds 0", free),
            {**row(3, "free", 0.0, second, free), "status": "failed", "device": "cuda: other"}]
    text = "\n".join(span_answers_section(rows))
    assert text.count(f"`{base}` (cpu: test, cuda: other)") == 1 and "`--data-dir d --quick --budget tokens=9000`" in text
    assert "| m | diffusion | 3 | dev | free | **failed** |" in text  # in the seeds' table, not in the means
    assert "| m | diffusion | dev | free | 3 | 0.200 ± " in text  # (0.1 + 0.3 + 0.2) / 3: the seed-1 rerun kept
    assert text.count("F1 − free (paired by seed)") == 1  # a setting of one seed has no means
    assert "0.900" not in text
    # 0.5 - 0.1 and 0.7 - 0.3 (seed 1's kept free row): +0.400, with no spread
    assert "| m | diffusion | dev | span (span: relaxed) | 2 | 0.600 ± 1.271 (n=2) | +0.400 ± 0.000 (n=2) |" in text
    assert "| m | diffusion | dev | span (span: exact) | 1 | 0.400 (n=1, no interval) | +0.200 (n=1, no interval) |" in text

    # the default `span` and the named order it is: one decoder, each seed once, under the order's name
    rows = [row(s, w, f1, first, a) for s, (f0, f1) in enumerate([(0.1, 0.3), (0.2, 0.6)])
            for w, f1, a in (("free", f0, free), ("span", f1, "span: exact"), ("span_left_to_right", f1, "span: exact"),
                             ("span_confidence", 0.5, "span: relaxed"))]
    rows += [row(0, "free", 0.0, first, free, mixer="old"), row(0, "span", 0.1, first, "span: relaxed", mixer="old"),
             row(1, "free", 0.0, first, free, mixer="old"), row(1, "span", 0.3, first, "span: relaxed", mixer="old")]
    rows += [row(s, w, 0.1, first, a, objective="autoregressive") for s in (0, 1) for w, a in (("span", "span: exact"),
                                                                                             ("free", free))]
    text = "\n".join(span_answers_section(rows))
    assert "| m | diffusion | dev | span_left_to_right | 2 | 0.450 ± " in text and "| m | diffusion | dev | span |" not in text
    assert "| m | diffusion | dev | span_confidence | 2 | 0.500 ± 0.000 (n=2) | +0.350 ± " in text
    # another mixer's rows from before the named orders: its `span` is the confidence order by its answers
    assert "| old | diffusion | dev | span_confidence | 2 | 0.200 ± " in text
    means = [line.split(" | ")[:4] for line in text.splitlines() if "(n=2) |" in line]
    assert [(m[0], m[1], m[3]) for m in means] == [
        ("| m", "autoregressive", "free"), ("| m", "autoregressive", "span"), ("| m", "diffusion", "free"),
        ("| m", "diffusion", "span_confidence"), ("| m", "diffusion", "span_left_to_right"),
        ("| old", "diffusion", "free"), ("| old", "diffusion", "span_confidence")]
    free_line = next(line for line in text.splitlines() if line.startswith("| m | diffusion | dev | free | 2 |"))
    assert free_line.endswith("| — | 0.000 ± 0.000 (n=2) | 10.0 / 10 | 0.0 |")  # no difference from itself


def test_the_bounds_monte_carlo_error_is_a_column_only_where_a_row_has_it():
    """`metrics.nll_mc_se` (nats per target token) shows as the bound's relative error, one standard error:
    exp(0.05) - 1 = 5.1%; a grid whose rows predate it (every committed one) gets no such column."""
    from reports.tables import cell_text, shown_columns

    old = grid_rows()
    assert "bound_se" not in {c.key for c in shown_columns(old)}
    new = grid_rows()
    diffusion = next(r for r in new if r["objective"] == "diffusion" and r["status"] == "ok")
    diffusion["metrics"]["nll_mc_se"] = 0.05
    col = {c.key: c for c in shown_columns(new)}["bound_se"]
    assert cell_text(diffusion, col, {}, new) == "±5.1%"
    assert cell_text(new[0], col, {}, new) == "—"  # an autoregressive row: exact, no error to show


def test_the_report_says_which_cells_kept_the_first_dev_check_of_their_stage(tmp_path):
    """A cell whose checkpoint is the first dev check of its stage, with later checks of that stage no
    better, is named with its seeds and where that check was (its scores are an early checkpoint's);
    a best later in the run, a pretraining cell best at the end of its task stage, a stage with one
    check, a failed cell and a reference are not; no such cell, no line. The line is in the report."""
    from reports import early_best_line

    def cell(mixer, seed, best, stages=None, objective="autoregressive", status="ok"):
        r = _row(mixer, objective, seed=seed, status=status, metrics=_qa(0.1, 0.2, ppl=9.0))
        if stages:
            for p, s in zip(r["loss_curve"], stages):
                p["stage"] = s
        r["train"] = {**r["train"], "best_fraction": best} if status == "ok" else {}
        return r

    rows = [cell("attention", 0, 0.25), cell("attention", 1, 0.25), cell("attention", 2, 0.75),
            cell("mamba", 0, 0.75, ["pretrain", "task", "task", "task"]),  # ... its task stage's first check: 0.5
            cell("mamba", 1, 0.5, ["pretrain", "task", "task", "task"]),  # ... its task stage's first check
            cell("gated_context", 0, 0.25, ["pretrain", "task", "task", "task"]),  # a stage of one check
            cell("gated_context", 1, 1.0, ["pretrain", "pretrain", "task", "task"]),
            cell("gated_context", 2, 0.75, ["pretrain", "pretrain", "task", "task"]),  # the first of a stage's two
            cell("wave_interference", 0, 0.25, objective="diffusion"), cell("mamba", 2, 0.25, status="failed"),
            _ref("title", "baseline", 0.1, 0.2)]
    line = early_best_line(rows)
    assert line.startswith("**Best at the first dev check: 5 of 9 cells** (the stage's first; attention × "
                           "autoregressive (seeds 0, 1: at 25%, 25% of the budget); gated_context × autoregressive "
                           "(seed 2: at 75% of the budget); mamba × autoregressive (seed 1: at 50% of the budget); "
                           "wave_interference × diffusion (seed 0: at 25% of the budget)):")
    assert "`--dev-checks`" in line
    unflagged = [rows[i] for i in (2, 3, 5, 6, 9, 10)]  # a later best, a one-check stage, a failed cell, a reference
    assert early_best_line(unflagged) is None
    assert early_best_line([cell("attention", 0, None)]) is None  # no best recorded
    for i, r in enumerate(rows[:3] + [rows[-1]]):
        append_row(tmp_path / "results" / "g.jsonl", {**r, "key": f"k{i}"})
    write_reports(tmp_path / "results", tmp_path / "reports")
    assert "**Best at the first dev check: 2 of 3 cells**" in (tmp_path / "reports" / "g" / "README.md").read_text()
