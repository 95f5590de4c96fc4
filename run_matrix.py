#!/usr/bin/env python
"""Run the benchmark grid: task x mixers x objectives x seeds, each cell under the same budget at
matched parameter count, one results row per cell, then the report.

    python run_matrix.py --data-dir ../shared/data/jsquad-v1.3 --quick    # every cell, CPU minutes
    python run_matrix.py --list

Resumable: cells whose key already has an "ok" row in results/<grid>.jsonl are skipped, so rerunning
the same command after a kill finishes only what is missing. Failed cells are retried.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import mixers
import tasks
from harness import distributed, executors, lr_sweep, objectives
from harness.budget import Budget, BudgetError, adopt_speed, recorded_speed
from harness.cell import Cell, RunContext, check_cell
from harness.loss import LOSS_IMPLS
from harness.compiling import COMPILE_MODES, COMPILE_SCOPES, check_torch
from harness.pretrain import DEFAULT_FRAC, PretrainSpec
from harness.model import NORMS
from core.env import device_name, gpu_slug
from core.presets import PRESETS, get_preset
from harness.references import write_references
from core.registry import UnknownNameError, parse_kv, scoped_opts
from core.results import ResultsFileError, append_row, done_keys, read_rows, write_expected
from core.schema import declared_metrics
from tasks import DataError, PrepareContext

if TYPE_CHECKING:  # for annotations only
    import torch

DEFAULT_BUDGET = "tokens=2000000"
# --lr default: every cell picks its own rate by a short sweep (docs/learning-rate.md: measured);
# $WAVEBENCH_LR overrides it (the tests set "preset": they test other things, at less cost)
DEFAULT_LR = "auto"
# --quick: the smoke run of every cell in CPU minutes (explicit flags still win). It shows the harness
# working end to end, not which mixer is better: tiny models, a tiny budget, few scored questions.
# It trains at the preset's rate (no sweep: the sweep would cost 1.5x the training again).
QUICK = {"preset": "tiny", "budget": "tokens=20000", "dev_tokens": 4096, "lr": "preset",
         "task_opts": {"eval_limit": "100"}}
# --quick's 4,096 dev tokens (~30 JSQuAD questions) suit its 20,000-token budget; on a budget from here up
# they rank checkpoints noisily (docs/diffusion-noise.md: on 9M-27M-token cells they strayed 0.14-0.20 nats
# from the whole dev slice's ranking under the old mask seeding and picked wrong in 2 of 4 cells, 0.09-0.24
# with no wrong pick in the 4 rerun under the per-batch seeding; the default 32,768 tokens 0.04-0.12), while
# the larger sample costs ~0.9 s more per dev check (tiny preset, one CPU thread): a notice, not a
# changed default (that would change the cell keys of every committed --quick grid)
QUICK_LONG = {"tokens": 1_000_000, "seconds": 60, "a100_seconds": 60}


def _names(arg: str, registry, what: str) -> list[str]:
    if arg in ("all", ""):
        return registry.names()
    out = [s.strip() for s in arg.split(",") if s.strip()]
    for n in out:
        registry.get(n)  # raises UnknownNameError with the registered names
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print tasks, mixers, objectives, presets and their options")
    # the registries' names, so a mixer (objective, task) file added later is listed with no edit here
    p.add_argument("--task", default="jsquad", help=f"one of: {', '.join(tasks.names())} (default: jsquad)")
    p.add_argument("--mixers", default="all", help=f"comma-separated mixer names ({', '.join(mixers.names())}), "
                                                   "or 'all'")
    p.add_argument("--objectives", default="all",
                   help=f"comma-separated objective names ({', '.join(objectives.names())}), or 'all'")
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="model size (default: small)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run in CPU minutes: --preset {QUICK['preset']} --budget {QUICK['budget']} "
                        f"--dev-tokens {QUICK['dev_tokens']} --task-opt eval_limit={QUICK['task_opts']['eval_limit']} "
                        "(explicit flags win)")
    p.add_argument("--dev-tokens", type=int, default=None,
                   help="tokens of the fixed dev sample each checkpoint-selection check scores "
                        "(default: harness.train.TrainConfig.dev_tokens; 0: the whole dev slice)")
    p.add_argument("--dev-checks", type=int, default=None,
                   help="checkpoint-selection dev checks, evenly spaced over the budget (default: "
                        "harness.train.TrainConfig.eval_points, 10); more find an early optimum when a long budget "
                        "overfits (the report says when a cell's best checkpoint is its first check)")
    p.add_argument("--budget", default=None,
                   help=f"tokens=N | seconds=S | a100_seconds=S (per cell; default: the task's, else {DEFAULT_BUDGET})")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--lr", default=None,
                   help="learning rate: a number, 'preset' (the preset's), or 'auto' (= --lr-sweep auto; "
                        f"default: $WAVEBENCH_LR, else 'preset' with --quick, else {DEFAULT_LR})")
    p.add_argument("--lr-sweep", default=None, metavar="RATES|auto",
                   help="per cell, short runs at each rate (e.g. 3e-4,1e-3,3e-3), the best by dev loss trains "
                        "under the full budget; 'auto': the preset's rate and its log-grid neighbours")
    p.add_argument("--lr-sweep-frac", type=float, default=lr_sweep.DEFAULT_FRAC,
                   help="each short run's budget, as a fraction of the cell's (default: %(default)s)")
    p.add_argument("--norm", default="pre", choices=NORMS, help="norm placement in every block")
    p.add_argument("--data-dir", default=os.environ.get("WAVEBENCH_DATA_DIR"),
                   help="directory with JGLUE JSON files (default: $WAVEBENCH_DATA_DIR, else download)")
    p.add_argument("--out", default=".", help="root for results/ and reports/ (default: here)")
    p.add_argument("--grid", default=None, help="grid name (default: <protocol>[_<task tag>][_<pretraining>]_<preset>_<budget>)")
    p.add_argument("--cache-dir", default=os.environ.get("WAVEBENCH_CACHE", str(Path.home() / ".cache" / "wavebench")))
    p.add_argument("--mixer-opt", action="append", metavar="[MIXER.]KEY=VALUE", help="mixer option (repeatable)")
    p.add_argument("--objective-opt", action="append", metavar="[OBJECTIVE.]KEY=VALUE", help="objective option")
    p.add_argument("--task-opt", action="append", metavar="KEY=VALUE", help="task option, e.g. eval_limit=200")
    p.add_argument("--pretrain", action="append", metavar="SOURCE",
                   help="pretrain on SOURCE first, inside the budget (repeatable): passages | dir:PATH | hf:NAME[:CONFIG]")
    p.add_argument("--pretrain-frac", type=float, default=DEFAULT_FRAC,
                   help=f"share of the budget spent pretraining (default {DEFAULT_FRAC})")
    p.add_argument("--pretrain-max-chars", type=int, default=0,
                   help="take at most this many characters from each pretraining source (0: all)")
    p.add_argument("--loss", default="auto", choices=LOSS_IMPLS, help="output-loss implementation")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training (default on CUDA; this forces it on CPU too)")
    p.add_argument("--no-compile", action="store_true", help="train eagerly, also on CUDA")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode (implies compile): reduce-overhead replays CUDA graphs, one per batch "
                        "shape, with batch lengths rounded up to a multiple of 64 (default: default)")
    p.add_argument("--compile-scope", default="blocks", choices=COMPILE_SCOPES,
                   help="what torch.compile compiles: each block, one graph that every block reuses (quick to "
                        "compile), or the whole model (implies compile; default: blocks)")
    p.add_argument("--sdpa-cudnn", action="store_true",
                   help="let attention's SDPA use cuDNN's kernel on CUDA (off: cuDNN plans each new shape anew, "
                        "and batch lengths vary)")
    p.add_argument("--profile-step", action="store_true",
                   help="take one step of each training stage under torch.profiler (after its warm-up, off the "
                        "budget clock): the row's train.stages[i].profile says how busy the device was and which "
                        "kernels took its time (harness/step_profile.py)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--sweep", action="store_true",
                   help="every cell at each (sequence length x model width) below: the Zoology recall curves (mqar)")
    p.add_argument("--sweep-lengths", default="64,128,256,512,1024", help="--sweep: task seq_len values")
    p.add_argument("--sweep-widths", default="32,64,128", help="--sweep: model d_model values")
    p.add_argument("--report-only", action="store_true", help="rebuild reports from results/ and exit")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    executors.add_arguments(p)
    return p


def run_order(seeds: list[int], objectives: list[str], mixers: list[str]) -> list[tuple[int, str, str]]:
    """(seed, objective, mixer) in the order the grid runs its cells: seed by seed, objective by objective,
    the mixers rotated one place further in each seed (seed i starts at mixer i).

    Why: cells run one after another, and a cell's speed can depend on when it runs (a GPU heating up and
    throttling, what the earlier cells left in the process: allocator, caches). One fixed order in every
    seed would put that drift on the same mixer each time, and averaging seeds would keep it as a
    difference between mixers; rotated, each mixer runs at a new place in each seed (with as many seeds
    as mixers, at every place once). The order changes no cell's key, so a resumed grid is unaffected."""
    n = len(mixers)
    return [(s, o, mixers[(i + j) % n]) for i, s in enumerate(seeds) for o in objectives for j in range(n)]


def sweep_cells(cells: list[Cell], task: str, lengths: list[int], widths: list[int]) -> list[Cell]:
    """Each cell at every (seq_len, d_model) point: an ordinary cell (its own resume key) whose row
    carries `sweep = {"seq_len": L, "d_model": D}` for the accuracy-vs-length/width curves."""
    if "seq_len" not in tasks.options_of(task):
        raise ValueError(f"--sweep varies the task option seq_len, which task {task!r} does not have")
    if not lengths or not widths:
        raise ValueError("--sweep needs at least one length (--sweep-lengths) and one width (--sweep-widths)")
    return [dataclasses.replace(c, task_opts={**c.task_opts, "seq_len": L}, d_model=D, sweep={"seq_len": L, "d_model": D})
            for c in cells for L in lengths for D in widths]


def _ints(arg: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in arg.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {arg!r}") from None


def lr_choice(args: argparse.Namespace) -> tuple[float, dict | None]:
    """(fixed rate or 0 for the preset's, the sweep spec or None) from --lr / --lr-sweep."""
    preset_lr = get_preset(args.preset).lr
    text = args.lr_sweep or (args.lr if args.lr == "auto" else None)
    if text:
        if args.lr not in ("auto", "preset"):
            raise ValueError(f"--lr {args.lr} fixes the rate; it cannot be combined with --lr-sweep")
        lr_sweep.short_budget(Budget("tokens", 1.0), args.lr_sweep_frac)  # validates the fraction
        rates = "auto" if text.strip() == "auto" else lr_sweep.parse_rates(text, preset_lr)  # auto: resolved per cell
        return 0.0, {"rates": rates, "frac": args.lr_sweep_frac}
    if args.lr == "preset":
        return 0.0, None
    try:
        lr = float(args.lr)
    except ValueError:
        raise ValueError(f"--lr takes a number, 'preset' or 'auto', got {args.lr!r}") from None
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr!r}")
    return lr, None


def apply_defaults(args: argparse.Namespace) -> list[str]:
    """Fill what was not given: --quick's settings under the explicit flags, then the CLI defaults.
    Returns notices for the user (a combination that runs, but not as well as it could)."""
    notes = []
    if args.quick:  # the quick preset under whatever was given explicitly
        if args.dev_tokens is None and args.budget:
            budget = Budget.parse(args.budget)
            if budget.amount >= QUICK_LONG[budget.kind]:
                notes.append(f"--quick scores dev checks on {QUICK['dev_tokens']:,} tokens (~30 JSQuAD questions), "
                             f"chosen for its {QUICK['budget']} budget; with --budget {budget} checkpoints are "
                             "picked on that small sample: add --dev-tokens 32768 (docs/diffusion-noise.md)")
        args.preset = args.preset or QUICK["preset"]
        args.budget = args.budget or QUICK["budget"]
        args.dev_tokens = QUICK["dev_tokens"] if args.dev_tokens is None else args.dev_tokens
        args.lr = args.lr or os.environ.get("WAVEBENCH_LR") or QUICK["lr"]
        given = parse_kv(args.task_opt, "--task-opt")
        args.task_opt = [f"{k}={v}" for k, v in QUICK["task_opts"].items() if k in tasks.options_of(args.task)
                         and k not in given] + list(args.task_opt or [])
    args.preset = args.preset or "small"
    args.lr = args.lr or os.environ.get("WAVEBENCH_LR") or DEFAULT_LR
    if args.dev_tokens is not None and args.dev_tokens < 0:
        raise ValueError(f"--dev-tokens must be >= 0 (0: the whole dev slice); got {args.dev_tokens}")
    if args.dev_checks is not None and args.dev_checks < 1:
        raise ValueError(f"--dev-checks must be >= 1 (the last is at the end of the budget); got {args.dev_checks}")
    return notes


def finished_line(cell: Cell, row: dict) -> str:
    """What the grid prints when a cell ends: its metrics, size and seconds, or its error."""
    if row["status"] != "ok":
        return f"  FAILED {cell.label()}: {row['error']}"
    t = row.get("timing") or {}
    secs = f" train {t.get('train_s', 0):.0f}s eval {t.get('dev_s', 0) + t.get('eval_s', 0):.0f}s" if t else ""
    sw = row.get("lr_sweep")
    picked = f" lr={sw['best_lr']:g} (sweep {sw['tokens']:,} tok, {sw['seconds']:.0f} s)" if sw else ""
    # passes over each stage's text (with pretraining: a small corpus may be seen hundreds of times)
    stages = (row.get("train") or {}).get("stages") or []
    passes = "".join(f" {s['stage']} {s['epochs']:g} epochs" for s in stages
                     if len(stages) > 1 and isinstance(s.get("epochs"), (int, float)))
    return f"  ok     {cell.label()}: {summary(row)} params={row['params']:,}{secs}{picked}{passes}"


def summary(row: dict) -> str:
    """The one-line metrics of a finished cell: the metrics its task declared (`row["task_metrics"]`,
    in their own format), then perplexity and speed."""
    m = row["metrics"]
    head = "".join(f"{d.key}={d.format(m[d.key])} " for d in declared_metrics([row])
                   if isinstance(m.get(d.key), (int, float)))
    ppl_name = "ppl" if "ppl" in m else "ppl_bound"
    return f"{head}{ppl_name}={m.get(ppl_name, float('nan')):.2f} tok/s={m['tokens_per_s']:.0f}"


def print_list() -> None:
    def opts(d: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in d.items()) or "(no options)"

    print("tasks:")
    for n in tasks.names():
        cls = tasks.get(n)
        extra = ", ".join([f"budget {cls.default_budget}"] * bool(cls.default_budget)
                          + [f"objective defaults {opts(cls.objective_defaults)}"] * bool(cls.objective_defaults))
        print(f"  {n:20s} {f'[{extra}] ' if extra else ''}{opts(tasks.options_of(n))}")
    print("mixers:")
    for n in mixers.names():
        print(f"  {n:20s} {opts(mixers.options_of(n))}")
    print("objectives:")
    for n in objectives.names():
        cls = objectives.get(n)
        print(f"  {n:20s} [{'causal' if cls.causal else 'bidirectional'}, reports {cls.ppl_key}] {opts(objectives.options_of(n))}")
    print("presets:")
    for p in PRESETS.values():
        print(f"  {p.name:20s} d_model={p.d_model} layers={p.n_layers} vocab={p.vocab_size} "
              f"target_params={p.target_params:,} max_len={p.max_len} batch_tokens={p.batch_tokens} "
              f"(MQAR: batch={p.batch_size} sequences) lr={p.lr}")
    print(f"norms:   {', '.join(NORMS)}  (--norm)")
    print(f"losses:  {', '.join(LOSS_IMPLS)}  (--loss)")
    print("budgets: tokens=N | seconds=S | a100_seconds=S  (--budget)")


def write_report(out: Path, grid: str | None) -> None:
    import reports  # imported here: plotting libraries load only when a report is written

    for path in reports.write_reports(out / "results", out / "reports", grid):
        print(f"report: {path}")


def device_slug(device: torch.device, dist=None) -> str:
    """'' on a CPU; '_h200' on an NVIDIA H200 ('_h200x8' for 8 data-parallel ranks): a GPU grid's default name
    names its device (DESIGN.md), so a GPU run never takes a committed CPU grid's rows (same cells, same
    keys) as its own, and grids from two GPUs never mix their speeds."""
    slug = gpu_slug(device)
    if not slug:
        return ""
    return f"_{slug}" + (f"x{dist.world_size}" if dist is not None and dist.active else "")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.compile and args.no_compile:
        raise ValueError("--compile and --no-compile contradict each other; give one")
    if args.no_compile and args.compile_mode != "default":
        raise ValueError(f"--compile-mode {args.compile_mode} compiles, and --no-compile says not to; give one")
    if args.no_compile and args.compile_scope != "blocks":
        raise ValueError(f"--compile-scope {args.compile_scope} compiles, and --no-compile says not to; give one")
    if args.list:
        print_list()
        return 0
    out = Path(args.out)
    if args.report_only:
        write_report(out, args.grid)
        return 0

    notes = apply_defaults(args)
    mixer_names = _names(args.mixers, mixers.REGISTRY, "mixer")
    objective_names = _names(args.objectives, objectives.REGISTRY, "objective")
    task_cls = tasks.get(args.task)
    budget = Budget.parse(args.budget or task_cls.default_budget or DEFAULT_BUDGET)
    get_preset(args.preset)
    seeds = _ints(args.seeds, "--seeds")
    if not seeds:
        raise ValueError("--seeds needs at least one integer, e.g. --seeds 0,1,2")
    mixer_opts = scoped_opts(args.mixer_opt, "--mixer-opt", mixer_names, mixers.REGISTRY)
    objective_opts = scoped_opts(args.objective_opt, "--objective-opt", objective_names, objectives.REGISTRY)
    objective_opts = {o: objectives.with_defaults(task_cls.objective_defaults, o, objective_opts[o]) for o in objective_names}
    task_opts = parse_kv(args.task_opt, "--task-opt")
    pretrain = dataclasses.asdict(PretrainSpec(args.pretrain, args.pretrain_frac, args.pretrain_max_chars)) \
        if args.pretrain else None
    dist, device = distributed.init(args.device)  # under torchrun: this rank's device, process group up
    for note in notes if dist.is_main else ():
        print(f"note: {note}", file=sys.stderr)
    executors.check_warm_compile(args, dist, device)

    lr, sweep_lr = lr_choice(args)
    cells = [
        Cell(task=args.task, mixer=m, objective=o, preset=args.preset, budget=str(budget), seed=s, norm=args.norm,
             mixer_opts=mixer_opts[m], objective_opts=objective_opts[o], task_opts=task_opts, loss=args.loss,
             compile=args.compile, no_compile=args.no_compile, compile_mode=args.compile_mode,
             compile_scope=args.compile_scope, sdpa_cudnn=args.sdpa_cudnn, pretrain=pretrain,
             dev_tokens=args.dev_tokens, dev_checks=args.dev_checks, lr=lr, lr_sweep=sweep_lr)
        for s, o, m in run_order(seeds, objective_names, mixer_names)
    ]
    if any(c.compiles(device) for c in cells):  # (CUDA compiles by default)
        check_torch()
    if args.sweep:
        cells = sweep_cells(cells, args.task, _ints(args.sweep_lengths, "--sweep-lengths"),
                            _ints(args.sweep_widths, "--sweep-widths"))
    ctx = RunContext(device=device, data_dir=Path(args.data_dir) if args.data_dir else None,
                     cache_dir=Path(args.cache_dir), grid="", progress=not args.no_progress and dist.is_main,
                     log=print if dist.is_main else (lambda _msg: None), dist=dist,
                     remote=args.executor != "local", profile=args.profile_step)
    task = ctx.task(args.task, task_opts)  # a bad option value stops here, in one line
    # every cell's plan (data, pretraining corpus, budget checked against a batch, the model on the meta
    # device) before any cell runs: a bad cell stops the grid here, in one line; run_cell reuses the plans
    with dist.local_main_first():  # [DDP] one rank per node prepares (tokenizer cache), the others reuse it
        plans = [check_cell(c, ctx) for c in cells]
    data = plans[0].data
    dist.check_same(distributed.data_fingerprint(data.train), "the tokenised training data")
    if args.sweep:  # points differ in protocol: name the grid by the task and the options held fixed
        name = f"{args.task}-sweep" + "".join(f"-{k}{v}" for k, v in sorted(task_opts.items()) if k != "seq_len")
    else:
        tag = task.grid_tag()  # e.g. "answers-span": rows whose scores mean something else get their own grid
        name = data.protocol + (f"_{tag}" if tag else "") + (f"_{PretrainSpec(**pretrain).slug()}" if pretrain else "")
    default = f"{name}_{args.preset}_{budget.slug}{device_slug(device, dist)}"
    ctx.grid = args.grid or re.sub(r"[^A-Za-z0-9_.-]", "-", default)
    results = out / "results" / f"{ctx.grid}.jsonl"
    done = dist.broadcast(done_keys(results) if dist.is_main else None)  # [DDP] rank 0's file decides
    # a resumed grid keeps the speed factor its first cells had (Ray's workers measure their own)
    if budget.kind == "a100_seconds" and done and args.executor == "local":
        speed = dist.broadcast(recorded_speed(read_rows(results), device_name(str(device)), budget)
                               if dist.is_main else None)
        if speed:
            now = adopt_speed(device, speed)
            ctx.log(f"a100 speed factor {speed['a100_factor']:.4g} as in the grid's earlier rows"
                    + (f" (measured now: {now:.4g})" if now is not None else "")
                    + ": every cell of the grid gets the same wall-clock budget")

    todo = [c for c in cells if c.key() not in done]
    if dist.is_main:  # what the grid expects, beside its rows: the report lists cells that never wrote one
        write_expected(results, cells)
        ranks = f" x {dist.world_size} ranks ({dist.backend})" if dist.active else ""
        print(f"grid {ctx.grid}: {len(cells)} cells ({len(cells) - len(todo)} already done) on {device}{ranks}; "
              f"rows -> {results}")
    for cell, row in executors.build(args).run(todo, ctx):  # this process is the one writer of rows
        append_row(results, row)
        _say(finished_line(cell, row))
    if dist.is_main:  # the task's floors and ceilings (non-neural, seconds): rows beside the cells, once per grid
        preset = get_preset(args.preset)
        write_references(task, data, PrepareContext(ctx.data_dir, ctx.cache_dir, preset.vocab_size, preset.max_len),
                         results, done, ctx.grid, task_opts)
    if not args.no_report and dist.is_main:
        write_report(out, ctx.grid)
    return 0


def _say(line: str) -> None:
    """A line above the progress bar (print() would tear it)."""
    from tqdm.auto import tqdm

    tqdm.write(line)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, `kill PID`): unwinds like Ctrl-C, past a cell's error handling."""


def _on_sigterm(signum, frame):
    raise Terminated()


def cli() -> int:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return main()
    except (DataError, BudgetError, UnknownNameError, ResultsFileError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}: finished cells are saved; rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(cli())
