"""Training objectives: one file each, self-registered like mixers.

An objective decides (1) whether mixers run causal or bidirectional, (2) the training loss from a
`Batch`, (3) the held-out NLL of the target tokens that becomes the reported perplexity (exact for
autoregressive models, an upper bound for masked diffusion, hence `ppl_key`), and (4) how answers
are generated from prompts, optionally under a task's constraint on the answer (`AnswerConstraint`:
e.g. JSQuAD's answers restricted to spans of the context).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, Protocol, Sequence

import torch

from core.data import Batch, SpecialTokens
from core.registry import Registry

REGISTRY: Registry["Objective"] = Registry("objective", __name__)
register = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get
options_of = REGISTRY.options_of


class AnswerConstraint(Protocol):
    """What a task may ask of a decoder for one prompt. Tasks implement it (tasks/answer_span.py);
    objectives apply it as their sampler allows and say how in `constraint_path`."""

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """The ids allowed after the answer's ids so far (EOS among them where the answer may end)."""
        ...

    def tokens(self) -> list[int]:
        """Every id that may occur anywhere in an allowed answer, EOS included."""
        ...

    def longest_answer(self, ids: Sequence[int]) -> list[int]:
        """The longest prefix of `ids` (an answer, EOS cut away) that is a whole allowed answer; [] if none.
        For decoders that cannot apply `next_tokens` while they sample."""
        ...


def allowed_mask(allowed: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """(b, V) bool, True at each row's allowed ids: built on the host, one upload (evaluation only)."""
    m = torch.zeros(len(allowed), vocab, dtype=torch.bool)
    for r, ids in enumerate(allowed):
        m[r, list(ids)] = True
    return m.to(device)


class NLLSums(NamedTuple):
    """One batch's reported NLL (`Objective.nll_with_variance`)."""
    total: torch.Tensor  # () summed NLL of the target tokens, nats
    count: torch.Tensor  # () target tokens
    variance: torch.Tensor | None  # () Monte Carlo variance of `total` over the estimator's draws; None: exact
    # (B,) each row's share of `total` (None: not split by row). Rows are questions: two cells scored on the
    # same questions are then compared question by question (the report's paired perplexity ratio)
    rows: torch.Tensor | None


class Objective:
    name: ClassVar[str] = "?"
    causal: ClassVar[bool]  # how mixers are built for this objective
    ppl_key: ClassVar[str]  # "ppl" (exact) or "ppl_bound" (an upper bound)
    # options that turn the task loss into its language-modelling form on unlabeled text (pretraining)
    pretrain_opts: ClassVar[dict[str, Any]] = {}

    @dataclasses.dataclass
    class Options:
        pass

    def __init__(self, opts: Any, special: SpecialTokens, loss_impl: str):
        self.opts = opts
        self.special = special
        self.loss_impl = loss_impl  # resolved path of harness.loss

    def loss(self, model, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar training loss (differentiable)."""
        raise NotImplementedError

    def loss_terms(self, model, batch: Batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(numerator, denominator) with `loss == numerator / denominator.clamp_min(1)`.

        Data-parallel training divides each rank's numerator by the denominator summed over ranks,
        so N ranks take exactly the step one process takes on the whole batch (harness/distributed.py).
        Override it in objectives that normalise by a count (targets, masked tokens); this default,
        (loss, 1), weighs every rank's shard equally, which is exact only when shards weigh the same.
        """
        loss = self.loss(model, batch, generator)
        return loss, loss.new_ones(())

    def pretraining(self) -> "Objective":
        """The same objective in its language-modelling form, for packed unlabeled text (every token is
        real; harness/pretrain.py): this objective's options with `pretrain_opts` over them."""
        return type(self)(dataclasses.replace(self.opts, **self.pretrain_opts), self.special, self.loss_impl)

    def nll(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed NLL of target tokens, number of target tokens): exp(sum / n) is the perplexity."""
        raise NotImplementedError

    def nll_with_variance(self, model, batch: Batch) -> NLLSums:
        """`nll`'s (sum, count), the variance of that sum over the estimator's own randomness, and each
        row's share of the sum, from the same forward passes. The variance is None for an exact NLL (nothing
        is sampled): an objective whose reported NLL is a Monte Carlo estimate (masked diffusion's bound)
        gives it, so the row can say how far another draw of its samples would move the number
        (`metrics.nll_mc_se`). The rows are None in this default (an objective that can split its sum by
        row gives them, at no extra pass): the cell keeps them per question (`per_question.nll`)."""
        s, c = self.nll(model, batch)
        return NLLSums(s, c, None, None)

    def selection_nll(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """`nll` as the trainer's dev checks compute it for checkpoint selection: the same by default;
        an objective whose reported NLL is an expensive estimate (a Monte Carlo bound) returns a cheap,
        deterministic one here, so a dev check costs little whatever the budget."""
        return self.nll(model, batch)

    # how `generate` applies `constraints`, in words, for the results row (None: it cannot); an objective
    # whose way depends on its options makes it a property (diffusion: exact with blocks of one position)
    constraint_path: ClassVar[str | None] = None

    def generate(self, model, prompts: list[list[int]], max_new: int, batch_size: int,
                 constraints: Sequence[AnswerConstraint] | None = None) -> list[list[int]]:
        """Answer token ids for each prompt, cut before the first EOS; with `constraints` (one per prompt),
        each answer chosen under its prompt's constraint as `constraint_path` says."""
        raise NotImplementedError

    def decode_path(self, model) -> str:
        """How `generate` runs for this model, in words, for the results row (`metrics.decode_path`)."""
        return "rerun: the whole sequence per generation step"

    def predict_targets(self, model, batch: Batch) -> torch.Tensor:
        """Predicted ids at the target positions of a full sequence, (B, T) (only target positions are
        meaningful): the fill-in interface of tasks scored per position (e.g. MQAR's values)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a results row records about this objective."""
        return {"loss_impl": self.loss_impl, **dataclasses.asdict(self.opts)}


def build(name: str, special: SpecialTokens, loss_impl: str, **opts: Any) -> Objective:
    return get(name)(REGISTRY.make_options(name, opts), special, loss_impl)


def cut_at_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def with_defaults(defaults: dict[str, Any], objective: str, opts: dict[str, Any]) -> dict[str, Any]:
    """`opts` (the user's options for `objective`) over a task's `objective_defaults` that apply to
    it: a bare "OPT" applies when the objective has that option, "OBJECTIVE.OPT" to that one only."""
    has = options_of(objective)
    out: dict[str, Any] = {}
    for key, val in defaults.items():
        scope, _, opt = key.rpartition(".")
        if (scope == objective or not scope) and opt in has:
            out[opt] = val
    return {**out, **opts}
