"""The figures' shared drawing rules (reports/figures.py), read off matplotlib's objects rather than the
PNG: figures drawn on the Agg canvas at the report's DPI, saved with their folders; references as grey
lines named with their values, ceilings dotted and darker; the legend outside the data; log axes whose
ticks suit the data's span (1-2-5 steps, decades, powers of 2/4/16 for bytes, a few rounded values for a
narrow span); power-of-two lengths labelled as numbers; one colour per name whatever the order."""
from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter

from core.schema import REFERENCE_OBJECTIVE
from reports import figures as fg


def _ref(name: str, f1: float, kind: str = "baseline", setting: str | None = None) -> dict:
    ref = {"name": name, "kind": kind, **({"setting": setting} if setting else {})}
    return {"mixer": name, "objective": REFERENCE_OBJECTIVE, "status": "ok", "metrics": {"f1": f1}, "reference": ref}


def test_a_figure_is_drawn_on_the_agg_canvas_at_the_reports_dpi_and_saved_with_its_folders(tmp_path):
    fig, axes = fg._figure()
    assert isinstance(fig.canvas, FigureCanvasAgg) and fig.get_dpi() == fg.DPI == 130
    assert axes.shape == (1, 1) and tuple(fig.get_size_inches()) == (8.0, 4.5)
    assert fg._figure(ncols=3, nrows=2)[1].shape == (2, 3)
    axes[0, 0].plot([1, 2], [3, 4])
    path = fg._save(fig, tmp_path / "a" / "b" / "f.png")
    assert path == tmp_path / "a" / "b" / "f.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as im:
        assert round(im.info["dpi"][0]) == 130


def test_references_are_grey_lines_named_with_their_value_ceilings_dotted_and_darker():
    fig, axes = fg._figure()
    ax = axes[0, 0]
    rows = [_ref("overlap", 0.465), _ref("oracle", 0.9, kind="ceiling"), _ref("first", 0.2),
            _ref("first", 0.25, setting="k=2"), _ref("lone", 0.3, setting="k=5"),
            {**_ref("broken", 0.7), "status": "failed"},  # not ok: no line
            {**_ref("nothing", 0.1), "metrics": {}},  # no value: no line
            {"mixer": "attention", "objective": "autoregressive", "status": "ok", "metrics": {"f1": 0.5}}]  # a model
    styles = []  # the line style each reference line is drawn with, as asked of matplotlib
    axhline = ax.axhline
    ax.axhline = lambda *a, **k: styles.append(k["ls"]) or axhline(*a, **k)
    fg._reference_lines(ax, rows, "f1")
    lines = ax.get_lines()
    assert styles == [":"] + fg.REF_DASHES[1:5]  # baselines: a dash pattern each, in turn
    assert len({str(d) for d in fg.REF_DASHES}) == len(fg.REF_DASHES)
    # highest first; a name shared by two rows gets its setting, a lone one does not
    assert [ln.get_label() for ln in lines] == ["ceiling: oracle = 0.900", "baseline: overlap = 0.465",
                                                "baseline: lone = 0.300", "baseline: first (k=2) = 0.250",
                                                "baseline: first = 0.200"]
    assert [ln.get_ydata()[0] for ln in lines] == [0.9, 0.465, 0.3, 0.25, 0.2]
    assert [ln.get_color() for ln in lines] == ["0.15", "0.5", "0.5", "0.5", "0.5"]
    assert lines[0].get_linestyle() == ":" and all(ln.get_linestyle() == "--" for ln in lines[1:])
    assert all(ln.get_zorder() == 1 and ln.get_linewidth() == 1.3 for ln in lines)


def test_the_legend_sits_outside_the_data_and_only_when_something_is_named():
    fig, axes = fg._figure()
    ax = axes[0, 0]
    fg._legend_outside(ax, title="mixer")
    assert ax.get_legend() is None  # nothing named: no empty box
    ax.plot([1, 2], [1, 2], label="attention")
    fg._legend_outside(ax, title="mixer")
    leg = ax.get_legend()
    assert [t.get_text() for t in leg.get_texts()] == ["attention"] and leg.get_title().get_text() == "mixer"
    assert not leg.get_frame_on()
    fig.canvas.draw()  # its upper left corner sits just right of the axes' upper right one (within its padding)
    box, axes_box, (x, y) = leg.get_window_extent(), ax.get_window_extent(), ax.transAxes.transform((1.02, 1.0))
    assert axes_box.x1 < x <= box.x0 < x + 15 and y - 15 < box.y1 <= y


def _ticks(axis, lo: float = 10.0, hi: float = 200.0) -> list[float]:
    """The major ticks the axis' locator puts between lo and hi (public API only)."""
    return [float(v) for v in axis.get_major_locator().tick_values(lo, hi) if lo <= v <= hi]


def _log_axis(lo: float, hi: float, binary: bool = False, axis: str = "y"):
    fig, axes = fg._figure()
    ax = axes[0, 0]
    getattr(ax, f"set_{axis}lim")(lo, hi)
    fg._log_scale(ax, lambda v: f"<{v:g}>", binary, axis)
    return ax, (ax.yaxis if axis == "y" else ax.xaxis)


def test_a_log_axis_picks_its_ticks_by_the_datas_span():
    ax, y = _log_axis(10, 25)  # under 3x: a few rounded values between the ends
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
    assert isinstance(y.get_major_locator(), FixedLocator)
    assert _ticks(y) == [13.0, 16.0, 20.0]
    _, y = _log_axis(10, 30)  # exactly 3x is still narrow
    assert isinstance(y.get_major_locator(), FixedLocator)
    _, y = _log_axis(10, 35)  # past 3x: a log locator
    assert isinstance(y.get_major_locator(), LogLocator)
    _, y = _log_axis(10, 200)  # up to 30x: 1-2-5 steps
    assert isinstance(y.get_major_locator(), LogLocator) and _ticks(y) == [10, 20, 50, 100, 200]
    _, y = _log_axis(10, 300)  # exactly 30x still is
    assert _ticks(y) == [10, 20, 50, 100, 200]
    _, y = _log_axis(10, 310)
    assert _ticks(y) == [10, 100]
    _, y = _log_axis(10, 1e5)  # wider: decades
    assert _ticks(y) == [10, 100]
    powers = {2: [1, 2, 4, 8, 16, 32, 64, 128, 256], 4: [1, 4, 16, 64, 256], 16: [1, 16, 256]}
    for hi, base in ((64, 2), (65, 4), (4096, 4), (4097, 16)):  # bytes: powers of 2, 4 or 16 by the span
        _, y = _log_axis(1, hi, binary=True)
        assert _ticks(y, 1, 256) == powers[base], hi
    # the labels are the given format's; no minor labels
    assert y.get_major_formatter()(1000.0, 0) == "<1000>" and isinstance(y.get_minor_formatter(), NullFormatter)
    ax, x = _log_axis(1, 1000, axis="x")  # the same on x, y left alone
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear" and _ticks(x) == [10, 100]
    ax = fg._figure()[1][0, 0]
    ax.set_ylim(1, 1000)
    fg._log_y(ax, str)
    assert ax.get_yscale() == "log" and _ticks(ax.yaxis) == [10, 100]
    ax = fg._figure()[1][0, 0]
    ax.set_ylim(1, 1000)
    fg._log_scale(ax, str)  # by default y, and not binary
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear" and _ticks(ax.yaxis) == [10, 100]


def test_lengths_on_a_log2_axis_are_labelled_as_numbers_and_numbers_are_rounded_by_size():
    fig, axes = fg._figure()
    ax = axes[0, 0]
    fg._log2_axis(ax, [2048, 256, 256, 16384])
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert list(ax.get_xticks()) == [256, 2048, 16384]
    assert ax.xaxis.get_major_formatter()(16384, 0) == "16,384"
    assert isinstance(ax.xaxis.get_minor_formatter(), NullFormatter)
    assert [fg.fmt_num(v) for v in (12345.6, 10.6, 10, 9.99, 0.012345, -20)] == [
        "12,346", "11", "10", "9.99", "0.0123", "-20"]


def test_the_palette_gives_each_name_one_colour_whatever_the_order():
    a = fg.palette(["wave", "attention", "mamba", "attention"])
    assert list(a) == ["attention", "mamba", "wave"] and a == fg.palette(["mamba", "wave", "attention"])
    assert len(set(a.values())) == 3
    import seaborn as sns

    assert a["attention"] == sns.color_palette("tab10", 3)[0]
    many = fg.palette([f"m{i:02d}" for i in range(11)])  # past tab10's ten: evenly spaced hues
    assert list(many.values()) == list(sns.color_palette("husl", 11))
    ten = fg.palette([f"m{i}" for i in range(10)])
    assert list(ten.values()) == list(sns.color_palette("tab10", 10))


# ---------------------------------------------------------------- the figures themselves, read before saving


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """Calls a figure function and returns its Figure (saving is recorded, not done), or None."""
    figs: list = []
    monkeypatch.setattr(fg, "_save", lambda fig, path: figs.append(fig) or path)

    def draw(fn, *args):
        path = fn(*args, tmp_path / "f.png")
        assert (path is None) == (not figs)
        return figs.pop() if figs else None

    return draw


def _series(ax) -> dict[str, tuple[list, list]]:
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}


def _scale_row(mixer, L, ms, tps, mem=None, status="ok", error=None):
    return {"mixer": mixer, "seq_len": L, "ms_per_seq": ms, "tokens_per_s": tps, "peak_mem_bytes": mem,
            "status": status, "error": error, "mem_measure": "cuda max_memory_allocated" if mem else None,
            "tokens_per_step": 4096, "d_model": 64, "dtype": "bfloat16", "causal": True, "device": "NVIDIA H200"}


def test_the_scaling_figure_draws_each_mixers_costs_the_guides_and_an_x_at_an_oom(drawn):
    rows = [_scale_row("mamba", 512, 4.0, 2000.0, 2**20), _scale_row("attention", 256, 1.0, 4000.0, 2**19),
            _scale_row("attention", 512, 3.0, 3000.0, 2**21), _scale_row("mamba", 256, 2.0, 3500.0, 2**18),
            _scale_row("attention", 1024, 50.0, None, status="failed", error="OutOfMemoryError: CUDA out of memory")]
    fig = drawn(fg.scaling, rows)  # a failed length's timing, if any, is not drawn
    a_time, a_tps, a_mem = fig.axes[:3]
    t = _series(a_time)
    assert t["attention"] == ([256, 512], [1.0, 3.0]) and t["mamba"] == ([256, 512], [2.0, 4.0])  # by length
    assert _series(a_tps)["mamba"] == ([256, 512], [3500.0, 2000.0])
    assert _series(a_mem)["attention"] == ([256, 512], [2**19, 2**21])
    # guides through the cheapest mixer at the shortest length, over every length asked for
    assert t["O(N) guide"] == ([256, 512, 1024], [1.0, 2.0, 4.0])
    assert t["O(N²) guide"] == ([256, 512, 1024], [1.0, 4.0, 16.0])
    styles = [[(ln.get_label(), ln.get_marker(), ln.get_linestyle()) for ln in ax.get_lines() if ln.get_marker() != "x"]
              for ax in (a_time, a_tps, a_mem)]
    mixers = [("attention", "o", "-"), ("mamba", "o", "-")]
    assert styles == [mixers + [("O(N) guide", "None", ":"), ("O(N²) guide", "None", "--")], mixers, mixers]
    guides = [ln for ln in a_time.get_lines() if "guide" in ln.get_label()]
    assert all(ln.get_color() == "0.5" and ln.get_linewidth() == 1 for ln in guides)
    oom = [ln for ln in a_time.get_lines() if ln.get_marker() == "x"]
    assert len(oom) == 1 and list(oom[0].get_xdata()) == [1024] and list(oom[0].get_ydata()) == [6.0]
    assert oom[0].get_markersize() == 9 and oom[0].get_markeredgewidth() == 2
    assert [tx.get_text() for tx in a_time.texts] == ["OOM"]
    assert a_time.texts[0].xy == (1024, 6.0) and a_time.texts[0].xyann == (4, 4)  # just above right of the x
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in (a_time, a_tps, a_mem))
    assert list(a_time.get_xticks()) == [256, 512, 1024]
    assert _ticks(a_mem.yaxis, 1, 16) == [1, 2, 4, 8, 16] and _ticks(a_time.yaxis, 1, 16) == [1, 2, 5, 10]
    assert a_tps.get_title() == "throughput (4096 tokens per step)"
    assert a_mem.get_title() == "peak memory\n(cuda max_memory_allocated)"
    assert a_time.get_title() == "time per sequence" and a_time.get_ylabel() == "fwd+bwd time per sequence (ms, log)"
    assert a_tps.get_ylabel() == "tokens / s (log)" and a_mem.get_ylabel() == "peak memory of the step (log)"
    assert {ax.get_xlabel() for ax in (a_time, a_tps, a_mem)} == {"sequence length N (tokens)"}
    assert [tx.get_text() for tx in a_time.get_legend().get_texts()] == ["O(N) guide", "O(N²) guide"]
    assert not a_time.get_legend().get_frame_on()
    assert [tx.get_text() for tx in a_mem.get_legend().get_texts()] == ["attention", "mamba"]
    unweighed = [{**r, "peak_mem_bytes": None} if r["mixer"] == "mamba" else r for r in rows]
    part = drawn(fg.scaling, unweighed)  # mamba weighed at no length is still named
    assert [tx.get_text() for tx in part.axes[2].get_legend().get_texts()] == ["attention", "mamba"]
    assert fig.get_suptitle() == ("Mixer cost vs sequence length: forward + backward, d_model=64, bfloat16, "
                                        "causal; NVIDIA H200")
    failed = [{**rows[4], "error": "RuntimeError: boom"}]
    assert [tx.get_text() for tx in drawn(fg.scaling, rows[:4] + failed).axes[0].texts] == ["failed"]
    assert drawn(fg.scaling, rows[4:]) is None  # nothing ok: no figure
    one = drawn(fg.scaling, rows[1:2])  # a single length still draws, titled from its row
    assert one.axes[1].get_title() == "throughput (4096 tokens per step)" and _series(one.axes[0])["attention"][0] == [256]


def test_without_memory_figures_the_scaling_figures_memory_panel_says_n_a(drawn):
    rows = [_scale_row("attention", 256, 1.0, 4000.0), _scale_row("attention", 512, 3.0, 3000.0)]
    fig = drawn(fg.scaling, rows)
    a_time, a_tps, a_mem = fig.axes[:3]
    assert a_mem.get_title() == "peak memory: n/a on this device" and [t.get_text() for t in a_mem.texts] == ["n/a"]
    assert a_mem.get_yscale() == "linear" and a_mem.get_lines() == [] and a_mem.get_legend() is None
    assert [tx.get_text() for tx in a_tps.get_legend().get_texts()] == ["attention"]


def _loss_row(impl, V, N, ms, mem):
    return {"impl": impl, "vocab_size": V, "n_tokens": N, "ms_fwd_bwd": ms, "peak_mem_bytes": mem, "status": "ok",
            "mem_measure": "cpu rss", "d_model": 32, "dtype": "float32", "device": "cpu"}


def test_the_loss_memory_figure_has_a_time_and_a_memory_panel_per_vocabulary_and_the_logits_size(drawn):
    rows = [_loss_row("plain", 8, 64, 2.0, 4096), _loss_row("cce", 8, 64, 3.0, 1024), _loss_row("plain", 8, 16, 1.0, 2048),
            _loss_row("plain", 16, 16, 0.5, 8192),
            {**_loss_row("plain", 16, 64, None, None), "status": "failed", "error": "OutOfMemoryError: CUDA out of memory"}]
    fig = drawn(fg.loss_memory, rows)
    axes = fig.axes
    assert len(axes) == 4  # 2 rows (time, memory) x 2 vocabularies
    t8, t16, m8, m16 = axes
    assert _series(t8)["plain"] == ([16, 64], [1.0, 2.0]) and _series(t8)["cce"] == ([64], [3.0])
    assert _series(m8)["fp32 logits N×V"] == ([16, 64], [4 * 16 * 8, 4 * 64 * 8])
    assert not any(ln.get_marker() == "x" for ln in m16.get_lines())  # on the time panel only
    assert _series(m16)["plain"] == ([16], [8192])
    assert t8.get_title() == "vocabulary 8" and t16.get_title() == "vocabulary 16"
    assert tuple(fig.get_size_inches()) == pytest.approx((4.2 * 2 + 2.0, 3.6 * 2))
    assert m8.get_shared_x_axes().joined(t8, m8) and not t8.get_shared_x_axes().joined(t8, t16)  # per vocabulary
    assert [(ln.get_marker(), ln.get_linestyle()) for ln in m8.get_lines()] == [("o", "-"), ("o", "-"), ("None", ":")]
    assert list(t8.get_xticks()) == [16, 64] and list(m16.get_xticks()) == [16, 64]  # the failed size too
    # an x above this vocabulary's times (not the others') where plain ran out of memory, in plain's colour
    (oom,) = [ln for ln in t16.get_lines() if ln.get_marker() == "x"]
    assert (list(oom.get_xdata()), list(oom.get_ydata())) == ([64], [0.75])
    assert oom.get_color() == t16.get_lines()[0].get_color() and t16.get_lines()[0].get_label() == "plain"
    assert [t.get_text() for t in t16.texts] == ["OOM"] and t16.texts[0].xy == (64, 0.75) and not t8.texts
    assert {ax.get_xlabel() for ax in axes} == {"tokens per batch N"}
    # time in plain numbers, memory in bytes
    assert t8.yaxis.get_major_formatter()(12.0, 0) == "12" and m8.yaxis.get_major_formatter()(2048, 0) == fg.fmt_bytes(2048)
    assert t8.get_ylabel() == "fwd+bwd time (ms, log)" and m8.get_ylabel() == "peak memory (log)"
    assert _ticks(m8.yaxis, 1, 8) == [1, 2, 4, 8] and t8.get_yscale() == "log"
    # one legend, naming cce too though it ran at vocabulary 8 only
    assert [tx.get_text() for tx in m16.get_legend().get_texts()] == ["cce", "plain", "fp32 logits N×V"]
    assert fig.get_suptitle() == "Output loss: forward + backward, d_model=32, float32; cpu\npeak memory: cpu rss"
    no_mem = drawn(fg.loss_memory, [{**r, "peak_mem_bytes": None} for r in rows])
    assert len(no_mem.axes) == 2 and no_mem.get_suptitle().endswith("peak memory: n/a")


def _dec_row(mixer, B, T, step, pre, state, rerun=None):
    return {"mixer": mixer, "batch": B, "context": T, "step_ms": step, "prefill_ms": pre, "state_bytes": state,
            "rerun_ms": rerun, "status": "ok", "preset": "tiny", "d_model": 64, "n_layers": 2, "dtype": "float32",
            "device": "cpu"}


def test_the_decode_figure_draws_latency_prefill_and_state_per_mixer_and_batch(drawn):
    rows = [_dec_row("attention", 1, 512, 2.0, 20.0, 4096, rerun=30.0), _dec_row("attention", 1, 256, 1.0, 10.0, 2048),
            _dec_row("gated_context", 8, 256, 0.5, 5.0, 512), {**_dec_row("mamba", 1, 256, 9.0, 1.0, 1), "status": "failed"},
            _dec_row("wave", 1, 256, None, 1.0, 1)]  # failed, or no step time: not drawn
    fig = drawn(fg.decode, rows)
    a_step, a_pre, a_mem = fig.axes[:3]
    s = _series(a_step)
    assert s["attention (batch 1)"] == ([256, 512], [1.0, 2.0]) and s["gated_context (batch 8)"] == ([256], [0.5])
    assert {k for k in s if not k.startswith("_")} == {"attention (batch 1)", "gated_context (batch 8)"}
    rerun = [ln for ln in a_step.get_lines() if ln.get_linestyle() == ":"]
    assert len(rerun) == 1 and list(rerun[0].get_xdata()) == [512] and list(rerun[0].get_ydata()) == [30.0]
    assert rerun[0].get_alpha() == 0.5 and rerun[0].get_markersize() == 3  # fainter than the stateful line
    assert {ln.get_linestyle() for ax in (a_step, a_pre, a_mem) for ln in ax.get_lines() if ln not in rerun} == {"-"}
    assert _series(a_pre)["attention (batch 1)"][1] == [10.0, 20.0]
    assert _series(a_mem)["gated_context (batch 8)"] == ([256], [512])
    markers = {ln.get_label(): ln.get_marker() for ln in a_pre.get_lines()}
    assert markers == {"attention (batch 1)": "o", "gated_context (batch 8)": "s"}  # one marker per batch size
    assert list(a_step.get_xticks()) == [256, 512] and _ticks(a_mem.yaxis, 1, 8) == [1, 2, 4, 8]
    assert a_pre.get_ylabel() == "prefill time (ms, log)" and a_pre.get_title() == "prefill of the prompt"
    assert a_step.get_ylabel() == "ms per generated token (log)"
    assert a_step.get_title() == "per-token latency (solid: state, dotted: prefix rerun)"
    assert a_mem.get_ylabel() == "decoding state, all layers and rows (log)"
    assert a_mem.get_title() == "state memory (KV cache with doubling headroom)"
    assert {ax.get_xlabel() for ax in (a_step, a_pre, a_mem)} == {"context (tokens already read)"}
    assert [t.get_text() for t in a_mem.get_legend().get_texts()] == ["attention (batch 1)", "gated_context (batch 8)"]
    assert a_mem.get_legend().get_title().get_text() == "mixer"
    assert fig.get_suptitle() == "Stateful decoding vs context: tiny preset (d_model=64, 2 layers), float32; cpu"
    assert drawn(fg.decode, rows[3:]) is None
    assert drawn(fg.decode, rows[1:2]).get_suptitle().endswith("float32; cpu")  # a single row is enough


F1_DECLARED = [{"key": "f1", "header": "F1", "axis": "F1 (token overlap)"}]  # a task's declaration, on one row


def _model(mixer, objective, f1, tps=1000.0, seed=0, **kw):
    return {"mixer": mixer, "objective": objective, "status": "ok", "seed": seed, "norm": "pre",
            "metrics": {"f1": f1, "tokens_per_s": tps}, **kw}


def test_the_score_figure_has_a_bar_per_mixer_and_objective_and_the_references_as_lines(drawn):
    rows = [_model("wave", "autoregressive", 0.2, task_metrics=F1_DECLARED), _model("attention", "autoregressive", 0.4),
            _model("attention", "diffusion", 0.1), {**_model("mamba", "diffusion", 0.9), "status": "failed"},
            _model("mamba", "autoregressive", 0.9, sweep={"seq_len": 64}),  # a sweep point: the sweep figure's
            _model("gated", "autoregressive", None),  # no value: no bar
            _ref("overlap", 0.465), {**_ref("nothing", 0.9), "metrics": {}}]
    fig = drawn(fg.score_by_mixer, rows, "f1", "JSQuAD")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["attention", "wave"]  # sorted; a failed row is no bar
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if p.get_height() > 0)
    assert heights == [0.1, 0.2, 0.4]
    assert all(p.get_zorder() == 2 for p in ax.patches)  # bars above the grid
    assert sorted(t.get_text() for t in ax.texts) == ["0.100", "0.200", "0.400"]  # each bar labelled with its value
    assert [ln.get_label() for ln in ax.get_lines()] == ["baseline: overlap = 0.465"]
    assert ax.get_ylim() == pytest.approx((-0.02, 0.465 * 1.12))  # room above the highest bar or line
    assert ax.get_xlabel() == "token mixer" and ax.get_ylabel() == "F1 (token overlap)"
    assert ax.get_title() == "JSQuAD: F1 by mixer" and tuple(fig.get_size_inches()) == (9.0, 4.5)
    assert "objective / reference" == ax.get_legend().get_title().get_text()
    seeds = rows + [_model("attention", "autoregressive", 0.5, seed=1)]
    title = drawn(fg.score_by_mixer, seeds, "f1", "JSQuAD").axes[0].get_title()
    assert title == "JSQuAD: F1 by mixer (bars: mean ± 95% t-interval over seeds, n=1/2)"
    assert drawn(fg.score_by_mixer, rows[3:], "f1", "JSQuAD") is None
    many = drawn(fg.score_by_mixer, [_model(m, "autoregressive", 0.1) for m in "abcd"], "f1", "JSQuAD")
    assert tuple(many.get_size_inches()) == pytest.approx((1.3 * 4 + 6.0, 4.5))  # wider with more bars


def test_a_bars_variant_goes_on_lines_of_its_own_under_the_mixer():
    r = {"mixer": "attention", "_variant": "pretrain dir:/data/aozora-pd 0.5 ≤2M chars · lr 3e-4"}
    assert fg._bar_name(r) == "attention\npretrain aozora-pd 0.5\n≤2M chars\nlr 3e-4"
    assert fg._bar_name({"mixer": "wave"}) == "wave"


def test_norm_variants_get_their_own_score_bars(drawn):
    rows = [_model("attention", "autoregressive", 0.4), {**_model("attention", "autoregressive", 0.3), "norm": "post"}]
    ax = drawn(fg.score_by_mixer, rows, "f1", "JSQuAD").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["attention\npost-norm", "attention\npre-norm"]


def test_quality_against_speed_is_on_a_log_throughput_axis_with_room_around_the_points(drawn):
    rows = [_model("wave", "autoregressive", 0.2, tps=8000.0, device="cpu", task_metrics=F1_DECLARED),
            _model("attention", "autoregressive", 0.4, tps=2000.0, device="cpu"),
            _ref("overlap", 0.465), {**_ref("nothing", 0.9), "metrics": {}}]
    fig = drawn(fg.quality_vs_speed, rows, "f1", "JSQuAD")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlim() == pytest.approx((2000 / 1.25, 8000 * 1.25))
    assert _ticks(ax.xaxis, 1000, 10000) == [1000, 2000, 5000, 10000]  # 1-2-5 steps over a 6x span
    assert ax.xaxis.get_major_formatter()(5000, 0) == fg.fmt_count(5000)
    assert ax.get_xlabel() == "training throughput (tokens / s, log scale)" and ax.get_ylabel() == "F1 (token overlap)"
    assert ax.get_title() == "JSQuAD: quality vs speed (up and right is better)"
    pts = sorted(tuple(xy) for c in ax.collections for xy in c.get_offsets().tolist())
    assert pts == [(2000.0, 0.4), (8000.0, 0.2)]
    assert all(c.get_zorder() == 3 and list(c.get_sizes()) == [80] for c in ax.collections)  # above the lines
    assert [ln.get_label() for ln in ax.get_lines() if ln.get_label().startswith("baseline")] == [
        "baseline: overlap = 0.465"]
    assert ax.get_ylim() == pytest.approx((-0.02, 0.465 * 1.12))
    leg = ax.get_legend()  # outside, naming mixers and objectives, one device: not named
    assert not leg.get_frame_on() and "autoregressive" in [t.get_text() for t in leg.get_texts()]
    fig.canvas.draw()
    assert leg.get_window_extent().x0 > ax.get_window_extent().x1
    two = rows[:1] + [{**rows[1], "device": "NVIDIA H200"}]
    texts = [t.get_text() for t in drawn(fg.quality_vs_speed, two, "f1", "JSQuAD").axes[0].get_legend().get_texts()]
    assert "autoregressive · cpu" in texts and "autoregressive · NVIDIA H200" in texts  # speeds of two devices
    assert drawn(fg.quality_vs_speed, [_model("wave", "autoregressive", 0.2, tps=None)], "f1", "JSQuAD") is None


def _curve_row(mixer, objective, points, seed=0, norm="pre", **kw):
    return {"mixer": mixer, "objective": objective, "status": "ok", "seed": seed, "norm": norm, "metrics": {},
            "loss_curve": points, **kw}


def test_loss_curves_put_each_objective_in_its_own_panel_and_name_every_cell_once(drawn):
    nan = float("nan")
    rows = [_curve_row("wave", "diffusion", [{"frac": 0.5, "dev_loss": 4.0}, {"frac": 1.0, "dev_loss": 3.0}],
                       metrics={"ppl_bound": 20.0}),
            _curve_row("attention", "autoregressive", [{"tokens": 1000, "frac": 0.5, "dev_loss": 5.0},
                                                       {"tokens": 2000, "frac": 1.0, "dev_loss": nan},
                                                       {"tokens": 3000, "frac": 1.0, "dev_loss": 2.5}]),
            _curve_row("mamba", "autoregressive", [{"tokens": 1000, "dev_loss": None}]),  # nothing finite: no line
            {**_curve_row("gated", "autoregressive", [{"tokens": 1, "dev_loss": 1.0}]), "status": "failed"},
            _ref("overlap", 0.465)]
    fig = drawn(fg.loss_curves, rows, "JSQuAD")
    ar, diff = fig.axes
    assert fig.get_size_inches() == pytest.approx((4.6 * 2 + 2.6, 4.8))  # room per panel
    # the tokens seen where the row has them (else the budget's fraction); unfinished points left out
    assert _series(ar) == {"attention": ([1000, 3000], [5.0, 2.5])}
    assert _series(diff) == {"wave": ([0.5, 1.0], [4.0, 3.0])}
    assert ar.get_title() == "autoregressive" and ar.get_ylabel() == "dev loss (nats / target token)"
    # masked diffusion's loss is a bound, on its own axis
    assert diff.get_title() == "diffusion (a bound: not comparable across panels)"
    assert diff.get_ylabel() == "dev loss bound (nats / target token)"
    assert ar.get_xlabel() == diff.get_xlabel() == "training tokens seen"
    assert ar.xaxis.get_major_formatter()(2_000_000, 0) == fg.fmt_count(2_000_000) != "2000000"
    line = ar.get_lines()[0]
    assert line.get_marker() == "o" and line.get_markersize() == 4 and line.get_linewidth() == 1.5
    # one legend, right of the last panel, naming the mixers of every panel
    leg = diff.get_legend()
    assert ar.get_legend() is None and leg.get_title().get_text() == "mixer" and not leg.get_frame_on()
    assert [t.get_text() for t in leg.get_texts()] == ["attention", "wave"]
    assert fig.get_suptitle() == "JSQuAD: dev loss over the budget, every cell (colour = mixer)"
    assert drawn(fg.loss_curves, rows[2:], "JSQuAD") is None


def test_loss_curves_tell_seeds_norms_and_sweep_points_apart_by_name_and_marker(drawn):
    pts = [{"tokens": 10, "dev_loss": 3.0}]
    rows = [_curve_row("attention", "autoregressive", pts, seed=0), _curve_row("attention", "autoregressive", pts, seed=1),
            _curve_row("wave", "autoregressive", pts, seed=1)]
    fig = drawn(fg.loss_curves, rows, "JSQuAD")
    (ax,) = fig.axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines) == ["attention · seed 0", "attention · seed 1", "wave · seed 1"]
    # colour = mixer, marker = seed
    assert lines["attention · seed 0"].get_color() == lines["attention · seed 1"].get_color() \
        != lines["wave · seed 1"].get_color()
    assert [ln.get_marker() for ln in lines.values()] == ["o", "s", "s"]
    assert fig.get_suptitle() == "JSQuAD: dev loss over the budget, every cell (colour = mixer, marker = seed / norm)"
    norms = [rows[0], _curve_row("attention", "autoregressive", pts, norm="post")]
    fig = drawn(fg.loss_curves, norms, "JSQuAD")
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["attention · pre-norm", "attention · post-norm"]
    assert fig.get_suptitle().endswith("(colour = mixer, marker = seed / norm)")
    sweep = [_curve_row("attention", "autoregressive", pts, sweep={"seq_len": 64, "d_model": 32})]
    assert [ln.get_label() for ln in drawn(fg.loss_curves, sweep, "MQAR").axes[0].get_lines()] == [
        "attention · d_model=32, seq_len=64"]


def _sweep_row(mixer, L, d, acc, objective="autoregressive", seed=0):
    return {"mixer": mixer, "objective": objective, "status": "ok", "seed": seed, "sweep": {"seq_len": L, "d_model": d},
            "metrics": {"acc": acc}, "task_metrics": [{"key": "acc", "header": "accuracy", "axis": "recall accuracy"}]}


def test_sweep_curves_draw_a_line_per_mixer_in_a_panel_per_facet_value_averaging_seeds(drawn):
    rows = [_sweep_row("attention", 128, 32, 0.9), _sweep_row("attention", 64, 32, 0.5),
            _sweep_row("attention", 64, 32, 0.7, seed=1), _sweep_row("mamba", 64, 32, 0.2),
            _sweep_row("attention", 64, 64, 1.0),
            {**_sweep_row("wave", 64, 64, 0.3), "sweep": {"d_model": 64}},  # no point on x: left out
            {**_sweep_row("wave", 64, 64, 0.3), "metrics": {}},  # no value: left out
            {**_sweep_row("wave", 64, 64, 0.3), "sweep": None},  # not a sweep row
            {**_sweep_row("gated", 64, 64, 0.3), "status": "failed"}]
    fig = drawn(fg.sweep_curves, rows, "acc", "seq_len", "d_model", "MQAR")
    a32, a64 = fig.axes
    assert fig.get_size_inches() == pytest.approx((3.6 * 2 + 2.0, 4.2))
    assert _series(a32) == {"attention": ([64, 128], [pytest.approx(0.6), 0.9]), "mamba": ([64], [0.2])}
    assert _series(a64) == {"attention": ([64], [1.0])}
    assert all(ln.get_marker() == "o" for ln in a32.get_lines() + a64.get_lines())
    assert _series(a32)["attention"] != _series(a64)["attention"]
    assert a32.get_lines()[0].get_color() == a64.get_lines()[0].get_color()  # one colour per mixer across panels
    assert a32.get_title() == "d_model = 32" and a64.get_title() == "d_model = 64"
    assert a32.get_shared_y_axes().joined(a32, a64) and a32.get_ylim() == pytest.approx((-0.02, 1.02))
    assert a32.get_xscale() == "log" and list(a32.get_xticks()) == [64, 128] and list(a64.get_xticks()) == [64]
    assert a32.get_xlabel() == "sequence length (tokens)" and a32.get_ylabel() == "recall accuracy"
    assert a64.get_ylabel() == ""  # the shared axis labelled once
    # one legend right of the last panel, naming mamba too though it has no point there
    assert a32.get_legend() is None and [t.get_text() for t in a64.get_legend().get_texts()] == ["attention", "mamba"]
    assert a64.get_legend().get_title().get_text() == "mixer"
    assert fig.get_suptitle() == "MQAR: accuracy vs sequence length (tokens)"
    assert drawn(fg.sweep_curves, rows[5:], "acc", "seq_len", "d_model", "MQAR") is None


def test_sweep_curves_without_the_facet_draw_one_panel_and_name_objectives_when_several(drawn):
    rows = [_sweep_row("attention", 64, 32, 0.5), _sweep_row("attention", 128, 32, 0.8),
            _sweep_row("attention", 64, 32, 0.1, objective="diffusion")]
    fig = drawn(fg.sweep_curves, rows, "acc", "seq_len", "n_kv", "MQAR")  # no row has n_kv: one untitled panel
    (ax,) = fig.axes
    assert ax.get_title() == "" and fig.get_size_inches() == pytest.approx((5.6, 4.2))
    assert _series(ax) == {"attention · autoregressive": ([64, 128], [0.5, 0.8]), "attention · diffusion": ([64], [0.1])}
    fig = drawn(fg.sweep_curves, rows[:2], "acc", "d_model", "seq_len", "MQAR")  # by width, a panel per length
    assert [a.get_title() for a in fig.axes] == ["seq_len = 64", "seq_len = 128"]
    assert fig.axes[0].get_xlabel() == "model width d_model" and fig.get_suptitle() == "MQAR: accuracy vs model width d_model"


def _nll_row(mixer: str, objective: str, nll: list[float], targets: list[int]) -> dict:
    return {"mixer": mixer, "objective": objective, "seed": 0, "status": "ok", "norm": "pre",
            "metrics": {"f1": 0.1}, "per_question": {"id": [f"q{i}" for i in range(len(nll))], "f1": [0.1] * len(nll),
                                                      "nll": list(nll), "targets": list(targets)}}


def test_the_perplexity_figure_draws_each_cells_paired_ratio_to_attention_around_1(drawn):
    """One point per configuration but attention's, at its perplexity over attention's of the same objective
    (one nat less on every target token: e^-1; one more: e), its 95% interval as the error bar, one colour
    per objective named once, a dashed line at 1; rows that cannot pair (other target tokens, no NLLs)
    drawn nowhere, and no figure when none pairs. Ordered as the table, by objective then name, top down."""
    import math

    from reports.seeds import ppl_ratios

    t = [2, 3, 1, 4] * 10
    base = [2.0 * n for n in t]
    rows = [_nll_row("attention", "autoregressive", base, t),
            _nll_row("better", "autoregressive", [b - n for b, n in zip(base, t)], t),
            _nll_row("noisy", "autoregressive", [b + (-1) ** i * 0.05 * i for i, b in enumerate(base)], t),
            _nll_row("attention", "diffusion", base, t),
            _nll_row("worse", "diffusion", [b + n for b, n in zip(base, t)], t),
            _nll_row("elsewhere", "diffusion", base, [n + 1 for n in t])]
    fig = drawn(fg.ppl_ratio, rows, "t")
    ax = fig.axes[0]
    points = [(c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0], c.lines[0].get_color()) for c in ax.containers]
    noisy = next(d for r, d in ppl_ratios(rows).values() if r["mixer"] == "noisy")
    assert noisy.lo < noisy.diff < noisy.hi
    assert [(round(x, 4), y) for x, y, _ in points] == [(round(math.exp(-1), 4), 0), (round(math.exp(noisy.diff), 4), 1),
                                                      (round(math.e, 4), 2)]
    assert points[0][2] == points[1][2] != points[2][2]  # one colour per objective
    # the error bar spans the interval
    [[(x0, _), (x1, _)]] = ax.containers[1].lines[2][0].get_segments()
    assert (x0, x1) == pytest.approx((math.exp(noisy.lo), math.exp(noisy.hi)))
    assert [tk.get_text() for tk in ax.get_yticklabels()] == ["better", "noisy", "worse"] and ax.yaxis_inverted()
    assert [ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == "--"] == [1.0]
    assert ax.get_xscale() == "log" and ax.get_xlim() == pytest.approx((math.exp(-1) / 1.1, math.e * 1.1))
    assert [tx.get_text() for tx in ax.get_legend().get_texts()] == ["autoregressive", "diffusion"]  # each once
    for r in rows:
        del r["per_question"]["nll"]
    assert drawn(fg.ppl_ratio, rows, "t") is None


def test_the_added_vs_alone_figure_draws_each_paired_line_in_its_panels(drawn):
    """reports/additions.py's figure: each line that pairs with its task-alone line, its Δ of the headline
    metric (left, linear, dashed at 0) and its perplexity ratio (right, log, dashed at 1) with the interval
    as the error bar; a panel only where some line pairs in it; one colour per mixer, named once; lines in
    the table's order, top down, ticked with mixer, objective and what they add (a folder by its name);
    no figure when nothing pairs."""
    import math

    from core.schema import Metric
    from reports.additions import Comparison, Line
    from reports.stats import PairedDiff

    def pd_(mid, lo, hi, log=False):
        f = math.log if log else float
        return PairedDiff(f(mid), f(lo), f(hi), 500, 3, 10_000, 0.95)

    lines = [Line("a", "autoregressive", "", [], None, None),
             Line("a", "autoregressive", "pretrain passages 0.5", [], pd_(0.1, 0.05, 0.2), pd_(0.8, 0.7, 0.9, True)),
             Line("a", "autoregressive", "pretrain dir:../data/aozora-pd 0.5", [], "not scored on the same questions",
                  pd_(1.2, 1.1, 1.3, True)),
             Line("b", "diffusion", "extra_train=jaquad", [], pd_(-0.05, -0.1, 0.0), None)]
    c = Comparison("jsquad", Metric("f1", "F1", "max"), True, lines)
    fig = drawn(fg.added_vs_alone, c, "t")
    left, right = fig.axes[:2]

    def points(ax):
        return [(round(float(k.lines[0].get_xdata()[0]), 6), int(k.lines[0].get_ydata()[0]), k.lines[0].get_color())
                for k in ax.containers]

    assert [p[:2] for p in points(left)] == [(0.1, 0), (-0.05, 2)]
    assert [p[:2] for p in points(right)] == [(0.8, 0), (1.2, 1)]
    assert points(left)[0][2] == points(right)[0][2] == points(right)[1][2] != points(left)[1][2]
    [[(x0, _), (x1, _)]] = left.containers[0].lines[2][0].get_segments()
    assert (x0, x1) == pytest.approx((0.05, 0.2))
    [[(x0, _), (x1, _)]] = right.containers[1].lines[2][0].get_segments()
    assert (x0, x1) == pytest.approx((1.1, 1.3))
    assert [ln.get_xdata()[0] for ln in left.get_lines() if ln.get_linestyle() == "--"] == [0.0]
    assert [ln.get_xdata()[0] for ln in right.get_lines() if ln.get_linestyle() == "--"] == [1.0]
    assert right.get_xscale() == "log" and right.get_xlim() == pytest.approx((0.7 / 1.1, 1.3 * 1.1))
    assert left.get_xscale() == "linear" and "right of 0: higher" in left.get_xlabel()
    assert [tk.get_text() for tk in left.get_yticklabels()] == [
        "a · autoregressive\npretrain passages 0.5", "a · autoregressive\npretrain aozora-pd 0.5",
        "b · diffusion\nextra_train=jaquad"] and left.yaxis_inverted()
    assert right.yaxis_inverted() and right.get_ylim() == left.get_ylim()  # one row per line across the panels
    assert right.get_xlabel().startswith("perplexity ÷ the task alone's") and "left of 1: lower" in right.get_xlabel()
    assert tuple(fig.get_size_inches()) == pytest.approx((13.0, 0.55 * 3 + 1.5))  # 5 in a panel, a row per line
    assert [tx.get_text() for tx in right.get_legend().get_texts()] == ["a", "b"]
    assert fig.get_suptitle().startswith("t: pretraining and extra data")
    # no ratio pairs: the Δ panel alone; a lower-is-better metric says so; nothing pairs: no figure
    for line in lines:
        line.ratio = None
    one = drawn(fg.added_vs_alone, Comparison("mqar", Metric("miss", "miss rate", "min"), False, lines), "t")
    assert len([a for a in one.axes if a.get_xlabel()]) == 1 and "right of 0: lower" in one.axes[0].get_xlabel()
    lines[1].delta = lines[3].delta = "no per-question scores"
    assert drawn(fg.added_vs_alone, c, "t") is None
