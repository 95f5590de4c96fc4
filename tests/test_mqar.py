"""MQAR (tasks/mqar.py): the generator's invariants, the metric, model sizing, objective defaults,
learnability by attention, and the run_matrix rows / report / sweep."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import run_matrix
import tasks
from harness import objectives
from harness.budget import Budget
from harness.cell import Cell
from harness.model import LM, LMConfig, count_params, matched_config
from core.presets import PRESETS
from core.results import read_rows
from harness.train import TrainConfig, train
from tasks import PrepareContext
from tasks.mqar import (MQAR, N_SPECIAL, SPECIAL, MQARConfig, _distinct, _is_key, elimination_accuracy, generate,
                        split_rng)

CONFIGS = [
    MQARConfig(seq_len=64, num_kv_pairs=4, num_queries=4, vocab_size=1024),
    MQARConfig(seq_len=32, num_kv_pairs=6, num_queries=3, vocab_size=20),  # tiny vocab: noise often hits keys
    MQARConfig(seq_len=41, num_kv_pairs=8, num_queries=8, vocab_size=64, power_a=1.0, noise=False),
]


def _ctx(log=lambda s: None) -> PrepareContext:
    return PrepareContext(None, Path("/nonexistent"), 4000, 256, log=log)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.protocol)
def test_every_query_key_appears_once_earlier_with_its_value(cfg):
    ids, target = generate(cfg, 300, np.random.default_rng(0))
    assert ids.shape == target.shape == (300, cfg.seq_len)
    assert (ids[:, 0] == SPECIAL.bos).all()
    filler = ids[:, 1:] < N_SPECIAL  # only SEP, and only without noise
    assert (ids[:, 1:][filler] == SPECIAL.sep).all() and filler.any() == (not cfg.noise)
    assert (target.sum(1) == cfg.num_queries).all()
    k0, k1 = cfg.key_range
    for row, tgt in zip(ids, target):
        pairs = row[1 : 1 + 2 * cfg.num_kv_pairs]
        keys, values = pairs[0::2], pairs[1::2]
        assert ((keys >= k0) & (keys < k1)).all() and (values >= k1).all()
        assert len(set(keys)) == len(keys) and len(set(values)) == len(values)
        queried = []
        for t in np.flatnonzero(tgt):
            key = row[t - 1]
            before = np.flatnonzero(row[: t - 1] == key)
            assert len(before) == 1, (row, t)  # exactly once earlier: in its pair
            assert row[before[0] + 1] == row[t]  # ... followed by the value asked for
            queried.append(key)
        assert len(set(queried)) == cfg.num_queries  # distinct keys queried
        assert not tgt[: 1 + 2 * cfg.num_kv_pairs].any()  # pair values are evidence, never targets


def test_seeds_reproduce_and_streams_differ():
    cfg = CONFIGS[0]
    a = generate(cfg, 50, split_rng(7, "train"))
    b = generate(cfg, 50, split_rng(7, "train"))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = generate(cfg, 50, split_rng(7, "eval"))
    d = generate(cfg, 50, split_rng(8, "train"))
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], d[0])
    # the documented spawn keys: a seed's splits stay the sequences that earlier rows were scored on (the
    # report pairs rows by sequence index), and no two splits share a stream
    for split, key in (("train", 0), ("dev", 1), ("eval", 2)):
        want = np.random.default_rng(np.random.SeedSequence(7, spawn_key=(key,))).random(4)
        assert np.array_equal(split_rng(7, split).random(4), want), split


def test_the_defaults_are_zoologys_smallest_point_for_the_task_and_the_generator():
    cfg = tasks.build("mqar").config()
    assert cfg == MQARConfig() and cfg.protocol == "mqar-T64-kv4-V1024" and cfg.noise
    assert tasks.build("mqar", seq_len=16).config().num_kv_pairs == 1  # seq_len // 16, at least one pair
    assert [m.key for m in MQAR.metrics if m.headline] == ["accuracy"]  # what the report's main table shows


def test_keys_and_values_use_their_whole_halves_of_the_vocabulary():
    """Keys [6, 6+K), values [6+K, V), noise anything but specials: no id is left unused."""
    cfg = MQARConfig(seq_len=64, num_kv_pairs=4, num_queries=4, vocab_size=32)
    assert cfg.key_range == (6, 19) and cfg.value_range == (19, 32)
    ids, _ = generate(cfg, 500, np.random.default_rng(0))
    pairs = ids[:, 1 : 1 + 2 * cfg.num_kv_pairs]
    assert set(pairs[:, 0::2].ravel()) == set(range(6, 19)) and set(pairs[:, 1::2].ravel()) == set(range(19, 32))
    assert set(ids[:, 1:].ravel()) == set(range(6, 32))  # the query region's noise too


def test_key_lookup_matches_a_plain_comparison():
    """`_is_key`'s sorted search over all rows at once, against the (n, L, N) comparison it avoids; the last
    row's largest key is the last entry of the sorted array (the search's edge)."""
    rng = np.random.default_rng(3)
    keys = _distinct(rng, 50, 4, 6, 40)
    tokens = rng.integers(6, 40, size=(50, 30))
    tokens[-1, -1] = keys[-1].max()
    want = (tokens[:, :, None] == keys[:, None, :]).any(-1)
    assert want[-1, -1] and np.array_equal(_is_key(tokens, keys, 40), want)


def test_prepared_splits_are_disjoint_and_named():
    task = tasks.build("mqar", seq_len=32, vocab_size=64, train_tokens=32 * 500, dev_seqs=40, eval_seqs=60)
    logged = []
    data = task.prepare(_ctx(logged.append))
    assert data.protocol == "mqar-T32-kv2-V64"  # kv = seq_len // 16 by default
    assert logged == ["[mqar] mqar-T32-kv2-V64: 500 train / 40 dev / 60 eval sequences"]
    assert data.vocab_size == 64 and len(data.train) == 500 and len(data.dev) == 40 and len(data.eval) == 60
    sp = dataclasses.asdict(data.special)
    assert len(set(sp.values())) == 6 and max(sp.values()) < N_SPECIAL
    rows = {split: {tuple(r) for r in getattr(data, split).ids.tolist()} for split in ("train", "dev", "eval")}
    assert not rows["train"] & rows["eval"] and not rows["train"] & rows["dev"] and not rows["dev"] & rows["eval"]
    assert data.info["elimination_accuracy"] == pytest.approx((1 + 1 / 2) / 2)
    again = tasks.build("mqar", seq_len=32, vocab_size=64, train_tokens=32 * 500, dev_seqs=40, eval_seqs=60).prepare(_ctx())
    assert torch.equal(again.eval.ids, data.eval.ids)  # generated, not stored: same seed, same data


def test_power_law_prefers_short_gaps_and_power_one_is_uniform():
    def slots(a):
        cfg = MQARConfig(seq_len=129, num_kv_pairs=4, num_queries=1, vocab_size=256, power_a=a)
        _, t = generate(cfg, 4000, np.random.default_rng(1))
        return (np.argwhere(t)[:, 1] - 1 - 2 * cfg.num_kv_pairs) // 2  # slot index of the one query

    s = slots(0.01)
    assert (s == 0).mean() > 0.1 and (s < 8).mean() > 0.4  # 1/i weights: ~0.21 and ~0.57 of 60 slots
    want = np.arange(1, 61) ** (0.01 - 1.0)  # P(slot i) ∝ i^(a-1), i = 1..60: the law itself, slot by slot
    freq = np.bincount(s, minlength=60) / len(s)
    assert np.abs(freq[:8] - want[:8] / want.sum()).max() < 0.03  # (4000 draws: sd <= 0.007)
    u = np.bincount(slots(1.0), minlength=60)
    assert u.min() > 30 and u.max() < 110  # uniform: ~67 per slot


@pytest.mark.parametrize("bad, match", [
    (dict(num_queries=5), "num_queries=5 > num_kv_pairs=4"),
    (dict(seq_len=16, num_kv_pairs=4), "query slots"),
    (dict(vocab_size=12, num_kv_pairs=4), "fewer than num_kv_pairs"),
    (dict(vocab_size=13, num_kv_pairs=4), "leaves 3 keys / 4 values"),  # the key half is the smaller one
    (dict(num_queries=-1), "at least one pair and one query"),  # (0 means: every pair)
    (dict(power_a=0.0), "power_a must be > 0"),
])
def test_impossible_configurations_are_clear_errors(bad, match):
    """Refused by the task before anything is generated, and by the generator called directly."""
    opts = {"seq_len": 64, "num_kv_pairs": 4, "vocab_size": 64, **bad}
    with pytest.raises(ValueError, match=match):
        tasks.build("mqar", **opts).config()
    with pytest.raises(ValueError, match=match):
        tasks.build("mqar", **opts).prepare(_ctx())
    cfg = {"seq_len": 64, "num_kv_pairs": 4, "num_queries": 4, "vocab_size": 64, **bad}
    with pytest.raises(ValueError, match=match):
        generate(MQARConfig(**cfg), 2, np.random.default_rng(0))


def test_elimination_accuracy():
    assert elimination_accuracy(MQARConfig(num_kv_pairs=4, num_queries=4)) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert elimination_accuracy(MQARConfig(num_kv_pairs=4, num_queries=1)) == pytest.approx(1 / 4)


class _Fixed:
    """A stand-in objective whose predictions are chosen by the test (it records the model's mode)."""

    def __init__(self, fn):
        self.fn, self.training_seen = fn, set()

    def predict_targets(self, model, batch):
        self.training_seen.add(model.training)
        return self.fn(batch)


def test_accuracy_counts_only_queried_positions():
    task = tasks.build("mqar", seq_len=32, vocab_size=64, train_tokens=320, dev_seqs=4, eval_seqs=20, latency_n=2)
    data = task.prepare(_ctx())
    model = torch.nn.Linear(1, 1)  # never called by the stand-ins; in training mode, as after training
    dev = torch.device("cpu")
    fixed, seen = _Fixed(lambda b: b.ids.clone()), []
    oracle = task.evaluate(model, fixed, data, dev, 8, progress=lambda done, of: seen.append((done, of)))
    assert oracle["accuracy"] == 1.0 and oracle["eval_n"] == 20 and oracle["eval_queries"] == 40
    assert fixed.training_seen == {False}  # predictions (and their latency) come from the model in eval mode
    assert seen == [(8, 20), (16, 20), (20, 20)]  # sequences done after each batch
    assert oracle["gen_latency_ms"] >= 0
    # right everywhere except the targets -> 0; right only on the targets -> 1
    assert task.evaluate(model, _Fixed(lambda b: torch.where(b.target, 0, b.ids)), data, dev, 8)["accuracy"] == 0.0
    assert task.evaluate(model, _Fixed(lambda b: torch.where(b.target, b.ids, 0)), data, dev, 8)["accuracy"] == 1.0

    def first_query_only(b):  # correct on the first query of every sequence, wrong on the second
        first = b.target & (b.target.long().cumsum(1) == 1)
        return torch.where(first, b.ids, 0)

    half = task.evaluate(model, _Fixed(first_query_only), data, dev, 8)
    assert half["accuracy"] == 0.5
    # per sequence, for the report's paired bootstrap: every sequence once, each half right
    pq = half["per_question"]
    assert sorted(pq["id"]) == list(range(20)) and pq["accuracy"] == [0.5] * 20

    def only_even_rows(b):  # right on every query of the even sequences (ids come in row order)
        rows = torch.arange(b.ids.shape[0])[:, None] + only_even_rows.seen
        only_even_rows.seen += b.ids.shape[0]
        return torch.where((rows % 2 == 0) & b.target, b.ids, 0)

    only_even_rows.seen = 0
    pq = task.evaluate(model, _Fixed(only_even_rows), data, dev, 8)["per_question"]
    assert dict(zip(pq["id"], pq["accuracy"])) == {i: float(i % 2 == 0) for i in range(20)}
    # the smallest count: one sequence asking one value
    one = tasks.build("mqar", seq_len=32, vocab_size=64, num_kv_pairs=1, train_tokens=32, dev_seqs=1, eval_seqs=1,
                      latency_n=1)
    got = one.evaluate(model, _Fixed(lambda b: b.ids.clone()), one.prepare(_ctx()), dev, 8)
    assert got["eval_queries"] == 1 and got["accuracy"] == 1.0 and got["per_question"]["accuracy"] == [1.0]


def test_model_keeps_the_preset_body_and_scales_with_width():
    p = PRESETS["tiny"]
    task = MQAR()
    jsquad_cfg = matched_config(p, "attention", True)
    mq = task.model_preset(p, 1024)
    mq_cfg = matched_config(mq, "attention", True, 1024)
    assert mq_cfg.d_model == p.d_model and mq_cfg.n_layers == p.n_layers
    assert abs(mq_cfg.mlp_hidden - jsquad_cfg.mlp_hidden) <= 8  # same body, only the embedding differs
    wide = task.model_preset(p, 1024, d_model=128)
    cfg = matched_config(wide, "attention", True, 1024)
    assert cfg.d_model == 128 and abs(cfg.mlp_hidden / 128 - mq_cfg.mlp_hidden / 64) < 0.2  # same shape, wider
    with torch.device("meta"):
        n = count_params(LM(cfg))
    assert abs(n - wide.target_params) / wide.target_params <= 0.05
    assert task.model_preset(p, 1024).lr == p.lr and MQAR(MQAR.Options(lr=3e-4)).model_preset(p, 1024).lr == 3e-4
    # batches in sequences (Zoology's), never the preset's token budget per step
    assert mq.batch_tokens == 0 and mq.batch_size == p.batch_size


def test_objective_defaults_put_the_loss_on_the_targets_only():
    assert objectives.with_defaults(tasks.get("mqar").objective_defaults, "autoregressive", {}) == {"loss_on": "answer"}
    assert objectives.with_defaults(tasks.get("mqar").objective_defaults, "autoregressive", {"loss_on": "all"}) == {"loss_on": "all"}
    assert objectives.with_defaults(tasks.get("jsquad").objective_defaults, "autoregressive", {}) == {}


def test_new_cell_fields_leave_existing_resume_keys_unchanged():
    import hashlib
    import json

    c = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="tokens=1")
    old = {k: v for k, v in dataclasses.asdict(c).items()
           if k not in ("d_model", "sweep", "pretrain", "dev_tokens", "lr", "lr_sweep", "no_compile", "compile_mode",
                         "compile_scope", "sdpa_cudnn", "dev_checks")}
    assert c.key() == hashlib.sha1(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert dataclasses.replace(c, d_model=32).key() != c.key()
    assert dataclasses.replace(c, pretrain={"sources": ["passages"], "frac": 0.5, "max_chars": 0}).key() != c.key()
    assert dataclasses.replace(c, dev_tokens=4096).key() != c.key()
    assert dataclasses.replace(c, dev_checks=40).key() != c.key()
    assert dataclasses.replace(c, lr_sweep={"rates": "auto", "frac": 0.5}).key() != c.key()
    assert dataclasses.replace(c, compile_mode="reduce-overhead").key() != c.key()
    assert dataclasses.replace(c, compile_scope="model").key() != c.key()
    assert dataclasses.replace(c, sdpa_cudnn=True).key() != c.key()


def test_attention_learns_short_mqar():
    """Proves the task and the harness are learnable (not a benchmark): 2-layer d=64 attention with a
    narrow MLP, T=16, 2 pairs, 2 queries. ~800 steps, a few seconds on one CPU thread. The lr matters:
    at the tiny preset's 3e-3 this model stays at the elimination heuristic (~0.5); 3e-4 and 1e-3
    both reach 1.0 on seeds 0-3 (measured while writing this test)."""
    task = tasks.build("mqar", seq_len=16, num_kv_pairs=2, vocab_size=32, train_tokens=400_000, dev_seqs=64,
                       eval_seqs=300)
    data = task.prepare(_ctx())
    obj = objectives.build("autoregressive", data.special, "chunked", **objectives.with_defaults(tasks.get("mqar").objective_defaults, "autoregressive", {}))
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=32, d_model=64, n_layers=2, mixer="attention", causal=True, mlp_hidden=64))
    cfg = TrainConfig(batch_size=32, lr=3e-4, seed=0, progress=False, eval_points=4)
    train(model, obj, data.train, data.dev, Budget.parse("tokens=400000"), cfg, torch.device("cpu"))
    acc = task.evaluate(model, obj, data, torch.device("cpu"), 64)["accuracy"]
    assert acc >= 0.9 > data.info["elimination_accuracy"], acc


# --------------------------------------------------------------------------- run_matrix end to end

def _args(out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--task", "mqar", "--preset", "tiny", "--budget", "tokens=2000", "--mixers", "attention",
            "--objectives", "autoregressive", "--out", str(out), "--cache-dir", str(cache), "--no-progress",
            "--task-opt", "vocab_size=64", "--task-opt", "train_tokens=4000", "--task-opt", "eval_seqs=16",
            "--task-opt", "dev_seqs=8", *extra]


def test_grid_rows_and_report_carry_recall_accuracy(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_matrix.main(_args(out, tmp_path / "cache", "--grid", "g")) == 0
    [row] = read_rows(out / "results" / "g.jsonl")
    assert row["status"] == "ok", row.get("error")
    assert row["protocol"] == "mqar-T64-kv4-V64" and row["objective_opts"] == {"loss_on": "answer"}
    m = row["metrics"]
    assert 0.0 <= m["accuracy"] <= 1.0 and m["eval_n"] == 16 and m["eval_queries"] == 64 and m["gen_latency_ms"] > 0
    assert row["model"]["vocab_size"] == 64 and "sweep" not in row
    from reports import stats

    pq = row["per_question"]  # the paired bootstrap's input, as a JSQuAD row carries F1
    assert sorted(pq["id"]) == list(range(16)) and abs(sum(pq["accuracy"]) / 16 - m["accuracy"]) < 1e-6
    # each sequence's NLL over its queried values, by the same ids: together they are the perplexity
    assert pq["targets"] == [4] * 16 and math.exp(sum(pq["nll"]) / 64) == pytest.approx(m["ppl"], rel=1e-4)
    a, b = stats.aligned_scores([row], [row], "accuracy")
    assert a.shape == (1, 16) and (a == b).all()
    assert "accuracy=" in capsys.readouterr().out  # the declared metric, by its key
    report = (out / "reports" / "g" / "README.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| mixer |"))
    assert "| accuracy |" in header and "| EM |" not in header and f"{m['accuracy']:.3f}" in report


def test_sweep_rows_carry_their_point_and_resume(tmp_path, capsys):
    out = tmp_path / "out"
    args = _args(out, tmp_path / "cache", "--sweep", "--sweep-lengths", "32,48", "--sweep-widths", "32,64")
    assert run_matrix.main(args) == 0
    grid = "mqar-sweep-dev_seqs8-eval_seqs16-train_tokens4000-vocab_size64_tiny_tokens-2000"  # fixed options named
    results = out / "results" / f"{grid}.jsonl"
    rows = read_rows(results)
    assert sorted((r["sweep"]["seq_len"], r["sweep"]["d_model"]) for r in rows) == [(32, 32), (32, 64), (48, 32), (48, 64)]
    for r in rows:
        assert r["status"] == "ok", r.get("error")
        assert r["model"]["d_model"] == r["sweep"]["d_model"]
        assert r["protocol"].startswith(f"mqar-T{r['sweep']['seq_len']}-")
        assert "accuracy" in r["metrics"]
    report = (out / "reports" / grid / "README.md").read_text()
    # one table and one set of curves for the whole sweep, although its points differ in protocol
    assert report.count("\n## mqar") == 1 and "| seq len |" in report and "| width |" in report
    assert {line.split("|")[3].strip() for line in report.splitlines() if line.startswith("| attention |")} >= {"32", "48"}
    assert len(list((out / "reports" / grid).glob("*accuracy_vs_seq_len.png"))) == 1
    capsys.readouterr()
    assert run_matrix.main(args) == 0
    assert "4 cells (4 already done)" in capsys.readouterr().out
    assert len(read_rows(results)) == 4


def test_sweep_needs_a_task_with_a_length(tmp_path):
    with pytest.raises(ValueError, match="seq_len"):
        run_matrix.sweep_cells([Cell("jsquad", "attention", "autoregressive", "tiny", "tokens=1")], "jsquad", [64], [32])


def test_a_query_region_with_exactly_as_many_slots_as_queries_is_valid():
    """seq_len 17, 4 pairs: (17 - 1 - 8) // 2 = 4 slots for 4 queries, every slot a query."""
    cfg = MQARConfig(seq_len=17, num_kv_pairs=4, num_queries=4, vocab_size=64)
    assert cfg.query_slots == cfg.num_queries
    cfg.check()
    ids, target = generate(cfg, 20, np.random.default_rng(0))
    assert (target[:, 10::2]).all() and target.sum() == 20 * 4  # every value slot of the region is queried
    with pytest.raises(ValueError, match="query slots"):
        MQARConfig(seq_len=16, num_kv_pairs=4, num_queries=4, vocab_size=64).check()


def test_the_other_bounds_admit_their_edges():
    """One pair is enough; a vocabulary with exactly as many keys and values as pairs is enough; a training
    set smaller than one sequence still has one."""
    for cfg in (MQARConfig(seq_len=8, num_kv_pairs=1, num_queries=1, vocab_size=8),
                MQARConfig(seq_len=32, num_kv_pairs=4, num_queries=4, vocab_size=N_SPECIAL + 8)):
        _, target = generate(cfg, 10, np.random.default_rng(0))
        assert (target.sum(1) == cfg.num_queries).all()
    data = tasks.build("mqar", seq_len=32, vocab_size=64, train_tokens=10, dev_seqs=2, eval_seqs=2).prepare(_ctx())
    assert len(data.train) == 1
