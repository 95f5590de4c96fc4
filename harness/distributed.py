"""Data-parallel cells: one grid cell trained on N processes with `torch.distributed` (DDP).

Launch: `torchrun --nproc_per_node N run_matrix.py ...` (every cell of the grid then runs on the N
ranks), or `harness.spawn.spawn_cell` (N local processes for one cell; what a multi-GPU Ray task does).

`train()` sees one interface, `data_parallel()`'s choice: `SingleProcess` (world size 1) or
`DataParallel` (N ranks). Both say what to step through, how to sample, the step's loss and the
tokens it counts, the per-rank seed offset, the budget fraction, the mean train loss and the dev loss.

Why it works the way it does:
- **A cell on N ranks is the same run as on one process.** Every rank draws the same seeded global
  batch (the preset's `batch_tokens` budget, or `batch_size` rows) and trains on rows r::N of it;
  each rank's loss is divided by the loss-token count summed over ranks (`Objective.loss_terms`), so DDP's gradient *average* is
  exactly the gradient of the single-process per-token mean. Hyper-parameters never depend on the
  world size: more GPUs make a cell faster, never different (up to float summation order).
- **The budget is the cell's.** Tokens are those of the global batch, which every rank knows without
  a collective. Seconds are rank 0's wall clock: for time budgets rank 0's budget fraction is
  broadcast every step (host floats on a gloo group: no device sync), so all ranks stop at the same
  step and evaluate at the same points.
- **Dev evaluation** is sharded over ranks and all-reduced (every rank gets the same number, so
  checkpoint selection agrees). **Final evaluation and the results row are rank 0's**; the other
  ranks wait at a barrier on the gloo group, whose long timeout outlasts NCCL's watchdog.
- **world_size == 1 takes none of these paths** (`SingleProcess`): no DDP wrapper, no collectives,
  no extra syncs.
- **Failures.** A NaN loss or a too-small budget is seen by every rank alike (the train loss is
  all-reduced before the check), so the cell gets a "failed" row and the grid goes on. A failure on
  one rank only (an OOM on one GPU) cannot be survived by the others mid-collective: that rank
  re-raises, torchrun stops the job, and rerunning the same command resumes the grid.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import inspect
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from core.data import Batch, BatchSampler, SeqSet
from core.env import resolve_device
from harness.budget import Budget, BudgetError
from harness.evaluate import dev_loss, nll_sums

# Rank 0 evaluates a cell (answer generation over the whole evaluation split) while the other ranks
# wait at a barrier: the wait lives on a gloo group with this timeout, not on NCCL's 10 minutes.
WAIT_TIMEOUT = datetime.timedelta(hours=6)
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a data-parallel cell; `DistEnv()` is the single-process default."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None  # "nccl" | "gloo" once a process group is up
    cpu_group: Any = field(default=None, compare=False, repr=False)  # gloo group for host-side waits

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.cpu_group)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable host data: done keys, a config)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Local rank 0 runs the block first (downloads, tokenizer training into the on-disk cache);
        the other ranks of the node then run it and find the cache warm."""
        if self.active and self.local_rank != 0:
            self.barrier()
        yield
        if self.active and self.local_rank == 0:
            self.barrier()

    def check_same(self, value: str, what: str) -> None:
        """Raise unless every rank computed the same `value` (e.g. a hash of its prepared data)."""
        if not self.active:
            return
        got: list[Any] = [None] * self.world_size
        dist.all_gather_object(got, value, group=self.cpu_group)
        if len(set(got)) != 1:
            raise RuntimeError(f"ranks disagree on {what} ({', '.join(map(str, got))}); "
                               "give every node the same data and --cache-dir")


def launched() -> bool:
    """True under torchrun (or `spawn_cell`) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_arg: str = "auto") -> tuple[DistEnv, torch.device]:
    """Join the process group torchrun describes in the environment (NCCL on CUDA, gloo on CPU) and
    pick this rank's device; without torchrun: the single-process `DistEnv()` and the asked device."""
    device = resolve_device(device_arg)
    if not launched():
        return DistEnv(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local)  # one GPU per rank, whatever --device said
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        atexit.register(shutdown)
    cpu_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return DistEnv(world, rank, local, backend, cpu_group), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agreed_failure(e: BaseException) -> bool:
    """Failures every rank meets at the same point (so the grid may go on); any other failure under
    DDP must stop the job, or the healthy ranks hang in their next collective."""
    return isinstance(e, (BudgetError, FloatingPointError))


def data_fingerprint(data: SeqSet) -> str:
    """A short hash of the token ids: ranks must train on identically tokenised data."""
    h = hashlib.sha1(data.ids.cpu().numpy().tobytes())
    h.update(np.asarray(data.lengths).tobytes())
    return h.hexdigest()[:12]


class ShardedSampler:
    """Rank r's share of every global batch: rows r::world of the batch that the same seeded
    `BatchSampler` yields on every rank. Global batches are length-sorted, so the interleaving also
    balances sequence lengths across ranks.

    `global_tokens` is the whole batch's real-token count (the budget counts the cell's tokens).
    A global batch with fewer rows than ranks leaves some ranks empty: they run a stand-in row with
    `live = False` (weight 0), because every rank must take part in DDP's gradient all-reduce.
    """

    def __init__(self, base: BatchSampler, rank: int, world_size: int):
        self.base, self.rank, self.world = base, rank, world_size
        self.global_tokens = 0
        self.live = True

    def __iter__(self):
        return self

    def shard(self, idx: np.ndarray) -> tuple[np.ndarray, bool]:
        mine = idx[self.rank :: self.world]
        return (mine, True) if len(mine) else (idx[:1], False)

    def __next__(self) -> Batch:
        idx, idx_dev = self.base.next_pair()
        self.global_tokens = int(self.base.data.lengths[idx].sum())
        mine, self.live = self.shard(idx)
        mine_dev = idx_dev[self.rank :: self.world] if self.live else idx_dev[:1]  # sliced on the device
        return self.base.data.batch(mine, self.base.pad_to, mine_dev, self.base.width)


def no_buffer_sync(ddp_params: Iterable[str]) -> dict[str, bool]:
    """DDP's keyword for "no buffer broadcast every forward", given the names its `__init__` takes: torch
    2.13 renamed `broadcast_buffers` to `forward_sync_buffers` and warns on the old name; older torch
    (the device's 2.11) knows only the old one."""
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in ddp_params else {"broadcast_buffers": False}


_NO_BUFFER_SYNC = no_buffer_sync(inspect.signature(DistributedDataParallel.__init__).parameters)


class _DDP(DistributedDataParallel):
    """DDP that still answers `head_weight`, `logits`, ... : objectives use them beside forward()."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


class SingleProcess:
    """One process trains the whole cell: the model itself, the base sampler, the plain loss, and no
    collective or host sync anywhere (the interface `DataParallel` has, at no cost)."""

    seed_offset = 0

    def __init__(self, model: torch.nn.Module):
        self.module = model  # what the step runs forward through

    def sampler(self, base: BatchSampler) -> BatchSampler:
        return base

    def loss(self, objective, model, batch: Batch, sampler: BatchSampler,
             generator: torch.Generator | None) -> torch.Tensor:
        return objective.loss(model, batch, generator)

    def step_tokens(self, sampler: BatchSampler, batch: Batch) -> int:
        """Real tokens the step counts against the budget (known on the host: no sync)."""
        return batch.n_tokens

    def fraction(self, frac: float) -> float:
        return frac

    def mean_over_ranks(self, summed_loss: torch.Tensor) -> torch.Tensor:
        return summed_loss

    def dev_loss(self, model, objective, data: SeqSet, batch_size: int, device: torch.device) -> float:
        return dev_loss(model, objective, data, batch_size, device, selection=True)


class DataParallel:
    """This rank's part of a cell trained on N ranks (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, env: DistEnv, device: torch.device, budget: Budget):
        self.env = env
        self.module = _DDP(  # forward through the wrapper: gradients all-reduce in backward
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,
            **_NO_BUFFER_SYNC,  # no BatchNorm-like buffers here: skip a collective per forward
        )
        self.sync_fraction = budget.kind != "tokens"  # token fractions agree by construction
        self.seed_offset = 1_000_003 * env.rank  # objective noise (diffusion masks) differs per shard

    def sampler(self, base: BatchSampler) -> ShardedSampler:
        """This rank's rows of each global batch."""
        return ShardedSampler(base, self.env.rank, self.env.world_size)

    def loss(self, objective, model, batch: Batch, sampler: ShardedSampler,
             generator: torch.Generator | None) -> torch.Tensor:
        """This rank's loss, scaled so that DDP's gradient average is the single-process gradient:
        (1/W) sum_r grad(W num_r / sum_r den_r) = grad(sum_r num_r / sum_r den_r). Its value summed
        over ranks and divided by W is the global per-token loss (see `mean_over_ranks`)."""
        num, den = objective.loss_terms(model, batch, generator)
        if not sampler.live:  # a stand-in row (fewer rows than ranks): weight 0
            num, den = num * 0, den * 0
        den = den.detach().float().reshape(1).clone()
        dist.all_reduce(den)  # stays on the device: no host sync
        return num * self.env.world_size / den.clamp_min(1).squeeze(0)

    def step_tokens(self, sampler: ShardedSampler, batch: Batch) -> int:
        """The budget counts the whole cell: the global batch's tokens, known on every rank."""
        return sampler.global_tokens

    def fraction(self, frac: float) -> float:
        """Every rank uses rank 0's budget fraction, so all stop (and evaluate) at the same step."""
        if not self.sync_fraction:
            return frac
        t = torch.tensor([frac], dtype=torch.float64)
        dist.broadcast(t, src=0, group=self.env.cpu_group)
        return float(t[0])

    def mean_over_ranks(self, summed_loss: torch.Tensor) -> torch.Tensor:
        t = summed_loss.detach().float().reshape(1).clone()
        dist.all_reduce(t)
        return t.squeeze(0) / self.env.world_size

    def dev_loss(self, model, objective, data: SeqSet, batch_size: int, device: torch.device) -> float:
        """Dev NLL with the rows split over ranks; the same float on every rank."""
        shard = data.subset(np.arange(self.env.rank, len(data), self.env.world_size))
        tot, n = nll_sums(model, objective, shard, batch_size, device, selection=True)
        t = torch.stack([tot.float(), n.float()])
        dist.all_reduce(t)
        return float(t[0] / t[1].clamp_min(1))


Parallel = SingleProcess | DataParallel  # what train() steps through: one interface


def data_parallel(model: torch.nn.Module, env: DistEnv | None, device: torch.device, budget: Budget) -> Parallel:
    """How this process trains `model`: alone, or as one rank of a data-parallel cell."""
    if env is None or not env.active:
        return SingleProcess(model)
    return DataParallel(model, env, device, budget)


def free_port() -> int:
    """A free local TCP port for a process group's rendezvous (harness/spawn.py, tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
