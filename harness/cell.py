"""One grid cell: task data -> matched model -> budgeted training -> evaluation -> one results row.

A cell's `CellPlan` (its task, prepared data, model preset, objective, model config and checked
budget) is built once, by `RunContext.plan`: run_matrix.py's pre-flight check builds every cell's plan
(and its model on the meta device) before the grid starts, and `run_cell` trains from the same plan.

`run_cell` never raises for a failure inside the cell (OOM, NaN loss, too small a budget): it
returns a row with status "failed" and the error, so a grid keeps going. Bad *configuration* (an
unknown mixer, a missing data directory) is raised before any cell runs, by `run_matrix.py`.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import mixers
import mixers._ops
import tasks
from harness import lr_sweep, objectives
from harness import distributed as ddp
from harness import pretrain as pt
from harness.budget import Budget, BudgetMeter
from harness.evaluate import eval_nll, with_nll
from harness.flops import mfu
from harness.loss import resolve_impl
from harness.model import LM, LMConfig, count_params, matched_config, on_meta
from core.env import gpu_slug, peak_memory, reset_peak_memory
from core.presets import Preset, get_preset
from core.results import error_text
from core.schema import new_row
from harness.compiling import CUDAGRAPH_MODES, clear_recompile_limit_hits, graph_breaks_nested, recompile_limit_hits
from harness.train import TrainConfig, TrainResult, oom_cause, train
from tasks import PrepareContext, TaskData

# Batch lengths are not rounded up (the old 64 on CUDA made ~a quarter of computed positions padding:
# the padding table of docs/cpu-evidence.md): torch.compile marks the length dynamic after its first recompile, so
# varying lengths cost one extra compilation, not one per length.
PAD_TO = 1
# ... except under a CUDA-graph compile mode (--compile-mode reduce-overhead): a graph is recorded per
# batch shape, so lengths round up to a multiple of 64 (at most max_len / 64 lengths), trading padding
# (the row's padding_frac) for one launch per step
PAD_TO_GRAPHS = 64


def fresh_compiler() -> None:
    """Forget every graph torch.compile has made in this process, before a compiled cell trains.

    A grid's cells run one after another in one process and all trace the same code (the LM's and its
    blocks' `forward`); dynamo keeps each mixer's variants under that code's recompile limit (8) and
    then silently runs it eagerly: on CPU, after the 6 causal models, 5 of the 6 bidirectional ones
    trained with no compiled frame (tests/test_step.py), while a grid's rows would say compiled.
    Kernels stay in inductor's on-disk cache, so a cell like an earlier one (another seed) still
    compiles quickly."""
    import torch._dynamo

    torch._dynamo.reset()


def enable_tf32(device: torch.device) -> bool:
    """Let fp32 matmuls (what autocast leaves in fp32) use TF32 tensor cores on CUDA; True if set."""
    if device.type != "cuda":
        return False
    torch.set_float32_matmul_precision("high")
    return True


def allow_cudnn_attention(device: torch.device, allowed: bool) -> bool | None:
    """Whether PyTorch's SDPA may dispatch to cuDNN's attention on CUDA (None elsewhere: no choice is made).

    Off by default. cuDNN builds an execution plan for each new shape of q, k, v and mask, on the host, and
    a grid trains on batches cut to their longest row, so nearly every task step has a new length, and
    decoding a new key length at every token. That is the suspected cause, not yet confirmed on a GPU, of what
    the first GPU check (gpu_check/, NVIDIA H200, 2026-12-04) showed of attention alone: its task stage at
    115,490 tokens/s (about 100 ms a step) where its pretraining stage, every row 512 long, ran 1,570,306 and
    the other mixers' task stages 0.37-1.15 M; its diffusion cell at 7,469; 577 ms to decode an answer against
    49-272 ms; and 1,294,751 when lengths were rounded up to 64 (few shapes). Without cuDNN, SDPA takes the
    flash or the memory-efficient kernel, which need no per-shape plan. Set on every cell, either way: the
    switch is global to the process, and a compiled graph keeps the kernel chosen when it was traced."""
    if device.type != "cuda":
        return None
    torch.backends.cuda.enable_cudnn_sdp(allowed)
    return allowed


@dataclass
class Cell:
    """Everything that defines a run; its hash is the resume key."""

    task: str
    mixer: str
    objective: str
    preset: str
    budget: str
    seed: int = 0
    norm: str = "pre"
    mixer_opts: dict[str, Any] = field(default_factory=dict)
    objective_opts: dict[str, Any] = field(default_factory=dict)
    task_opts: dict[str, Any] = field(default_factory=dict)
    loss: str = "auto"
    compile: bool = False  # force torch.compile (it is on by default on CUDA; see `compiles`)
    no_compile: bool = False  # force eager execution, also on CUDA
    compile_mode: str = "default"  # torch.compile mode (harness.compiling.COMPILE_MODES); not "default" implies compile
    compile_scope: str = "blocks"  # what torch.compile compiles (harness.compiling.COMPILE_SCOPES); "model" implies compile
    sdpa_cudnn: bool = False  # let SDPA use cuDNN's attention on CUDA (allow_cudnn_attention)
    d_model: int = 0  # model width override (0: the preset's); the --sweep varies it
    dev_tokens: int | None = None  # tokens a dev check scores (None: TrainConfig's default bound)
    dev_checks: int | None = None  # dev checks over the budget (None: TrainConfig's eval_points)
    sweep: dict[str, int] | None = None  # a sweep point, e.g. {"seq_len": 256, "d_model": 64}: copied to the row
    pretrain: dict[str, Any] | None = None  # harness.pretrain.PretrainSpec as a dict: sources, frac, max_chars
    lr: float = 0.0  # learning rate override (0: the preset's)
    lr_sweep: dict[str, Any] | None = None  # {"rates": [...], "frac": F}: pick the rate per cell (harness/lr_sweep.py)

    def key(self) -> str:
        d = dataclasses.asdict(self)
        for f in _KEY_IF_SET:  # fields added later count only when set, so older keys still resume
            if d[f] == _DEFAULTS[f]:
                del d[f]
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def label(self) -> str:
        at = "".join(f" {k}={v}" for k, v in (self.sweep or {}).items())
        return f"{self.mixer} x {self.objective} (seed {self.seed}{at})"

    def compiles(self, device: torch.device) -> bool:
        """torch.compile for training: on by default on CUDA (eager launch overhead dominates a small
        model's step there), off on CPU (compiling costs more than it saves in short CPU runs)."""
        return (self.compile or self.compile_mode != "default" or self.compile_scope != "blocks"
                or (device.type == "cuda" and not self.no_compile))


_KEY_IF_SET = ("d_model", "sweep", "pretrain", "dev_tokens", "lr", "lr_sweep", "no_compile", "compile_mode",
              "compile_scope", "sdpa_cudnn", "dev_checks")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Cell) if f.name in _KEY_IF_SET}


@dataclass
class RunContext:
    device: torch.device
    data_dir: Path | None
    cache_dir: Path
    grid: str
    progress: bool = True
    log: Callable[[str], None] = print
    dist: ddp.DistEnv = field(default_factory=ddp.DistEnv)  # this process's rank when a cell runs data-parallel
    # where the running cell is: (phase text, fraction of the cell done), for the grid's progress line
    phase: Callable[[str, float], None] = lambda _text, _frac: None
    # cells train elsewhere (Ray workers, on their own devices): the driver's plans only check them, and
    # device-bound choices (the loss kernel: `cce` needs CUDA) are resolved by the workers, not judged here
    remote: bool = False
    # profile one step of each stage of every cell (TrainConfig.profile; not a cell setting: it changes no result)
    profile: bool = False
    # keys of the cells whose compilation a throwaway worker ran first (run_matrix --warm-compile,
    # harness/warm.py): their graphs come from inductor's on-disk cache, and their rows say so
    warmed: set[str] = field(default_factory=set)
    # set when a cell left the device unusable (a sticky CUDA error: `release`); the grid stops after its row
    broken: str | None = None
    _tasks: dict[str, tasks.Task] = field(default_factory=dict)
    _data: dict[str, TaskData] = field(default_factory=dict)
    _corpora: dict[str, pt.Corpus] = field(default_factory=dict)
    _plans: dict[str, "CellPlan"] = field(default_factory=dict)

    def task(self, name: str, options: dict[str, Any]) -> tasks.Task:
        """The task built once per (name, options): option values are checked when it is built."""
        key = json.dumps([name, options], sort_keys=True)
        if key not in self._tasks:
            self._tasks[key] = tasks.build(name, **options)
        return self._tasks[key]

    def plan(self, cell: Cell) -> "CellPlan":
        """The cell's plan, built on first use (the pre-flight check) and reused by `run_cell`."""
        key = cell.key()
        if key not in self._plans:
            self._plans[key] = CellPlan.build(cell, self)
        return self._plans[key]

    def task_data(self, task: tasks.Task, cell: Cell) -> TaskData:
        """Prepared once per (task options, preset) and shared by every cell of the grid."""
        preset = get_preset(cell.preset)
        key = json.dumps([cell.task, cell.task_opts, preset.vocab_size, preset.max_len], sort_keys=True)
        if key not in self._data:
            ctx = PrepareContext(self.data_dir, self.cache_dir, preset.vocab_size, preset.max_len, self.log)
            self._data[key] = task.prepare(ctx)
        return self._data[key]

    def pretrain_corpus(self, cell: Cell, data: TaskData) -> pt.Corpus | None:
        """The cell's packed pretraining text (tokens cached on disk), shared by the cells that ask for it."""
        if not cell.pretrain:
            return None
        spec = pt.PretrainSpec(**cell.pretrain)
        key = json.dumps([cell.task, cell.task_opts, cell.preset, spec.sources, spec.max_chars], sort_keys=True)
        if key not in self._corpora:
            self._corpora[key] = pt.prepare(spec, data, self.cache_dir, get_preset(cell.preset).max_len, self.log)
        return self._corpora[key]


def base_row(cell: Cell, ctx: RunContext) -> dict[str, Any]:
    return new_row(
        cell.key(), str(ctx.device), mixer=cell.mixer, objective=cell.objective, grid=ctx.grid, task=cell.task,
        protocol=None, seed=cell.seed, preset=cell.preset, budget=cell.budget, norm=cell.norm,
        mixer_opts=cell.mixer_opts, objective_opts=cell.objective_opts, task_opts=cell.task_opts, params=None,
        tokens_seen=None, metrics={}, loss_curve=[], world_size=ctx.dist.world_size,
        **({"sweep": cell.sweep} if cell.sweep else {}), **({"pretrain": cell.pretrain} if cell.pretrain else {}),
    )


@dataclass
class CellPlan:
    """What one cell trains with, built once per cell (`RunContext.plan`). Building it prepares the
    task's data (shared by the grid's cells), packs its pretraining corpus, sizes its model and checks
    its budget (and its learning-rate sweep's short budget) against a batch, so a bad cell stops the
    grid before it starts, in one line."""

    task: tasks.Task
    data: TaskData
    preset: Preset  # the task's model preset at the cell's width
    loss_impl: str  # harness.loss path resolved for the context's device
    objective: objectives.Objective
    model_cfg: LMConfig  # matched to the preset's parameter target
    meter: BudgetMeter  # the cell's budget, parsed and checked to cover one batch
    corpus: pt.Corpus | None  # packed pretraining text when the cell pretrains
    short_meter: BudgetMeter | None = None  # the lr sweep's short-run budget (checked too), when it sweeps

    @classmethod
    def build(cls, cell: Cell, ctx: RunContext) -> "CellPlan":
        task = ctx.task(cell.task, cell.task_opts)
        data = ctx.task_data(task, cell)
        preset = task.model_preset(get_preset(cell.preset), data.vocab_size, cell.d_model)
        meter = BudgetMeter(Budget.parse(cell.budget), ctx.device).check(data.train, preset.batch_size,
                                                                          preset.batch_tokens)
        short = None
        if cell.lr_sweep:  # each short run must cover a batch too
            short = BudgetMeter(lr_sweep.short_budget(meter.budget, cell.lr_sweep["frac"]), ctx.device)
            short.check(data.train, preset.batch_size, preset.batch_tokens)
        corpus = ctx.pretrain_corpus(cell, data)  # a missing or empty corpus stops here; tokens cached once
        try:
            loss_impl = "chunked" if ctx.remote else resolve_impl(cell.loss, ctx.device)
            objective = objectives.build(cell.objective, data.special, loss_impl, **cell.objective_opts)
            task.check_objective(objective)
            cfg = matched_config(preset, cell.mixer, objective.causal, data.vocab_size, cell.mixer_opts, cell.norm)
        except Exception as e:
            raise ValueError(f"{cell.label()}: {error_text(e)}") from None
        return cls(task, data, preset, loss_impl, objective, cfg, meter, corpus, short)


def check_cell(cell: Cell, ctx: RunContext) -> CellPlan:
    """Build the cell's plan and its model once on the meta device (no memory, no time), so a bad
    option value (`--mixer-opt attention.head_dim=-3`) stops the grid before it starts, in one line,
    instead of failing when its cell comes up after others trained."""
    plan = ctx.plan(cell)
    try:
        on_meta(plan.model_cfg)
    except Exception as e:
        raise ValueError(f"{cell.label()}: {error_text(e)}") from None
    return plan


def run_cell(cell: Cell, ctx: RunContext, warm_only: bool = False) -> dict[str, Any] | None:
    """The cell's results row; None on the non-zero ranks of a data-parallel cell (rank 0 evaluates).

    `warm_only`: the same path up to each training stage's warm-up steps (compilation), then stop: no
    learning-rate sweep (its short runs compile the same graphs), no dev check, no evaluation. Its only
    product is inductor's on-disk cache (harness/warm.py); the row it returns says ok or why not, and
    is written nowhere."""
    row = base_row(cell, ctx)
    t_start = time.perf_counter()
    timing = row["timing"] = {}  # wall seconds per phase: where a cell's time went
    model = None
    try:
        ctx.phase("prepare", 0.0)
        plan = ctx.plan(cell)  # built by the pre-flight check (or here, in a worker)
        data, preset, objective = plan.data, plan.preset, plan.objective
        row["protocol"] = data.protocol
        row.update(plan.task.declarations(data.protocol))  # task_metrics, protocol_text: what reports show
        row["data"] = data.info
        row["model"] = {**dataclasses.asdict(plan.model_cfg), "target_params": preset.target_params}
        row["objective_info"] = objective.describe()
        row["mixer_options"] = mixers.options_of(cell.mixer) | cell.mixer_opts

        compiled = cell.compiles(ctx.device)
        if compiled:
            fresh_compiler()
        clear_recompile_limit_hits()
        tf32 = enable_tf32(ctx.device)
        sdpa_cudnn = allow_cudnn_attention(ctx.device, cell.sdpa_cudnn)
        tcfg = _train_config(cell, ctx, preset, compiled)
        tcfg.warm_only = warm_only
        if cell.lr_sweep and not warm_only:  # short runs at each rate, the best by dev loss trains below (cost kept apart)
            row["lr_sweep"] = _lr_sweep(cell, ctx, plan, tcfg)
            tcfg.lr = row["lr_sweep"]["best_lr"]
        # built after the sweep (each short run seeds and builds its own): on a GPU the full run's model and
        # the short runs' are never allocated together, so a short run cannot run out of memory for it
        torch.manual_seed(cell.seed)
        model = LM(plan.model_cfg).to(ctx.device)
        row["params"] = count_params(model)
        t_train = time.perf_counter()
        timing["prepare_s"] = round(t_train - t_start, 2)
        corpus = plan.corpus
        # a warm-up repeats the cell's first training run, whose graphs the cell compiles first: with a sweep
        # that is a short run, on the task alone (the sweep does not pretrain), and the full run reuses them
        pretrain = (corpus, cell.pretrain["frac"]) if corpus and not (warm_only and cell.lr_sweep) else None
        res = train(model, objective, data.train.to(ctx.device), data.dev.to(ctx.device), plan.meter, tcfg,
                    ctx.device, dist=ctx.dist, pretrain=pretrain)
        # training wall time (first step and checkpoint copies included) and the dev checks beside it
        timing["train_s"] = round(time.perf_counter() - t_train - res.dev_seconds, 2)
        timing["dev_s"] = round(res.dev_seconds, 2)
        if warm_only:
            row["status"] = "ok"
            return row
        if not ctx.dist.is_main:  # [DDP] evaluation and the row are rank 0's
            return None
        row["tokens_seen"] = res.tokens_seen
        row["budget_info"] = res.budget_info
        row["loss_curve"] = res.loss_curve
        row["train"] = _train_record(res, tcfg, compiled, tf32, warmed=cell.key() in ctx.warmed,
                                      sdpa_cudnn=sdpa_cudnn)
        res.stages[-1]["sources"] = [data.protocol]  # the task stage trains on the protocol's training split
        if corpus is not None:
            row["pretrain"] = {**cell.pretrain, "corpus": corpus.info}

        t_eval = time.perf_counter()
        reset_peak_memory(ctx.device)  # the evaluation's own peak (decoding's caches, a prefill's scan states)
        answers = lambda n, m: ctx.phase(f"evaluate answers {n}/{m}", TRAIN_SHARE + 0.3 * n / max(m, 1))  # noqa: E731
        metrics = plan.task.evaluate(model, objective, data, ctx.device, tcfg.eval_batch_size, progress=answers)
        samples = metrics.pop("samples", None)
        per_question = metrics.pop("per_question", None)  # {"id": [...], metric: [...]}: paired bootstrap in reports
        bound = lambda n, m: ctx.phase(f"evaluate {objective.ppl_key} {n}/{m}", 0.8 + 0.2 * n / max(m, 1))  # noqa: E731
        nll, nll_se, nll_rows = eval_nll(model, objective, data.eval.to(ctx.device), tcfg.eval_batch_size,
                                         ctx.device, progress=bound)
        if nll_rows is not None and data.eval_ids is not None:
            per_question = with_nll(per_question, data.eval_ids, nll_rows, data.eval.target_lengths)
        metrics[objective.ppl_key] = math.exp(min(nll, 50.0))
        if nll_se is not None:  # a Monte Carlo bound: how far another draw of its masks would move log(ppl)
            metrics["nll_mc_se"] = nll_se
        metrics["tokens_per_s"] = res.tokens_per_s
        metrics["peak_mem_bytes"] = res.peak_mem_bytes  # None on CPU: never a made-up number
        metrics["eval_peak_mem_bytes"] = peak_memory(ctx.device)  # answers, perplexity, latency (None: CPU)
        metrics["state_T"], metrics["state_floats"] = _state_floats(model, data)
        mean_len = float(data.train.lengths.mean()) if len(data.train) else 0.0
        metrics.update(mfu(model, res.tokens_per_s, mean_len, ctx.device, row["device"]))
        for st in res.stages if corpus is not None else ():  # the pretraining stage's MFU, at its packed length
            if st["stage"] == "pretrain":
                st["mfu"] = mfu(model, st["tokens_per_s"] or math.nan, corpus.info["row_len"], ctx.device,
                                row["device"])["mfu"]
        row["metrics"] = metrics
        row["samples"] = samples
        if per_question:
            row["per_question"] = per_question
        row["backend"] = {"mixer": model.backends(), "loss": plan.loss_impl}
        timing["eval_s"] = round(time.perf_counter() - t_eval, 2)
        row["status"] = "ok"
    except Exception as e:  # one cell's failure (OOM, NaN, budget) must not kill the grid
        if ctx.dist.active and not ddp.agreed_failure(e):
            raise  # [DDP] one rank's failure: stop the job (torchrun ends every rank); a rerun resumes
        row["error"] = error_text(e)
        row["traceback"] = traceback.format_exc(limit=-6)[-2000:]  # the innermost frames: where it failed
        row["error"] = _oom_error(e) or row["error"]  # reports count a cell's OOMs by this label
    finally:
        row["wall_s"] = round(time.perf_counter() - t_start, 2)
        del model
        broken = release(ctx.device)
        if broken:  # the GPU cannot run another cell in this process: this row says why, the grid stops
            row["status"], row["error"] = "failed", row.get("error") or broken
            ctx.broken = f"{cell.label()}: {broken}"
    return row if ctx.dist.is_main else None  # [DDP] one row per cell, from rank 0


def _oom_error(e: BaseException) -> str | None:
    """The row's error for an out-of-memory error, also one inside dynamo's BackendCompilerFailed; None for
    any other error. A function, not a local in run_cell: a local holding the exception past its `except`
    keeps its traceback's frames (the failed run's model, optimizer and activations) alive through the
    cell's cleanup, whose release() then frees nothing of it on the GPU."""
    oom = oom_cause(e)
    return None if oom is None else error_text(oom, 300, "OutOfMemoryError")


def release(device: torch.device) -> str | None:
    """Free what a finished (or failed) cell left on the device, before the next cell's peak-memory
    window opens. Returns why the device cannot be used any more, or None. A device-side assert or an
    illegal address is sticky: the CUDA context is lost, every later call in this process fails (the
    cache release itself raises), and the next cells would fail for this cell's error. The sync makes an
    error still queued show now, in the cell that caused it."""
    gc.collect()
    if device.type != "cuda":
        return None
    try:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001 (whatever CUDA raised: the grid must stop with the row written)
        return error_text(e)
    return None


def _train_config(cell: Cell, ctx: RunContext, preset: Preset, compiled: bool) -> TrainConfig:
    tcfg = TrainConfig(batch_size=preset.batch_size, batch_tokens=preset.batch_tokens, lr=cell.lr or preset.lr,
                       seed=cell.seed, compile=compiled, compile_mode=cell.compile_mode, compile_scope=cell.compile_scope,
                       pad_to=PAD_TO_GRAPHS if compiled and cell.compile_mode in CUDAGRAPH_MODES else PAD_TO,
                       # a time budget's last step overshoots (f > 1): the train phase ends at TRAIN_SHARE, where
                       # the evaluation starts, not past it (a progress fraction never goes back)
                       report=lambda f: f is None or ctx.phase(f"train {min(int(100 * f), 100)}%",
                                                               TRAIN_SHARE * min(f, 1.0)))
    if cell.dev_tokens is not None:
        tcfg.dev_tokens = cell.dev_tokens
    if cell.dev_checks is not None:
        tcfg.eval_points = cell.dev_checks
    tcfg.profile = ctx.profile
    return tcfg


def _train_record(res: TrainResult, tcfg: TrainConfig, compiled: bool, tf32: bool,
                  warmed: bool = False, sdpa_cudnn: bool | None = None) -> dict[str, Any]:
    """The row's `train` record: how the cell trained. `compile_warmed` (compiled cells): a throwaway
    worker compiled the cell's graphs first (--warm-compile), so its warm-up steps read inductor's cache."""
    return {"steps": res.steps, "seconds": res.train_seconds, "epochs": res.epochs,
            "best_fraction": res.best_fraction, "best_dev_loss": res.best_dev_loss,
            "compile": compiled and res.compile_error is None, "compile_error": res.compile_error, "tf32": tf32,
            "sdpa_cudnn": sdpa_cudnn,  # None: not on CUDA, no choice made
            "warm_seconds": round(res.warm_seconds, 2), "warm_steps": res.warm_steps, "warm_tokens": res.warm_tokens,
            # a time budget's seconds are `seconds` (the clock) + this: the warm-up steps' training, charged
            "warm_charged_seconds": round(res.warm_charged_seconds, 3),
            "start_mem_bytes": res.start_mem_bytes,
            # compile_scope: what was compiled (under DDP the whole model, whatever was asked); the setting
            # (compile_scope_asked) is what names a variant in the reports
            **({"compile_mode": tcfg.compile_mode, "compile_scope": res.compile_scope,
                "compile_scope_asked": tcfg.compile_scope,
                "late_compiles": res.late_compiles, "compile_warmed": warmed,
                # graph breaks resumed where they happen (None: a torch without the switch); harness/compiling.py
                "nested_graph_breaks": graph_breaks_nested(),
                # the Triton scans as custom operators inside the graphs (else a graph break): mixers/_ops.py
                "scan_ops": mixers._ops.ENABLED} if compiled else {}),
            # the cell's runs (sweep included), compiled model or compiled loss path alike
            "recompile_limit_hits": recompile_limit_hits(),
            "lr": tcfg.lr, "pad_to": tcfg.pad_to, "stages": res.stages, "padding_frac": res.padding_frac,
            "dev_tokens": res.dev_tokens, "dev_tokens_bound": tcfg.dev_tokens, "dev_checks": len(res.loss_curve),
            "dev_checks_bound": tcfg.eval_points,  # the setting (--dev-checks); at most one check a step
            **({"batch_tokens": tcfg.batch_tokens} if tcfg.batch_tokens else {"batch_size": tcfg.batch_size})}


def _lr_sweep(cell: Cell, ctx: RunContext, plan: CellPlan, tcfg: TrainConfig) -> dict:
    def fresh_model() -> LM:  # the same init as the full run
        torch.manual_seed(cell.seed)
        return LM(plan.model_cfg).to(ctx.device)

    # a time budget's short runs depend on the GPU: an H100's trials are never reused on an H200
    gpu = gpu_slug(ctx.device)
    where = ctx.cache_dir / "lr_sweep" / f"{cell.key()}-{ctx.device.type}{'-' + gpu if gpu else ''}.json"
    cache = None if ctx.dist.active else lr_sweep.TrialCache(where)
    data = plan.data
    checks = lr_sweep.short_checks(tcfg.eval_points)  # >1 for a cell of many dev checks: judged by the best
    trial = lr_sweep.train_trial(fresh_model, plan.objective, data.train.to(ctx.device), data.dev.to(ctx.device),
                                 tcfg, ctx.device, dist=ctx.dist, eval_points=checks)
    rates = cell.lr_sweep["rates"]  # "auto": around this cell's rate (the preset's, or the task's lr option)
    rates = lr_sweep.auto_rates(tcfg.lr) if rates == "auto" else rates

    def checked(lr: float, short: Budget) -> lr_sweep.Trial:  # the short budget's meter, checked in the plan
        return trial(lr, plan.short_meter if plan.short_meter and plan.short_meter.budget == short else short)

    return lr_sweep.run_sweep(rates, cell.lr_sweep["frac"], plan.meter.budget, checked, cache, checks)


TRAIN_SHARE = 0.5  # of a cell's progress bar: training, then the evaluation's answers and perplexity


def _state_floats(model: LM, data: TaskData) -> tuple[int, int | None]:
    """(T, state floats at T): the history-state size of the whole model (all layers, one sequence) at
    the mean evaluation sequence length T (prompt + answer, in tokens); None if a mixer does not report it."""
    T = int(round(float(data.eval.lengths.mean()))) if len(data.eval) else 0
    try:
        return T, model.state_floats(T)
    except NotImplementedError:
        return T, None
