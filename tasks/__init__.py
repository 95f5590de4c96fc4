"""Task registry. A task loads its data, tokenises it into `SeqSet`s and scores a trained model.

Each task module registers a `Task` subclass with `@register("name")`; `run_matrix.py --task NAME`
finds it with no other edit. A task declares what it reports (`metrics`: key, header, which way is
better, the headline) and what its data protocols mean (`protocols`); every row it produces carries
both (`declarations`), so the reports and the CLI's summary line need no edit for a new task or metric.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from core.data import SeqSet, SpecialTokens
from core.env import sync
from core.presets import Preset
from core.registry import Registry
from core.schema import Metric  # noqa: F401  (re-exported: a task module declares its metrics with it)

REGISTRY: Registry["Task"] = Registry("task", __name__)
register = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get
options_of = REGISTRY.options_of


class DataError(RuntimeError):
    """Missing or malformed task data: the message is one line naming the file and what to do."""


@dataclass
class PrepareContext:
    data_dir: Path | None  # None: the task's online source
    cache_dir: Path  # tokenizers and downloads
    vocab_size: int  # the preset's vocabulary size (a task option may override it)
    max_len: int  # longest sequence in tokens
    log: Callable[[str], None] = print


@dataclass
class TaskData:
    protocol: str  # named in every row and report, e.g. "jsquad-offline"
    special: SpecialTokens
    vocab_size: int
    train: SeqSet
    dev: SeqSet  # held out from the training file: checkpoint selection only
    eval: SeqSet  # evaluation split with a gold target, for perplexity
    items: list[Any]  # task-specific evaluation items (prompts, gold answers)
    info: dict[str, Any] = field(default_factory=dict)  # data statistics recorded in results
    decode: Callable[[list[int]], str] | None = None
    tokenizer: Any = None  # the task's tokenizer (e.g. tasks.tokenizer.JaTokenizer), for reference rows
    passages: list[str] = field(default_factory=list)  # training-split text for `--pretrain passages` (never eval's)
    # the dev slice's items, shaped like `items`: where a way of answering (a decoder) may be chosen on held-out
    # training data rather than on the evaluation split (benchmarks.span_answers); empty if a task has none
    dev_items: list[Any] = field(default_factory=list)
    # each `eval` row's id in `evaluate`'s `per_question` (None: no per-question scores): the harness puts each
    # question's NLL beside its scores there, so a report can pair two cells' perplexities question by question
    eval_ids: list[Any] | None = None


@dataclass
class Reference:
    """A non-model row of a task's table: a floor (a non-neural baseline) or a ceiling.

    `identity` is everything its score depends on (it becomes the row's resume key), so a grid
    computes each reference once; `score()` runs only when that row is missing. It returns the
    row's metrics on the models' evaluation items (the task's metric keys and `eval_n`, the number
    of questions scored). When models score a sample of the split (e.g. `eval_limit`),
    `score_full()` gives the same metrics on the whole split.
    """

    name: str  # the row's `reference.name` (its `mixer` is null)
    kind: str  # "baseline" | "ceiling"
    rule: str  # one line, shown in the report
    identity: dict[str, Any]
    score: Callable[[], dict[str, Any]]
    score_full: Callable[[], dict[str, Any]] | None = None
    setting: str = ""  # what distinguishes rows of the same name (e.g. the tokenizer settings)


class Task:
    name: ClassVar[str] = "?"
    # Objective options this task needs by default ("OPT" for every objective that has it, or
    # "OBJECTIVE.OPT"), merged *under* the user's --objective-opt (e.g. MQAR: loss_on=answer).
    objective_defaults: ClassVar[dict[str, Any]] = {}
    # run_matrix's per-cell budget when --budget is not given (None: the CLI's own default)
    default_budget: ClassVar[str | None] = None
    # What `evaluate` reports, in display order; exactly one is the headline (tables sort by it).
    metrics: ClassVar[tuple[Metric, ...]] = ()
    # protocol name (TaskData.protocol) -> one sentence: what it trains on and evaluates on
    protocols: ClassVar[dict[str, str]] = {}

    @dataclasses.dataclass
    class Options:
        pass

    def __init__(self, opts: Any = None):
        self.opts = opts if opts is not None else self.Options()

    def prepare(self, ctx: PrepareContext) -> TaskData:
        raise NotImplementedError

    def model_preset(self, preset: Preset, vocab_size: int, d_model: int = 0) -> Preset:
        """The preset this task's models are sized by (`matched_config` solves the MLP width for its
        target). Default: the preset itself, at width `d_model` when given (0: the preset's)."""
        return dataclasses.replace(preset, d_model=d_model) if d_model else preset

    def evaluate(self, model, objective, data: TaskData, device: torch.device, batch_size: int,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Task metrics of a trained model (e.g. em, f1, gen_latency_ms), fractions in [0, 1];
        `progress(items done, of)` now and then, for the grid's progress line."""
        raise NotImplementedError

    def protocol_text(self, protocol: str) -> str:
        """What `protocol` means, for a report's header (a task whose protocol names are generated, like
        MQAR's `mqar-T64-kv4-V1024`, overrides this)."""
        return self.protocols.get(protocol, "")

    def declarations(self, protocol: str) -> dict[str, Any]:
        """What every row of this task carries so a report can show it without importing the task."""
        return {"task_metrics": [m.to_dict() for m in self.metrics], "protocol_text": self.protocol_text(protocol)}

    def grid_tag(self) -> str:
        """What in this task's options changes what its scores mean, for default grid names ("" for nothing):
        such rows then never share a grid (and its report) with rows that mean something else."""
        return ""

    def check_objective(self, objective) -> None:
        """Raise ValueError (one line) when this task's options ask of `objective` what it cannot do: checked
        when a cell is planned, before any cell trains, not after a budget was spent (default: nothing)."""

    def references(self, data: TaskData, ctx: PrepareContext) -> list[Reference]:
        """Floors and ceilings scored on the same evaluation items as the models (none by default)."""
        return []


def latency_ms(answer_one: Callable[[int], Any], n: int, device: torch.device) -> float:
    """Mean wall time, in ms, of answering items 0..n-1 one at a time (batch 1, the cost a user sees),
    after one untimed warm-up call; 0.0 when there is nothing to time."""
    if n <= 0:
        return 0.0
    answer_one(0)
    sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        answer_one(i)
    sync(device)
    return (time.perf_counter() - t0) / n * 1000


def build(name: str, **opts: Any) -> Task:
    return get(name)(REGISTRY.make_options(name, opts))
