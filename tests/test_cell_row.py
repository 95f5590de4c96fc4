"""One cell run in this process (`harness.cell.run_cell`): the row's bookkeeping beside its metrics.

The grid tests (tests/test_grid.py) run whole grids on the JSQuAD fixture; a run there takes tens of
seconds and reads the row through the report. These run one tiny MQAR cell (generated data, no
tokenizer: a few seconds) and read what run_cell itself writes: where the cell's time went (on a
virtual clock, so the split is exact), the progress fractions the grid's line shows, how the cell
trained (compiled or not, warmed or not, at which rate), the initialisation its seed gives, and which
failures of a data-parallel cell are a row. The pretraining stage's MFU needs a task with passages:
that one test runs a JSQuAD fixture cell."""
from __future__ import annotations

import re
import types

import pytest
import torch

import harness.cell as hc
from harness.cell import TRAIN_SHARE, Cell, RunContext, run_cell

MQAR = {"seq_len": "32", "train_tokens": "2048", "dev_seqs": "4", "eval_seqs": "40", "latency_n": "1"}


def _cell(**kw) -> Cell:
    return Cell(task="mqar", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=1024",
                task_opts=MQAR, **kw)


def _ctx(cache_dir, data_dir=None, **kw) -> RunContext:
    """A quiet CPU context (no progress bar, no log); `kw` as RunContext's (phase, dist)."""
    return RunContext(torch.device("cpu"), data_dir, cache_dir, "g", progress=False, log=lambda _m: None, **kw)


def test_a_cells_timing_splits_its_wall_time_into_its_phases(tmp_path, monkeypatch):
    """`timing`: prepare (plan, model), train (without the dev checks), dev (the checks), eval; the four add
    up to the cell's wall time. A virtual clock for run_cell: preparing takes 1 s, training 10 s of which
    the dev checks took 3 s, each answers progress call 0.5 s and each perplexity call 0.25 s."""
    clock = [100.0]
    monkeypatch.setattr(hc, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    cost = {"prepare": 1.0, "evaluate answers": 0.5, "evaluate ppl": 0.25}
    calls: list[str] = []

    def phase(text: str, _frac: float) -> None:
        kind = next((k for k in cost if text.startswith(k)), None)
        if kind:
            calls.append(kind)
            clock[0] += cost[kind]

    real_train = hc.train

    def train(*a, **k):
        res = real_train(*a, **k)
        clock[0] += 10.0
        res.dev_seconds = 3.0
        return res

    monkeypatch.setattr(hc, "train", train)
    row = run_cell(_cell(), _ctx(tmp_path, phase=phase))
    assert row["status"] == "ok", row.get("error")
    n_answers, n_ppl = calls.count("evaluate answers"), calls.count("evaluate ppl")
    assert calls[0] == "prepare" and n_answers >= 2 and n_ppl >= 2
    assert row["timing"] == {"prepare_s": 1.0, "train_s": 7.0, "dev_s": 3.0, "eval_s": 0.5 * n_answers + 0.25 * n_ppl}
    assert row["wall_s"] == 1.0 + 10.0 + 0.5 * n_answers + 0.25 * n_ppl


def test_a_cells_progress_goes_from_prepare_through_training_and_evaluation_to_the_end(tmp_path):
    """The grid's progress line: prepare at 0, training up to TRAIN_SHARE (its percent in the text), the
    answers up to 0.8, the perplexity pass up to 1.0, each at its n/m; never backwards."""
    phases: list[tuple[str, float]] = []
    row = run_cell(_cell(), _ctx(tmp_path, phase=lambda text, frac: phases.append((text, frac))))
    assert row["status"] == "ok", row.get("error")
    assert phases[0] == ("prepare", 0.0)
    fracs = [f for _t, f in phases]
    assert fracs == sorted(fracs) and fracs[-1] == pytest.approx(1.0)
    trains = [(int(re.fullmatch(r"train (\d+)%", t).group(1)), f) for t, f in phases if t.startswith("train")]
    assert len(trains) >= 2 and trains[-1] == (100, TRAIN_SHARE)
    for pct, f in trains:
        assert 0 < f <= TRAIN_SHARE and pct == pytest.approx(100 * f / TRAIN_SHARE, abs=1)
    evals = [(t, f) for t, f in phases if t.startswith("evaluate")]
    kinds = [t.split()[1] for t, _f in evals]
    assert kinds == sorted(kinds) and kinds.count("answers") >= 2 and kinds.count("ppl") >= 2  # answers first
    for text, f in evals:
        kind, n, m = re.fullmatch(r"evaluate (answers|ppl) (\d+)/(\d+)", text).groups()
        start, share = (TRAIN_SHARE, 0.3) if kind == "answers" else (0.8, 0.2)
        assert f == pytest.approx(start + share * int(n) / int(m))
    assert evals[0][1] >= TRAIN_SHARE and [f for t, f in evals if "answers" in t][-1] == pytest.approx(0.8)


def test_a_cells_train_record_says_how_it_trained(tmp_path, monkeypatch):
    """An eager cell: not compiled, no compile fields, at the preset's rate (or the cell's own), its task
    stage trained on the protocol's training split. A compiled one (torch.compile stood in: compilation
    is not the point) says compiled, not warmed (no worker compiled it first), and its mode and scope.
    Functions dynamo left eager are the cell's own: an earlier cell's hit in this process is not listed."""
    import harness.compiling as hcomp

    monkeypatch.setattr(hcomp, "_LIMIT_HITS", ["recompile_limit (8): forward (an earlier cell's)"])
    row = run_cell(_cell(), _ctx(tmp_path))
    assert row["status"] == "ok", row.get("error")
    assert [m["key"] for m in row["task_metrics"]] == ["accuracy"] and "associative recall" in row["protocol_text"]
    tr = row["train"]
    assert tr["compile"] is False and "compile_warmed" not in tr and "compile_mode" not in tr
    assert "nested_graph_breaks" not in tr and "scan_ops" not in tr
    assert tr["recompile_limit_hits"] == []
    assert tr["lr"] == hc.get_preset("tiny").lr and tr["pad_to"] == 1 and tr["dev_checks"] == len(row["loss_curve"])
    assert [st["stage"] for st in tr["stages"]] == ["task"] and tr["stages"][-1]["sources"] == [row["protocol"]]
    assert row["protocol"].startswith("mqar-T32")

    assert run_cell(_cell(lr=0.02), _ctx(tmp_path))["train"]["lr"] == 0.02

    monkeypatch.setattr(torch, "compile", lambda module, **_kw: module)
    compiled = run_cell(_cell(compile=True), _ctx(tmp_path))
    assert compiled["status"] == "ok", compiled.get("error")
    tr = compiled["train"]
    assert tr["compile"] is True and tr["compile_error"] is None and tr["compile_warmed"] is False
    assert (tr["compile_mode"], tr["compile_scope_asked"]) == ("default", "blocks")
    # graph breaks resumed in the nested call (harness.compiling.nest_graph_breaks), where torch has the switch
    import torch._dynamo.config as dynamo_config

    assert tr["nested_graph_breaks"] is (True if hasattr(dynamo_config, "nested_graph_breaks") else None)
    # the Triton scans as custom operators (mixers/_ops.py), unless WAVEBENCH_SCAN_OPS=0 turned them off
    import mixers._ops

    assert tr["scan_ops"] is True
    monkeypatch.setattr(mixers._ops, "ENABLED", False)
    assert run_cell(_cell(compile=True), _ctx(tmp_path))["train"]["scan_ops"] is False


def test_a_cell_sets_cudnn_attention_as_it_asks_and_its_row_says_what_was_set(tmp_path, monkeypatch):
    """Each cell sets, with its own setting, whether SDPA may use cuDNN's attention (global to the process: an
    earlier cell may have allowed it), and the row records the answer: None on a CPU, where nothing is set."""
    assert run_cell(_cell(), _ctx(tmp_path))["train"]["sdpa_cudnn"] is None
    calls = []
    monkeypatch.setattr(hc, "allow_cudnn_attention", lambda device, allowed: calls.append(allowed) or allowed)
    for asked in (True, False):
        row = run_cell(_cell(sdpa_cudnn=asked), _ctx(tmp_path))
        assert row["status"] == "ok", row.get("error")
        assert row["train"]["sdpa_cudnn"] is asked
    assert calls == [True, False]


def test_a_pretraining_cells_stage_mfu_is_at_its_packed_row_length(offline_dir, cache_dir, monkeypatch):
    """The pretraining stage's MFU is computed at the corpus's packed row length and its own tokens/s (the
    headline MFU at the task's mean length); the task stage gets none. MFU is None on a CPU, so it is
    stood in by a function that returns what it was asked."""
    monkeypatch.setattr(hc, "mfu", lambda model, tps, seq_len, device, name: {
        "flops_per_token": 1, "mfu": ("mfu", tps, seq_len), "mfu_basis": "stand-in", "peak_tflops": None})
    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=12000",
                task_opts={"eval_limit": "1"}, pretrain={"sources": ["passages"], "frac": 0.5})
    row = run_cell(cell, _ctx(cache_dir, offline_dir))
    assert row["status"] == "ok", row.get("error")
    pre, task = row["train"]["stages"]
    assert (pre["stage"], task["stage"]) == ("pretrain", "task")
    assert pre["mfu"] == ("mfu", pre["tokens_per_s"], row["pretrain"]["corpus"]["row_len"])
    assert "mfu" not in task
    assert row["metrics"]["mfu"][:2] == ("mfu", row["metrics"]["tokens_per_s"])


def test_a_cells_label_names_its_sweep_point():
    assert _cell(seed=2).label() == "attention x autoregressive (seed 2)"
    assert _cell(sweep={"seq_len": 64, "d_model": 32}).label() == "attention x autoregressive (seed 0 seq_len=64 d_model=32)"


def test_a_cell_trains_from_its_seeds_initialisation_whatever_ran_before_it(tmp_path):
    """run_cell seeds the model's initialisation with the cell's seed: a cell run again in the same process
    (a retry, or after other cells drew from the global generator) trains the same model from the same
    start; another seed does not."""
    first = run_cell(_cell(), _ctx(tmp_path))
    torch.rand(7)  # what an earlier cell leaves of the global generator
    again = run_cell(_cell(), _ctx(tmp_path))
    other = run_cell(_cell(seed=1), _ctx(tmp_path))
    assert first["loss_curve"] == again["loss_curve"] and first["metrics"]["accuracy"] == again["metrics"]["accuracy"]
    assert [p["train_loss"] for p in other["loss_curve"]] != [p["train_loss"] for p in first["loss_curve"]]


@pytest.mark.parametrize("rank", [0, 1])
def test_under_ddp_a_failure_every_rank_meets_is_a_row_and_any_other_stops_the_job(tmp_path, monkeypatch, rank):
    """A data-parallel cell (a two-rank DistEnv stood in; its training stood in by a failure). A NaN loss
    or a budget error is met by every rank at the same step: the cell is a failed row (rank 0's; the other
    ranks return None) and the grid goes on. Any other failure may be one rank's: it is raised, so torchrun
    stops every rank instead of leaving the healthy ones hanging in their next collective."""
    from harness import distributed as ddp

    def failing(error: Exception):
        def train(*_a, **_k):
            raise error
        return train

    ctx = _ctx(tmp_path, dist=ddp.DistEnv(world_size=2, rank=rank))
    monkeypatch.setattr(hc, "train", failing(FloatingPointError("loss is nan at step 3")))
    row = run_cell(_cell(), ctx)
    if rank == 0:
        assert row["status"] == "failed" and row["error"] == "FloatingPointError: loss is nan at step 3"
        assert row["world_size"] == 2
    else:
        assert row is None
    monkeypatch.setattr(hc, "train", failing(RuntimeError("one rank's own failure")))
    with pytest.raises(RuntimeError, match="one rank's own failure"):
        run_cell(_cell(), ctx)


def test_a_sweeps_short_runs_start_from_the_full_runs_initialisation(tmp_path, monkeypatch):
    """The learning-rate sweep compares rates, not initialisations: each short run builds its model from the
    cell's seed, as the full run does, so all start from the same weights."""
    inits: list[torch.Tensor] = []

    class Recorded(hc.LM):
        def __init__(self, cfg):
            super().__init__(cfg)
            inits.append(torch.cat([p.detach().flatten() for p in self.parameters()]).clone())

    monkeypatch.setattr(hc, "LM", Recorded)
    row = run_cell(_cell(lr_sweep={"rates": [1e-3, 3e-3], "frac": 0.5}), _ctx(tmp_path))
    assert row["status"] == "ok", row.get("error")
    assert len(row["lr_sweep"]["table"]) == 2 and len(inits) == 3  # two short runs, then the full run
    assert all(torch.equal(w, inits[-1]) for w in inits)


def test_with_nll_puts_each_questions_nll_beside_its_scores_in_their_id_order():
    """The cell's per-question NLL: by id, in the order of the task's per-question scores (here the reverse
    of the evaluation rows'), or the whole record from the rows' ids when the task keeps no scores; ids that
    are not the scores' questions, or repeat, are refused (the pairing would be wrong)."""
    import numpy as np

    from harness.evaluate import with_nll

    ids, nll, targets = ["a", "b", "c"], np.array([1.23456, 2.0, 3.5]), np.array([2, 1, 4])
    got = with_nll({"id": ["c", "a", "b"], "f1": [0.5, 0.1, 0.2]}, ids, nll, targets)
    assert got == {"id": ["c", "a", "b"], "f1": [0.5, 0.1, 0.2], "nll": [3.5, 1.2346, 2.0], "targets": [4, 2, 1]}
    assert with_nll(None, ids, nll, targets) == {"id": ids, "nll": [1.2346, 2.0, 3.5], "targets": [2, 1, 4]}
    with pytest.raises(ValueError, match="not on the evaluation rows"):
        with_nll({"id": ["a", "b", "z"], "f1": [0, 0, 0]}, ids, nll, targets)
    with pytest.raises(ValueError, match="distinct: 2"):
        with_nll(None, ["a", "a", "b"], nll, targets)
