"""The per-cell learning-rate sweep: choice, cost in the row, caching, and the report's sections."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import run_matrix
from harness import lr_sweep
from harness.budget import Budget
from harness.train import TrainConfig, TrainResult
from core.data import SeqSet
from core.results import cell_rows, read_rows


def _fake(losses: dict[float, float | None], calls: list[float]):
    """A planted trainer: dev loss per rate (None = diverged), 10 tokens and 2 s per 1,000 budget tokens."""
    def trial(lr: float, budget: Budget) -> lr_sweep.Trial:
        calls.append(lr)
        return lr_sweep.Trial(lr, losses[lr], int(budget.amount), 2.0 * budget.amount / 1000)

    return trial


def test_sweep_picks_the_lowest_dev_loss_and_records_its_cost():
    calls: list[float] = []
    rec = lr_sweep.run_sweep([3e-4, 1e-3, 3e-3], 0.25, Budget("tokens", 4000),
                             _fake({3e-4: 2.5, 1e-3: 2.1, 3e-3: None}, calls))
    assert rec["best_lr"] == 1e-3 and rec["best_dev_loss"] == 2.1
    assert calls == [3e-4, 1e-3, 3e-3] and rec["short_budget"] == "tokens=1000"
    assert [(t["lr"], t["dev_loss"], t["tokens"]) for t in rec["table"]] == [(3e-4, 2.5, 1000), (1e-3, 2.1, 1000),
                                                                           (3e-3, None, 1000)]
    assert rec["tokens"] == 3000 and rec["seconds"] == pytest.approx(6.0)
    with pytest.raises(FloatingPointError, match="every short run diverged"):
        lr_sweep.run_sweep([1e-3], 0.5, Budget("tokens", 4000), _fake({1e-3: None}, []))


def test_sweep_reuses_cached_short_runs(tmp_path):
    calls: list[float] = []
    path = tmp_path / "c.json"
    budget = Budget("tokens", 4000)
    lr_sweep.run_sweep([1e-3, 3e-3], 0.25, budget, _fake({1e-3: 2.0, 3e-3: 1.5}, calls), lr_sweep.TrialCache(path))
    rec = lr_sweep.run_sweep([1e-3, 3e-3, 1e-2], 0.25, budget, _fake({1e-3: 9.0, 3e-3: 9.0, 1e-2: 1.7}, calls),
                             lr_sweep.TrialCache(path))
    assert calls == [1e-3, 3e-3, 1e-2]  # the second sweep ran only the new rate
    assert rec["reused"] == 2 and rec["best_lr"] == 3e-3  # cached 1.5 beats the new 1.7


def test_a_tie_goes_to_the_first_rate_listed():
    """Equal dev losses pick the first rate listed (lr_sweep's documented rule), whatever its size: the pick
    is then fixed by the losses and the order given, the same for every mixer of a grid."""
    rec = lr_sweep.run_sweep([1e-3, 3e-3], 0.5, Budget("tokens", 4000), _fake({1e-3: 2.0, 3e-3: 2.0}, []))
    assert rec["best_lr"] == 1e-3 and rec["best_dev_loss"] == 2.0
    rec = lr_sweep.run_sweep([3e-3, 1e-3, 1e-2], 0.5, Budget("tokens", 4000),
                             _fake({3e-3: 2.0, 1e-3: 2.0, 1e-2: 2.0}, []))
    assert rec["best_lr"] == 3e-3  # first listed, not the smallest rate


def test_the_cache_key_holds_the_short_budget(tmp_path):
    """A short run at tokens=2000 is not a short run at tokens=4000: a cache reused across budgets (a cell
    rerun with a larger --budget) must rerun every rate, not hand back the shorter runs' dev losses."""
    calls: list[float] = []
    cache = lr_sweep.TrialCache(tmp_path / "c.json")
    lr_sweep.run_sweep([1e-3, 3e-3], 0.5, Budget("tokens", 4000), _fake({1e-3: 2.0, 3e-3: 1.5}, calls), cache)
    rec = lr_sweep.run_sweep([1e-3, 3e-3], 0.5, Budget("tokens", 8000), _fake({1e-3: 1.0, 3e-3: 1.5}, calls),
                             lr_sweep.TrialCache(tmp_path / "c.json"))
    assert rec["reused"] == 0 and calls == [1e-3, 3e-3, 1e-3, 3e-3]
    assert rec["best_lr"] == 1e-3 and [t["tokens"] for t in rec["table"]] == [4000, 4000]


@pytest.mark.parametrize("damage", ["", '{"0.001@tokens=2000@end', "not json"], ids=["empty", "truncated", "garbage"])
def test_a_damaged_cache_file_only_costs_a_rerun(tmp_path, damage):
    """A cache file that is not JSON (a disk full mid-write, a hand edit) is read as empty: every short run
    runs again and the cell goes on, rather than the cell failing on every retry. The file is then
    rewritten whole, so the next retry reuses the runs."""
    path = tmp_path / "c.json"
    path.write_text(damage)
    calls: list[float] = []
    rec = lr_sweep.run_sweep([1e-3, 3e-3], 0.5, Budget("tokens", 4000), _fake({1e-3: 2.0, 3e-3: 1.5}, calls),
                             lr_sweep.TrialCache(path))
    assert calls == [1e-3, 3e-3] and rec["reused"] == 0 and rec["best_lr"] == 3e-3
    rec = lr_sweep.run_sweep([1e-3, 3e-3], 0.5, Budget("tokens", 4000), _fake({1e-3: 2.0, 3e-3: 1.5}, calls),
                             lr_sweep.TrialCache(path))
    assert calls == [1e-3, 3e-3] and rec["reused"] == 2  # the rewritten file is read back


def test_a_sweep_without_rates_is_refused():
    """No rates is a clear error before any short run, not an "every short run diverged" of nothing."""
    calls: list[float] = []
    with pytest.raises(ValueError, match="^learning-rate sweep: no rates$"):
        lr_sweep.run_sweep([], 0.5, Budget("tokens", 4000), _fake({}, calls))
    assert calls == []


def test_a_diverged_rate_is_a_result_of_the_sweep_not_a_failed_cell(monkeypatch):
    """A rate whose training raises FloatingPointError (a non-finite loss) becomes a trial with no dev loss,
    no tokens and the error's one line: it loses, and the sweep picks the best of the other rates (the
    largest rate of a grid diverging is an expected outcome, not a reason to lose the whole cell)."""
    def train(model, objective, train_set, dev_set, budget, cfg, device, dist=None):
        if cfg.lr == 1e-2:
            raise FloatingPointError("non-finite loss at step 3\n(more detail)")
        return TrainResult(tokens_seen=500, best_dev_loss={1e-3: 2.5, 3e-3: 2.2}[cfg.lr], best_fraction=1.0)

    monkeypatch.setattr(lr_sweep, "train", train)
    dev = SeqSet(torch.ones(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.bool), np.full(4, 4))
    run = lr_sweep.train_trial(lambda: "model", None, None, dev, TrainConfig(lr=9.0), "cpu")
    t = run(1e-2, Budget("tokens", 500))
    assert (t.lr, t.dev_loss, t.tokens) == (1e-2, None, 0)
    assert t.error == "FloatingPointError: non-finite loss at step 3"
    rec = lr_sweep.run_sweep([1e-3, 3e-3, 1e-2], 0.5, Budget("tokens", 1000), run)
    assert rec["best_lr"] == 3e-3 and rec["best_dev_loss"] == 2.2
    assert rec["table"][2]["error"] == "FloatingPointError: non-finite loss at step 3"
    assert rec["table"][2]["dev_loss"] is None and "error" not in rec["table"][0]


def test_a_short_run_is_judged_once_on_the_first_dev_sequences(monkeypatch):
    """The real TrialFn trains on a dev slice cut to its first SHORT_DEV_SEQS (128) rows, the same rows for
    every rate, and with at most SHORT_EVAL_POINTS (1) dev check: dev checks, not training, dominated the
    cost of short runs (lr_sweep.py's notes). The cell's other settings pass through at the trial's rate."""
    seen = []

    def train(model, objective, train_set, dev_set, budget, cfg, device, dist=None):
        seen.append((model, dev_set, budget, cfg))
        return TrainResult(tokens_seen=123, best_dev_loss=1.5, best_fraction=1.0)

    monkeypatch.setattr(lr_sweep, "train", train)
    n = 300
    ids = torch.arange(n).repeat_interleave(4).view(n, 4)  # row i is all i: the rows kept are visible
    dev = SeqSet(ids, torch.ones(n, 4, dtype=torch.bool), np.full(n, 4))
    cfg = TrainConfig(lr=9.0, eval_points=10, batch_size=3, progress=True)
    run = lr_sweep.train_trial(lambda: "model", None, None, dev, cfg, "cpu")
    t = run(3e-3, Budget("tokens", 500))
    assert t.lr == 3e-3 and t.dev_loss == 1.5 and t.tokens == 123
    model, dev_set, budget, tcfg = seen[0]
    assert model == "model" and budget == Budget("tokens", 500)
    assert lr_sweep.SHORT_DEV_SEQS == 128 and len(dev_set) == 128
    assert dev_set.ids[:, 0].tolist() == list(range(128))  # the first 128 rows, in order
    assert tcfg.eval_points == 1 and tcfg.lr == 3e-3 and not tcfg.progress and tcfg.batch_size == 3
    run(1e-2, Budget("tokens", 500))
    assert seen[1][1].ids[:, 0].tolist() == list(range(128))  # the same rows for every rate
    small = SeqSet(ids[:40], torch.ones(40, 4, dtype=torch.bool), np.full(40, 4))  # under 128 rows: all of them
    lr_sweep.train_trial(lambda: "model", None, None, small, cfg, "cpu")(1e-3, Budget("tokens", 500))
    assert seen[2][1].ids[:, 0].tolist() == list(range(40))


@pytest.mark.parametrize("cell_checks, short", [(10, 1), (19, 1), (20, 2), (40, 4), (100, 10), (1, 1)])
def test_a_cell_of_many_dev_checks_judges_its_short_runs_by_their_best_check(monkeypatch, cell_checks, short):
    """A long budget on a small training set overfits early (docs/pretraining.md), so the end of a short run
    is past its optimum: a cell with `--dev-checks N` gives its short runs N // 10 checks (at least 1, so
    the default 10 keeps the one at the end) and the trial's loss is the best of them, which the row's
    criterion says."""
    seen = []

    def train(model, objective, train_set, dev_set, budget, cfg, device, dist=None):
        seen.append(cfg.eval_points)
        return TrainResult(tokens_seen=1, best_dev_loss=2.0, best_fraction=0.2)  # (the best: not the end's)

    monkeypatch.setattr(lr_sweep, "train", train)
    dev = SeqSet(torch.ones(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.bool), np.full(4, 4))
    t = lr_sweep.train_trial(lambda: "m", None, None, dev, TrainConfig(eval_points=cell_checks), "cpu")(
        1e-3, Budget("tokens", 500))
    assert seen == [short] and lr_sweep.short_checks(cell_checks) == short
    assert (t.dev_loss, t.best_fraction) == (2.0, 0.2)
    assert lr_sweep.criterion(short) == (lr_sweep.CRITERION if short == 1 else
                                         f"lowest dev loss of the short run's {short} dev checks (dev slice); "
                                         "diverged runs lose")


def test_rates_parse_and_auto_follows_the_preset():
    assert lr_sweep.auto_rates(3e-3) == [1e-3, 3e-3, 1e-2]
    assert lr_sweep.auto_rates(1e-3) == [3e-4, 1e-3, 3e-3]
    assert lr_sweep.auto_rates(6e-4) == [3e-4, 1e-3, 3e-3]
    assert lr_sweep.parse_rates("3e-4, 1e-3,1e-3", 1e-3) == [3e-4, 1e-3]
    assert lr_sweep.parse_rates(" auto ", 3e-3) == [1e-3, 3e-3, 1e-2]  # `auto`: around the preset's rate
    for bad, says in (("fast", "takes comma-separated learning rates or 'auto', got 'fast'"),
                      ("0", "must be positive numbers, got '0'"), ("-1e-3", "must be positive numbers, got '-1e-3'"),
                      ("", "must be positive numbers, got ''")):
        with pytest.raises(ValueError, match=f"^--lr-sweep.*{re.escape(says)}"):
            lr_sweep.parse_rates(bad, 1e-3)


def test_auto_rates_at_the_ends_of_the_log_grid_keep_the_one_neighbour_there_is():
    assert lr_sweep.auto_rates(1e-4) == [1e-4, 3e-4] and lr_sweep.auto_rates(3e-2) == [1e-2, 3e-2]


def test_a_short_budget_is_a_fraction_in_0_1_of_the_cells_in_whole_tokens():
    """Tokens round up to a whole token; seconds stay as they are; the whole budget (1) is a fraction, 0 is not."""
    assert lr_sweep.short_budget(Budget("tokens", 1001), 0.5) == Budget("tokens", 501.0)
    assert lr_sweep.short_budget(Budget("seconds", 45), 0.5) == Budget("seconds", 22.5)
    assert lr_sweep.short_budget(Budget("a100_seconds", 45), 1.0) == Budget("a100_seconds", 45)
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match=rf"^--lr-sweep-frac must be in \(0, 1\], got {bad}$"):
            lr_sweep.short_budget(Budget("tokens", 1000), bad)


def test_the_record_rounds_seconds_to_hundredths():
    rec = lr_sweep.run_sweep([1e-3, 3e-3], 0.5, Budget("tokens", 100),
                             lambda lr, b: lr_sweep.Trial(lr, 2.0, 10, 1.23456, 0.98765))
    assert [(t["seconds"], t["train_seconds"]) for t in rec["table"]] == [(1.23, 0.99)] * 2
    assert rec["seconds"] == 2.47  # the total of the unrounded times, rounded


def test_a_short_runs_seconds_are_its_wall_time_whether_it_diverged_or_not(monkeypatch):
    """A trial costs the wall time around its training (dev checks included: the real cost of the sweep),
    read from the clock before and after; a diverged run's time counts too."""
    now = [1000.0]

    def train(model, objective, train_set, dev_set, budget, cfg, device, dist=None):
        now[0] += 7.0
        if cfg.lr == 1e-2:
            raise FloatingPointError("non-finite loss")
        return TrainResult(tokens_seen=5, train_seconds=6.0, best_dev_loss=1.0, best_fraction=1.0)

    monkeypatch.setattr(lr_sweep, "train", train)
    monkeypatch.setattr(lr_sweep.time, "perf_counter", lambda: now[0])
    dev = SeqSet(torch.ones(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.bool), np.full(4, 4))
    run = lr_sweep.train_trial(lambda: "model", None, None, dev, TrainConfig(lr=9.0), "cpu")
    ok, diverged = run(1e-3, Budget("tokens", 500)), run(1e-2, Budget("tokens", 500))
    assert (ok.seconds, ok.train_seconds) == (7.0, 6.0) and diverged.seconds == 7.0


def test_the_cache_makes_its_folder(tmp_path):
    """The grid's cache is `<cache>/lr_sweep/<cell key>.json`: the first short run of a grid makes the folders."""
    path = tmp_path / "cache" / "lr_sweep" / "k.json"
    trial = lr_sweep.Trial(1e-3, 2.0, 10, 1.0)
    lr_sweep.TrialCache(path).put(trial, Budget("tokens", 5))
    assert lr_sweep.TrialCache(path).get(1e-3, Budget("tokens", 5)) == trial


def _args(data_dir, out, cache, *extra):
    return ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(data_dir), "--out", str(out),
            "--cache-dir", str(cache), "--no-progress", "--grid", "t", "--objectives", "autoregressive", *extra]


def test_grid_with_sweep_trains_the_best_rate_and_reports_it(offline_dir, tmp_path, cache_dir, capsys):
    """A tiny real run: the row keeps the sweep's table and cost (apart from the budget), trains at the
    rate with the lowest short-run dev loss, stores per-question scores; the report shows both."""
    out = tmp_path / "out"
    args = _args(offline_dir, out, cache_dir, "--mixers", "attention,gated_context", "--lr-sweep", "1e-4,1e-2",
                 "--lr-sweep-frac", "0.5")
    assert run_matrix.main(args) == 0
    rows = cell_rows(read_rows(out / "results" / "t.jsonl"))
    assert len(rows) == 2
    for r in rows:
        assert r["status"] == "ok", r.get("error")
        sw = r["lr_sweep"]
        assert [t["lr"] for t in sw["table"]] == [1e-4, 1e-2] and sw["short_budget"] == "tokens=1500"
        best = min(sw["table"], key=lambda t: t["dev_loss"])
        assert sw["best_lr"] == best["lr"] == r["train"]["lr"]
        assert all(t["tokens"] >= 1500 and t["seconds"] > 0 for t in sw["table"])
        assert sw["tokens"] == sum(t["tokens"] for t in sw["table"])
        assert r["tokens_seen"] < 3000 + 1000  # the full run's budget does not include the sweep
        pq = r["per_question"]
        assert len(pq["id"]) == len(pq["em"]) == len(pq["f1"]) == r["metrics"]["eval_n"]
        assert sum(pq["f1"]) / len(pq["f1"]) == pytest.approx(r["metrics"]["f1"], abs=1e-3)
    report = (out / "reports" / "t" / "README.md").read_text()
    assert "### Learning-rate sweep" in report and "lr (swept)" in report
    assert "n=1, no interval" in report and "vs attention" in report and "(reference)" in report

    capsys.readouterr()  # a rerun of finished cells does nothing
    assert run_matrix.main(args) == 0
    assert "2 already done" in capsys.readouterr().out
    assert len(cell_rows(read_rows(out / "results" / "t.jsonl"))) == 2
    assert all(r["lr_sweep"]["criterion"] == lr_sweep.CRITERION and "short_checks" not in r["lr_sweep"]
               for r in rows)  # the default 10 dev checks: each short run judged at its end
    assert run_matrix.main([*args, "--mixers", "attention", "--dev-checks", "20"]) == 0  # another cell
    many = [r for r in cell_rows(read_rows(out / "results" / "t.jsonl")) if r["train"]["dev_checks_bound"] == 20]
    assert [(r["lr_sweep"]["short_checks"], r["lr_sweep"]["criterion"]) for r in many] == [
        (2, "lowest dev loss of the short run's 2 dev checks (dev slice); diverged runs lose")]


def test_each_short_run_holds_the_only_model_alive(offline_dir, tmp_path, cache_dir, monkeypatch):
    """On a GPU whatever is alive during a short run shares its memory: the full run's model was built
    before the sweep (and each short run's stayed alive until the cycle collector ran), so a short run
    could run out of memory for models that were not training. With the collector off, each training
    run (short or full) sees exactly one model alive: its own. The full run's weights are the same
    (seeded alike), so the row's figures do not change."""
    import gc
    import weakref

    import harness.train as ht
    from harness.model import LM

    live, seen = weakref.WeakSet(), []
    real_init, real_train = LM.__init__, ht.train

    def init(self, *a, **k):
        real_init(self, *a, **k)
        live.add(self)

    def train(model, *a, **k):
        seen.append(len(live))
        return real_train(model, *a, **k)

    monkeypatch.setattr(LM, "__init__", init)
    import harness.cell as hc
    monkeypatch.setattr(hc, "train", train)
    monkeypatch.setattr(lr_sweep, "train", train)
    import shutil

    fresh = tmp_path / "cache"  # the tokenizers, but no short run cached by another test: these must train
    shutil.copytree(cache_dir, fresh, ignore=shutil.ignore_patterns("lr_sweep"))
    out = tmp_path / "out"
    args = _args(offline_dir, out, fresh, "--mixers", "attention", "--lr-sweep", "1e-4,1e-2", "--lr-sweep-frac", "0.5")
    gc.collect()
    gc.disable()
    try:
        assert run_matrix.main(args) == 0
    finally:
        gc.enable()
    assert seen == [1, 1, 1]  # two short runs, then the full run
    assert cell_rows(read_rows(out / "results" / "t.jsonl"))[0]["status"] == "ok"


def test_lr_flags_are_checked(monkeypatch):
    monkeypatch.delenv("WAVEBENCH_LR", raising=False)
    p = run_matrix.parser()

    def choice(*argv):  # as main() does: the defaults filled in first (--lr unset: DEFAULT_LR)
        args = p.parse_args(["--preset", "tiny", *argv])
        run_matrix.apply_defaults(args)
        return run_matrix.lr_choice(args)

    assert choice("--lr", "preset") == (0.0, None)
    assert choice("--lr", "2e-3") == (2e-3, None)
    lr, spec = choice("--lr", "auto", "--lr-sweep-frac", "0.1")
    assert lr == 0.0 and spec == {"rates": "auto", "frac": 0.1}  # resolved per cell, around its own rate
    assert choice("--lr-sweep", "1e-3,3e-3")[1]["rates"] == [1e-3, 3e-3]  # the default --lr sweeps too
    for bad, says in ((["--lr", "2e-3", "--lr-sweep", "1e-3"], "--lr 2e-3 fixes the rate; it cannot be combined"),
                      (["--lr", "fast"], "--lr takes a number, 'preset' or 'auto', got 'fast'"),
                      (["--lr", "-1"], "--lr must be positive, got '-1'"),
                      (["--lr-sweep", "auto", "--lr-sweep-frac", "2"], "--lr-sweep-frac must be in (0, 1], got 2.0")):
        with pytest.raises(ValueError, match=f"^{re.escape(says)}"):
            choice(*bad)
