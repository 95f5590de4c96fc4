"""The measurement behind the learning-rate sweep's defaults (a measurement, not a test).

For each mixer: full-budget runs at every rate (the truth: which rate gives the lowest dev loss
under the whole budget), and short runs at each `--fracs` fraction of the budget (the sweep's
guess). Prints one JSON line per run, then per mixer the best rate of each and whether the short
runs pick the full runs' rate, and the cost of a 3-rate sweep at each fraction.

    python -m benchmarks.measure_lr_sweep --data-dir ../shared/data/jsquad-v1.3 --preset tiny \
        --budget tokens=100000 --rates 3e-4,1e-3,3e-3,1e-2 --fracs 0.1,0.25 --mixers attention,mamba
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from harness import lr_sweep
from harness.budget import Budget
from harness.cell import Cell, RunContext
from core.env import resolve_device
from harness.model import LM
from core.presets import get_preset
from harness.train import TrainConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "wavebench"))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--budget", default="tokens=100000")
    p.add_argument("--rates", default="3e-4,1e-3,3e-3,1e-2")
    p.add_argument("--fracs", default="0.1,0.25")
    p.add_argument("--mixers", default="attention,gated_context,mamba,wave_interference,wave_modulation,wave_wavelet")
    p.add_argument("--objective", default="autoregressive")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    device = resolve_device("auto")
    budget = Budget.parse(args.budget)
    rates = lr_sweep.parse_rates(args.rates, get_preset(args.preset).lr)
    fracs = [float(f) for f in args.fracs.split(",")]
    ctx = RunContext(device=device, data_dir=Path(args.data_dir), cache_dir=Path(args.cache_dir), grid="",
                     progress=False)
    summary = []
    for mixer in args.mixers.split(","):
        cell = Cell(task="jsquad", mixer=mixer, objective=args.objective, preset=args.preset, budget=str(budget),
                    seed=args.seed)
        plan = ctx.plan(cell)  # the grid's path: the task built once, data prepared once, the model matched
        data, preset, objective, cfg = plan.data, plan.preset, plan.objective, plan.model_cfg

        def fresh() -> LM:
            torch.manual_seed(args.seed)
            return LM(cfg).to(device)

        tcfg = TrainConfig(batch_size=preset.batch_size, lr=preset.lr, seed=args.seed, progress=False)
        res: dict[str, dict[float, lr_sweep.Trial]] = {}
        for frac in [1.0, *fracs]:
            b = lr_sweep.short_budget(budget, frac)
            # the full runs keep the grid's dev evaluations (TrainConfig.eval_points), short runs the sweep's
            trial = lr_sweep.train_trial(fresh, objective, data.train, data.dev, tcfg, device,
                                         eval_points=tcfg.eval_points if frac == 1.0 else lr_sweep.SHORT_EVAL_POINTS)
            for lr in rates:
                t0 = time.perf_counter()
                t = trial(lr, b)
                res.setdefault(str(frac), {})[lr] = t
                print(json.dumps({"mixer": mixer, "frac": frac, "lr": lr, "dev_loss": t.dev_loss, "tokens": t.tokens,
                                  "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        truth = lr_sweep.best_trial(list(res["1.0"].values())).lr
        picks = {f: lr_sweep.best_trial(list(res[str(f)].values())).lr for f in fracs}
        summary.append({"mixer": mixer, "full_best_lr": truth, "short_best_lr": picks,
                        "full_dev_loss": {lr: t.dev_loss for lr, t in res["1.0"].items()}})
    print("\nmixer | best rate (full budget) | " + " | ".join(f"short runs at {f:g}" for f in fracs)
          + " | full-run dev loss by rate")
    for s in summary:
        losses = ", ".join(f"{lr:g}: {v:.3f}" if v is not None else f"{lr:g}: diverged"
                           for lr, v in s["full_dev_loss"].items())
        picks = [f"{s['short_best_lr'][f]:g}{'' if s['short_best_lr'][f] == s['full_best_lr'] else ' (differs)'}"
                 for f in fracs]
        print(f"{s['mixer']} | {s['full_best_lr']:g} | " + " | ".join(picks) + f" | {losses}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
