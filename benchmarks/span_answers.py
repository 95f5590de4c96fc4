"""JSQuAD answers scored several ways on the same trained weights: free, and span-constrained as each
decoder can apply the constraint (README: "Answers as spans of the context").

    python -m benchmarks.span_answers --bench-out results/bench_span_answers.jsonl \
        --data-dir ../shared/data/jsquad-v1.3 --quick --mixers gated_context --objectives diffusion

Two cells trained apart differ by their training as well as by their decoding; this compares decoders
on one training. It runs `run_matrix.py` with the arguments that follow (each cell trains, is scored
and writes its row as usual) and, at each JSQuAD cell's final evaluation, scores the same weights once
more per way below, on the evaluation split's questions and on the dev slice's (`--splits`), one benchmark
row per (cell, seed, split, way) appended to `--bench-out` (`python -m reports` tables them in
`reports/benchmarks/`, with each decoder's mean over the seeds of one training setting and its difference
from free answers paired by seed: commands that differ only in `--seeds`, `--mixers`, `--objectives`,
`--out`, `--cache-dir` or `--no-progress` share a table):

- `free`: free generation (the objective's own sampler, no constraint);
- `span`: `answer_constraint=span` as the objective applies it by default (`constraint_path`);
- masked diffusion only, each order of `constrained_order` whatever the default: `span_left_to_right`
  (blocks of one position: exact) and `span_confidence` (the relaxed sampler, then the cut to the longest
  allowed prefix); and two variants of the latter: `span_uncut` (the relaxed sampler alone: its answers
  need not be spans) and `span_run` (cut to the longest allowed run anywhere in the answer instead).

`--ways free,span` scores only those (a diffusion cell otherwise decodes each split once per way).

Each row: f1, em, n, how many answers are spans of their title or paragraph (`spans`) and how many
are empty (`empty`); the `eval` rows of `free` and `span` are what a free and a constrained row
would report. The grid's own way on the evaluation split (`free`, or `span` under
`answer_constraint=span`) is scored on the answers the cell's `evaluate` gave, not decoded a second
time (until 2026-12-05 it was: one decode of the evaluation split more per cell). It patches the task's
`evaluate` in this process only, while the grid runs, so cells must run in it (the local executor, the
default).

Choose a way on the `dev` rows: the dev slice holds whole articles out of the training file (the ones
the grid selects checkpoints on; `TaskData.dev_items`), so choosing there leaves the evaluation split
unseen. The `eval` rows describe the decoders on the questions the grid reports; choosing on them would
fit the choice to the test.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

import tasks.jsquad as jsquad
from benchmarks.common import bench_row, noting_cells, with_opts
from core import results
from core.env import autocast
from tasks.answer_span import SpanConstraint
from tasks.jsquad_metric import corpus_scores


_LONGEST_PREFIX = SpanConstraint.longest_answer  # the product's cut (the ways below replace it for a while)


def longest_run(c: SpanConstraint, ids: list[int]) -> list[int]:
    """The longest contiguous run of `ids` that is a whole allowed answer (the earliest of the longest):
    the longest of the allowed prefixes of each suffix."""
    return max((_LONGEST_PREFIX(c, ids[a:]) for a in range(len(ids))), key=len, default=[])


@contextmanager
def _cut(rule: Callable[[SpanConstraint, list[int]], list[int]] | None) -> Iterator[None]:
    """Diffusion's cut replaced by `rule` (None: the default) while the block runs."""
    if rule is None:
        yield
        return
    saved = SpanConstraint.longest_answer
    SpanConstraint.longest_answer = rule
    try:
        yield
    finally:
        SpanConstraint.longest_answer = saved


WAYS = ("free", "span", "span_left_to_right", "span_confidence", "span_uncut", "span_run")  # `_ways`' names


def _ways(objective) -> list[tuple[str, Any, bool, Callable | None, str]]:
    """(way, objective, constrained, cut rule, how the answers were chosen) for each way it is scored."""
    ways = [("free", objective, False, None, "none: free generation"),
            ("span", objective, True, None, f"span: {objective.constraint_path}")]
    if objective.name == "diffusion":
        ltr, conf = (with_opts(objective, constrained_order=order) for order in ("left_to_right", "confidence"))
        relaxed = objective.RELAXED_SAMPLER
        ways += [("span_left_to_right", ltr, True, None, f"span: {ltr.constraint_path}"),
                 ("span_confidence", conf, True, None, f"span: {conf.constraint_path}"),
                 ("span_uncut", conf, True, lambda c, ids: list(ids), f"span: {relaxed}; not cut"),
                 ("span_run", conf, True, longest_run,
                  f"span: {relaxed}; then cut to the longest allowed run anywhere in the answer")]
    return ways


SPLITS = ("eval", "dev")  # the evaluation split's questions (`TaskData.items`), the dev slice's (`dev_items`)


@contextmanager
def scoring_every_way(out: Path, command: str, splits: tuple[str, ...] = SPLITS,
                      ways: tuple[str, ...] = WAYS) -> Iterator[None]:
    """Within the block, every JSQuAD final evaluation also scores the ways above that `ways` names on each
    of `splits` into `out` (benchmark rows, keyed by cell, seed, split, way and `command`: the grid's
    arguments). `ways` is there because a diffusion cell decodes each split once per way (every decoding
    of the dev slice and the test questions costs about what the cell's own evaluation does), and once
    the order is chosen, `free,span` is what a comparison needs.

    The seed is not among `evaluate`'s arguments, so the cell is noted where `run_cell` starts its row
    (`benchmarks.common.noting_cells`): without it the seeds of `--seeds 0,1,2` shared one
    key, and the report kept the last seed's rows only."""
    evaluate = jsquad.JSQuAD.evaluate

    def scored_every_way(self, model, objective, data, device, batch_size, progress=None):
        answer_ids, made = self.answer_ids, []  # the evaluation's own answers, kept for its way below

        def keeping(model_, objective_, prompts, batch_size_, cons=None, progress=None):
            ids = answer_ids(model_, objective_, prompts, batch_size_, cons, progress)
            made.append((dataclasses.astuple(objective_.opts), cons is not None, [data.decode(a) for a in ids]))
            return ids

        self.answer_ids = keeping  # on this instance, for this one call (the class is untouched)
        try:
            result = evaluate(self, model, objective, data, device, batch_size, progress)
        finally:
            del self.answer_ids
        cell = {"params": sum(p.numel() for p in model.parameters()),
                "task_opts": {k: str(v) for k, v in dataclasses.asdict(self.opts).items()}}
        for split in splits:
            items = data.items if split == "eval" else data.dev_items
            if not items:  # no score of no questions (it would be NaN)
                print(f"span_answers: this cell's data has no {split} questions; no {split} rows", flush=True)
                continue
            cons = self.span_constraints([p for p, _ in items], data)
            # each distinct decoding once: `span` is one of the named orders, and on the evaluation split the
            # grid's own way (`free`, or `span` under answer_constraint=span) is what `evaluate` just decoded
            # (the decoders are deterministic: greedy, or a sampler seeded afresh at each call)
            decoded: dict[tuple, list[str]] = {(o, c, None): p for o, c, p in made} if split == "eval" else {}
            for way, obj, constrained, rule, how in _ways(objective):
                if way not in ways:
                    continue
                same = (dataclasses.astuple(obj.opts), constrained, rule)
                if same not in decoded:
                    decoded[same] = answers(self, model, obj, data, items, device, batch_size,
                                            cons if constrained else None, rule)
                preds = decoded[same]
                scores = corpus_scores(preds, [it.answers for _, it in items])
                identity = {"mixer": model.cfg.mixer, "objective": objective.name, "seed": running["cell"].seed,
                            "split": split, "way": way, "command": command}
                row = bench_row("span_answers", device, identity, answers=how, f1=scores["f1"], em=scores["em"],
                                n=len(preds), empty=sum(not p for p in preds),
                                spans=sum(bool(p) and (p in it.paragraph or p in it.title)
                                          for p, (_, it) in zip(preds, items)), **cell)
                results.append_row(out, row)
        return result

    with noting_cells() as running:  # the cell whose evaluation runs now
        jsquad.JSQuAD.evaluate = scored_every_way
        try:
            yield
        finally:
            jsquad.JSQuAD.evaluate = evaluate


def answers(task, model, objective, data, items: list, device, batch_size: int,
            cons: list[SpanConstraint] | None, rule: Callable | None) -> list[str]:
    """Every answer to `items` ((prompt, item) pairs) as text, batched as `JSQuAD.evaluate` batches them
    (`answer_ids`)."""
    with torch.no_grad(), autocast(device), _cut(rule):
        ids = task.answer_ids(model, objective, [p for p, _ in items], batch_size, cons)
    return [data.decode(a) for a in ids]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Every other argument goes to run_matrix.py (python run_matrix.py --help).")
    ap.add_argument("--bench-out", type=Path, default=Path("results/bench_span_answers.jsonl"),
                    help="benchmark rows are appended here (default: %(default)s)")
    ap.add_argument("--splits", default=",".join(SPLITS),
                    help="whose questions each way answers: eval (the evaluation split's, as the grid scores "
                         "them), dev (the dev slice's: held-out training articles, where a way may be chosen); "
                         "default: %(default)s")
    ap.add_argument("--ways", default=",".join(WAYS),
                    help="which ways to score (free, span: each objective's default; diffusion also scores the "
                         "named orders and cuts: span_left_to_right, span_confidence, span_uncut, span_run); "
                         "default: all of them")
    args, rest = ap.parse_known_args(argv)
    splits = tuple(x.strip() for x in args.splits.split(",") if x.strip())
    if not splits or set(splits) - set(SPLITS):
        ap.error(f"--splits takes one or both of {', '.join(SPLITS)}; got {args.splits!r}")
    ways = tuple(x.strip() for x in args.ways.split(",") if x.strip())
    if not ways or set(ways) - set(WAYS):
        ap.error(f"--ways takes some of {', '.join(WAYS)}; got {args.ways!r}")
    import run_matrix

    with scoring_every_way(args.bench_out, " ".join(rest), splits, ways):
        rc = run_matrix.main(rest)
    print(f"wrote {args.bench_out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
