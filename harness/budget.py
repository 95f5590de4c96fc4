"""Training budgets: `tokens=N`, `seconds=S` or `a100_seconds=S`.

- tokens:        real (non-pad) tokens fed to the model, summed over steps.
- seconds:       wall-clock training time on the device at hand (dev-set evaluations excluded).
- a100_seconds:  seconds the same work would take on an A100, i.e. wall seconds x device speed
                 factor. The factor is *measured*, not looked up: a dense matmul (bf16 8192^3 on
                 CUDA, the size the reference efficiency below was measured at; fp32 1024^3 on
                 CPU) is timed and divided by A100_REF_TFLOPS.

A100_REF_TFLOPS = 252: the A100's 312 TFLOP/s dense bf16 peak times the fraction of peak a large
bf16 matmul reaches in practice (the H100 measured here: 798 of 989 TFLOP/s = 0.807; we assume the
A100 reaches the same fraction). Matmul-bound cells scale close to this factor; bandwidth-bound
cells (small widths, scans) less, so the factor is recorded with every row and can be redone.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import torch

from core.data import SeqSet
from core.env import sync

KINDS = ("tokens", "seconds", "a100_seconds")
A100_PEAK_BF16_TFLOPS = 312.0
MATMUL_EFFICIENCY = 798.0 / 989.0
A100_REF_TFLOPS = round(A100_PEAK_BF16_TFLOPS * MATMUL_EFFICIENCY)  # 252


class BudgetError(ValueError):
    pass


@dataclass(frozen=True)
class Budget:
    kind: str
    amount: float

    @classmethod
    def parse(cls, text: str) -> "Budget":
        m = re.fullmatch(r"\s*([a-z0-9_]+)\s*=\s*([0-9.eE+_]+)\s*", text or "")
        if not m or m.group(1) not in KINDS:
            raise BudgetError(f"budget must look like tokens=N, seconds=S or a100_seconds=S; got {text!r}")
        try:
            amount = float(m.group(2).replace("_", ""))
        except ValueError:
            raise BudgetError(f"budget amount is not a number: {text!r}") from None
        if amount <= 0:
            raise BudgetError(f"budget must be positive: {text!r}")
        if not math.isfinite(amount):  # 1e400 parses as inf: a budget that never ends, and str() would raise
            raise BudgetError(f"budget must be a finite number: {text!r}")
        return cls(m.group(1), amount)

    def __str__(self) -> str:
        amt = int(self.amount) if self.amount == int(self.amount) else self.amount
        return f"{self.kind}={amt}"

    @property
    def slug(self) -> str:
        return str(self).replace("=", "-")


_FACTOR_CACHE: dict[str, dict] = {}


def device_speed(device: torch.device) -> dict:
    """Measured matmul throughput of `device` and its speed factor relative to the A100 reference."""
    key = str(device)
    if key in _FACTOR_CACHE:
        return _FACTOR_CACHE[key]
    if device.type == "cuda":
        # 8192^3, the size MATMUL_EFFICIENCY was measured at (4096^3 reaches a lower fraction of peak, which
        # understated the factor); ~1.4 ms each on an H100/H200, so the best of 5 rounds of 10 (~70 ms of
        # work, after 3 untimed): 20 calls of 4096^3 were ~4 ms, inside a GPU's clock ramp-up from idle,
        # and the factor sets every a100_seconds cell's wall-clock budget
        n, dtype, warmup, reps, rounds = 8192, torch.bfloat16, 3, 10, 5
    else:
        n, dtype, warmup, reps, rounds = 1024, torch.float32, 2, 5, 1
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    del a, b
    tflops = 2 * n**3 * reps / best / 1e12
    info = {
        "matmul_tflops": round(tflops, 3),
        "matmul": f"{str(dtype).replace('torch.', '')} {n}^3, best of {rounds} x {reps}",
        "a100_ref_tflops": A100_REF_TFLOPS,
        "a100_factor": tflops / A100_REF_TFLOPS,
    }
    _FACTOR_CACHE[key] = info
    return info


def recorded_speed(rows: list[dict], device_name: str, budget: "Budget") -> dict | None:
    """The speed an a100_seconds grid's earlier ok rows on this device were metered with (the first such
    row's), or None: a resumed grid meters its remaining cells with it (`adopt_speed`)."""
    for r in rows:
        speed = (r.get("budget_info") or {}).get("speed")
        if (r.get("status") == "ok" and r.get("device") == device_name and r.get("budget") == str(budget)
                and isinstance(speed, dict) and isinstance(speed.get("a100_factor"), (int, float))):
            return speed
    return None


def adopt_speed(device: torch.device, speed: dict) -> float | None:
    """Meter every a100_seconds budget of this process on `device` with `speed`, a factor recorded before
    (a resumed grid's first rows), not this process's own measurement: the factor sets each cell's
    wall-clock budget, and a remeasured one (a cold or a hot GPU) would give the cells trained after a
    resume a different budget from those before it. Updates the cached dict in place, so meters built
    already (a grid's plans) use it too. Returns the factor measured in this process, if any."""
    cached = _FACTOR_CACHE.setdefault(str(device), {})
    measured = cached.get("a100_factor")
    kept = {k: v for k, v in speed.items() if k != "measured_now"}
    cached.clear()
    cached.update(kept, **({"measured_now": measured} if measured is not None else {}))
    return measured


def check_budget(budget: Budget, train_set: SeqSet, batch_size: int, batch_tokens: int = 0) -> None:
    """A token budget must cover at least one batch (a mean-length one), or nothing is learned."""
    mean = float(train_set.lengths.mean()) if len(train_set) else 1.0
    rows = max(1, int(batch_tokens // max(mean, 1.0))) if batch_tokens else batch_size
    one_batch = int(round(mean * min(rows, len(train_set)))) if len(train_set) else 1
    if budget.kind == "tokens" and budget.amount < one_batch:
        raise BudgetError(f"budget {budget} is smaller than one batch (~{one_batch} tokens); raise it")


class BudgetMeter:
    """Turns (tokens seen, training seconds) into the fraction of the budget used.

    `train()` takes a Budget (and checks it against its data) or a meter that `check()` returned: a
    grid cell's budget is parsed, checked and metered once, when its plan is built (harness/cell.py)."""

    def __init__(self, budget: Budget, device: torch.device):
        self.budget = budget
        self.speed = device_speed(device) if budget.kind == "a100_seconds" else None

    def check(self, train_set: SeqSet, batch_size: int, batch_tokens: int = 0) -> "BudgetMeter":
        """This meter, once its budget is known to cover a batch of `train_set` (else BudgetError)."""
        check_budget(self.budget, train_set, batch_size, batch_tokens)
        return self

    def fraction(self, tokens: int, seconds: float) -> float:
        if self.budget.kind == "tokens":
            used = tokens
        elif self.budget.kind == "seconds":
            used = seconds
        else:
            used = seconds * self.speed["a100_factor"]
        return used / self.budget.amount

    def describe(self) -> dict:
        return {"budget": str(self.budget), **({"speed": self.speed} if self.speed else {})}
