"""One path per cell: the task built once, its data prepared once, the budget parsed and checked once
(a plan per cell, shared by the pre-flight check and the run); one data-parallel interface that a
single process implements without collectives."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import run_matrix
import tasks
from core.data import SeqSet, SpecialTokens
from core.results import cell_rows, read_rows
from harness import budget as hb
from harness import objectives
from harness.budget import Budget, BudgetError, BudgetMeter
from harness.distributed import DataParallel, DistEnv, SingleProcess, data_parallel
from harness.model import LM, LMConfig
from harness.train import TrainConfig, train

SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)


def _counting(monkeypatch, owner, name: str, calls: list) -> None:
    real = getattr(owner, name)

    def counted(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(owner, name, counted)


def test_a_grid_builds_its_task_once_and_checks_each_cells_budget_once(offline_dir, tmp_path, cache_dir, monkeypatch):
    """Two cells through run_matrix.main (pre-flight check, then the runs): one Task, one prepare(),
    one budget parse and one budget check per cell; the row's budget record is the meter's."""
    built, prepared, parsed, checked = [], [], [], []
    _counting(monkeypatch, tasks.Task, "__init__", built)
    _counting(monkeypatch, tasks.get("jsquad"), "prepare", prepared)
    _counting(monkeypatch, hb, "check_budget", checked)
    real_parse = Budget.parse.__func__
    monkeypatch.setattr(Budget, "parse", classmethod(lambda cls, text: parsed.append(text) or real_parse(cls, text)))
    out = tmp_path / "out"
    args = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--grid", "t", "--mixers", "attention",
            "--objectives", "autoregressive", "--seeds", "0,1", "--task-opt", "eval_limit=2", "--no-report"]
    assert run_matrix.main(args) == 0
    rows = cell_rows(read_rows(out / "results" / "t.jsonl"))
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("error") for r in rows]
    assert len(built) == 1 and len(prepared) == 1
    assert len(checked) == 2  # once per cell, in its plan (train() takes the checked meter)
    assert parsed == ["tokens=3000"] * 3  # the --budget flag, then each cell's budget once
    assert all(r["budget_info"] == {"budget": "tokens=3000"} for r in rows)


def test_a_sweeping_cell_checks_its_short_budget_once_for_all_its_short_runs(offline_dir, tmp_path, cache_dir,
                                                                             monkeypatch):
    """The cell's budget and the lr sweep's short budget are each checked once, in the plan: the short
    runs (one per rate) and the full run train on the plan's checked meters."""
    checked: list = []
    _counting(monkeypatch, hb, "check_budget", checked)
    out = tmp_path / "out"
    args = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--grid", "t", "--mixers", "attention",
            "--objectives", "autoregressive", "--task-opt", "eval_limit=2", "--no-report",
            "--lr-sweep", "1e-3,3e-3", "--lr-sweep-frac", "0.5"]
    assert run_matrix.main(args) == 0
    [row] = cell_rows(read_rows(out / "results" / "t.jsonl"))
    assert row["status"] == "ok" and len(row["lr_sweep"]["table"]) == 2 and row["lr_sweep"]["reused"] == 0
    assert sorted(str(a[0]) for a in checked) == ["tokens=1500", "tokens=3000"]


def test_an_lr_sweeps_cached_short_runs_are_never_reused_on_another_gpu(offline_dir, tmp_path, cache_dir,
                                                                        monkeypatch):
    """A time budget's short runs depend on the GPU: the sweep's cache is per GPU model, not per device type
    (an H100's trials were reused on an H200). The cache's path is recorded; no short run trains."""
    import harness.cell as hc

    class Opened(Exception):
        pass

    paths = []

    def cache(where):
        paths.append(where.name)
        raise Opened

    monkeypatch.setattr(hc.lr_sweep, "TrialCache", cache)
    for gpu in ("h100", "h200"):
        monkeypatch.setattr(hc, "gpu_slug", lambda device, _g=gpu: _g, raising=False)  # the GPU's name, stood in
        args = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out",
                str(tmp_path / gpu), "--cache-dir", str(cache_dir), "--no-progress", "--grid", "t", "--mixers",
                "attention", "--objectives", "autoregressive", "--no-report", "--lr-sweep", "1e-3,3e-3"]
        assert run_matrix.main(args) == 0
        [row] = cell_rows(read_rows(tmp_path / gpu / "results" / "t.jsonl"))
        assert row["status"] == "failed" and row["error"].startswith("Opened")
    assert [p.rsplit("-", 1)[1] for p in paths] == ["h100.json", "h200.json"]


def test_a_cells_plan_stops_a_too_small_sweep_budget_before_the_grid(offline_dir, tmp_path, cache_dir):
    """The lr sweep's short runs must cover a batch too: refused in the pre-flight plan, no rows."""
    args = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(tmp_path),
            "--cache-dir", str(cache_dir), "--no-progress", "--grid", "t", "--mixers", "attention",
            "--objectives", "autoregressive", "--lr-sweep", "1e-3,3e-3", "--lr-sweep-frac", "0.1"]
    with pytest.raises(BudgetError, match=r"budget tokens=300 is smaller than one batch"):
        run_matrix.main(args)
    assert not (tmp_path / "results").exists()


def _toy(n=48, seed=0) -> SeqSet:
    rng = np.random.default_rng(seed)
    seqs = [[2] + rng.integers(6, 20, int(L)).tolist() + [3] for L in rng.integers(4, 12, n)]
    return SeqSet.from_lists(seqs, [[False] * (len(s) - 2) + [True] * 2 for s in seqs], 0)


def _model() -> LM:
    torch.manual_seed(0)
    return LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))


def test_one_process_trains_through_the_single_process_object_without_collectives(monkeypatch):
    """world_size 1 gets SingleProcess (the model itself, the base sampler): no torch.distributed call."""
    def no_collective(*a, **k):
        raise AssertionError("a collective in a single-process run")

    for name in ("all_reduce", "broadcast", "all_gather_object", "barrier", "broadcast_object_list"):
        monkeypatch.setattr(torch.distributed, name, no_collective)
    model = _model()
    par = data_parallel(model, DistEnv(), torch.device("cpu"), Budget.parse("seconds=1"))
    assert isinstance(par, SingleProcess) and par.module is model and par.seed_offset == 0
    assert isinstance(data_parallel(model, None, torch.device("cpu"), Budget.parse("tokens=1")), SingleProcess)
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_tokens=96, progress=False, eval_points=2)
    res = train(model, obj, _toy(), _toy(8, seed=1), Budget.parse("tokens=1500"), cfg, torch.device("cpu"),
                dist=DistEnv())
    assert res.steps > 5 and len(res.loss_curve) == 2 and res.tokens_seen >= 1500


def test_single_process_and_data_parallel_have_one_interface():
    """train() calls the same methods, with the same arguments, on either object."""
    methods = ("sampler", "loss", "step_tokens", "fraction", "mean_over_ranks", "dev_loss")
    for name in methods:
        one, many = (list(inspect.signature(getattr(c, name)).parameters) for c in (SingleProcess, DataParallel))
        assert one == many, name
    public = lambda cls: {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}  # noqa: E731
    assert public(SingleProcess) == public(DataParallel) == set(methods)


def test_train_takes_a_checked_meter_and_reports_it(monkeypatch):
    """A Budget is checked inside train(); a meter from `check()` (a cell's plan) is not checked again."""
    checked: list = []
    _counting(monkeypatch, hb, "check_budget", checked)
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_tokens=96, progress=False, eval_points=1)
    data = _toy()
    meter = BudgetMeter(Budget.parse("tokens=800"), torch.device("cpu")).check(data, cfg.batch_size, cfg.batch_tokens)
    res = train(_model(), obj, data, data, meter, cfg, torch.device("cpu"))
    assert len(checked) == 1 and res.budget_info == meter.describe() == {"budget": "tokens=800"}
    res2 = train(_model(), obj, data, data, Budget.parse("tokens=800"), cfg, torch.device("cpu"))
    assert len(checked) == 2 and res2.tokens_seen == res.tokens_seen
    with pytest.raises(BudgetError, match="smaller than one batch"):
        BudgetMeter(Budget.parse("tokens=5"), torch.device("cpu")).check(data, cfg.batch_size, cfg.batch_tokens)


def test_a_kernel_the_driver_cannot_run_is_refused_locally_but_left_to_remote_workers(offline_dir, cache_dir):
    """`--loss cce` needs CUDA: a local grid on a CPU stops in its pre-flight, in one line; a Ray driver
    without a GPU (its cells train on GPU workers, which resolve the kernel on their own device) does not."""
    from harness.cell import Cell, RunContext, check_cell

    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=3000",
                loss="cce", task_opts={"eval_limit": "2"})
    local = RunContext(device=torch.device("cpu"), data_dir=offline_dir, cache_dir=cache_dir, grid="t", progress=False)
    with pytest.raises(ValueError, match="cce kernel needs CUDA|cut-cross-entropy is not importable"):
        check_cell(cell, local)
    remote = RunContext(device=torch.device("cpu"), data_dir=offline_dir, cache_dir=cache_dir, grid="t",
                        progress=False, remote=True)
    assert check_cell(cell, remote).model_cfg.mixer == "attention"


def test_each_compiled_cell_starts_with_a_fresh_compiler(offline_dir, tmp_path, cache_dir, monkeypatch):
    """run_cell forgets the previous cells' graphs before a compiled cell trains (harness.cell.fresh_compiler;
    tests/test_step.py shows why: dynamo's recompile limit silently left later cells eager); an
    uncompiled cell has nothing to forget."""
    import harness.cell as hc
    import harness.train as ht

    resets: list = []
    monkeypatch.setattr(hc, "fresh_compiler", lambda: resets.append(1))
    monkeypatch.setattr(ht.torch, "compile", lambda module, mode=None: module)  # the clock's not the point
    base = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--cache-dir",
            str(cache_dir), "--no-progress", "--mixers", "attention", "--objectives", "autoregressive",
            "--seeds", "0,1", "--task-opt", "eval_limit=2", "--no-report"]
    assert run_matrix.main([*base, "--compile", "--grid", "c", "--out", str(tmp_path / "c")]) == 0
    assert len(resets) == 2
    rows = cell_rows(read_rows(tmp_path / "c" / "results" / "c.jsonl"))
    assert [r["train"]["compile"] for r in rows] == [True, True] and rows[0]["train"]["late_compiles"] == 0
    resets.clear()
    assert run_matrix.main([*base, "--grid", "e", "--out", str(tmp_path / "e")]) == 0
    assert resets == []


def test_mixer_opts_apply_to_their_scope_or_to_every_selected_mixer_that_has_the_option():
    """--mixer-opt KEY=VALUE reaches every selected mixer with option KEY (and no other); MIXER.KEY=VALUE
    reaches MIXER only; a scope that is not selected, or an option none has, is an error."""
    import mixers
    from core.registry import scoped_opts

    names = ["attention", "mamba", "wave_modulation"]
    have = [n for n in names if "rope_base" in mixers.REGISTRY.options_of(n)]
    assert len(have) == 2  # the test's premise: two selected mixers have it, one does not
    per = scoped_opts(["rope_base=5000"], "--mixer-opt", names, mixers.REGISTRY)
    assert per == {n: ({"rope_base": "5000"} if n in have else {}) for n in names}
    first = have[0]
    per = scoped_opts([f"{first}.rope_base=4000", "mamba.d_state=8"], "--mixer-opt", names, mixers.REGISTRY)
    assert per == {"attention": {"rope_base": "4000"}, "mamba": {"d_state": "8"}, "wave_modulation": {}}
    with pytest.raises(ValueError, match="not among the selected"):
        scoped_opts([f"{first}.rope_base=4000"], "--mixer-opt", [n for n in names if n != first], mixers.REGISTRY)
    with pytest.raises(ValueError, match="no selected entry has option 'bogus'"):
        scoped_opts(["bogus=1"], "--mixer-opt", names, mixers.REGISTRY)


def test_the_grid_rotates_the_mixer_order_from_seed_to_seed(offline_dir, tmp_path, cache_dir, monkeypatch):
    """Cells run one after another; one fixed mixer order in every seed would put any drift with the
    running order (a GPU heating up, what earlier cells left in the process) on the same mixer in every
    seed. Seed i starts at the i-th mixer: with as many seeds as mixers each runs at every place once,
    and within a seed both objectives keep that seed's order."""
    ran: list = []

    class Recording:
        def run(self, todo, ctx):
            ran.extend((c.seed, c.objective, c.mixer) for c in todo)
            return iter(())

    monkeypatch.setattr(run_matrix.executors, "build", lambda args: Recording())
    mixers = ["attention", "wave_interference", "gated_context"]
    args = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out",
            str(tmp_path / "out"), "--cache-dir", str(cache_dir), "--no-progress", "--grid", "r", "--mixers",
            ",".join(mixers), "--objectives", "autoregressive,diffusion", "--seeds", "5,6,7",
            "--task-opt", "eval_limit=2", "--no-report"]
    assert run_matrix.main(args) == 0
    assert len(ran) == len(set(ran)) == 18
    for i, seed in enumerate((5, 6, 7)):
        want = mixers[i:] + mixers[:i]
        for obj in ("autoregressive", "diffusion"):
            assert [m for s, o, m in ran if (s, o) == (seed, obj)] == want
    assert [o for s, o, m in ran[:6]] == ["autoregressive"] * 3 + ["diffusion"] * 3  # objectives: seed by seed


def test_cells_share_a_pretraining_corpus_exactly_when_its_text_is_the_same(tmp_path, monkeypatch):
    """A grid packs each pretraining corpus once and hands it to every cell that asks for the same text:
    another mixer, objective, seed or pretraining fraction reuses it (the fraction splits the budget, not
    the text). Another cap on characters, another source, preset (its max_len packs the rows) or task
    option must get a corpus of its own: a shared one would pretrain that cell on the wrong text."""
    import dataclasses

    from harness import cell as hc

    prepared = []

    def prepare(spec, data, cache_dir, max_len, log):
        prepared.append((spec.sources, spec.max_chars, max_len))
        return object()  # a distinct corpus per preparation

    monkeypatch.setattr(hc.pt, "prepare", prepare)
    ctx = hc.RunContext(torch.device("cpu"), None, tmp_path, "g")
    base = hc.Cell("jsquad", "attention", "autoregressive", "tiny", "tokens=1000",
                   pretrain={"sources": ["passages"], "frac": 0.5, "max_chars": 0})
    first = ctx.pretrain_corpus(base, data=None)
    same_text = [dataclasses.replace(base, mixer="mamba", objective="diffusion", seed=3),
                 dataclasses.replace(base, pretrain={**base.pretrain, "frac": 0.3})]
    assert all(ctx.pretrain_corpus(c, data=None) is first for c in same_text) and len(prepared) == 1
    other_text = [dataclasses.replace(base, pretrain={**base.pretrain, "max_chars": 1000}),
                  dataclasses.replace(base, pretrain={**base.pretrain, "sources": ["dir:/corpus"]}),
                  dataclasses.replace(base, preset="small"),
                  dataclasses.replace(base, task_opts={"extra_train": "jaquad"})]
    corpora = [ctx.pretrain_corpus(c, data=None) for c in other_text]
    assert len({id(first), *map(id, corpora)}) == 5 and len(prepared) == 5
    assert ctx.pretrain_corpus(dataclasses.replace(base, pretrain=None), data=None) is None
