"""Data-parallel cells on CPU (gloo): sharding, exact loss normalisation, torchrun and spawned ranks."""
from __future__ import annotations

import dataclasses
import json
import re
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


def test_a_rank_left_without_rows_holds_exactly_one_stand_in_row():
    """6 rows in batches of 4 on 3 ranks: each epoch's 2-row batch leaves rank 2 without a row; it runs the
    batch's first row as a zero-weight stand-in, one row on the host and on the device alike (a shard of
    the device indices wider than the host's would train on a row the token count never saw)."""
    data = _numbered(6)
    rank2 = ddp.ShardedSampler(BatchSampler(data, 4, seed=0), 2, 3)
    idle = []
    for _ in range(4):
        b = next(rank2)
        if not rank2.live:
            idle.append((b.ids.shape[0], b.n_tokens == int(data.lengths[int(b.ids[0, 0]) - 10])))
    assert idle == [(1, True), (1, True)]  # two epochs, one short batch each: one row, counted as that row


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
    # two ranks in one process: the all-reduce of the token count is the sum over both shards; what each
    # rank puts in is recorded (a stand-in row must add 0: anything else shifts every rank's loss)
    sent: list[float] = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: sent.append(float(t.reshape(()))) or
                        t.copy_(sum(counts).float().reshape(t.shape)))
    par = object.__new__(ddp.DataParallel)
    par.env = ddp.DistEnv(world_size=2)
    live, idle = SimpleNamespace(live=True), SimpleNamespace(live=False)  # a ShardedSampler's flag
    ddp_avg = sum(grad(lambda b=b: par.loss(obj, model, b, live, None)) for b in shards) / 2
    naive = sum(grad(lambda b=b: obj.loss(model, b)) for b in shards) / 2
    torch.testing.assert_close(ddp_avg, full, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(naive, full, rtol=1e-3, atol=1e-6)
    assert sent[:2] == [float(c) for c in counts]  # each rank its own shard's count
    sent.clear()
    dead = grad(lambda: par.loss(obj, model, shards[0], idle, None))
    assert torch.count_nonzero(dead) == 0 and sent == [0.0]  # a stand-in row contributes nothing, nor to the count
    # a global batch with one loss token is divided by 1; one with none (only stand-in rows) by 1, not 0
    num = obj.loss_terms(model, shards[0])[0].detach()
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: t.fill_(1.0))
    torch.testing.assert_close(par.loss(obj, model, shards[0], live, None).detach(), num * 2)  # W x num / 1
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: t.fill_(0.0))
    assert par.loss(obj, model, shards[0], idle, None).item() == 0.0  # 0 / max(0, 1): no NaN


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
    with pytest.raises(dataclasses.FrozenInstanceError):  # where a process sits never changes under a cell
        ddp.DistEnv(world_size=4, rank=1).rank = 0
    from harness.budget import BudgetError

    assert ddp.agreed_failure(BudgetError("too small"))
    assert ddp.agreed_failure(FloatingPointError("loss is nan"))
    assert not ddp.agreed_failure(RuntimeError("CUDA out of memory"))
    assert not ddp.agreed_failure(ValueError("bad option"))


def test_the_data_fingerprint_covers_ids_and_lengths():
    """Ranks compare a hash of their tokenised training data. Two sets with the same padded ids but other
    lengths (a row whose last real token is the pad id) train on different tokens: other hashes. The same
    data gives the same 12 hex digits on every rank."""
    a = SeqSet(torch.tensor([[7, 0], [8, 9]]), torch.zeros(2, 2, dtype=torch.bool), np.array([1, 2]))
    b = SeqSet(a.ids.clone(), a.target, np.array([2, 2]))
    c = SeqSet(torch.tensor([[7, 0], [8, 8]]), a.target, np.array([1, 2]))
    fa = ddp.data_fingerprint(a)
    assert re.fullmatch(r"[0-9a-f]{12}", fa) and fa == ddp.data_fingerprint(SeqSet(a.ids.clone(), a.target, a.lengths))
    assert len({fa, ddp.data_fingerprint(b), ddp.data_fingerprint(c)}) == 3


def test_ranks_that_disagree_on_their_data_are_told_so_in_one_line(monkeypatch):
    """`check_same` gathers every rank's value on the host group; one differing value is an error that
    names them all, the same values pass, and a single process gathers nothing."""
    gathered: list[list[str]] = []

    def all_gather_object(out, value, group=None):
        assert group == "cpu-group"
        out[:] = gathered[0]

    monkeypatch.setattr(ddp.dist, "all_gather_object", all_gather_object)
    env = ddp.DistEnv(world_size=3, rank=1, local_rank=1, backend="gloo", cpu_group="cpu-group")
    gathered.append(["ab12", "ab12", "ab12"])
    env.check_same("ab12", "the tokenised training data")
    gathered[0] = ["ab12", "ff00", "ab12"]
    with pytest.raises(RuntimeError) as e:
        env.check_same("ff00", "the tokenised training data")
    assert str(e.value) == ("ranks disagree on the tokenised training data (ab12, ff00, ab12); "
                            "give every node the same data and --cache-dir")
    gathered.clear()  # a single process: no collective (the stand-in would fail on an empty list)
    ddp.DistEnv().check_same("x", "anything")


@pytest.mark.parametrize("local_rank, order", [(None, ["block", "barrier"]), (1, ["barrier", "block"])],
                         ids=["local-rank-0-by-default", "local-rank-1"])
def test_local_rank_0_runs_the_block_first_and_the_others_wait_for_it(monkeypatch, local_rank, order):
    """`local_main_first`: local rank 0 (the default) fills the node's caches, then releases the others at
    a barrier on the host group; the others wait at that barrier first."""
    log: list[str] = []
    monkeypatch.setattr(ddp.dist, "barrier", lambda group=None: log.append("barrier"))
    kw = {} if local_rank is None else {"local_rank": local_rank}
    env = ddp.DistEnv(world_size=2, rank=kw.get("local_rank", 0), **kw)
    with env.local_main_first():
        log.append("block")
    assert log == order


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_a_launched_rank_joins_its_group_on_its_own_gpu(monkeypatch, device):
    """Under torchrun a rank takes GPU LOCAL_RANK whatever --device said, makes it current (NCCL's
    collectives run on the current device), joins with NCCL on CUDA and gloo on CPU under the collective
    timeout, registers the group's shutdown at exit, and makes the host group for long waits (gloo,
    hours). Checked on stand-ins for torch.distributed and CUDA (no GPU, no rendezvous needed)."""
    calls: list[tuple] = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(ddp, "resolve_device", lambda arg: torch.device(device))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(ddp.dist, "init_process_group", lambda backend, timeout: calls.append(("init", backend, timeout)))
    monkeypatch.setattr(ddp.atexit, "register", lambda fn: calls.append(("atexit", fn)))
    monkeypatch.setattr(ddp.dist, "new_group", lambda backend, timeout: calls.append(("group", backend, timeout)) or "g")
    env, dev = ddp.init("auto")
    assert env == ddp.DistEnv(4, 3, 1, "nccl" if device == "cuda" else "gloo") and env.cpu_group == "g"
    first = [("set_device", "cuda:1")] if device == "cuda" else []
    assert str(dev) == ("cuda:1" if device == "cuda" else "cpu")
    assert calls == first + [("init", env.backend, ddp.COLLECTIVE_TIMEOUT), ("atexit", ddp.shutdown),
                             ("group", "gloo", ddp.WAIT_TIMEOUT)]


def test_shutdown_leaves_a_group_that_is_up_and_is_a_no_op_without_one(monkeypatch):
    """`shutdown` runs at exit and after every spawned rank: without a process group (a single process,
    a rank that failed before joining) it does nothing and raises nothing; with one it destroys it."""
    assert not ddp.dist.is_initialized()
    ddp.shutdown()
    destroyed = []
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(ddp.dist, "destroy_process_group", lambda: destroyed.append(True))
    ddp.shutdown()
    assert destroyed == [True]


@pytest.mark.parametrize("budget, synced", [("seconds=5", True), ("a100_seconds=5", True), ("tokens=500", False)])
def test_a_time_budgets_fraction_is_rank_0s_and_a_token_budgets_needs_no_collective(monkeypatch, budget, synced):
    """Seconds differ per rank, so under a time budget every rank takes rank 0's fraction (a host float
    broadcast on the gloo group: no device sync) and all stop at the same step; a token fraction is the
    same on every rank by construction and costs no collective."""
    from harness.budget import Budget
    sent = []

    def broadcast(t, src, group=None):
        assert src == 0 and group == "cpu-group" and t.dtype == torch.float64 and t.device.type == "cpu"
        sent.append(float(t[0]))
        t[0] = 0.625  # rank 0's fraction

    monkeypatch.setattr(ddp.dist, "broadcast", broadcast)
    monkeypatch.setattr(ddp, "_DDP", lambda model, **kw: model)  # no process group needed for the fraction
    env = ddp.DistEnv(world_size=2, rank=1, local_rank=1, cpu_group="cpu-group")
    par = ddp.DataParallel(torch.nn.Linear(1, 1), env, torch.device("cpu"), Budget.parse(budget))
    got = par.fraction(0.5)
    assert (got, sent) == ((0.625, [0.5]) if synced else (0.5, []))


def test_the_no_buffer_sync_keyword_follows_the_torch_at_hand():
    """torch 2.13 (CI) takes `forward_sync_buffers`; older torch (the device's 2.11) only `broadcast_buffers`.
    Either way the buffers are not broadcast every forward."""
    assert ddp.no_buffer_sync(["module", "broadcast_buffers", "forward_sync_buffers"]) == {"forward_sync_buffers": False}
    assert ddp.no_buffer_sync(["module", "broadcast_buffers", "static_graph"]) == {"broadcast_buffers": False}


def test_a_data_parallel_model_is_wrapped_without_a_buffer_sync_and_without_a_deprecation_warning():
    """DDP is told not to broadcast buffers every forward (the LM has none to sync), under the keyword this
    torch names it: torch 2.13 renamed `broadcast_buffers` to `forward_sync_buffers` and warns on the old
    one. One real gloo rank in this process (a hash store: no rendezvous)."""
    import warnings

    from harness.budget import Budget
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))
    ddp.dist.init_process_group("gloo", store=ddp.dist.HashStore(), rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            par = ddp.DataParallel(model, ddp.DistEnv(world_size=1), torch.device("cpu"), Budget.parse("tokens=1"))
        assert par.module.module is model and par.module.head_weight is model.head_weight  # attributes pass through
        assert par.module.gradient_as_bucket_view is True  # gradients live in the all-reduce buckets: no copy
        sync = getattr(par.module, "forward_sync_buffers", None)
        assert (par.module.broadcast_buffers is False) if sync is None else (sync is False)
    finally:
        ddp.dist.destroy_process_group()


def test_dev_loss_selects_checkpoints_with_the_cheap_estimator_and_shards_rows_over_ranks(monkeypatch):
    """Checkpoint selection uses the objective's selection estimator (diffusion: fewer samples of its
    bound), alone or on N ranks; on N ranks rank r scores rows r::N and the sums are all-reduced, so every
    rank gets the same float: the total NLL over the total count."""
    seen = []
    monkeypatch.setattr(ddp, "dev_loss", lambda *a, **k: seen.append(("dev_loss", k)) or 1.5)
    from harness.budget import Budget
    data = _numbered(5)
    assert ddp.SingleProcess(None).dev_loss(None, "obj", data, 4, torch.device("cpu")) == 1.5
    assert seen == [("dev_loss", {"selection": True})]

    def nll_sums(model, objective, shard, batch_size, device, selection=False):
        seen.append(("nll_sums", shard.ids[:, 0].tolist(), selection))
        return torch.tensor(3.0, dtype=torch.float64), torch.tensor(4)

    monkeypatch.setattr(ddp, "nll_sums", nll_sums)
    monkeypatch.setattr(ddp.dist, "all_reduce", lambda t, *a, **k: t.mul_(2))  # two ranks, the same sums each
    monkeypatch.setattr(ddp, "_DDP", lambda model, **kw: model)
    par = ddp.DataParallel(torch.nn.Linear(1, 1), ddp.DistEnv(world_size=2, rank=1, local_rank=1),
                           torch.device("cpu"), Budget.parse("tokens=1"))
    assert par.dev_loss(None, "obj", data, 4, torch.device("cpu")) == 0.75  # (3 + 3) / (4 + 4)
    assert seen[1] == ("nll_sums", [11, 13], True)  # rows 1 and 3 of 0..4 (a row's first id is 10 + i)
    seen.clear()  # a rank whose shard is empty (one dev row, two ranks): rank 0's sums are the whole
    monkeypatch.setattr(ddp, "nll_sums", lambda *a, **k: (torch.tensor(0.0, dtype=torch.float64), torch.tensor(0)))
    monkeypatch.setattr(ddp.dist, "all_reduce", lambda t, *a, **k: t.add_(torch.tensor([0.7, 1.0])))
    assert par.dev_loss(None, "obj", _numbered(1), 4, torch.device("cpu")) == pytest.approx(0.7)


def test_a_free_port_is_an_unprivileged_port_nothing_holds():
    """The rendezvous port the OS hands out: above the privileged range and free to bind once returned."""
    import socket
    port = ddp.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
