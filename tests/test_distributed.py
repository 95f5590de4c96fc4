"""Data-parallel cells on CPU (gloo): sharding, exact loss normalisation, torchrun and spawned ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import run_matrix
from harness import distributed as ddp
from harness import objectives
from harness.cell import Cell
from core.data import BatchSampler, SeqSet, SpecialTokens
from core.env import pythonpath_with
from harness.executors import ContextSpec
from harness.progress import stage
from harness.spawn import spawn_cell
from harness.model import LM, LMConfig
from core.results import cell_rows, read_rows

ROOT = Path(__file__).resolve().parents[1]
SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)


def _numbered(n: int = 13) -> SeqSet:
    """Row i starts with token 10 + i (so a batch says which rows it holds); lengths vary."""
    seqs = [[10 + i] + [6 + (i * j) % 7 for j in range(3 + (i * 5) % 9)] for i in range(n)]
    return SeqSet.from_lists(seqs, [[False] * (len(s) - 1) + [True] for s in seqs], 0)


def test_shards_partition_every_global_batch_deterministically():
    data = _numbered()
    single = BatchSampler(data, 4, seed=3)
    ranks = [ddp.ShardedSampler(BatchSampler(data, 4, seed=3), r, 3) for r in range(3)]
    for _ in range(12):  # three epochs: 13 rows in batches of 4 leave a 1-row batch each epoch
        whole = next(single)
        shards = [next(s) for s in ranks]
        live = [s.live for s in ranks]
        got = sorted(int(b.ids[i, 0]) for b, ok in zip(shards, live) if ok for i in range(b.ids.shape[0]))
        assert got == sorted(whole.ids[:, 0].tolist())  # together the live shards are exactly the global batch
        assert all(s.global_tokens == whole.n_tokens for s in ranks)  # every rank counts the cell's tokens
        assert sum(b.n_tokens for b, ok in zip(shards, live) if ok) == whole.n_tokens
        if len(whole.ids) < 3:  # fewer rows than ranks: the idle ranks hold a zero-weight stand-in row
            assert live.count(False) == 3 - len(whole.ids) and all(b.ids.shape[0] == 1 for b in shards)
    again = ddp.ShardedSampler(BatchSampler(data, 4, seed=3), 1, 3)
    first = ddp.ShardedSampler(BatchSampler(data, 4, seed=3), 1, 3)
    assert all(torch.equal(next(again).ids, next(first).ids) for _ in range(6))  # same seed, same shards


def test_each_rank_batch_carries_the_max_target_count_of_its_own_rows():
    """A rank's batch is cut from its own rows, so its `max_target` (the bound masked diffusion sizes its
    output-layer gather with) is that of its rows, not the global batch's (a stand-in row's included)."""
    seqs = [[10 + i] + [6] * (2 + i % 5) for i in range(11)]
    tgts = [[False] + [j < i % 4 for j in range(len(s) - 1)] for i, s in enumerate(seqs)]  # 0..3 targets
    data = SeqSet.from_lists(seqs, tgts, 0)
    ranks = [ddp.ShardedSampler(BatchSampler(data, 4, seed=1), r, 3) for r in range(3)]
    maxes = set()
    for _ in range(9):
        for s in ranks:
            b = next(s)
            assert b.max_target == int(b.target.sum(1).max())
            maxes.add(b.max_target)
    assert len(maxes) > 1  # shards differ: each rank gets its own (tighter) bound


def test_rank_losses_average_to_the_single_process_gradient(monkeypatch):
    """DDP averages gradients over ranks. Dividing each rank's summed NLL by the loss-token count of
    the whole batch (times the world size) makes that average the single-process gradient; the naive
    per-rank mean does not, when shards hold different numbers of tokens."""
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=30, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    data = _numbered(6)
    idx = np.arange(6)
    shards = [data.batch(idx[r::2]) for r in range(2)]
    counts = [obj.loss_terms(model, b)[1] for b in shards]
    assert counts[0] != counts[1]

    def grad(loss_fn) -> torch.Tensor:
        model.zero_grad()
        loss_fn().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    full = grad(lambda: obj.loss(model, data.batch(idx)))
    # two ranks in one process: the all-reduce of the token count is the sum over both shards
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: t.copy_(sum(counts).float().reshape(t.shape)))
    par = object.__new__(ddp.DataParallel)
    par.env = ddp.DistEnv(world_size=2)
    live, idle = SimpleNamespace(live=True), SimpleNamespace(live=False)  # a ShardedSampler's flag
    ddp_avg = sum(grad(lambda b=b: par.loss(obj, model, b, live, None)) for b in shards) / 2
    naive = sum(grad(lambda b=b: obj.loss(model, b)) for b in shards) / 2
    torch.testing.assert_close(ddp_avg, full, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(naive, full, rtol=1e-3, atol=1e-6)
    dead = grad(lambda: par.loss(obj, model, shards[0], idle, None))
    assert torch.count_nonzero(dead) == 0  # a stand-in row contributes nothing


@pytest.fixture
def one_thread():
    """Each rank runs one thread; so does the reference run (2 threads on a busy 2-core box crawl)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _args(data_dir, out, cache):
    return ["--preset", "tiny", "--budget", "tokens=6000", "--data-dir", str(data_dir), "--out", str(out),
            "--cache-dir", str(cache), "--no-progress", "--grid", "t", "--mixers", "attention",
            "--objectives", "autoregressive", "--task-opt", "latency_n=1", "--no-report"]


def test_torchrun_two_gloo_ranks_write_one_row_matching_one_process(offline_dir, tmp_path, cache_dir, one_thread):
    """`torchrun --nproc_per_node 2 run_matrix.py ...` on CPU: one row, world size 2, and the same
    loss curve as one process on the same global batches (equal up to float summation order).

    The tolerance is tight on purpose: curves are rounded to 5 decimals and agree there, while the
    naive normalisation (each rank's own per-token mean, averaged by DDP) drifts by 1e-4 to 5e-4."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_matrix.main(_args(offline_dir, one, cache_dir)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath_with(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(ddp.free_port()),
           str(ROOT / "run_matrix.py"), *_args(offline_dir, two, cache_dir)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("  ok ") == 1  # rank 0 alone reports

    (a,), (b,) = cell_rows(read_rows(one / "results" / "t.jsonl")), cell_rows(read_rows(two / "results" / "t.jsonl"))
    assert b["status"] == "ok", b.get("error")
    assert (a["world_size"], b["world_size"]) == (1, 2) and b["executor"]["kind"] == "torchrun"
    assert b["tokens_seen"] == a["tokens_seen"] and b["train"]["steps"] == a["train"]["steps"]
    # 10 check points, 7 steps: every step passes at least one point and makes one check
    assert len(b["loss_curve"]) == len(a["loss_curve"]) == a["train"]["steps"] == 7
    for p, q in zip(a["loss_curve"], b["loss_curve"]):
        assert (p["step"], p["tokens"], p["frac"]) == (q["step"], q["tokens"], q["frac"])
        assert q["train_loss"] == pytest.approx(p["train_loss"], abs=5e-5)
        assert q["dev_loss"] == pytest.approx(p["dev_loss"], abs=5e-5)
    assert a["loss_curve"][-1]["train_loss"] < a["loss_curve"][0]["train_loss"] - 0.5  # it did learn


def test_spawned_ranks_share_one_time_budget(offline_dir, cache_dir, monkeypatch):
    """The entry point a multi-GPU Ray task uses: 2 spawned gloo ranks, a *time* budget (rank 0's clock
    decides for both), one row back, and rank 0's phases forwarded to this process."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny", budget="seconds=1",
                task_opts={"latency_n": 1})
    spec = ContextSpec(device="cpu", data_dir=str(offline_dir), cache_dir=str(cache_dir), grid="t")
    phases = []
    row = spawn_cell(cell, spec, 2, phase=lambda text, frac: phases.append((stage(text), frac)))
    assert row["status"] == "ok", row.get("error")
    stages = [s for i, (s, _) in enumerate(phases) if i == 0 or phases[i - 1][0] != s]
    assert stages == ["prepare", "train", "evaluate answers", "evaluate ppl"]  # one rank's, each stage once
    assert [f for _, f in phases] == sorted(f for _, f in phases)  # in order
    assert row["world_size"] == 2 and row["key"] == cell.key()
    # a seconds= budget: the clock plus what it charged for the warm-up step's training (rounded to 1 ms)
    t = row["train"]
    assert row["loss_curve"][-1]["frac"] == 1.0 and t["seconds"] + t["warm_charged_seconds"] >= 1.0 - 1e-3
    assert row["loss_curve"][-1]["step"] == row["train"]["steps"] > 1
    json.dumps(row)  # a plain JSON row


def test_only_global_rank_0_is_main_and_only_agreed_failures_let_the_grid_go_on():
    """Rank 0 of the whole job writes the row: on a second node, local rank 0 is not the main rank.
    A budget or NaN failure is met by every rank alike (a failed row, the grid goes on); anything else
    (an OOM on one GPU) must stop the job."""
    assert ddp.DistEnv().is_main and not ddp.DistEnv().active
    assert ddp.DistEnv(world_size=4, rank=0, local_rank=0).is_main
    assert not ddp.DistEnv(world_size=4, rank=2, local_rank=0).is_main  # node 2's first process
    assert not ddp.DistEnv(world_size=4, rank=1, local_rank=1).is_main
    from harness.budget import BudgetError

    assert ddp.agreed_failure(BudgetError("too small"))
    assert ddp.agreed_failure(FloatingPointError("loss is nan"))
    assert not ddp.agreed_failure(RuntimeError("CUDA out of memory"))
    assert not ddp.agreed_failure(ValueError("bad option"))
