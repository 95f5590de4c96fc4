"""The budgeted training loop.

The learning rate follows the *fraction of the budget used* (warmup - stable - decay, "WSD"), so a
time budget ends on a decayed LR just like a token budget. Dev-slice evaluations happen at fixed
budget fractions with the clock paused; the checkpoint with the lowest dev loss is restored at the
end (checkpoint selection never looks at the evaluation split). A dev check costs a bounded amount
whatever the dev set's size: a fixed sample of at most `dev_tokens` tokens, scored with the
objective's cheap selection estimator (`Objective.selection_nll`; e.g. 2 fixed-seed mask samples for
masked diffusion instead of the final bound's 8). Its wall time is recorded (`dev_seconds`) beside
the budgeted training time, never inside the budget. The loss curve keeps train and dev
loss at every evaluation point, so overfitting on a small training set shows up in the results.
With `pretrain` the run has two stages (harness/pretrain.py): language modelling on packed unlabeled
text for the first share of the budget, then the task; schedule, curve and checkpointing span both.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from core.env import autocast
from harness.budget import Budget, BudgetError, BudgetMeter
from core.data import BatchSampler, SeqSet
from harness.distributed import DataParallel, DistEnv
from harness.pretrain import Corpus, stage_plan


@dataclass
class TrainConfig:
    batch_size: int = 8  # sequences per step, when batch_tokens is 0
    batch_tokens: int = 0  # > 0: a token budget per step (rows x padded length), length-bucketed rows
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    warmup_frac: float = 0.05
    decay_frac: float = 0.2  # the last 20% of the budget decays linearly
    min_lr_frac: float = 0.1
    eval_points: int = 10  # dev evaluations along the budget
    dev_tokens: int = 32_768  # a dev check scores a fixed sample of at most this many tokens (0: all)
    eval_batch_size: int = 32
    seed: int = 0
    compile: bool = False
    pad_to: int = 1  # round batch lengths up to a multiple (a few shapes for torch.compile; costs padding)
    progress: bool = True
    report: Callable[[float | None], None] | None = None  # budget-fraction callback (replaces the bar)
    max_steps: int = 10_000_000  # safety net


@dataclass
class TrainResult:
    steps: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    tokens_per_s: float = float("nan")
    peak_mem_bytes: int | None = None
    loss_curve: list[dict] = field(default_factory=list)
    best_fraction: float | None = None
    best_dev_loss: float | None = None
    epochs: float = 0.0  # of the task's training set, in the task stage
    stages: list[dict] = field(default_factory=list)  # per stage: sources, tokens, steps, seconds
    dev_seconds: float = 0.0  # wall time of the dev checks (outside the budget)
    dev_tokens: int = 0  # tokens in the dev sample each check scores
    padding_frac: float | None = None  # share of computed positions (rows x batch length) that were padding
    compile_error: str | None = None  # torch.compile failed in the first steps: the cell trained eagerly


def wsd_multiplier(frac: float, cfg: TrainConfig) -> float:
    """LR multiplier at budget fraction `frac`: linear warmup, flat, linear decay to min_lr_frac."""
    if frac < cfg.warmup_frac:
        return max(frac / cfg.warmup_frac, 1e-3)
    start = 1.0 - cfg.decay_frac
    if frac <= start:
        return 1.0
    return 1.0 - (1.0 - cfg.min_lr_frac) * min(1.0, (frac - start) / cfg.decay_frac)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # matrices decay, except parameters that opt out (`p._no_weight_decay = True`, e.g. Mamba's A_log)
    no_wd = lambda p: p.dim() < 2 or getattr(p, "_no_weight_decay", False)  # noqa: E731
    decay = [p for p in model.parameters() if p.requires_grad and not no_wd(p)]
    other = [p for p in model.parameters() if p.requires_grad and no_wd(p)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")


def dev_loss(model, objective, data: SeqSet, batch_size: int, device: torch.device, selection: bool = False,
             progress: Callable[[int, int], None] | None = None) -> float:
    """Mean target-token NLL on a held-out set (a bound for diffusion objectives); `selection` uses the
    objective's cheap checkpoint-selection estimator instead of the reported one."""
    tot, n = nll_sums(model, objective, data, batch_size, device, selection, progress)
    return float(tot / n.clamp_min(1))


def dev_sample(dev: SeqSet, max_tokens: int, seed: int = 0) -> SeqSet:
    """A fixed-seed sample of whole dev sequences holding at most `max_tokens` tokens (at least one
    sequence; 0: all), the same for every cell: a dev check then costs the same on any dev set."""
    if max_tokens <= 0 or dev.n_tokens <= max_tokens:
        return dev
    perm = np.random.default_rng(seed).permutation(len(dev))
    keep = perm[np.cumsum(dev.lengths[perm]) <= max_tokens]
    return dev.subset(np.sort(keep if len(keep) else perm[:1]))


@torch.no_grad()
def nll_sums(model, objective, data: SeqSet, batch_size: int, device: torch.device, selection: bool = False,
             progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed target-token NLL, target-token count) on the device: data-parallel ranks add these up.
    `progress(sequences done, of)` is called after each batch."""
    was = model.training
    model.eval()
    tot = torch.zeros((), device=device)
    n = torch.zeros((), device=device)
    nll = objective.selection_nll if selection else objective.nll
    done = 0
    for batch in data.iter_batches(batch_size):
        with autocast(device):
            s, c = nll(model, batch)
        tot += s.float()
        n += c
        done += batch.ids.shape[0]
        if progress:
            progress(done, len(data))
    model.train(was)
    return tot, n


def check_budget(budget: Budget, train_set: SeqSet, batch_size: int, batch_tokens: int = 0) -> None:
    """A token budget must cover at least one batch (a mean-length one), or nothing is learned."""
    mean = float(train_set.lengths.mean()) if len(train_set) else 1.0
    rows = max(1, int(batch_tokens // max(mean, 1.0))) if batch_tokens else batch_size
    one_batch = int(round(mean * min(rows, len(train_set)))) if len(train_set) else 1
    if budget.kind == "tokens" and budget.amount < one_batch:
        raise BudgetError(f"budget {budget} is smaller than one batch (~{one_batch} tokens); raise it")


def train(model, objective, train_set: SeqSet, dev_set: SeqSet, budget: Budget, cfg: TrainConfig, device: torch.device,
          dist: DistEnv | None = None, pretrain: tuple[Corpus, float] | None = None) -> TrainResult:
    """Train `model` in place until the budget is spent. With `dist` (under torchrun) this rank trains on
    its shard of every global batch; `cfg.batch_size` stays the global batch (harness/distributed.py).

    No step reads a device value back to the host: batches are cut on the device, the step's token
    count is known on the host, the train loss is summed on the device and read only at the dev-eval
    points (tests/test_step.py checks this), so the host can queue steps ahead of a GPU.
    With `pretrain = (corpus, F)` the first F of the budget trains the objective's LM form on the corpus."""
    meter = BudgetMeter(budget, device)
    check_budget(budget, train_set, cfg.batch_size, cfg.batch_tokens)
    par = DataParallel(model, dist, device, budget) if dist is not None and dist.active else None  # [DDP]

    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + (par.seed_offset if par else 0))
    sampler = BatchSampler(train_set, cfg.batch_size, seed=cfg.seed, pad_to=cfg.pad_to, batch_tokens=cfg.batch_tokens)
    sampler = par.sampler(sampler) if par else sampler  # [DDP] this rank's rows of each global batch
    plan = stage_plan(sampler, objective, pretrain, cfg.batch_size, cfg.seed, cfg.pad_to, device,
                      par.sampler if par else None)  # [pretrain] the stages this run trains in, in order
    dev_set = dev_sample(dev_set, cfg.dev_tokens)
    opt = _optimizer(model, cfg, device)
    eager_fn = par.module if par else model  # [DDP] forward through the wrapper: gradients all-reduce
    step_fn = torch.compile(eager_fn) if cfg.compile else eager_fn
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    res = TrainResult()
    eval_at = [(i + 1) / cfg.eval_points for i in range(cfg.eval_points)]
    best_state, best = None, math.inf
    loss_acc, loss_n = torch.zeros((), device=device), 0
    # torch.compile compiles at step 1 and recompiles once at step 2 (the first new batch shape marks
    # the lengths dynamic): neither is budgeted, and tokens/s counts from step 3 on
    warm_steps = 2 if cfg.compile else 1
    clock, steady_t, steady_tok, steady_from = 0.0, 0.0, 0, 2
    frac = 0.0
    real_pos, computed_pos = 0, 0
    bar = cfg.report or _progress(cfg.progress)
    res.dev_tokens = dev_set.n_tokens
    model.train()
    while frac < 1.0 and res.steps < cfg.max_steps:
        t0 = time.perf_counter()
        stage = plan.at(frac)  # [pretrain] the task stage alone without pretraining
        sampler, loss_obj = stage.sampler, stage.objective
        batch = next(sampler)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * wsd_multiplier(frac, cfg)

        def forward_backward(fn) -> torch.Tensor:
            with autocast(device):
                if par:  # [DDP] normalised by the global loss-token count
                    loss = par.loss(loss_obj, fn, batch, sampler.live, gen)
                else:
                    loss = loss_obj.loss(fn, batch, gen)
            loss.backward()
            return loss

        try:
            loss = forward_backward(step_fn)
        except Exception as e:  # a mixer torch.compile cannot handle: say so in the row, train eagerly
            if step_fn is eager_fn or res.steps >= warm_steps or isinstance(e, torch.cuda.OutOfMemoryError):
                raise
            res.compile_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            step_fn = eager_fn
            opt.zero_grad(set_to_none=True)
            loss = forward_backward(step_fn)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_acc += loss.detach()
        loss_n += 1
        res.steps += 1
        n_tok = sampler.global_tokens if par else batch.n_tokens  # [DDP] the budget counts the whole cell
        res.tokens_seen += n_tok
        real_pos += batch.n_tokens
        computed_pos += batch.ids.numel()  # a host-side shape: no sync
        if res.steps <= warm_steps and device.type == "cuda":
            torch.cuda.synchronize(device)  # the first steps (compilation, allocator warm-up) are not budgeted
        dt = time.perf_counter() - t0
        if res.steps > warm_steps:
            clock += dt
        stage.account(n_tok, dt if res.steps > warm_steps else 0.0)
        if res.steps > steady_from:
            steady_t += dt
            steady_tok += n_tok
        frac = meter.fraction(res.tokens_seen, clock)
        frac = par.fraction(frac) if par else frac  # [DDP] rank 0's clock decides for every rank
        bar(frac)
        while eval_at and (frac >= eval_at[0] or frac >= 1.0):
            eval_at.pop(0)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            summed = par.mean_over_ranks(loss_acc) if par else loss_acc  # [DDP] every rank sees the same
            train_loss = float(summed / max(loss_n, 1))
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training loss is {train_loss} at step {res.steps}")
            t_dev = time.perf_counter()
            if par:  # [DDP] rows split over ranks, the same number everywhere
                d = par.dev_loss(model, objective, dev_set, cfg.eval_batch_size, device)
            else:
                d = dev_loss(model, objective, dev_set, cfg.eval_batch_size, device, selection=True)
            res.dev_seconds += time.perf_counter() - t_dev  # (the float() in dev_loss has synced)
            res.loss_curve.append(
                {"frac": round(min(frac, 1.0), 4), "step": res.steps, "tokens": res.tokens_seen,
                 "train_loss": round(train_loss, 5), "dev_loss": round(d, 5),
                 **({"stage": stage.name} if pretrain else {})}
            )
            loss_acc, loss_n = torch.zeros((), device=device), 0
            if d < best:
                best, res.best_fraction = d, round(min(frac, 1.0), 4)
                best_state = copy.deepcopy(model.state_dict())
    bar(None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        res.peak_mem_bytes = int(torch.cuda.max_memory_allocated(device))
    res.train_seconds = clock
    res.tokens_per_s = steady_tok / steady_t if steady_t > 0 else res.tokens_seen / max(clock, 1e-9)
    res.best_dev_loss = best if math.isfinite(best) else None
    res.epochs = plan.task.tokens / max(train_set.n_tokens, 1)
    res.stages = plan.describe()
    res.padding_frac = round(1.0 - real_pos / computed_pos, 4) if computed_pos else None
    if best_state is not None:
        model.load_state_dict(best_state)
    return res


def _progress(enabled: bool):
    """A tqdm bar over the budget fraction (0..100%), or a no-op; redrawn once per percent."""
    if not enabled:
        return lambda frac: None
    from tqdm.auto import tqdm

    bar = tqdm(total=100, desc="train", unit="%", leave=False)

    def update(frac: float | None) -> None:
        if frac is None:
            bar.close()
            return
        pct = min(100, int(100 * frac))
        if pct != bar.n:
            bar.n = pct
            bar.refresh()

    return update
