"""Held-out NLL of a trained model: what a dev check and the reported perplexity compute.

Its own small module because three places score a model on held-out sequences: the training loop's
dev checks (harness/train.py), their data-parallel form (harness/distributed.py: rows split over
ranks, the sums all-reduced) and the cell's final perplexity (harness/cell.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from core.data import Batch, SeqSet
from core.env import autocast


@torch.no_grad()
def _sums(model, data: SeqSet, batch_size: int, device: torch.device,
          fn: Callable[[Batch], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
          progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(summed NLL, target count, summed variance or None if any batch has none) of `fn` over `data`'s
    batches, in eval mode, on the device. `progress(sequences done, of)` is called after each batch."""
    was = model.training
    model.eval()
    tot = torch.zeros((), device=device)
    n = torch.zeros((), device=device)
    var: torch.Tensor | None = torch.zeros((), device=device)
    done = 0
    for batch in data.iter_batches(batch_size):
        with autocast(device):
            s, c, v = fn(batch)
        tot += s.float()
        n += c
        var = None if v is None or var is None else var + v.float()
        done += batch.ids.shape[0]
        if progress:
            progress(done, len(data))
    model.train(was)
    return tot, n, (var if done else None)


def nll_sums(model, objective, data: SeqSet, batch_size: int, device: torch.device, selection: bool = False,
             progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed target-token NLL, target-token count) on the device: data-parallel ranks add these up.
    `progress(sequences done, of)` is called after each batch."""
    nll = objective.selection_nll if selection else objective.nll
    tot, n, _ = _sums(model, data, batch_size, device, lambda b: (*nll(model, b), None), progress)
    return tot, n


def dev_loss(model, objective, data: SeqSet, batch_size: int, device: torch.device, selection: bool = False,
             progress: Callable[[int, int], None] | None = None) -> float:
    """Mean target-token NLL on a held-out set (a bound for diffusion objectives); `selection` uses the
    objective's cheap checkpoint-selection estimator instead of the reported one."""
    tot, n = nll_sums(model, objective, data, batch_size, device, selection, progress)
    return float(tot / n.clamp_min(1))


def eval_nll(model, objective, data: SeqSet, batch_size: int, device: torch.device,
             progress: Callable[[int, int], None] | None = None) -> tuple[float, float | None]:
    """The reported mean target-token NLL (`dev_loss`'s number) and its Monte Carlo standard error in
    nats per target token, from the same passes (`Objective.nll_with_variance`): None when the NLL is
    exact. The count is fixed, so the error of sum / count is sqrt(Var(sum)) / count."""
    tot, n, var = _sums(model, data, batch_size, device, lambda b: objective.nll_with_variance(model, b), progress)
    count = n.clamp_min(1)
    return float(tot / count), (None if var is None else float(var.clamp_min(0).sqrt() / count))


def dev_sample(dev: SeqSet, max_tokens: int, seed: int = 0) -> SeqSet:
    """A fixed-seed sample of whole dev sequences holding at most `max_tokens` tokens (at least one
    sequence; 0: all), the same for every cell: a dev check then costs the same on any dev set."""
    if max_tokens <= 0 or dev.n_tokens <= max_tokens:
        return dev
    perm = np.random.default_rng(seed).permutation(len(dev))
    keep = perm[np.cumsum(dev.lengths[perm]) <= max_tokens]
    return dev.subset(np.sort(keep if len(keep) else perm[:1]))
