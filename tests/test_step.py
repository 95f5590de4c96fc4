"""The training step's contracts that keep a GPU busy, checked on CPU: token-budget batches with little
padding, batches cut on the device, no host reads of device values between evaluation points, logits
only where a next token is real, and the cheaper RMSNorm / cached RoPE being exactly what they replace."""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest
import torch

from harness import objectives
from harness.budget import Budget
from harness.cell import Cell
from core.data import BatchSampler, SeqSet, SpecialTokens, padding_fraction
from harness.model import LM, LMConfig
from harness.train import TrainConfig, train
from mixers._layers import RMSNorm, _RMSNormFn, positions_from_mask, rope_angles, rope_for

SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)


def _lengths_fixture(n=1500, seed=0) -> np.ndarray:
    """JSQuAD-like spread: most sequences 100-300 tokens, a tail up to the 512 cap."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(170), 0.45, n).astype(int), 20, 512)


def _seqset(lengths: np.ndarray) -> SeqSet:
    seqs = [[2] + [6 + (i + j) % 20 for j in range(int(L) - 1)] for i, L in enumerate(lengths)]
    return SeqSet.from_lists(seqs, [[False] * (len(s) - 1) + [True] for s in seqs], 0)


def _epoch(sampler: BatchSampler) -> list[np.ndarray]:
    return sampler.epoch_batches()


def test_token_budget_batches_are_bounded_cover_every_row_and_pad_less():
    lengths = _lengths_fixture()
    data = SeqSet(torch.zeros(len(lengths), 1, dtype=torch.long), torch.zeros(len(lengths), 1, dtype=torch.bool), lengths)
    budget, pad_to = 16384, 1
    batches = _epoch(BatchSampler(data, 0, seed=1, batch_tokens=budget, pad_to=pad_to))
    for b in batches:  # rows x padded length of the longest row never exceeds the budget
        assert len(b) * (-(-int(lengths[b].max()) // pad_to) * pad_to) <= budget
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))  # every row exactly once per epoch
    assert np.mean([len(b) for b in batches]) > 32  # short rows fill a batch with more than the old 32
    new = padding_fraction(batches, lengths, pad_to)
    old_cuda = padding_fraction(_epoch(BatchSampler(data, 32, seed=1, pad_to=64)), lengths, 64)  # the old CUDA path
    old_cpu = padding_fraction(_epoch(BatchSampler(data, 32, seed=1)), lengths, 1)
    assert new < 0.5 * old_cuda  # the old CUDA path rounded lengths up to 64
    assert new < 1.2 * old_cpu  # ~3x the rows per batch, about the same padding as 32-row buckets


def test_a_row_longer_than_the_budget_is_a_batch_of_its_own():
    lengths = np.array([5, 6, 50, 7, 5])
    data = SeqSet(torch.zeros(5, 1, dtype=torch.long), torch.zeros(5, 1, dtype=torch.bool), lengths)
    batches = _epoch(BatchSampler(data, 0, seed=0, batch_tokens=16))
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2, 3, 4]
    assert [2] in [b.tolist() for b in batches]
    assert all(len(b) * lengths[b].max() <= 16 for b in batches if 2 not in b)


# the sampler's three ways of cutting an epoch: a token budget, fixed shapes (CUDA graphs), a row count;
# each with one pool / chunk holding every row, so an epoch that is not shuffled is sorted by length
SAMPLERS = [pytest.param(dict(batch_size=0, batch_tokens=2048, bucket=64), id="tokens"),
            pytest.param(dict(batch_size=0, batch_tokens=2048, bucket=64, pad_to=64, fixed_shapes=True), id="fixed"),
            pytest.param(dict(batch_size=4, bucket=64), id="rows")]


def _order(batches: list[np.ndarray]) -> list[int]:
    return np.concatenate(batches).tolist()


@pytest.mark.parametrize("kw", SAMPLERS)
def test_the_sampler_seed_decides_the_epoch_order(kw):
    """Two seeds give two different epochs (and one seed the same one): a sampler that ignored its seed
    would train every seed of a cell on the same batches, and seeds would stop measuring that noise."""
    data = _seqset(_lengths_fixture(150, seed=5))
    a, b, a2 = (BatchSampler(data, seed=s, **kw).epoch_batches() for s in (1, 2, 1))
    assert _order(a) != _order(b)
    assert _order(a) == _order(a2)


@pytest.mark.parametrize("kw", SAMPLERS)
def test_each_epoch_of_a_sampler_is_a_fresh_shuffle(kw):
    """One sampler's consecutive epochs differ (the rng carries on, it is not reseeded per epoch): every
    epoch in one order would replay the same batch sequence, and a long run would see no reshuffle."""
    sampler = BatchSampler(_seqset(_lengths_fixture(150, seed=5)), seed=0, **kw)
    epochs = [_order(sampler.epoch_batches()) for _ in range(3)]
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]


@pytest.mark.parametrize("kw", SAMPLERS)
def test_length_grouped_batches_are_served_in_random_order(kw):
    """Rows are grouped by length into batches, but the batches are served shuffled: on varied lengths an
    epoch's batch lengths neither only rise nor only fall (served sorted, training would run short rows,
    then long ones, a length curriculum every epoch). One pool holds every row here, so without the
    shuffle the epoch would be sorted."""
    data = _seqset(_lengths_fixture(150, seed=5))
    sampler = BatchSampler(data, seed=0, **kw)
    served = [sampler.next_indices() for _ in range(len(BatchSampler(data, seed=0, **kw).epoch_batches()))]
    assert sampler.epoch == 1 and set(_order(served)) == set(range(len(data)))  # one whole epoch
    longest = np.array([int(data.lengths[b].max()) for b in served])
    steps = np.diff(longest)
    assert len(served) > 5 and (steps > 0).any() and (steps < 0).any(), longest


def test_batches_are_cut_on_the_device_with_one_index_upload_per_epoch(monkeypatch):
    """No per-step host-to-device copy of indices (a pageable copy synchronises the CUDA stream):
    the sampler uploads each epoch's order once and a batch is a slice of it."""
    data = _seqset(_lengths_fixture(60, seed=2) // 8 + 3).to("cpu")  # as train() gets it: on its device
    sampler = BatchSampler(data, 0, seed=0, batch_tokens=256)
    import core.data as hd

    calls = []
    real = hd.upload
    monkeypatch.setattr(hd, "upload", lambda *a, **k: calls.append(1) or real(*a, **k))
    seen = 0
    for _ in range(40):
        b = next(sampler)
        seen += b.ids.shape[0]
        # a batch is exactly its rows, trimmed to its longest row, with a correct pad mask
        assert b.pad_mask.sum().item() == b.n_tokens and b.pad_mask[:, -1].any()
    assert len(calls) == sampler.epoch and sampler.epoch >= 2


def test_uploads_to_a_gpu_are_queued_from_pinned_memory(monkeypatch):
    """The contract of every host-to-device copy a step or a decoding loop makes (the sampler's epoch
    order, the prompts): on CUDA from pinned memory with non_blocking, so the host never waits for the
    GPU's queue to drain (a pageable copy is synchronous). Checked on CPU by recording what the copy is
    asked for; a CPU device copies plainly (pinning needs a GPU)."""
    import core.data as hd

    seen = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: seen.append("pin") or t.clone())
    monkeypatch.setattr(torch.Tensor, "to", lambda t, dev, non_blocking=False: seen.append((str(dev), non_blocking)) or t)
    out = hd.upload(np.arange(5), torch.device("cuda"))
    assert seen == ["pin", ("cuda", True)] and out.tolist() == list(range(5))
    seen.clear()
    rows = hd.padded_rows([[7, 8], [9]], 3, 0, "cuda:0", left=True)
    assert seen == ["pin", ("cuda:0", True)] and rows.tolist() == [[0, 7, 8], [0, 0, 9]]
    seen.clear()
    hd.upload(np.arange(3), "cpu")
    assert seen == [("cpu", False)]
    monkeypatch.undo()
    # the sampler and the decoders upload through it (on CPU: the same values)
    sampler = BatchSampler(_seqset(np.full(8, 5)), 4, seed=0)
    assert sorted(torch.cat([sampler.next_pair()[1] for _ in range(2)]).tolist()) == list(range(8))


def test_target_counts_are_kept_on_the_host_and_batches_carry_their_max():
    """`SeqSet.target_lengths` (counted once) survives to() and subset(), and every batch's `max_target`
    is the true largest target count among its rows: masked diffusion sizes its output-layer gather
    with it instead of reading the count back from the device each step."""
    rng = np.random.default_rng(3)
    seqs = [[2] + rng.integers(6, 20, int(L)).tolist() for L in rng.integers(3, 15, 40)]
    tgts = [(rng.random(len(s)) < rng.random()).tolist() for s in seqs]  # 0 .. len targets, anywhere
    data = SeqSet.from_lists(seqs, tgts, 0)
    want = np.array([sum(t) for t in tgts])
    assert np.array_equal(data.target_lengths, want)
    built = SeqSet(data.ids, data.target, data.lengths)  # a direct construction counts them itself
    assert np.array_equal(built.target_lengths, want) and built.target_lengths.dtype == np.int64
    moved = data.to("cpu")
    idx = np.array([5, 0, 17, 33])
    sub = moved.subset(idx)
    assert np.array_equal(moved.target_lengths, want) and np.array_equal(sub.target_lengths, want[idx])
    assert np.array_equal(sub.target_lengths, sub.target.sum(1).numpy())
    sampler = BatchSampler(moved, 0, seed=0, batch_tokens=48)
    for _ in range(30):
        idx, _ = sampler.next_pair()
        b = moved.batch(idx)
        assert b.max_target == int(b.target.sum(1).max()) == want[idx].max()
    assert sub.batch(np.array([1, 2])).max_target == max(want[0], want[17])


class _ReadCounter:
    """Counts reads of tensor values into Python (item, float, int, bool, tolist, numpy, cpu).

    Reads made by torch.optim itself are not counted: on CPU AdamW keeps its step counters as host
    tensors and reads them (no device involved); on CUDA the trainer's fused AdamW keeps them on the
    device and reads nothing."""

    METHODS = ("item", "__float__", "__int__", "__bool__", "tolist", "numpy", "cpu")

    def __init__(self, monkeypatch):
        self.n, self.paused = 0, 0
        for m in self.METHODS:
            orig = getattr(torch.Tensor, m)
            monkeypatch.setattr(torch.Tensor, m, self._wrap(orig))

    def _wrap(self, orig):
        def f(t, *a, **k):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if not self.paused and "/torch/optim/" not in caller:
                self.n += 1
            return orig(t, *a, **k)

        return f


@pytest.mark.parametrize("objective", ["autoregressive", "diffusion"])
def test_training_reads_no_device_value_between_evaluation_points(monkeypatch, objective):
    """The loss is summed on the device and read once per evaluation point; nothing in a step
    (sampler, model, loss, clipping, optimiser) reads a tensor value back to the host. On CUDA each
    such read is a stream synchronisation that leaves the GPU idle."""
    from harness.distributed import SingleProcess

    counter = _ReadCounter(monkeypatch)
    real_dev_loss = SingleProcess.dev_loss

    def dev_loss(*a, **k):  # evaluation may read values: it happens at the eval points only
        counter.paused += 1
        try:
            return real_dev_loss(*a, **k)
        finally:
            counter.paused -= 1

    monkeypatch.setattr(SingleProcess, "dev_loss", dev_loss)
    from harness.objectives.diffusion import MaskedDiffusion

    widths, real_width = [], MaskedDiffusion.region_width  # diffusion: the steps take the region-only path
    monkeypatch.setattr(MaskedDiffusion, "region_width", lambda *a: widths.append(real_width(*a)) or widths[-1])
    rng = np.random.default_rng(0)
    seqs = [[2] + rng.integers(6, 20, int(L)).tolist() + [3] for L in rng.integers(4, 12, 48)]
    data = SeqSet.from_lists(seqs, [[False] * (len(s) - 2) + [True] * 2 for s in seqs], 0)
    obj = objectives.build(objective, SPECIAL, "chunked")
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention", causal=obj.causal, mlp_hidden=32))
    cfg = TrainConfig(batch_tokens=96, progress=False, eval_points=2)
    res = train(model, obj, data, data.subset(np.arange(8)), Budget.parse("tokens=2000"), cfg, torch.device("cpu"))
    assert res.steps >= 20
    assert counter.n <= 2 * cfg.eval_points, f"{counter.n} host reads in {res.steps} steps"
    assert res.padding_frac is not None and 0 <= res.padding_frac < 0.5
    if objective == "diffusion":  # every step gathered W >= 1 region columns (a host bound, no read)
        assert len(widths) == res.steps and min(widths) >= 1


def test_autoregressive_loss_computes_logits_only_where_the_next_token_is_real(monkeypatch):
    """Pads get no logits (n = real tokens - rows), and the loss is the one over the full padded grid:
    `loss_terms` its (sum, count), `loss` their mean, and the dev/eval `nll` the answer's tokens only
    whatever `loss_on` trains."""
    import harness.objectives.autoregressive as ar
    from harness.loss import token_nll

    seen = []
    monkeypatch.setattr(ar, "token_nll", lambda h, w, y, impl: seen.append(h.shape[0]) or token_nll(h, w, y, impl))
    data = SeqSet.from_lists([[2, 7, 8, 3], [2, 9, 3], [2, 10, 11, 12, 13, 3]],
                             [[0, 0, 1, 1], [0, 1, 1], [0, 0, 0, 0, 1, 1]], 0)
    batch = data.batch(np.arange(3))
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=16))
    # the reference: logits everywhere, masked
    h = model(batch.ids, batch.pad_mask)[:, :-1]
    ce = torch.nn.functional.cross_entropy(model.logits(h).reshape(-1, 20), batch.ids[:, 1:].reshape(-1),
                                           reduction="none").view(3, -1)
    answer = batch.pad_mask[:, 1:] & batch.target[:, 1:]
    for loss_on in ("all", "answer"):
        obj = objectives.build("autoregressive", SPECIAL, "chunked", loss_on=loss_on)
        s, n = obj.loss_terms(model, batch)
        use = answer if loss_on == "answer" else batch.pad_mask[:, 1:]
        torch.testing.assert_close(s, ce[use].sum(), rtol=1e-5, atol=1e-5)
        assert int(n) == int(use.sum())
        torch.testing.assert_close(obj.loss(model, batch), ce[use].mean(), rtol=1e-5, atol=1e-5)
        s, n = obj.nll(model, batch)
        torch.testing.assert_close(s, ce[answer].sum(), rtol=1e-5, atol=1e-5)
        assert int(n) == int(answer.sum())
    assert seen == [batch.n_tokens - 3] * 6 == [10] * 6  # loss_terms, loss and nll, for each loss_on
    # the rows are right-padded, so a causal model's mixers get no mask: their unmasked fast path (SDPA's
    # is_causal) computes the same numbers, since no real token sees a pad after it
    masks, mix = [], model.blocks[0].mixer
    fwd = mix.forward
    monkeypatch.setattr(mix, "forward", lambda x, pad_mask=None: masks.append(pad_mask) or fwd(x, pad_mask))
    obj.loss(model, batch), obj.nll(model, batch)
    assert masks == [None, None]
    # one loss token: the mean is that token's NLL (the count is clamped at 1 only so that 0 divides safely)
    one = SeqSet.from_lists([[2, 7, 3]], [[0, 0, 1]], 0).batch(np.arange(1))
    ce_one = torch.nn.functional.cross_entropy(model.logits(model(one.ids, one.pad_mask)[0, 1]), one.ids[0, 2])
    torch.testing.assert_close(obj.loss(model, one), ce_one, rtol=1e-5, atol=1e-5)


def test_rms_norm_function_is_the_textbook_rms_norm_with_exact_gradients():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(_RMSNormFn.apply(x, w, 1e-6), ref)
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormFn.apply(a, b, 1e-6), (x, w))
    norm = RMSNorm(8)
    xb = torch.randn(2, 4, 8).bfloat16().requires_grad_()
    y = norm(xb)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and xb.grad.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32


def test_cached_rope_angles_equal_the_recomputed_ones(monkeypatch):
    import mixers._layers as layers

    monkeypatch.setattr(layers, "_ROPE_TABLES", {})  # start from no table, whatever ran before
    B, T, dim = 2, 7, 16
    pad = torch.tensor([[True] * 7, [False, False, True, True, True, True, True]])
    for mask in (None, pad):
        got = rope_for(mask, B, T, dim, 10000.0, "cpu")
        want = rope_angles(positions_from_mask(mask, B, T, "cpu"), dim, 10000.0)
        for g, r in zip(got, want):
            assert g.shape == (B, T, dim // 2) and torch.equal(g, r)
    a = rope_for(None, B, T, dim, 10000.0, "cpu")[0]
    b = rope_for(None, B, 3, dim, 10000.0, "cpu")[0]
    assert a.data_ptr() == b.data_ptr()  # one table, read by every layer and step, not recomputed
    with torch.inference_mode():  # a table first built in inference mode still works in training
        rope_for(None, 1, 3000, dim, 10000.0, "cpu")
    q = torch.randn(1, 1, 3000, dim, requires_grad=True)
    from mixers._layers import apply_rope

    apply_rope(q, *rope_for(None, 1, 3000, dim, 10000.0, "cpu")).sum().backward()
    for n in (4097, 8192, 8193):  # the table grows to the next power of two: one past it, and exactly at it
        got = rope_for(None, 1, n, dim, 10000.0, "cpu")
        want = rope_angles(positions_from_mask(None, 1, n, "cpu"), dim, 10000.0)
        assert all(g.shape == (1, n, dim // 2) and torch.equal(g, r) for g, r in zip(got, want))


def test_rope_angles_do_not_depend_on_the_machines_fp32_sin_and_cos(monkeypatch):
    """fp32 sin/cos are not the same function on every CPU: on one CI machine the cached table (one long
    vectorised call) and a decode step's few angles gave outputs that disagreed (by up to 4e-3), and every
    RoPE test against a float64 reference failed there while passing here. Simulated: fp32 cos/sin off by 1e-3. The table,
    a left-padded batch's gather and the per-step angles must still be float64's cos/sin of
    pos·base^(-2i/dim), rounded once to fp32 (within one fp32 ulp)."""
    import math

    import mixers._layers as layers

    monkeypatch.setattr(layers, "_ROPE_TABLES", {})
    for fn in ("cos", "sin"):
        real = getattr(torch.Tensor, fn)
        monkeypatch.setattr(torch.Tensor, fn, lambda t, _f=real: _f(t) + 1e-3 if t.dtype == torch.float32 else _f(t))
    assert torch.ones(1).cos().item() > math.cos(1.0) + 5e-4  # the simulation is on
    dim, base, T = 8, 10000.0, 40
    ang = [[t * base ** (-i / dim) for i in range(0, dim, 2)] for t in range(T)]
    want = (torch.tensor([[math.cos(a) for a in row] for row in ang]),
            torch.tensor([[math.sin(a) for a in row] for row in ang]))  # (T, dim/2) each, fp32
    pad = torch.ones(2, T, dtype=torch.bool)
    pad[1, :5] = False  # left padding: row 1's real tokens sit at positions 0..T-6
    steps = rope_angles(torch.arange(T)[:, None], dim, base)  # one decode step per position: (T, 1, dim/2)
    for g, w in zip(rope_for(None, 1, T, dim, base, "cpu"), want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g[0], w, rtol=0, atol=1e-7)
    for g, w in zip(rope_for(pad, 2, T, dim, base, "cpu"), want):
        torch.testing.assert_close(g[1, 5:], w[: T - 5], rtol=0, atol=1e-7)
    for g, w in zip(steps, want):
        torch.testing.assert_close(g[:, 0], w, rtol=0, atol=1e-7)


def test_compile_is_on_by_default_on_cuda_only():
    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="small", budget="tokens=1")
    assert cell.compiles(torch.device("cuda")) and not cell.compiles(torch.device("cpu"))
    assert not Cell(**{**cell.__dict__, "no_compile": True}).compiles(torch.device("cuda"))
    assert Cell(**{**cell.__dict__, "compile": True}).compiles(torch.device("cpu"))
    assert Cell(**{**cell.__dict__, "no_compile": True}).key() != cell.key()
    # (the default adds nothing to the key, so older rows still resume: tests/test_mqar.py checks keys)


def test_run_matrix_refuses_compile_and_no_compile_together():
    import run_matrix

    with pytest.raises(ValueError, match="contradict"):
        run_matrix.main(["--compile", "--no-compile", "--preset", "tiny"])


def test_compiling_under_a_torch_too_old_to_compile_is_refused_in_one_line(monkeypatch, offline_dir, cache_dir,
                                                                           tmp_path):
    """Under torch 2.4 inductor fails on the RoPE angles (sympy >= 1.13) and every cell would train
    eagerly with an `ok` row; compiling is refused there before anything runs, eager training is not.
    Versions compare as numbers: 2.15 is newer than 2.5."""
    import run_matrix
    from harness.compiling import check_torch, compile_for_training

    with pytest.raises(ValueError, match=r"needs torch >= 2\.5 here \(this is 2\.4\.1\+cu121\)") as e:
        check_torch("2.4.1+cu121")
    assert "\n" not in str(e.value) and "--no-compile" in str(e.value)
    for fine in ("2.5.1", "2.11.0+cu130", "2.15.0", "3.0.0.dev20270101"):
        check_torch(fine)
    monkeypatch.setattr(torch, "__version__", "2.4.1")
    with pytest.raises(ValueError, match="torch.compile needs torch"):  # the benchmarks' and trainer's path too
        compile_for_training(torch.nn.Linear(2, 2))
    argv = ["--preset", "tiny", "--budget", "tokens=2000", "--task-opt", "eval_limit=2", "--dev-tokens", "256",
            "--no-progress", "--no-report", "--mixers", "attention", "--objectives", "autoregressive",
            "--data-dir", str(offline_dir), "--cache-dir", str(cache_dir), "--out", str(tmp_path)]
    with pytest.raises(ValueError, match="torch.compile needs torch"):
        run_matrix.main([*argv, "--compile"])
    assert not (tmp_path / "results").exists()  # refused before anything ran
    assert run_matrix.main(argv) == 0  # eager (the CPU default) runs


def test_a_model_torch_compile_cannot_handle_trains_eagerly_and_says_so(monkeypatch):
    import harness.train as ht

    class Broken(torch.nn.Module):  # what torch.compile returns for a module, failing at its first call
        def forward(self, *a, **k):
            raise RuntimeError("BackendCompilerFailed: inductor cannot lower this")

    def broken_compile(fn, **_kw):
        return Broken()

    monkeypatch.setattr(ht.torch, "compile", broken_compile)
    rng = np.random.default_rng(0)
    seqs = [[2] + rng.integers(6, 20, 6).tolist() + [3] for _ in range(16)]
    data = SeqSet.from_lists(seqs, [[False] * 6 + [True] * 2 for _ in seqs], 0)
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))
    cfg = TrainConfig(batch_tokens=64, progress=False, eval_points=1, compile=True)
    res = train(model, obj, data, data, Budget.parse("tokens=400"), cfg, torch.device("cpu"))
    assert res.steps >= 5 and "BackendCompilerFailed" in res.compile_error


def test_the_eager_retry_runs_without_the_failed_compiled_attempts_memory(monkeypatch):
    """When the compiled step fails in the warm-up, the step is retried eagerly. Retried inside the
    exception handler, the traceback kept the failed attempt's frames alive (its activations, its
    autograd graph): on a GPU beside the retry's own, in the row's peak memory, or an OOM of its own."""
    import gc
    import weakref

    import harness.train as ht

    class Broken(torch.nn.Module):  # what torch.compile returns, failing after building activations
        def forward(self, *a, **k):
            acts = torch.empty(1 << 20)
            held.append(weakref.ref(acts))
            raise RuntimeError("BackendCompilerFailed: inductor cannot lower this")

    held, alive_at_retry = [], []
    monkeypatch.setattr(ht.torch, "compile", lambda fn, **_kw: Broken())
    real = ht._Run._loss_backward

    def spy(self, fn, stage, batch):
        if fn is self.par.module and held and not alive_at_retry:
            alive_at_retry.append(held[0]() is not None)
        return real(self, fn, stage, batch)

    monkeypatch.setattr(ht._Run, "_loss_backward", spy)
    gc.collect()
    gc.disable()
    try:
        res = _tiny_run(budget="tokens=200", eval_points=1, compile=True)
    finally:
        gc.enable()
    assert "BackendCompilerFailed" in res.compile_error and held  # (the failing attempt ran)
    assert alive_at_retry == [False]


def test_the_eager_retry_steps_on_its_own_gradient_not_the_failed_attempts(monkeypatch, step_gradients):
    """A compiled step may fail after its backward ran (a backward graph that fails late, a kernel that
    fails after the first blocks' gradients landed): the eager retry must start from zero gradients, or
    the first step applies the failed attempt's gradient too."""
    import harness.train as ht

    class FailsAfterBackward(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *a, **k):
            self.module(*a, **k).float().square().sum().backward()  # gradients land, then the step fails
            raise RuntimeError("BackendCompilerFailed: the backward failed late")

    monkeypatch.setattr(ht, "compile_for_training", lambda module, *a: (FailsAfterBackward(module), "model"))
    res = _tiny_run(budget="tokens=100", eval_points=1, compile=True, grad_clip=1e9)
    assert "BackendCompilerFailed" in res.compile_error
    assert step_gradients.seen[0] == pytest.approx(step_gradients.own[0], rel=1e-5)


def test_an_out_of_memory_error_is_never_taken_for_a_model_compile_cannot_handle(monkeypatch):
    """An OOM in the compiled step must fail the cell (its row says OutOfMemoryError), not fall back to
    eager training with an `ok` row: also when dynamo wraps it (an OOM in inductor's autotuning comes as
    BackendCompilerFailed(...) from None, the OOM in `inner_exception`)."""
    import harness.train as ht
    from torch._dynamo.exc import BackendCompilerFailed

    def wrapped():
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.cuda.OutOfMemoryError as oom:
            raise BackendCompilerFailed(lambda *a: None, oom, None) from None

    for make in (lambda: torch.cuda.OutOfMemoryError("CUDA out of memory"), wrapped):
        class Broken(torch.nn.Module):
            def forward(self, *a, **k):
                e = make()
                if isinstance(e, BaseException):
                    raise e

        monkeypatch.setattr(ht.torch, "compile", lambda fn, **_kw: Broken())
        with pytest.raises((torch.cuda.OutOfMemoryError, BackendCompilerFailed)):
            _tiny_run(eval_points=1, compile=True)
    assert ht.out_of_memory(RuntimeError("x")) is False
    other = RuntimeError("wrapped")  # an OOM in the context while `inner_exception` holds another error
    other.inner_exception, other.__context__ = ValueError("not it"), torch.cuda.OutOfMemoryError("it")
    assert ht.out_of_memory(other)
    try:
        wrapped()
    except BackendCompilerFailed as e:
        assert ht.out_of_memory(e)
    a, b = RuntimeError("a"), RuntimeError("b")  # a chain that loops back on itself ends (no OOM in it)
    a.__cause__, b.__context__ = b, a
    assert ht.out_of_memory(a) is False


def test_a_diverged_run_stops_within_a_few_steps_not_at_the_next_dev_check(monkeypatch):
    """The training loss is read at the dev checks only (a read is a GPU sync): a run whose loss went NaN
    trained on to the next check, a tenth of the budget, and a short run of the learning-rate sweep
    (one check, at its end) spent its whole budget on a diverged rate. Every FINITE_EVERY steps the
    device now copies isfinite(loss sum) to pinned host memory without waiting, and a later step reads
    it once landed: the run stops within two checks' worth of steps, with no read of a device value."""
    import harness.train as ht

    real = ht._Run._loss_backward
    bad_from = 5

    def diverging(self, fn, stage, batch):
        loss = real(self, fn, stage, batch)
        return loss * float("nan") if self.res.steps >= bad_from else loss

    monkeypatch.setattr(ht._Run, "_loss_backward", diverging)
    counter = _ReadCounter(monkeypatch)
    with pytest.raises(FloatingPointError, match="not finite .*between dev checks") as e:
        _tiny_run(budget="tokens=40000", eval_points=1)
    step = int(__import__("re").search(r"at step (\d+)", str(e.value)).group(1))
    assert bad_from < step <= bad_from + 2 * ht.FINITE_EVERY  # (the budget is ~800 steps)
    assert counter.n <= 1  # (the host view of the flag, made once)
    monkeypatch.setattr(ht._Run, "_loss_backward", real)
    assert _tiny_run(budget="tokens=4000", eval_points=1).steps > 2 * ht.FINITE_EVERY  # a finite run trains on


def _tiny_run(budget: str = "tokens=400", **cfg_kw):
    rng = np.random.default_rng(0)
    seqs = [[2] + rng.integers(6, 20, 6).tolist() + [3] for _ in range(16)]
    data = SeqSet.from_lists(seqs, [[False] * 6 + [True] * 2 for _ in seqs], 0)
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))
    cfg = TrainConfig(batch_tokens=64, progress=False, **cfg_kw)
    return train(model, obj, data, data, Budget.parse(budget), cfg, torch.device("cpu"))


def test_work_still_queued_on_the_device_is_charged_to_the_budget(monkeypatch):
    """Steps never sync, so a GPU may still be running queued steps when a dev check (or the end) waits
    for it: that wait is training time and must be on the clock, the stage's seconds and tokens/s, not
    lost in the paused dev check. A device whose drain takes WAIT seconds of the trainer's clock stands
    in for the GPU (a virtual clock: the test neither sleeps nor depends on this machine's speed)."""
    import types

    import harness.train as ht

    WAIT, calls = 1000.0, []
    offset = [0.0]
    monkeypatch.setattr(ht, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0]))

    def slow_device(device):
        calls.append(device)
        offset[0] += WAIT

    monkeypatch.setattr(ht, "device_sync", slow_device)
    res = _tiny_run(eval_points=2)
    warm = 1  # an eager run's one warm-up step syncs too, and is not budgeted
    drains = len(calls) - warm
    assert drains >= 3  # two dev checks and the end
    assert drains * WAIT <= res.train_seconds < (drains + 1) * WAIT  # each wait on the clock, the warm-up's not
    assert drains * WAIT <= sum(s["seconds"] for s in res.stages) < (drains + 1) * WAIT
    assert res.tokens_per_s <= res.tokens_seen / (drains * WAIT)  # and in the measured speed


def test_cutting_a_batch_is_part_of_its_steps_time(monkeypatch):
    """A step's time starts before its batch is cut (slicing and moving rows, on the host and the device):
    a batching that got slower must cost the budget and tokens/s, not vanish between two clock reads. A
    virtual clock that advances CUT seconds whenever a batch is cut stands in for a slow batching."""
    import types

    import harness.train as ht
    from core.data import BatchSampler

    CUT, cuts, offset = 1000.0, [], [0.0]
    monkeypatch.setattr(ht, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0]))
    real_next = BatchSampler.__next__

    def slow_next(self):
        cuts.append(1)
        offset[0] += CUT
        return real_next(self)

    monkeypatch.setattr(BatchSampler, "__next__", slow_next)
    res = _tiny_run(eval_points=1)
    clocked = res.steps - res.warm_steps
    assert len(cuts) == res.steps and clocked >= 3
    assert clocked * CUT <= res.train_seconds < (clocked + 1) * CUT  # each clocked step's cut on the clock
    assert res.warm_steps * CUT <= res.warm_seconds < (res.warm_steps + 1) * CUT  # the warm-up's off it


def test_tokens_per_s_leaves_out_the_first_steps_of_a_stage(step_clock):
    """The budget clocks every step after the warm-up, but tokens/s counts from step STEADY_FROM + 1 on:
    the step after the warm-up still recompiles under torch.compile (its new batch shape marks lengths
    dynamic). Here step 2, clocked, takes 1000 s and the others 1 s: the budget pays it, the speed does
    not see it."""
    import harness.train as ht

    step_clock(lambda run, stage, batch: 1000.0 if run.res.steps + 1 == ht.STEADY_FROM else 1.0)
    res = _tiny_run(eval_points=1)
    steady = res.steps - ht.STEADY_FROM
    assert res.warm_steps == 1 and steady >= 2
    assert res.train_seconds == 1000.0 + steady  # (a virtual clock: exact)
    assert res.tokens_per_s == 64.0  # 8 rows of 8 tokens a step, 1 s each: the 1000 s step is not in it


def test_the_finite_check_on_cuda_never_waits_for_the_device(monkeypatch):
    """On a GPU the check must not stall the host: the flag lands in pinned host memory through a
    non_blocking copy, and is read only once a CUDA event says the copy has landed (query, never
    synchronize). Simulated on CPU: the pinned allocation, the copy's flag and the event are stood in
    for, and the event lands two polls late; the NaN is reported then, not before."""
    import harness.train as ht

    asked, copies, polls = [], [], iter([False, False, True])
    real_ones = torch.ones

    def ones(*a, pin_memory=False, **k):
        asked.append(pin_memory)
        t = real_ones(*a, **k)
        copy = t.copy_
        t.copy_ = lambda src, non_blocking=False: copies.append(non_blocking) or copy(src)
        return t

    class Event:
        def record(self):
            copies.append("recorded")

        def query(self):
            return next(polls)

    monkeypatch.setattr(ht.torch, "ones", ones)
    monkeypatch.setattr(ht.torch.cuda, "Event", Event)
    check = ht.FiniteCheck(torch.device("cuda"), every=2)
    nan, fine = torch.tensor(float("nan")), torch.tensor(1.0)
    check.poll(nan, 1)  # not a checking step
    check.poll(nan, 2)  # the copy of "not finite" is queued
    assert asked == [True] and copies == [True, "recorded"]
    check.poll(fine, 3)  # the event has not landed: nothing is read
    check.poll(fine, 4)
    with pytest.raises(FloatingPointError, match="found at step 5"):  # the host copy is read, not the device's
        check.poll(fine, 5)                                          # sum of now (which is finite)
    monkeypatch.undo()
    cpu = ht.FiniteCheck(torch.device("cpu"), every=2)  # on CPU the copy is done when it returns
    cpu.poll(nan, 2)
    with pytest.raises(FloatingPointError, match="found at step 3"):
        cpu.poll(nan, 3)


def test_compile_mode_reaches_torch_compile_and_cuda_graph_modes_mark_each_step(monkeypatch):
    import harness.train as ht

    modes, marks = [], []

    def fake_compile(fn, mode=None):
        modes.append(mode)
        return fn

    monkeypatch.setattr(ht.torch, "compile", fake_compile)
    monkeypatch.setattr(ht.torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    fixed, sampler = [], ht.BatchSampler
    monkeypatch.setattr(ht, "BatchSampler", lambda *a, **k: fixed.append(k["fixed_shapes"]) or sampler(*a, **k))
    res = _tiny_run(eval_points=1, compile=True, compile_mode="reduce-overhead")
    # each compiled region (the block, the final norm) gets the mode; a new graph step per step; the batches
    # come in a few fixed shapes (a graph is recorded per shape)
    assert modes == ["reduce-overhead"] * 2 and len(marks) == res.steps > 1 and fixed == [True]
    modes.clear(), marks.clear(), fixed.clear()
    _tiny_run(eval_points=1, compile=True)
    assert modes == [None] * 2 and marks == [] and fixed == [False]  # no graphs: nothing to mark, no fixed shapes
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        _tiny_run(eval_points=1, compile=True, compile_mode="fast")


def test_adamw_is_the_fused_kernel_on_cuda_only():
    """On a GPU the fused AdamW is one launch per parameter group instead of several per tensor (the
    optimizer step is launch-bound for a small model); on CPU the plain one. No GPU is needed to check
    what the trainer asks for: AdamW is stood in for."""
    import harness.train as ht

    asked = []

    class Recorder(torch.optim.AdamW):
        def __init__(self, params, **kw):
            asked.append(kw.get("fused"))
            super().__init__(params, **{**kw, "fused": None})

    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ht.torch.optim, "AdamW", Recorder)
        ht._optimizer(model, TrainConfig(), torch.device("cuda"))
        ht._optimizer(model, TrainConfig(), torch.device("cpu"))
    assert asked == [True, False]


def test_reduce_overhead_trains_on_cpu_where_inductor_skips_the_graphs():
    res = _tiny_run(eval_points=1, compile=True, compile_mode="reduce-overhead")
    assert res.compile_error is None and res.steps >= 5 and math.isfinite(res.loss_curve[-1]["train_loss"])


def test_a_cuda_graph_compile_mode_compiles_pads_to_few_shapes_and_is_recorded():
    from harness.cell import PAD_TO, PAD_TO_GRAPHS, _train_config, _train_record

    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="small", budget="tokens=1")
    graphs = Cell(**{**cell.__dict__, "compile_mode": "reduce-overhead"})
    assert graphs.compiles(torch.device("cpu"))  # asking for a mode asks for compilation
    assert graphs.key() != cell.key()
    ctx = type("Ctx", (), {"progress": False, "profile": False, "phase": lambda *a: None})()
    from core.presets import get_preset

    tcfg = _train_config(graphs, ctx, get_preset("small"), True)
    # multiples of 64 (the padding table of docs/cpu-evidence.md), and no rounding at all without CUDA graphs
    assert tcfg.compile_mode == "reduce-overhead" and tcfg.pad_to == PAD_TO_GRAPHS == 64
    assert _train_config(cell, ctx, get_preset("small"), True).pad_to == PAD_TO == 1
    assert _train_config(cell, ctx, get_preset("small"), False).pad_to == 1
    from harness.train import TrainResult

    assert _train_record(TrainResult(), tcfg, True, False)["compile_mode"] == "reduce-overhead"


def test_the_compile_scope_is_a_cell_setting_recorded_in_the_row():
    """`--compile-scope model` compiles the whole LM instead of each block: it implies compilation,
    changes the cell's key (the default leaves older keys alone) and the row says what was compiled."""
    from core.presets import get_preset
    from harness.cell import _train_config, _train_record

    cell = Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="small", budget="tokens=1")
    whole = Cell(**{**cell.__dict__, "compile_scope": "model"})
    assert whole.compiles(torch.device("cpu")) and not cell.compiles(torch.device("cpu"))
    assert whole.key() != cell.key()
    assert Cell(**{**cell.__dict__, "compile_scope": "blocks"}).key() == cell.key()
    ctx = type("Ctx", (), {"progress": False, "profile": False, "phase": lambda *a: None})()
    tcfg = _train_config(whole, ctx, get_preset("small"), True)
    assert tcfg.compile_scope == "model"
    for scope in ("blocks", "model"):
        res = _tiny_run(eval_points=1, compile=True, compile_scope=scope)
        assert res.compile_scope == scope and res.compile_error is None
        record = _train_record(res, tcfg, True, False)
        # what was compiled, and what was asked (under DDP the whole model, whatever was asked: the reports
        # name a variant by the setting); the dev checks' token bound beside it
        assert record["compile_scope"] == scope and record["compile_scope_asked"] == "model"
        assert record["dev_tokens_bound"] == tcfg.dev_tokens
    assert _tiny_run(eval_points=1).compile_scope is None  # eager: nothing compiled


@pytest.mark.parametrize("compiled", [False, True])
def test_a_finished_run_frees_its_model_and_optimizer_at_once(compiled, monkeypatch):
    """The learning-rate sweep trains a fresh model per rate and drops it; on a GPU whatever a short run
    leaves alive (model, gradients, AdamW's states) sits in the full run's peak memory. The run held a
    compile watch that held the run (a reference cycle), so nothing was freed until Python's cycle
    collector ran, at a moment nobody chooses. With the collector off, dropping the model frees it."""
    import gc
    import weakref

    import harness.compiling as hc
    import harness.train as ht

    if compiled:
        real = torch.compile
        monkeypatch.setattr(hc.torch, "compile", lambda m, **k: real(m, backend="eager"))
        torch._dynamo.reset()
    opts = []
    make_opt = ht._optimizer
    monkeypatch.setattr(ht, "_optimizer", lambda *a: opts.append(make_opt(*a)) or opts[-1])
    model = LM(LMConfig(vocab_size=32, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    data = _seqset(np.full(16, 12))
    cfg = TrainConfig(batch_size=4, lr=1e-3, progress=False, eval_points=2, compile=compiled)
    gc.collect()
    gc.disable()
    try:
        res = train(model, obj, data, data, Budget.parse("tokens=2000"), cfg, torch.device("cpu"))
        assert res.steps > 2
        alive = weakref.ref(model), weakref.ref(opts.pop())
        del model, res
        if compiled:
            torch._dynamo.reset()  # (dynamo's caches are the compiler's to keep, not the run's)
        assert [r() is None for r in alive] == [True, True]
    finally:
        gc.enable()


def test_a_budget_spent_in_the_warm_up_reports_no_speed_rather_than_an_absurd_one():
    """A tiny budget can be used up by the unbudgeted warm-up steps alone (compiled: the first two). Then
    nothing was timed: tokens/s is NaN (the report leaves it blank), not tokens / 1e-9 (a CPU dry run of
    the GPU check printed 3,792,000,000,000 train tok/s)."""
    import harness.train as ht

    res = _tiny_run(budget="tokens=100", eval_points=1, compile=True)
    assert res.steps == 2 and res.train_seconds == 0.0  # both steps warm-up
    assert math.isnan(res.tokens_per_s)
    assert ht.TrainResult().tokens_per_s != ht.TrainResult().tokens_per_s  # the default is NaN too
    # eagerly the second step is clocked but not steady (STEADY_FROM): with no steady step the figure falls
    # back to the tokens over the clock
    eager = _tiny_run(budget="tokens=100", eval_points=1)
    assert eager.steps == 2 and eager.train_seconds > 0
    assert eager.tokens_per_s == pytest.approx(eager.tokens_seen / eager.train_seconds)


def test_run_matrix_refuses_a_compile_scope_with_no_compile():
    import run_matrix

    with pytest.raises(ValueError, match="--compile-scope model compiles"):
        run_matrix.main(["--compile-scope", "model", "--no-compile", "--preset", "tiny"])


def test_run_matrix_refuses_a_compile_mode_with_no_compile():
    import run_matrix

    with pytest.raises(ValueError, match="--compile-mode reduce-overhead compiles"):
        run_matrix.main(["--compile-mode", "reduce-overhead", "--no-compile", "--preset", "tiny"])


def test_a_compilation_after_the_warm_up_is_not_budgeted_and_is_counted(monkeypatch):
    """Automatic dynamic shapes mark only the sizes that had changed by the second step: batches of one
    length and then a new number of rows (or a new length later) recompile mid-run. Any step in which
    torch.compile compiled is warm-up: off the clock and out of tokens/s, and the row counts it. A
    virtual clock makes every compilation cost 1,000 s."""
    run = _late_shape_run(monkeypatch, _slow_compile, 0.0)
    frames = run.frames_after
    assert frames[3] > frames[2] and frames[5] > frames[4]  # compiled after the warm-up: the test can fail
    assert run.res.late_compiles == 2 and run.clock < 1000.0 and run.stage_seconds < 1000.0
    assert run.steady_seconds < 1000.0


_REAL_COMPILE = torch.compile  # (tests patch torch.compile; their stand-ins call the real one)


def _slow_compile(module, offset):
    """torch.compile whose every compilation costs 1,000 s of the virtual clock `offset` (graphs run as traced)."""
    def backend(gm, example_inputs):
        offset[0] += 1000.0
        return gm.forward
    return _REAL_COMPILE(module, backend=backend)


def _late_shape_run(monkeypatch, compile_fn, wait: float, compiled: bool = True, mode: str = "default",
                    queued: list[bool] | None = None):
    """A compiled `_Run` stepped through batch shapes that recompile after the warm-up (steps 4 and 6),
    on a virtual clock whose stand-in device holds the last step's work queued: the first sync after a
    step costs `wait` seconds, later ones nothing (the queue is empty). Returns the run. With
    `compiled=False` the model trains eagerly but its final norm is compiled by `compile_fn` (as a
    compiled loss path is inside an eager model). `queued`: the stand-in device's queue flag, shared with
    a test that queues work of its own (True: the next sync costs `wait`)."""
    import types

    import harness.train as ht
    from harness.distributed import SingleProcess
    from harness.pretrain import Stage

    offset, queued = [0.0], [False] if queued is None else queued
    monkeypatch.setattr(ht, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0]))

    def queued_device(device):
        if queued[0]:
            offset[0] += wait
        queued[0] = False

    monkeypatch.setattr(ht, "device_sync", queued_device)
    monkeypatch.setattr(ht.torch, "compile", lambda module, mode=None, **_kw: compile_fn(module, offset))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))
    if not compiled:
        model.norm = compile_fn(model.norm, offset)
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    rng = np.random.default_rng(0)

    def batch(rows: int, T: int):
        seqs = [[2] + rng.integers(6, 20, T - 1).tolist() for _ in range(rows)]
        return SeqSet.from_lists(seqs, [[False] * (T - 1) + [True]] * rows, 0).batch(np.arange(rows))

    shapes = [(4, 8), (4, 8), (4, 8), (3, 8), (3, 8), (3, 9), (2, 11), (4, 8)]
    stage = Stage("task", 1.0, iter([batch(r, T) for r, T in shapes]), obj, ["toy"])
    dev = SeqSet.from_lists([[2, 7, 3]], [[False, False, True]], 0)
    run = ht._Run(model, obj, SingleProcess(model), dev, TrainConfig(progress=False, compile=compiled, compile_mode=mode),
                  torch.device("cpu"), staged=False)
    run.frames_after = []  # frames dynamo compiled so far, after each step
    with run.watch():
        for _ in shapes:
            was = run.res.warm_steps
            run.step(stage, 0.5)
            queued[0] = run.res.warm_steps == was  # a timed step's kernels stay queued (a warm-up step synced)
            run.frames_after.append(ht.frames_compiled())
    run.stage_seconds = stage.seconds
    run.steady_seconds = stage.steady_seconds  # the seconds tokens/s divides by (after the warm-up)
    return run


def test_the_steps_queued_before_a_late_compilation_are_charged_to_the_budget(monkeypatch):
    """A step that compiles after the warm-up is left off the clock, but while the host compiles a GPU
    finishes the steps queued before it: training time, which the budget, the stage and tokens/s must
    count. The trainer waits for that queue when the compilation starts and charges the wait. Virtual
    clock: each compilation costs 1,000 s, the queued work 100 s."""
    WAIT = 100.0
    run = _late_shape_run(monkeypatch, _slow_compile, WAIT)
    _assert_two_queues_and_no_compilation(run, WAIT)


def test_an_eager_model_whose_loss_path_compiles_keeps_compilation_off_the_clock_too(monkeypatch):
    """`--loss cce_compile` compiles inside an eager model: its recompilations at new shapes are
    compilation all the same (off the clock), and the queue before them is charged once, not twice."""
    WAIT = 100.0
    run = _late_shape_run(monkeypatch, _slow_compile, WAIT, compiled=False)
    _assert_two_queues_and_no_compilation(run, WAIT)


def _assert_two_queues_and_no_compilation(run, wait: float) -> None:
    WAIT = wait
    assert run.res.late_compiles == 2  # steps 4 and 6 compiled after the warm-up
    assert 2 * WAIT <= run.clock < 2 * WAIT + 100.0  # both queues charged; no compilation
    assert 2 * WAIT <= run.stage_seconds < 2 * WAIT + 100.0
    assert 2 * WAIT <= run.steady_seconds < 2 * WAIT + 100.0


class _StandIn(torch.nn.Module):
    """A stand-in for what torch.compile returns: the model itself, with `before(ids)` run first (where a
    test makes its virtual clock advance or announces a CUDA graph recording)."""

    def __init__(self, module, before):
        super().__init__()
        self.inner, self.before = module, before

    @property
    def head_weight(self):
        return self.inner.head_weight

    def forward(self, ids, *a, **k):
        self.before(ids)
        return self.inner(ids, *a, **k)


def test_a_cuda_graph_recording_after_the_warm_up_is_warm_up_too(monkeypatch):
    """The reduce-overhead modes record a CUDA graph for each new batch shape: no dynamo frame is
    compiled (the frame counter sees nothing), yet the host stops to record. Torch announces it through
    the same compile-start callbacks; a step that records is warm-up, off the clock, and counted, and
    the work queued before it is charged. A stand-in 'compiled' model announces a 1,000 s recording at
    the steps with a new shape after the warm-up, three times (a graph per block), with work of the
    step queued between them: only the first drains (the queue before the step; the step's own work is
    not the budget's once the step is warm-up). (A torch whose callbacks carry no trigger, before CUDA
    graph recordings were announced, cannot tell them: the test skips there.)"""
    CallbackTrigger = getattr(pytest.importorskip("torch._dynamo.callback"), "CallbackTrigger", None)
    if CallbackTrigger is None:
        pytest.skip(f"torch {torch.__version__} does not announce CUDA graph recordings to compile callbacks")

    import harness.train as ht

    WAIT = 100.0
    seen, queued = set(), [False]

    def recording(module, offset):
        def before(ids):
            if len(seen) >= 1 and tuple(ids.shape) not in seen:  # a new shape after the first
                for _ in range(3):
                    with torch._dynamo.callback_handler.install_callbacks(CallbackTrigger.CUDAGRAPH_RECORDING, "0"):
                        offset[0] += 1000.0 / 3
                    queued[0] = True  # the step's own work between two recordings
            seen.add(tuple(ids.shape))
        return _StandIn(module, before)

    frames = ht.frames_compiled()
    run = _late_shape_run(monkeypatch, recording, WAIT, queued=queued)
    assert ht.frames_compiled() == frames  # no dynamo frame: only the callbacks can tell
    assert run.res.late_compiles == 3  # (3, 8), (3, 9), (2, 11): new shapes after the warm-up
    # the queues of the timed steps 3 and 5 are charged (the recording step 6 synced at its end: step 7's
    # recording finds nothing queued)
    assert 2 * WAIT <= run.clock < 2 * WAIT + 100.0
    assert not torch._dynamo.callback_handler.start_callbacks  # the watch removed itself


def test_under_cuda_graphs_a_shapes_first_two_steps_are_warm_up(monkeypatch):
    """CUDA graph trees run a new batch shape eagerly once (their warm-up: no compile callback, and a sync
    per graph) and record it the second time (announced), replaying from the third. The first run
    was on the clock, ungraphed; so are neither now: under a CUDA-graph mode a shape's first two steps
    are warm-up, and the steps queued before them are charged first. A stand-in compiled model costs
    1,000 s of the virtual clock at a shape's first run and announces a 1,000 s recording at its second;
    the queued work costs 100 s at each drain, and a step that announces several graphs drains once."""
    CallbackTrigger = getattr(pytest.importorskip("torch._dynamo.callback"), "CallbackTrigger", None)
    if CallbackTrigger is None:
        pytest.skip(f"torch {torch.__version__} does not announce CUDA graph recordings to compile callbacks")

    WAIT = 100.0
    runs: dict = {}

    def graph_tree(module, offset):
        def before(ids):
            n = runs[tuple(ids.shape)] = runs.get(tuple(ids.shape), 0) + 1
            if n <= 2:
                offset[0] += 1000.0  # the eager warm-up run, then the recording
            if n == 2:
                for _ in range(3):  # (a graph per block: announced three times, drained once)
                    with torch._dynamo.callback_handler.install_callbacks(CallbackTrigger.CUDAGRAPH_RECORDING, "0"):
                        pass
        return _StandIn(module, before)

    run = _late_shape_run(monkeypatch, graph_tree, WAIT, mode="reduce-overhead")
    # shapes (4, 8) x3, (3, 8) x2, (3, 9), (2, 11), (4, 8): every run but (4, 8)'s third and fourth is a
    # shape's first or second
    assert run.res.warm_steps == 6 and run.res.late_compiles == 0
    assert run.clock < 1000.0  # no warm-up or recording on the budget ...
    assert run.clock == pytest.approx(WAIT, abs=50.0)  # ... but the queue of the timed step 3, drained at step 4


def test_cuda_graph_batches_come_in_a_few_fixed_shapes():
    """Under CUDA graphs each batch shape is recorded (and first run ungraphed) anew: a token budget per
    batch bounds rows x length, not the row count, and gave 14-26 shapes in 250 steps of JSQuAD-like
    lengths, ~95 in 10,000. Fixed shapes: every batch is (budget // W, W), W a multiple of 64, so at
    most 512 / 64 shapes however long the run; each row fits its batch's width; an epoch leaves out
    every row (its last batch repeats a few rows rather than leave out the longest ones)."""
    lengths = _lengths_fixture(1500, seed=4)
    data = _seqset(lengths)
    fixed = BatchSampler(data, 0, seed=0, batch_tokens=16384, pad_to=64, fixed_shapes=True)
    shapes = set()
    for _ in range(400):
        b = next(fixed)
        rows, W = b.ids.shape
        shapes.add((rows, W))
        assert W % 64 == 0 and rows == 16384 // W and b.pad_mask.sum(1).max() <= W
        assert int(b.pad_mask.sum()) == b.n_tokens
    assert len(shapes) <= 512 // 64 and fixed.epoch >= 5
    for _ in range(3):
        rows = np.concatenate([r for r, _ in fixed.epoch_plan()])
        assert set(rows.tolist()) == set(range(1500)) and len(rows) - 1500 < 16384 // 64  # a few repeated
    free = BatchSampler(data, 0, seed=0, batch_tokens=16384, pad_to=64)  # the default: rows vary
    assert len({tuple(next(free).ids.shape) for _ in range(400)}) > 2 * len(shapes)
    from core.data import fixed_shape_batches

    rng = np.random.default_rng(7)  # few rows, many short: the epoch's last batch widens rather than come short
    for n in (140, 170, 200, 241):
        L = rng.integers(1, 513, n)
        for W_rows, W in fixed_shape_batches(rng.permutation(n), L, 2048, 64, 64, 512):
            assert len(W_rows) == 2048 // W and L[W_rows].max() <= W
    tiny = BatchSampler(data.subset(np.arange(5)), 0, seed=0, batch_tokens=16384, pad_to=64, fixed_shapes=True)
    assert sorted(np.concatenate(tiny.epoch_batches()).tolist()) == [0, 1, 2, 3, 4]  # under one batch: all of it


def test_every_compiled_cell_of_a_grid_compiles(monkeypatch):
    """Cells run one after another in one process and trace the same LM code: without a fresh compiler
    per cell, dynamo's recompile limit (8 variants of one code object) made every cell after the first
    few train eagerly, silently (on a 6-mixer grid: the whole bidirectional half). Each cell's training
    must compile frames of its own."""
    import harness.train as ht
    import mixers
    from harness.cell import fresh_compiler
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    real_compile = torch.compile
    monkeypatch.setattr(ht.torch, "compile", lambda module, mode=None: real_compile(module, backend=counter))
    rng = np.random.default_rng(0)
    seqs = [[2] + rng.integers(6, 20, int(n)).tolist() + [3] for n in rng.integers(5, 12, 24)]
    data = SeqSet.from_lists(seqs, [[False] * (len(q) - 2) + [True] * 2 for q in seqs], 0)
    gained = {}
    for causal in (True, False):
        obj = objectives.build("autoregressive" if causal else "diffusion", SPECIAL, "chunked",
                               **({} if causal else {"gen_length": 4, "steps": 4, "nll_samples": 1}))
        for name in mixers.names():
            fresh_compiler()  # what run_cell does before a compiled cell
            torch.manual_seed(0)
            model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer=name, causal=causal, mlp_hidden=32))
            before = counter.frame_count
            cfg = TrainConfig(batch_tokens=64, progress=False, eval_points=1, compile=True)
            train(model, obj, data, data, Budget.parse("tokens=300"), cfg, torch.device("cpu"))
            gained[(name, causal)] = counter.frame_count - before
    assert all(n > 0 for n in gained.values()), gained


def test_a_function_dynamo_leaves_eager_at_its_recompile_limit_is_recorded(monkeypatch):
    """At its recompile limit dynamo runs a function eagerly from then on, with a log line as the only sign:
    the row said `compile: true` of a cell that trained partly eager. A training run's compile watch has the
    warning recorded (harness.compiling.recompile_limit_hits); under the limit nothing is recorded."""
    import harness.compiling as hc

    real = torch.compile
    monkeypatch.setattr(hc.torch, "compile", lambda m, **k: real(m, backend="eager"))
    model = LM(LMConfig(vocab_size=32, d_model=32, n_layers=1, mixer="attention", causal=True, mlp_hidden=32))
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    data = _seqset(np.arange(16) % 8 + 4)  # lengths 4..11: batches of several shapes
    cfg = TrainConfig(batch_size=4, lr=1e-3, progress=False, eval_points=1, compile=True)
    hits = []
    for limit in (8, 1):
        torch._dynamo.reset()
        hc.clear_recompile_limit_hits()
        with torch._dynamo.config.patch(recompile_limit=limit):
            train(model, obj, data, data, Budget.parse("tokens=250"), cfg, torch.device("cpu"))
        hits.append(hc.recompile_limit_hits())
    torch._dynamo.reset()
    hc.clear_recompile_limit_hits()
    assert hits[0] == [] and hits[1] and all(h.startswith("recompile_limit (1): ") for h in hits[1])
