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
            _ref("first", 0.25, setting="k=2"),
            {**_ref("broken", 0.7), "status": "failed"},  # not ok: no line
            {**_ref("nothing", 0.1), "metrics": {}},  # no value: no line
            {"mixer": "attention", "objective": "autoregressive", "status": "ok", "metrics": {"f1": 0.5}}]  # a model
    fg._reference_lines(ax, rows, "f1")
    lines = ax.get_lines()
    # highest first; a name shared by two rows gets its setting, a lone one does not
    assert [ln.get_label() for ln in lines] == ["ceiling: oracle = 0.900", "baseline: overlap = 0.465",
                                                "baseline: first (k=2) = 0.250", "baseline: first = 0.200"]
    assert [ln.get_ydata()[0] for ln in lines] == [0.9, 0.465, 0.25, 0.2]
    assert [ln.get_color() for ln in lines] == ["0.15", "0.5", "0.5", "0.5"]
    assert lines[0].get_linestyle() == ":" and all(ln.get_linestyle() == "--" for ln in lines[1:])
    # the baselines' dash patterns: one each, in REF_DASHES' order after the ceiling's slot
    assert [ln._unscaled_dash_pattern for ln in lines[1:]] == fg.REF_DASHES[1:4]
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
    assert leg._loc == 2 and not leg.get_frame_on()  # 2: upper left, anchored right of the axes
    anchor = leg.get_bbox_to_anchor().transformed(ax.transAxes.inverted())
    assert anchor.x0 == pytest.approx(1.02) and anchor.y0 == pytest.approx(1.0)


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
    assert list(y.get_major_locator().locs) == [13.0, 16.0, 20.0]
    _, y = _log_axis(10, 30)  # exactly 3x is still narrow
    assert isinstance(y.get_major_locator(), FixedLocator)
    _, y = _log_axis(10, 200)  # up to 30x: 1-2-5 steps
    loc = y.get_major_locator()
    assert isinstance(loc, LogLocator) and loc._base == 10 and list(loc._subs) == [1.0, 2.0, 5.0]
    _, y = _log_axis(10, 1e5)  # wider: decades
    assert list(y.get_major_locator()._subs) == [1.0]
    for hi, base in ((64, 2), (65, 4), (4096, 4), (4097, 16)):  # bytes: powers of 2, 4 or 16 by the span
        _, y = _log_axis(1, hi, binary=True)
        assert y.get_major_locator()._base == base, hi
    # the labels are the given format's; no minor labels
    assert y.get_major_formatter()(1000.0, 0) == "<1000>" and isinstance(y.get_minor_formatter(), NullFormatter)
    ax, x = _log_axis(1, 1000, axis="x")  # the same on x, y left alone
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear" and x.get_major_locator()._base == 10
    ax, y = fg._figure()[1][0, 0], None
    ax.set_ylim(1, 1000)
    fg._log_y(ax, str)
    assert ax.get_yscale() == "log" and list(ax.yaxis.get_major_locator()._subs) == [1.0]


def test_lengths_on_a_log2_axis_are_labelled_as_numbers_and_numbers_are_rounded_by_size():
    fig, axes = fg._figure()
    ax = axes[0, 0]
    fg._log2_axis(ax, [2048, 256, 256, 16384])
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert list(ax.get_xticks()) == [256, 2048, 16384]
    assert ax.xaxis.get_major_formatter()(16384, 0) == "16,384"
    assert isinstance(ax.xaxis.get_minor_formatter(), NullFormatter)
    assert [fg.fmt_num(v) for v in (12345.6, 10, 9.99, 0.012345, -20)] == ["12,346", "10", "9.99", "0.0123", "-20"]


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
