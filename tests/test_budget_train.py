from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from harness import objectives
from harness.budget import A100_REF_TFLOPS, Budget, BudgetError, BudgetMeter
from core.data import SeqSet, SpecialTokens
from harness.model import LM, LMConfig
from harness.train import TrainConfig, train, wsd_multiplier

SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)


@pytest.mark.parametrize("text, kind, amount", [
    ("tokens=20000", "tokens", 20000), ("seconds=1.5", "seconds", 1.5), ("a100_seconds=300", "a100_seconds", 300),
    ("tokens=2_000_000", "tokens", 2e6), (" tokens = 1e5 ", "tokens", 1e5),
])
def test_budget_parses(text, kind, amount):
    b = Budget.parse(text)
    assert (b.kind, b.amount) == (kind, amount)
    assert Budget.parse(str(b)) == b


@pytest.mark.parametrize("text", ["", "20000", "tokens", "epochs=3", "tokens=-5", "tokens=0", "seconds=abc"])
def test_bad_budgets_are_one_clear_error(text):
    with pytest.raises(BudgetError, match="budget"):
        Budget.parse(text)


def test_a100_seconds_scale_wall_time_by_a_measured_factor():
    m = BudgetMeter(Budget.parse("a100_seconds=10"), torch.device("cpu"))
    f = m.speed["a100_factor"]
    assert m.speed["a100_ref_tflops"] == A100_REF_TFLOPS == 252
    assert 0 < f < 1  # a CPU is slower than an A100
    assert m.fraction(0, 10 / f) == pytest.approx(1.0)


def test_wsd_schedule_warms_up_holds_and_decays():
    cfg = TrainConfig(warmup_frac=0.1, decay_frac=0.2, min_lr_frac=0.1)
    assert wsd_multiplier(0.05, cfg) == pytest.approx(0.5)
    assert wsd_multiplier(0.5, cfg) == 1.0
    assert wsd_multiplier(0.9, cfg) == pytest.approx(0.55)
    assert wsd_multiplier(1.0, cfg) == pytest.approx(0.1)


def _toy_data(n=64, T=12, seed=0, copy=True):
    """Sequences where the answer (target) copies the first token: learnable in a few steps.
    copy=False answers token 1 instead, never a training target (a dev set training makes worse)."""
    rng = np.random.default_rng(seed)
    seqs, tgts = [], []
    for _ in range(n):
        a = int(rng.integers(6, 20))
        body = rng.integers(6, 20, size=T - 5).tolist()
        ans = a if copy else 1
        seqs.append([2, a, *body, 4, ans, 3])
        tgts.append([False] * (T - 2) + [True, copy])
    return SeqSet.from_lists(seqs, tgts, 0)


def _model():
    torch.manual_seed(0)
    return LM(LMConfig(vocab_size=20, d_model=32, n_layers=2, mixer="attention", causal=True, mlp_hidden=64))


def test_training_follows_the_wsd_schedule_by_budget_fraction(monkeypatch):
    """The schedule above is what the optimizer is given, step by step: a warm-up from ~0, the full rate
    through the middle of the budget, a decay towards min_lr_frac at its end (a trainer that set the rate
    once, or never, would pass the schedule's own test)."""
    lrs = []
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_size=8, lr=1e-2, progress=False, eval_points=1, warmup_frac=0.1, decay_frac=0.2,
                      min_lr_frac=0.1)
    res = train(_model(), obj, _toy_data(), _toy_data(8, seed=1), Budget.parse("tokens=4000"), cfg, torch.device("cpu"))
    assert len(lrs) == res.steps > 30
    assert lrs[0] < 1e-4  # the first step: fraction 0
    assert max(lrs) == lrs[len(lrs) // 2] == pytest.approx(1e-2)  # the stable middle
    assert lrs[-1] < 0.3 * 1e-2 and lrs[-1] >= 0.1 * 1e-2  # decayed, not below the floor
    assert lrs[: len(lrs) // 10] == sorted(lrs[: len(lrs) // 10])  # rising through the warm-up
    assert lrs[-len(lrs) // 10 :] == sorted(lrs[-len(lrs) // 10 :], reverse=True)  # falling through the decay


def test_token_budget_is_respected_and_curve_recorded():
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    data = _toy_data()
    reported = []  # the budget fraction after each step, then None (the bar closes): a cell's progress line
    cfg = TrainConfig(batch_size=8, lr=3e-3, progress=False, eval_points=4, report=reported.append)
    res = train(_model(), obj, data, _toy_data(16, seed=1), Budget.parse("tokens=2000"), cfg, torch.device("cpu"))
    per_batch = 8 * 12
    assert 2000 <= res.tokens_seen < 2000 + per_batch
    assert len(reported) == res.steps + 1 and reported[-1] is None
    assert reported[:-1] == sorted(reported[:-1]) and reported[-2] >= 1.0 > reported[-3]
    assert [p["frac"] for p in res.loss_curve][-1] >= 1.0 and len(res.loss_curve) == 4
    assert res.loss_curve[-1]["train_loss"] < res.loss_curve[0]["train_loss"]
    assert res.best_fraction is not None and res.peak_mem_bytes is None  # CPU: no fake number
    assert res.tokens_per_s > 0


@pytest.mark.parametrize("grad_clip", [1e9, 0.05])
def test_each_step_applies_its_own_clipped_gradient_in_training_mode(step_gradients, grad_clip):
    """At every step the optimizer is handed that step's gradient alone (not added to the last step's),
    its norm clipped to grad_clip (1e9: never clipped; 0.05: always, the toy's gradients are larger), from
    the model in training mode even when it came in eval mode (dropout in a new mixer must drop). A curve
    point's train loss is the mean of the losses of the steps since the point before."""
    rec = step_gradients
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_size=8, lr=3e-3, progress=False, eval_points=2, grad_clip=grad_clip)
    res = train(_model().eval(), obj, _toy_data(), _toy_data(8, seed=1), Budget.parse("tokens=1500"), cfg,
                torch.device("cpu"))
    assert len(rec.seen) == len(rec.own) == res.steps > 10 and rec.modes == [True] * res.steps
    assert min(rec.own) > 0.05  # (so 0.05 clips every step)
    assert rec.seen == pytest.approx([min(n, grad_clip) for n in rec.own], rel=1e-4)
    k = res.loss_curve[0]["step"]
    assert [p["train_loss"] for p in res.loss_curve] == pytest.approx(
        [np.mean(rec.losses[:k]), np.mean(rec.losses[k:])], abs=1e-5)


def test_matrices_decay_and_gains_and_biases_never_do():
    """AdamW's weight decay pulls a parameter to 0: right for a matrix, wrong for a norm's gain (1 at init)
    or a bias, which are 1-D and decay-free whatever their module says; a matrix opts out only by flag
    (`_no_weight_decay`, e.g. Mamba's A_log: tests/test_mamba.py)."""
    from harness.train import _optimizer

    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=2, mixer="attention", causal=True, mlp_hidden=64))
    opt = _optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    free = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    params = list(model.parameters())
    assert any(p.dim() == 1 for p in params) and len(decay) + len(free) == len(params)
    assert all((id(p) in decay) == (p.dim() >= 2) and (id(p) in free) == (p.dim() < 2) for p in params)


def test_a_budget_met_exactly_ends_there_with_its_dev_checks_on_the_steps_that_reach_them():
    """96 tokens a step (8 rows of 12, no padding), a 960-token budget: exactly 10 steps, the dev checks
    on the steps that reach half and all of it (not one step later), 1.25 passes over the 768-token
    training set, and no gradient kept when it ends (freed, not zeroed: memory for what runs next). A step
    cap ends a run early."""
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_size=8, progress=False, eval_points=2)
    model = _model()
    res = train(model, obj, _toy_data(), _toy_data(8, seed=1), Budget.parse("tokens=960"), cfg, torch.device("cpu"))
    assert res.steps == 10 and res.tokens_seen == 960
    assert [(p["frac"], p["step"]) for p in res.loss_curve] == [(0.5, 5), (1.0, 10)]
    assert "stage" not in res.loss_curve[0]  # (a run with pretraining names each point's stage)
    assert res.epochs == 1.25
    assert all(p.grad is None for p in model.parameters())
    cfg.max_steps = 3
    assert train(_model(), obj, _toy_data(), _toy_data(8, seed=1), Budget.parse("tokens=960"), cfg,
                 torch.device("cpu")).steps == 3


def test_a_step_that_passes_several_evaluation_points_checks_the_dev_set_once():
    """4 steps and 10 evaluation points: every step passes two or three. One dev check per step, with the
    train loss of its step. A check per point computed the same dev loss again, and its extra points
    recorded a train loss of 0 (the mean over no steps), which a plot reads as a collapse; the row's
    dev_checks counted them."""
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_size=8, progress=False, eval_points=10)
    res = train(_model(), obj, _toy_data(), _toy_data(8, seed=1), Budget.parse("tokens=384"), cfg, torch.device("cpu"))
    assert res.steps == 4
    assert [(p["frac"], p["step"]) for p in res.loss_curve] == [(0.25, 1), (0.5, 2), (0.75, 3), (1.0, 4)]
    # each point's train loss is its one step's: near the dev loss of a barely trained model (both ≈ ln 20)
    assert all(abs(p["train_loss"] - p["dev_loss"]) < 0.5 for p in res.loss_curve)


def _mixed_lengths(n=64, seed=0):
    """Copy-the-first-token sequences (like _toy_data) of lengths 5..12: batches carry padding."""
    rng = np.random.default_rng(seed)
    seqs, tgts = [], []
    for _ in range(n):
        L = int(rng.integers(5, 13))
        a = int(rng.integers(6, 20))
        seqs.append([2, a, *rng.integers(6, 20, size=L - 5).tolist(), 4, a, 3])
        tgts.append([False] * (L - 2) + [True, True])
    return SeqSet.from_lists(seqs, tgts, 0)


def test_token_budget_counts_real_tokens_not_padded_positions(monkeypatch):
    """A tokens= budget is a count of real tokens: padding is the batching's cost, not data seen. With
    rows of equal length (the toy data) nothing is padded, so counting ids.numel() went unnoticed; here
    the lengths differ, and tokens_seen is the non-pad tokens of the batches trained, which is also what
    the recorded padding fraction (1 - real / computed positions) implies."""
    from harness.distributed import SingleProcess

    real, computed = [], []
    loss = SingleProcess.loss

    def recording(self, objective, model, batch, *a):
        real.append(int((batch.ids != SPECIAL.pad).sum()))  # (the data has no pad id inside a row)
        computed.append(batch.ids.numel())
        return loss(self, objective, model, batch, *a)

    monkeypatch.setattr(SingleProcess, "loss", recording)
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_size=8, progress=False, eval_points=1)
    res = train(_model(), obj, _mixed_lengths(), _mixed_lengths(8, seed=1), Budget.parse("tokens=1500"), cfg,
                torch.device("cpu"))
    assert len(real) == res.steps and res.padding_frac > 0
    assert res.tokens_seen == sum(real) < sum(computed)
    assert 1 - res.tokens_seen / sum(computed) == pytest.approx(res.padding_frac, abs=1e-4)
    assert 1500 <= res.tokens_seen < 1500 + 8 * 12


def test_time_budget_stops_on_time(step_clock):
    """A seconds= budget ends at the first step that reaches it. On a virtual clock where every step costs
    0.1 s (the first, warm-up step 1,000 s more, never budgeted), a 0.5 s budget is exactly 5 steps,
    whatever the machine's load (on the real clock, a busy machine ended it within two steps)."""
    step_clock(lambda run, stage, batch: 0.1 + (1000.0 if run.in_warm else 0.0))
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_size=8, progress=False, eval_points=2)
    res = train(_model(), obj, _toy_data(), _toy_data(8, seed=1), Budget.parse("seconds=0.5"), cfg, torch.device("cpu"))
    assert res.steps == 5 and res.warm_steps == 1  # 4 on the clock, the warm-up charged at their rate
    assert res.train_seconds == pytest.approx(0.4) and res.warm_charged_seconds == pytest.approx(0.1)
    assert [p["frac"] for p in res.loss_curve] == [0.6, 1.0]  # the two dev checks, at the steps past 0.5, 1


def test_dev_checks_are_off_the_training_clock(monkeypatch):
    """A seconds= budget times training only: a dev check pauses the clock (its time is dev_seconds), else
    a cell with a slow dev set or more eval points would train less. Every check here costs 1,000 s of a
    virtual clock (the trainer's perf_counter plus what the checks add): the budget's 0.5 s must never see
    them, and dev_seconds holds them all. No real time is asserted."""
    import types

    import harness.distributed
    import harness.train as ht

    offset, real_dev_loss = [0.0], harness.distributed.dev_loss
    monkeypatch.setattr(ht, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0]))

    def slow_dev_loss(*a, **kw):
        offset[0] += 1000.0
        return real_dev_loss(*a, **kw)

    monkeypatch.setattr(harness.distributed, "dev_loss", slow_dev_loss)
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_size=8, progress=False, eval_points=3)
    res = train(_model(), obj, _toy_data(), _toy_data(8, seed=1), Budget.parse("seconds=0.5"), cfg, torch.device("cpu"))
    n = len(res.loss_curve)  # 3, or fewer when under load a step passes two check points (one check for both)
    assert 1 <= n <= 3 and res.loss_curve[-1]["frac"] >= 1.0
    assert 1000.0 * n <= res.dev_seconds < 1000.0 * (n + 1)  # the checks' time, and nothing else
    assert 0.5 <= res.train_seconds + res.warm_charged_seconds < 1000.0  # a check on the clock: a 1,000 s step


def test_a_time_budget_charges_what_the_warm_up_steps_trained(monkeypatch, step_clock):
    """The warm-up steps are off the clock (they compile) but they train: a seconds= budget charges their
    tokens at the clocked rate, so a cell with more of them (CUDA graphs: two per batch shape) gets no
    free training. A virtual clock where a step costs 0.01 s per token, and a warm-up step 1,000 s more
    (a compilation); five warm-up steps. The budget must end at the first step whose tokens, all at
    0.01 s, reach it: uncharged, the run would go on for the warm-up's tokens again. No real time."""
    import harness.train as ht

    per_step, real_init = [], ht._Run.__init__

    def cost(run, stage, batch):
        per_step.append(batch.n_tokens)
        return 0.01 * batch.n_tokens + (1000.0 if run.in_warm else 0.0)

    def five_warm(self, *a, **kw):
        real_init(self, *a, **kw)
        self.warm_steps = 5

    step_clock(cost)
    monkeypatch.setattr(ht._Run, "__init__", five_warm)
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    cfg = TrainConfig(batch_size=8, progress=False, eval_points=1)
    res = train(_model(), obj, _toy_data(), _toy_data(8, seed=1), Budget.parse("seconds=20"), cfg, torch.device("cpu"))
    warm = sum(per_step[:5])
    assert res.warm_steps == 5 and res.warm_tokens == warm == res.stages[0]["warm_tokens"]
    assert res.train_seconds == pytest.approx(0.01 * (res.tokens_seen - warm))  # the clock: no compilation
    assert res.warm_charged_seconds == pytest.approx(0.01 * warm)
    charged = 0.01 * res.tokens_seen
    assert charged >= 20 - 1e-9 and charged - 0.01 * per_step[-1] < 20  # the last step was the one that reached it


def test_budget_smaller_than_a_batch_is_refused():
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    with pytest.raises(BudgetError, match="smaller than one batch"):
        train(_model(), obj, _toy_data(), _toy_data(8), Budget.parse("tokens=10"),
              TrainConfig(batch_size=8, progress=False), torch.device("cpu"))


def test_checkpoint_selection_restores_the_best_dev_state():
    """A dev set that training makes worse: its best point is early, and the model handed back holds
    that early checkpoint, not the last weights."""
    from harness.evaluate import dev_loss

    obj = objectives.build("autoregressive", SPECIAL, "chunked", loss_on="answer")
    model = _model()
    dev = _toy_data(16, seed=1, copy=False)
    cfg = TrainConfig(batch_size=8, lr=3e-3, progress=False, eval_points=4, warmup_frac=0.01)
    res = train(model, obj, _toy_data(), dev, Budget.parse("tokens=8000"), cfg, torch.device("cpu"))
    best = min(p["dev_loss"] for p in res.loss_curve)
    assert res.best_dev_loss == pytest.approx(best, rel=1e-4)
    assert res.best_fraction < 1.0 and res.loss_curve[-1]["dev_loss"] > best  # overfitting is visible
    assert dev_loss(model, obj, dev, 32, torch.device("cpu")) == pytest.approx(res.best_dev_loss, rel=1e-5)


def test_autoregressive_loss_on_is_checked():
    """A misspelt `--objective-opt autoregressive.loss_on=answers` is an error naming the two choices, not
    a silent fall back to the loss on every token."""
    with pytest.raises(ValueError, match="loss_on must be 'all' or 'answer', got 'answers'"):
        objectives.build("autoregressive", SPECIAL, "chunked", loss_on="answers")


def test_autoregressive_answer_only_loss_ignores_the_prompt():
    obj_all = objectives.build("autoregressive", SPECIAL, "chunked")
    obj_ans = objectives.build("autoregressive", SPECIAL, "chunked", loss_on="answer")
    data = _toy_data(4)
    b = data.batch(np.arange(4))
    m = _model()
    ans = obj_ans.loss(m, b)
    s, n = obj_all.nll(m, b)
    assert ans.item() == pytest.approx((s / n).item(), rel=1e-5)
    assert n.item() == 8  # answer + EOS in 4 sequences
    assert obj_all.loss(m, b).item() != pytest.approx(ans.item())


def test_greedy_generation_stops_at_eos_and_is_batch_invariant():
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    m = _model().eval()
    prompts = [[2, 7, 8, 9, 4], [2, 10, 4], [2, 11, 12, 13, 14, 15, 4]]
    batched = obj.generate(m, prompts, max_new=6, batch_size=3)
    one_by_one = [obj.generate(m, [p], max_new=6, batch_size=1)[0] for p in prompts]
    assert batched == one_by_one
    assert all(len(g) <= 6 and SPECIAL.eos not in g for g in batched)


class _Scripted(torch.nn.Module):
    """A stand-in LM whose greedy answer to a prompt [BOS, a, ..., SEP] is a+1, a+2, ..., a+k, then EOS,
    with k = a % 3 + 1: rows of one batch finish at different steps. Its hidden state is (a, tokens
    generated so far), for both decoding paths; it counts its calls."""

    V = 32

    def __init__(self):
        super().__init__()
        self.head_weight = torch.zeros(self.V, 1)
        self.calls = {"forward": 0, "step": 0}

    def logits(self, h):  # h (..., 2): (a, n generated) -> one-hot logits of the next token
        a, n = h[..., 0].long(), h[..., 1].long()
        nxt = torch.where(n < a % 3 + 1, a + 1 + n, torch.full_like(a, SPECIAL.eos))
        return torch.nn.functional.one_hot(nxt, self.V).float()

    def forward(self, ids, pad_mask=None, right_padded=True):  # the rerun path: right-padded rows
        self.calls["forward"] += 1
        T = ids.shape[1]
        sep = (ids == SPECIAL.sep).float().argmax(1)  # (b,) the prompt's last position
        n = (torch.arange(T)[None] - sep[:, None]).clamp(min=0)  # tokens generated up to t
        return torch.stack([ids[:, 1:2].expand(-1, T), n], -1).float()

    def prefill(self, ids, pad_mask=None):  # the state path: left-padded rows
        a = ids.gather(1, (ids == SPECIAL.bos).float().argmax(1, keepdim=True) + 1)  # (b, 1)
        h = torch.stack([a.expand(-1, ids.shape[1]), torch.zeros_like(ids)], -1).float()
        return h, h[:, -1]

    def step(self, ids_t, state):
        self.calls["step"] += 1
        state = state + torch.tensor([0.0, 1.0])
        return state, state


@pytest.mark.parametrize("decode", ["state", "rerun"])
def test_greedy_generation_returns_the_tokens_before_eos_and_stops_when_every_row_has_ended(decode):
    """What a prediction is: the tokens before the first EOS (never the EOS, never what a finished row is
    fed afterwards), and a batch stops as soon as its last row has ended, not after max_new tokens (the
    toy LM above never ends a row, so neither was seen)."""
    obj = objectives.build("autoregressive", SPECIAL, "chunked", decode=decode)
    m = _Scripted()
    prompts = [[2, 9, 7, 4], [2, 10, 4], [2, 11, 7, 7, 7, 4]]  # k = 1, 2, 3
    got = obj.generate(m, prompts, max_new=8, batch_size=3)
    assert got == [[10], [11, 12], [12, 13, 14]]
    # the longest answer is 3 tokens and its EOS: 4 tokens, 1 from the prefill and 3 steps (state), or
    # 4 forward passes (rerun); a batch run to max_new would take 7 steps or 8 passes
    assert m.calls == ({"forward": 0, "step": 3} if decode == "state" else {"forward": 4, "step": 0})


def test_predict_targets_is_teacher_forced_next_token_argmax():
    obj = objectives.build("autoregressive", SPECIAL, "chunked")
    m = _model().eval()
    data = _toy_data(3)
    b = data.batch(np.arange(3))
    pred = obj.predict_targets(m, b)
    assert pred.shape == b.ids.shape
    logits = m.logits(m(b.ids))
    assert torch.equal(pred[:, 5], logits[:, 4].argmax(-1))


def test_a100_factor_is_the_timed_matmuls_tflops_over_252_with_the_warm_up_untimed(monkeypatch):
    """A fake clock: a timed matmul takes DT, the first (cold) call 100 s. The factor must be
    2 n^3 / DT / 1e12 / 252: the warm-up untimed, every timed call counted in the FLOPs."""
    import types

    import harness.budget as hb

    clock, DT, shapes = [0.0], 1e-3, []

    class Fake:
        def __init__(self, n):
            self.n = n

        def __matmul__(self, other):
            clock[0] += 100.0 if clock[0] == 0.0 else DT
            return None

    def randn(*size, **kw):
        shapes.append(size)
        return Fake(size[0])

    monkeypatch.setattr(hb, "_FACTOR_CACHE", {})
    monkeypatch.setattr(hb, "torch", types.SimpleNamespace(randn=randn, bfloat16=torch.bfloat16, float32=torch.float32))
    monkeypatch.setattr(hb, "sync", lambda device: None)
    monkeypatch.setattr(hb, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    info = hb.device_speed(torch.device("cpu"))
    n = shapes[0][0]
    assert shapes == [(n, n), (n, n)]
    tflops = 2 * n**3 / DT / 1e12
    assert info["matmul_tflops"] == pytest.approx(tflops, abs=1e-3)
    assert info["a100_factor"] == pytest.approx(tflops / 252, rel=1e-6)
    assert info["a100_ref_tflops"] == 252
