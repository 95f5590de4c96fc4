"""Held-out NLL of a trained model: what a dev check and the reported perplexity compute.

Its own small module because three places score a model on held-out sequences: the training loop's
dev checks (harness/train.py), their data-parallel form (harness/distributed.py: rows split over
ranks, the sums all-reduced) and the cell's final perplexity (harness/cell.py).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from core.data import Batch, SeqSet
from core.env import autocast
from harness.objectives import NLLSums


class EvalNLL(NamedTuple):
    """The reported NLL of an evaluation set (`eval_nll`)."""
    nll: float  # mean target-token NLL, nats
    se: float | None  # its Monte Carlo standard error (None: exact)
    rows: np.ndarray | None  # (N,) each row's summed NLL, in the set's row order (None: not split by row)


@torch.no_grad()
def _sums(model, data: SeqSet, batch_size: int, device: torch.device, fn: Callable[[Batch], NLLSums],
          progress: Callable[[int, int], None] | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, np.ndarray | None]:
    """(summed NLL, target count, summed variance or None if any batch has none, (N,) each row's NLL in
    `data`'s row order or None if any batch has none) of `fn` over `data`'s batches, in eval mode, on the
    device. `progress(sequences done, of)` is called after each batch. The rows are read back once, at
    the end."""
    was = model.training
    model.eval()
    tot = torch.zeros((), device=device)
    n = torch.zeros((), device=device)
    var: torch.Tensor | None = torch.zeros((), device=device)
    rows: list[torch.Tensor] | None = []  # (B,) per batch, in `eval_order`
    done = 0
    for batch in data.iter_batches(batch_size):
        with autocast(device):
            s, c, v, r = fn(batch)
        tot += s.float()
        n += c
        var = None if v is None or var is None else var + v.float()
        if r is None:
            rows = None
        elif rows is not None:
            rows.append(r.float())
        done += batch.ids.shape[0]
        if progress:
            progress(done, len(data))
    model.train(was)
    per_row = None
    if rows and done == len(data):
        per_row = np.empty(len(data), dtype=np.float64)
        per_row[data.eval_order()] = torch.cat(rows).cpu().numpy()
    return tot, n, (var if done else None), per_row


def nll_sums(model, objective, data: SeqSet, batch_size: int, device: torch.device, selection: bool = False,
             progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed target-token NLL, target-token count) on the device: data-parallel ranks add these up.
    `progress(sequences done, of)` is called after each batch."""
    nll = objective.selection_nll if selection else objective.nll
    tot, n, _, _ = _sums(model, data, batch_size, device, lambda b: NLLSums(*nll(model, b), None, None), progress)
    return tot, n


def dev_loss(model, objective, data: SeqSet, batch_size: int, device: torch.device, selection: bool = False,
             progress: Callable[[int, int], None] | None = None) -> float:
    """Mean target-token NLL on a held-out set (a bound for diffusion objectives); `selection` uses the
    objective's cheap checkpoint-selection estimator instead of the reported one."""
    tot, n = nll_sums(model, objective, data, batch_size, device, selection, progress)
    return float(tot / n.clamp_min(1))


def eval_nll(model, objective, data: SeqSet, batch_size: int, device: torch.device,
             progress: Callable[[int, int], None] | None = None) -> EvalNLL:
    """The reported mean target-token NLL (`dev_loss`'s number), its Monte Carlo standard error in nats
    per target token, and each row's summed NLL, from the same passes (`Objective.nll_with_variance`).
    The error is None when the NLL is exact; the count is fixed, so the error of sum / count is
    sqrt(Var(sum)) / count. The rows let a report pair two cells question by question: cells of one
    grid score the same rows and, for a Monte Carlo bound, draw the same masks for them."""
    tot, n, var, rows = _sums(model, data, batch_size, device, lambda b: objective.nll_with_variance(model, b),
                              progress)
    count = n.clamp_min(1)
    return EvalNLL(float(tot / count), None if var is None else float(var.clamp_min(0).sqrt() / count), rows)


def with_nll(per_question: dict[str, list] | None, ids: list, nll: np.ndarray, targets: np.ndarray
             ) -> dict[str, list]:
    """A task's per-question scores ({"id": [...], metric: [...]}, or None) with each question's summed NLL
    (`nll`, nats) and target tokens (`targets`) added in its id order; `ids`, `nll`, `targets`: one per
    evaluation row. exp(sum(nll) / sum(targets)) is the cell's perplexity (or its bound)."""
    if len(ids) != len(nll) or len(ids) != len(targets) or len(set(ids)) != len(ids):
        raise ValueError(f"with_nll: {len(ids)} ids (distinct: {len(set(ids))}) for {len(nll)} NLLs and "
                         f"{len(targets)} target counts")
    pq = dict(per_question) if per_question else {"id": list(ids)}
    at = {q: i for i, q in enumerate(ids)}
    if set(pq["id"]) != set(at):
        raise ValueError("with_nll: the per-question scores are not on the evaluation rows' questions")
    order = [at[q] for q in pq["id"]]
    pq["nll"] = [round(float(nll[i]), 4) for i in order]
    pq["targets"] = [int(targets[i]) for i in order]
    return pq


def dev_sample(dev: SeqSet, max_tokens: int, seed: int = 0) -> SeqSet:
    """A fixed-seed sample of whole dev sequences holding at most `max_tokens` tokens (at least one
    sequence; 0: all), the same for every cell: a dev check then costs the same on any dev set."""
    if max_tokens <= 0 or dev.n_tokens <= max_tokens:
        return dev
    perm = np.random.default_rng(seed).permutation(len(dev))
    keep = perm[np.cumsum(dev.lengths[perm]) <= max_tokens]
    return dev.subset(np.sort(keep if len(keep) else perm[:1]))
