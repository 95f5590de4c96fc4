"""History-state size (L2M, arXiv 2503.04725): what each mixer carries between positions at inference.

Hand-computed values for attention and gated_context; for every registered mixer the shape of the
law: an int, constant in T for every mixer except attention (whose KV cache grows linearly)."""
from __future__ import annotations

import types

import pytest

import mixers
import run_matrix
from harness.cell import _state_floats
from core.data import SeqSet
from harness.model import LM, LMConfig
from core.results import cell_rows, read_rows

D = 64
GROWS_WITH_T = {"attention"}  # a full KV cache; every other built-in mixer keeps a fixed-size state
LENGTHS = (100, 300)
MODES = [pytest.param(True, id="causal"), pytest.param(False, id="bidir")]


@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("T", LENGTHS)
def test_attention_keeps_keys_and_values_of_every_position(T, causal):
    m = mixers.build("attention", D, causal)
    assert m.state_floats(T) == 2 * T * D  # K and V: T x d_model each
    assert mixers.build("attention", D, causal, head_dim=16).state_floats(T) == 2 * T * D  # heads split D


@pytest.mark.parametrize("T", LENGTHS)
def test_gated_context_keeps_one_context_vector_per_direction(T):
    assert mixers.build("gated_context", D, True).state_floats(T) == D
    assert mixers.build("gated_context", D, True, d_ctx=24).state_floats(T) == 24
    assert mixers.build("gated_context", D, False).state_floats(T) == 2 * D
    assert mixers.build("gated_context", D, False, d_ctx=24).state_floats(T) == 48


@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("name", mixers.names())
def test_state_size_is_an_int_constant_in_T_except_for_attention(name, causal):
    m = mixers.build(name, D, causal)
    s1, s2, s3 = (m.state_floats(T) for T in (100, 200, 300))
    assert all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in (s1, s2, s3))
    if name in GROWS_WITH_T:
        assert s2 - s1 == s3 - s2 > 0 and s1 == 100 * m.state_floats(1)  # linear through the origin
    else:
        assert s1 == s2 == s3, f"{name}: a fixed-size state cannot depend on the length"


@pytest.mark.parametrize("name", mixers.names())
def test_model_state_sums_its_layers(name):
    model = LM(LMConfig(vocab_size=50, d_model=D, n_layers=3, mixer=name, causal=True, mlp_hidden=32))
    assert model.state_floats(128) == 3 * mixers.build(name, D, True).state_floats(128)


def test_cell_records_the_state_at_the_mean_evaluation_length():
    model = LM(LMConfig(vocab_size=50, d_model=D, n_layers=2, mixer="attention", causal=True, mlp_hidden=32))
    lengths = [10, 21, 30]  # mean 20.33 -> T = 20
    data = types.SimpleNamespace(eval=SeqSet.from_lists([[5] * n for n in lengths], [[False] * n for n in lengths], 0))
    assert _state_floats(model, data) == (20, 2 * (2 * 20 * D))


def test_a_mixer_that_does_not_report_its_state_leaves_the_figure_empty(monkeypatch):
    """Adding a mixer is adding one file: one without `state_floats` (the base class raises
    NotImplementedError) still gets its row, with no state figure (None), rather than a failed cell."""
    model = LM(LMConfig(vocab_size=50, d_model=D, n_layers=2, mixer="attention", causal=True, mlp_hidden=32))
    for blk in model.blocks:
        monkeypatch.setattr(blk.mixer, "state_floats", types.MethodType(mixers.Mixer.state_floats, blk.mixer))
    data = types.SimpleNamespace(eval=SeqSet.from_lists([[5] * 8], [[False] * 8], 0))
    assert _state_floats(model, data) == (8, None)


def test_grid_rows_carry_norm_and_state_size(offline_dir, tmp_path, cache_dir):
    """The issue's done-when, on the hand-made fixture: gated_context and attention under --norm hybrid."""
    out = tmp_path / "out"
    args = ["--mixers", "gated_context,attention", "--objectives", "autoregressive", "--norm", "hybrid",
            "--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--grid", "g", "--no-report"]
    assert run_matrix.main(args) == 0
    rows = {r["mixer"]: r for r in cell_rows(read_rows(out / "results" / "g.jsonl"))}
    assert set(rows) == {"gated_context", "attention"}
    for name, r in rows.items():
        assert r["status"] == "ok", r.get("error")
        assert r["norm"] == "hybrid" and r["model"]["norm"] == "hybrid"
        m = r["metrics"]
        T = m["state_T"]
        assert isinstance(T, int) and T > 10
        d, layers = r["model"]["d_model"], r["model"]["n_layers"]
        want = layers * (2 * T * d if name == "attention" else d)
        assert m["state_floats"] == want
    assert rows["gated_context"]["backend"]["mixer"] == ["pairwise_scan"]


def test_list_shows_the_mixer_and_the_norm_options(capsys):
    run_matrix.main(["--list"])
    out = capsys.readouterr().out
    assert "gated_context" in out and "d_ctx=0" in out
    assert "norms:   pre, post, hybrid" in out
