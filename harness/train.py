"""The budgeted training loop.

The learning rate follows the *fraction of the budget used* (warmup - stable - decay, "WSD"), so a
time budget ends on a decayed LR just like a token budget. Dev-slice evaluations happen at fixed
budget fractions with the clock paused; the checkpoint with the lowest dev loss is restored at the
end (checkpoint selection never looks at the evaluation split). A dev check costs a bounded amount
whatever the dev set's size: a fixed sample of at most `dev_tokens` tokens, scored with the
objective's cheap selection estimator (`Objective.selection_nll`; e.g. 2 fixed-seed mask samples for
masked diffusion instead of the final bound's 8). Its wall time is recorded (`dev_seconds`) beside
the budgeted training time, never inside the budget. The first steps of a stage (and any step that
compiles) are off the clock, since they mostly compile, but they train: a time budget charges what
they trained at the stage's clocked seconds per token (`StagePlan.warm_charge`), so a cell with more
warm-up steps gets no free training. The loss curve keeps train and dev
loss at every evaluation point, so overfitting on a small training set shows up in the results.
With `pretrain` the run has two stages (harness/pretrain.py): language modelling on packed unlabeled
text for the first share of the budget, then the task; schedule, curve and checkpointing span both.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from core.data import Batch, BatchSampler, SeqSet
from core.env import autocast, peak_memory, reset_peak_memory, sync
from harness.budget import Budget, BudgetMeter
from harness.compiling import CUDAGRAPH_MODES, CompileWatch, compile_for_training, frames_compiled
from harness.distributed import DistEnv, Parallel, SingleProcess, data_parallel
from harness.evaluate import dev_sample
from harness.pretrain import Corpus, Stage, StagePlan, stage_plan
from harness.step_profile import StepProfiler


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
    eval_points: int = 10  # dev checks at i / eval_points of the budget (one per step however many it passes)
    dev_tokens: int = 32_768  # a dev check scores a fixed sample of at most this many tokens (0: all)
    eval_batch_size: int = 32
    seed: int = 0
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode; "reduce-overhead" replays CUDA graphs (see COMPILE_MODES)
    compile_scope: str = "blocks"  # what torch.compile compiles: each block (one graph for all) or the whole LM
    pad_to: int = 1  # round batch lengths up to a multiple (a few shapes for torch.compile; costs padding)
    progress: bool = True
    report: Callable[[float | None], None] | None = None  # budget-fraction callback (replaces the bar)
    max_steps: int = 10_000_000  # safety net
    # stop once every stage has taken its warm-up steps, with no dev check: a run whose only product is
    # inductor's on-disk compile cache, for the real run that follows (harness/warm.py)
    warm_only: bool = False
    # take one step of each stage under torch.profiler, after its warm-up, off the clock (charged like the
    # warm-up): the stage's `profile` in the row (harness/step_profile.py)
    profile: bool = False

    @property
    def cuda_graphs(self) -> bool:
        """A compile mode that records CUDA graphs: a graph per batch shape, so batches come in a few fixed
        shapes and a shape's first steps are warm-up."""
        return self.compile and self.compile_mode in CUDAGRAPH_MODES


@dataclass
class TrainResult:
    steps: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    tokens_per_s: float = float("nan")  # after the warm-up; with pretraining, the task stage's (see `stages`)
    peak_mem_bytes: int | None = None
    # allocated when the run started (CUDA): its model, data and optimizer-free state; more than a cell's
    # own is what an earlier cell or run left behind (and it counts in the peak)
    start_mem_bytes: int | None = None
    loss_curve: list[dict] = field(default_factory=list)
    best_fraction: float | None = None
    best_dev_loss: float | None = None
    epochs: float = 0.0  # of the task's training set, in the task stage
    stages: list[dict] = field(default_factory=list)  # per stage: sources, tokens, steps, seconds, tokens/s, padding
    dev_seconds: float = 0.0  # wall time of the dev checks (outside the budget)
    dev_tokens: int = 0  # tokens in the dev sample each check scores
    padding_frac: float | None = None  # share of the task stage's computed positions (rows x length) that were padding
    compile_error: str | None = None  # torch.compile failed in the first steps: the cell trained eagerly
    late_compiles: int = 0  # steps after the warm-up in which torch.compile compiled (not budgeted either)
    warm_seconds: float = 0.0  # wall time of the steps left off the clock (warm-up, late compiles): mostly compiling
    warm_steps: int = 0  # steps left off the clock (each stage's first, late compiles, CUDA graphs' new shapes,
    # the profiled step)
    warm_tokens: int = 0  # the tokens those steps trained
    # what a time budget charged for them: their tokens at their stage's clocked rate (StagePlan.warm_charge);
    # the budget's seconds are train_seconds + this
    warm_charged_seconds: float = 0.0
    compile_scope: str | None = None  # what was compiled ("blocks", or "model" where blocks cannot be)
    budget_info: dict = field(default_factory=dict)  # the meter's describe(): the budget (and measured speed)


def device_sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (`core.env.sync`: a no-op off CUDA). A function of this module
    so a test can stand in a slow device for the training loop alone (tests/test_step.py)."""
    sync(device)


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


def train(model, objective, train_set: SeqSet, dev_set: SeqSet, budget: Budget | BudgetMeter, cfg: TrainConfig,
          device: torch.device, dist: DistEnv | None = None, pretrain: tuple[Corpus, float] | None = None) -> TrainResult:
    """Train `model` in place until the budget is spent. With `dist` (under torchrun) this rank trains on
    its shard of every global batch; `cfg.batch_size` stays the global batch (harness/distributed.py).
    `budget` is checked to cover a batch of `train_set` here, unless it comes as a checked `BudgetMeter`
    (a grid cell's, checked when its plan was built).

    No step reads a device value back to the host: batches are cut on the device, the step's token
    count is known on the host, the train loss is summed on the device and read only at the dev-eval
    points (tests/test_step.py checks this), so the host can queue steps ahead of a GPU.
    With `pretrain = (corpus, F)` the first F of the budget trains the objective's LM form on the corpus."""
    meter = budget if isinstance(budget, BudgetMeter) else \
        BudgetMeter(budget, device).check(train_set, cfg.batch_size, cfg.batch_tokens)
    par = data_parallel(model, dist, device, meter.budget)  # one process, or this rank of N

    torch.manual_seed(cfg.seed)
    # CUDA graphs record a graph per batch shape: their batches come in a few fixed shapes (core/data.py)
    base = BatchSampler(train_set, cfg.batch_size, seed=cfg.seed, pad_to=cfg.pad_to, batch_tokens=cfg.batch_tokens,
                        fixed_shapes=cfg.cuda_graphs)
    # [pretrain] the stages this run trains in, in order (the task stage alone without pretraining)
    stages = stage_plan(par.sampler(base), objective, pretrain, cfg.batch_size, cfg.seed, cfg.pad_to, device,
                        par.sampler)
    stages.task.data_tokens = train_set.n_tokens
    run = _Run(model, objective, par, dev_sample(dev_set, cfg.dev_tokens), cfg, device, staged=pretrain is not None)
    eval_at = [(i + 1) / cfg.eval_points for i in range(cfg.eval_points)]
    bar = cfg.report or _progress(cfg.progress)
    frac = 0.0
    model.train()
    with run.watch():
        while frac < 1.0 and run.res.steps < cfg.max_steps:
            stage = stages.at(frac)
            if cfg.warm_only and stage.steps >= run.warm_steps:  # [warm] this stage has compiled
                if stage is stages.task:
                    break
                frac = stage.until  # on to the next stage's warm-up
                continue
            run.step(stage, frac)
            # a time budget charges the clock and, at the clocked rate, what the off-clock steps trained
            charged = run.clock + stages.warm_charge()
            frac = par.fraction(meter.fraction(run.res.tokens_seen, charged))  # [DDP] rank 0's clock decides
            bar(frac)
            # one dev check however many points this step passed (a step longer than a tenth of the budget):
            # a check per point repeated the dev loss, and the train loss of no steps, as 0
            passed = sum(at <= frac for at in eval_at)  # (the last point is 1.0: a finished budget passes all)
            if passed and not cfg.warm_only:
                del eval_at[:passed]
                run.eval_point(frac, stage)
    bar(None)
    return run.finish(stages, train_set, meter)


# tokens/s counts the steps after this one (and no stage's first steps): the first steps compile and warm up
STEADY_FROM = 2
# steps between the asynchronous checks that the training loss is finite (between the dev checks, which
# read the loss: one a tenth of the budget, and a short run of the learning-rate sweep has one, at its end)
FINITE_EVERY = 8


class FiniteCheck:
    """Whether the loss sum went NaN or infinite, asked of the device without waiting for it: every
    `every` steps the device copies isfinite(loss sum) into pinned host memory (non_blocking: queued
    behind the step, no sync), and a later step reads it once the copy has landed (a CUDA event's query,
    which never waits). A blocking copy or a read of the device value would stall the host every few
    steps, and the host could no longer queue steps ahead of a GPU (tests/test_step.py simulates CUDA)."""

    def __init__(self, device: torch.device, every: int = FINITE_EVERY):
        self.cuda, self.every = device.type == "cuda", every
        self.host = torch.ones(1, dtype=torch.uint8, pin_memory=self.cuda)
        self.view = self.host.numpy()  # (made once: reading it reads host memory, no tensor)
        self.pending, self.event = False, None

    def poll(self, loss_sum: torch.Tensor, steps: int) -> None:
        """Raise FloatingPointError when a check that has landed says the loss sum was not finite (it stays
        so until the next dev check resets the sum); start the next check every `every` steps."""
        if self.pending:
            if self.event is not None and not self.event.query():
                return  # still in flight: a later step reads it
            self.pending = False
            if not self.view[0]:
                raise FloatingPointError(f"training loss is not finite (found at step {steps}, between dev checks)")
        if steps % self.every == 0:
            self.host.copy_(torch.isfinite(loss_sum).to(torch.uint8).reshape(1), non_blocking=True)
            if self.cuda:
                self.event = torch.cuda.Event()
                self.event.record()
            self.pending = True


class _Run:
    """One training run's state between steps: the optimizer, the budgeted clock, the train loss summed
    on the device since the last eval point, the best checkpoint so far, and the result being filled."""

    def __init__(self, model, objective, par: Parallel, dev_set: SeqSet, cfg: TrainConfig, device: torch.device,
                 staged: bool):
        self.model, self.objective, self.par, self.dev_set = model, objective, par, dev_set
        self.cfg, self.device, self.staged = cfg, device, staged
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed + par.seed_offset)
        self.opt = _optimizer(model, cfg, device)
        self.res = TrainResult(dev_tokens=dev_set.n_tokens)
        self.step_fn = par.module
        if cfg.compile:  # the step runs through compiled code; dev checks and decoding use the model eagerly
            self.step_fn, self.res.compile_scope = compile_for_training(par.module, cfg.compile_mode, cfg.compile_scope)
        # CUDA graph replays reuse their output memory: each step tells the graph tree a new step began
        self.graphs = cfg.cuda_graphs
        # [graphs] steps per batch shape so far, over both stages: the graphs are the compiled blocks' (the
        # loss, where the stages' objective forms differ, runs outside them), so a shape recorded in
        # pretraining replays in the task stage (whose own first steps are warm-up anyway)
        self.shapes_seen: dict[tuple[int, ...], int] = {}
        # torch.compile compiles at step 1 and recompiles once at step 2 (the first new batch shape marks
        # the lengths dynamic): neither is budgeted, and tokens/s counts from step 3 on. The same holds at
        # the start of every stage: the task stage after pretraining brings a new objective form and new
        # shapes (packed rows were all alike), so it compiles again, and that is not budgeted either
        self.warm_steps = 2 if cfg.compile else 1
        self.in_warm = False  # the step being taken is one of its stage's first `warm_steps`
        self.in_step = False  # a step is being taken (compile events outside steps are not the step's)
        self.compiled_in_step = False  # torch.compile started work during the step being taken
        self.clock = 0.0
        self.loss_sum, self.loss_n = torch.zeros((), device=device), 0
        # [finite] a diverged run stops within a few dozen steps, not at the next dev check. Not under DDP:
        # the ranks must agree when to stop (the dev checks' collective read decides there)
        self.finite = FiniteCheck(device) if isinstance(par, SingleProcess) else None
        self.best_state, self.best = None, math.inf
        self.stage: Stage | None = None  # the stage of the last step
        self.res.start_mem_bytes = reset_peak_memory(device)

    def watch(self) -> CompileWatch:
        """The compile watch for the run's steps (`with run.watch():`). Made per use, never stored on the run:
        the watch holds `_on_compile`, a method of the run, and a run holding its watch would be a reference
        cycle that keeps the model, its gradients and the optimizer's states alive after `train` returns until
        Python's cycle collector happens to run: on a GPU, in the full run's peak memory after each short run
        of the learning-rate sweep."""
        return CompileWatch(self._on_compile)

    def step(self, stage: Stage, frac: float) -> None:
        """One optimizer step on the stage's next batch at the LR of budget fraction `frac`, timed (not
        when it is one of its stage's first `warm_steps`, nor under CUDA graphs one of a batch shape's
        first two: those compile or record, synced and off the clock)."""
        t_batch = time.perf_counter()
        batch = next(stage.sampler)  # (queued slicing on the device: the batch's shape is known on the host)
        t_batch = time.perf_counter() - t_batch
        warm = stage.steps < self.warm_steps
        if self.graphs:
            # CUDA graph trees run a new shape eagerly once (their warm-up, unannounced), record it the second
            # time (announced) and replay it from the third: a shape's first two steps are warm-up too, else
            # the first ran ungraphed on the clock, with a sync per graph. Batches come in a few fixed
            # shapes (core/data.py fixed_shape_batches), so this is a few steps per stage
            shape = tuple(batch.ids.shape)
            seen = self.shapes_seen.get(shape, 0)
            self.shapes_seen[shape] = seen + 1
            warm = warm or seen < 2
        # [profile] one step of the stage, once it runs compiled graphs (or CUDA graph replays): off the clock,
        # as the profiler's recording slows the host
        prof = None
        if (self.cfg.profile and stage.profile is None and not warm
                and stage.steps >= self.warm_steps + STEADY_FROM):
            prof, warm = StepProfiler(self.device), True
        self.in_warm = warm
        if warm and self.res.steps:  # the steps queued before a warm-up step are charged first
            self.drain()
        if prof is not None:
            prof.start()
        try:
            t0, n_tok, compiled = self._take(stage, batch, frac, t_batch)
        except BaseException:
            if prof is not None:  # a failed step (out of memory, say) must not leave the profiler on for the next cell
                prof.abandon()
            raise
        res = self.res
        if compiled and (not warm or prof is not None):
            # torch.compile compiled (or recorded a CUDA graph) during this step, after the warm-up: a
            # shape its guards had not seen (automatic dynamic marks only the sizes that had changed by
            # then; a stage or a task may bring others). Also in an eager model: a loss path may compile
            # (`--loss cce_compile`). Compilation is never budgeted: the step is warm-up too, and
            # counted. The steps queued before it were charged when it began (_on_compile)
            warm = True
            res.late_compiles += 1
        if warm:
            device_sync(self.device)  # the first steps (compilation, allocator warm-up) are not budgeted
        dt = time.perf_counter() - t0
        if prof is not None:
            profile = prof.stop(n_tok)  # (after the step has synced: the device's kernels have all ended)
            # a step that compiled shows the compiler, not the step: a later step is taken (not after a profiler
            # that failed: every later step would be off the clock too)
            if not compiled or "error" in profile:
                stage.profile = profile
        if not warm:
            self.clock += dt
        else:
            res.warm_seconds += dt
            res.warm_steps += 1
        stage.account(n_tok, 0.0 if warm else dt, batch.n_tokens, batch.ids.numel(), warm=warm)  # (host-side: no sync)
        if not warm and res.steps > STEADY_FROM:
            stage.steady_seconds += dt
            stage.steady_tokens += n_tok

    def _take(self, stage: Stage, batch: Batch, frac: float, t_batch: float) -> tuple[float, int, bool]:
        """The step itself, queued on the device: (its start on the host clock, the tokens it trained,
        whether torch.compile compiled or recorded during it)."""
        res = self.res
        frames = frames_compiled()
        self.in_step, self.compiled_in_step = True, False
        t0 = time.perf_counter() - t_batch
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        self.stage = stage
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * wsd_multiplier(frac, self.cfg)
        loss = self._forward_backward(stage, batch)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.loss_sum += loss.detach()
        self.loss_n += 1
        res.steps += 1
        if self.finite is not None:
            self.finite.poll(self.loss_sum, res.steps)
        n_tok = self.par.step_tokens(stage.sampler, batch)  # [DDP] the budget counts the whole cell
        res.tokens_seen += n_tok
        self.in_step = False
        return t0, n_tok, self.compiled_in_step or frames_compiled() > frames

    def _on_compile(self) -> None:
        """torch.compile is about to stop the host (a compile, a CUDA graph recording) inside a step.
        Meanwhile a GPU finishes the steps queued before this one: that is training time, and the step
        that compiles is left off the clock. So wait for the queue now and charge the wait (a drain),
        before the compilation starts: what the step then leaves out is compilation and its own work."""
        if not self.in_step:
            return
        first = not self.compiled_in_step  # (a step may announce several: a graph per block, say)
        self.compiled_in_step = True
        if first and not self.in_warm:  # a warm-up step began with nothing queued (the run's start, or a drain)
            self.drain()

    def drain(self) -> None:
        """Wait for the steps still queued on the device and charge the wait to the budget. Steps are
        timed on the host and never sync, so the host runs ahead of a GPU: the work it queued before a
        dev check (or the end) is GPU time the budget, the stage and tokens/s must count. (Warm-up
        steps have synced already, so a drain never charges compilation.)"""
        t0 = time.perf_counter()
        device_sync(self.device)
        waited = time.perf_counter() - t0
        if self.res.steps > self.warm_steps:
            self.clock += waited
            self.stage.seconds += waited  # the stage of the last step queued
        if self.res.steps > STEADY_FROM:
            self.stage.steady_seconds += waited

    def _forward_backward(self, stage: Stage, batch: Batch) -> torch.Tensor:
        """The step's loss, backpropagated. A model torch.compile cannot handle (it fails in the first
        steps) trains eagerly from then on, and the result says why."""
        try:
            return self._loss_backward(self.step_fn, stage, batch)
        except Exception as e:
            eager = self.par.module
            if self.step_fn is eager or not self.in_warm or out_of_memory(e):
                raise
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            self.res.compile_error = f"{type(e).__name__}: {first}"
            self.step_fn = eager
        # the eager retry runs after the handler has ended: inside it, the exception's traceback holds the
        # failed attempt's frames (its activations, its autograd graph), on a GPU beside the retry's own
        self.opt.zero_grad(set_to_none=True)
        return self._loss_backward(self.step_fn, stage, batch)

    def _loss_backward(self, fn, stage: Stage, batch: Batch) -> torch.Tensor:
        with autocast(self.device):  # [DDP] normalised by the global loss-token count
            loss = self.par.loss(stage.objective, fn, batch, stage.sampler, self.gen)
        loss.backward()
        return loss

    def eval_point(self, frac: float, stage: Stage) -> None:
        """The train loss since the last point and the dev loss (outside the clock) on the curve; the
        checkpoint is kept when the dev loss is the best so far."""
        self.drain()  # the clock is paused from here: the steps queued so far are charged first
        summed = self.par.mean_over_ranks(self.loss_sum)  # [DDP] every rank sees the same
        train_loss = float(summed / max(self.loss_n, 1))
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss is {train_loss} at step {self.res.steps}")
        t_dev = time.perf_counter()
        d = self.par.dev_loss(self.model, self.objective, self.dev_set, self.cfg.eval_batch_size, self.device)
        self.res.dev_seconds += time.perf_counter() - t_dev  # (the float() in dev_loss has synced)
        at = round(min(frac, 1.0), 4)
        self.res.loss_curve.append(
            {"frac": at, "step": self.res.steps, "tokens": self.res.tokens_seen,
             "train_loss": round(train_loss, 5), "dev_loss": round(d, 5),
             **({"stage": stage.name} if self.staged else {})}
        )
        self.loss_sum, self.loss_n = torch.zeros((), device=self.device), 0
        if d < self.best:
            self.best, self.res.best_fraction = d, at
            # kept in host memory: a copy on the GPU added two models' worth (old and new copy) to the row's
            # peak VRAM, which is to measure training. Off the clock (the dev check has drained the queue)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def finish(self, stages: StagePlan, train_set: SeqSet, meter: BudgetMeter) -> TrainResult:
        """The result, with the best checkpoint restored into the model."""
        res = self.res
        self.drain()
        res.peak_mem_bytes = peak_memory(self.device)
        res.train_seconds = self.clock
        res.warm_tokens = sum(s.warm_tokens for s in stages.stages)
        res.warm_charged_seconds = stages.warm_charge()
        # the task stage's steady speed: with pretraining comparable with a run that does not pretrain (the
        # other stage's is in `stages`), NaN if none was timed. Without pretraining, a budget spent within
        # the first steps falls back to tokens over the clock, and is NaN (no figure) when nothing was timed
        res.tokens_per_s = stages.task.tokens_per_s()
        if math.isnan(res.tokens_per_s) and not self.staged and self.clock > 0:
            res.tokens_per_s = res.tokens_seen / self.clock
        res.best_dev_loss = self.best if math.isfinite(self.best) else None
        res.epochs = stages.task.tokens / max(train_set.n_tokens, 1)
        res.stages = stages.describe()
        res.padding_frac = stages.task.padding_frac()  # the task's batching (packed pretraining rows have none)
        res.budget_info = meter.describe()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return res


def out_of_memory(e: BaseException) -> bool:
    """Whether an out-of-memory error caused `e` (see `oom_cause`)."""
    return oom_cause(e) is not None


def oom_cause(e: BaseException) -> BaseException | None:
    """The out-of-memory error that caused `e`, or None: dynamo re-raises a failure inside compilation
    (inductor's autotuning runs kernels) as `BackendCompilerFailed(...) from None`, the OOM in
    `inner_exception` and the context. An OOM must never be taken for a model torch.compile cannot
    handle, and a cell's row must say OutOfMemoryError however deep the OOM was."""
    todo, seen = [e], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, torch.cuda.OutOfMemoryError):
            return e
        seen.add(id(e))
        todo += [getattr(e, "inner_exception", None), e.__cause__, e.__context__]
    return None


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
