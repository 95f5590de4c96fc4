"""python -m reports.pair A.jsonl B.jsonl: the cells two results files share, paired by question and seed.

A grid's report pairs cells inside that grid (each mixer with attention, each addition with the task
alone). Some questions span two grids: the same cells with more dev checks (`--dev-checks`), on another
share of the training data (`--task-opt train_frac`), under another budget. This pairs every
configuration (mixer, objective, what it adds to the task's data, norm, sweep point) found in both files,
B against A, with the report's statistics (`reports.seeds`): the headline metric's mean per-question
difference and the perplexity ratio (of the bound, for masked diffusion), each with its 95% paired
bootstrap interval over questions and seeds. Rows only, as every report: nothing is rerun.

Pairing needs the same evaluation questions and, for the perplexity ratio, the same target tokens per
question (so the same tokenizer); where two cells lack them the table says so instead of a number. Within
one file a configuration must be one cell over its seeds: rows of one mixer, objective and addition that
differ in another setting (a learning rate, a budget) are refused, naming the setting, since averaging
them as seeds would mean nothing.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from core.results import ResultsFileError, latest_by_key, read_rows
from reports import seeds
from reports.additions import added
from reports.load import is_reference
from reports.tables import declared, metric, primary_metric, settings

Config = tuple[str, str, str, str, str]  # (mixer, objective, added, norm, sweep point)


class PairError(ValueError):
    """Two files that cannot be paired as asked (one line, for the command's error)."""


def configurations(rows: list[dict[str, Any]], name: str = "rows", only: str | None = None
                   ) -> dict[Config, list[dict[str, Any]]]:
    """The ok model rows (the last of each cell key) by configuration, seeds together; a PairError where
    one configuration holds rows of different settings (`reports.tables.settings`). `only`: the rows
    that add exactly that (`reports.additions.added`; "" for the task alone), keyed as if they added
    nothing, so that they pair with another file's rows of another addition."""
    groups: dict[Config, list[dict[str, Any]]] = defaultdict(list)
    for r in latest_by_key(rows).values():
        if is_reference(r) or r.get("status") != "ok" or (only is not None and added(r) != only):
            continue
        sweep = ", ".join(f"{k}={v}" for k, v in sorted((r.get("sweep") or {}).items()))
        what = "" if only is not None else added(r)
        groups[(r["mixer"], r["objective"], what, str(r.get("norm")), sweep)].append(r)
    for cfg, rs in groups.items():
        every = [settings(r) for r in rs]
        differ = sorted({k for s in every for k in s if len({t.get(k) for t in every}) > 1})
        if differ:
            raise PairError(f"{name}: {cfg[0]} × {cfg[1]}{' · ' + cfg[2] if cfg[2] else ''} holds cells of "
                            f"different settings ({', '.join(differ)}): pair files of one cell per configuration")
    return {k: sorted(v, key=lambda r: str(r.get("seed"))) for k, v in groups.items()}


def _mean(rs: list[dict[str, Any]], key: str, spec: str) -> str:
    """The mean over the seeds alone (`seeds.mean_text` with its interval: this table's interval is the paired one)."""
    vals = seeds.values(rs, key)
    return format(sum(vals) / len(vals), spec) if vals else "—"


def table(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], names: tuple[str, str] = ("A", "B"),
          only: tuple[str | None, str | None] = (None, None)) -> list[str]:
    """The markdown lines: one per configuration in both files (B against A), then those in one file only.
    `only`: each file's rows of that addition alone, paired across additions (`configurations`)."""
    a, b = configurations(rows_a, names[0], only[0]), configurations(rows_b, names[1], only[1])
    across = only != (None, None)  # the added column then says what each side adds
    both = sorted(set(a) & set(b))
    rows = [r for cfg in both for r in (*a[cfg], *b[cfg])]
    key = primary_metric(rows) if rows else None
    m = declared(rows, key) if key else None
    ppl = next((p for p in seeds.PERPLEXITIES if any(metric(r, p.key) is not None for r in rows)), None)
    head = ["mixer", "objective", "added", "seeds (A, B)"]
    if m:
        head += [f"{m.header} A", f"{m.header} B", f"Δ {m.header} (B − A) [95% CI] significant?"]
    if ppl:
        head += [f"{ppl.header} A", f"{ppl.header} B", f"{ppl.header} B ÷ A [95% CI] significant?"]
    lines = [f"A: {names[0]}", f"B: {names[1]}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cfg in both:
        ra, rb = a[cfg], b[cfg]
        name = " · ".join([cfg[0], *([f"norm {cfg[3]}"] if cfg[3] != "pre" else []), *([cfg[4]] if cfg[4] else [])])
        what = " → ".join(dict.fromkeys(added(r[0]) or "—" for r in (ra, rb))) if across else cfg[2] or "—"
        cells = [name, cfg[1], what, f"{len(ra)}, {len(rb)}"]
        if m:
            cells += [_mean(ra, m.key, m.fmt), _mean(rb, m.key, m.fmt),
                      seeds.diff_text(seeds.paired_diff(rb, ra, m.key))]
        if ppl:
            cells += [_mean(ra, ppl.key, ",.1f"), _mean(rb, ppl.key, ",.1f"),
                      seeds.ratio_text(seeds.ppl_ratio(rb, ra))]
        lines.append("| " + " | ".join(cells) + " |")
    if not both:
        lines.append("(no configuration in both files)")
    for side, mine, other in (("A", a, b), ("B", b, a)):
        alone = [" × ".join(c[:2]) + (f" · {c[2]}" if c[2] else "") for c in sorted(set(mine) - set(other))]
        if alone:
            lines.append(f"\nOnly in {side}: {'; '.join(alone)}.")
    lines += ["", "Paired by evaluation question and seed (the seeds both files hold); means over each file's "
              f"seeds. Δ: B's mean per-question difference from A's; ÷: the perplexity ratio (the summed "
              f"per-question NLL differences over the target tokens, exponentiated), each with its 95% paired-"
              f"bootstrap interval {seeds.HOW}; **yes** = the interval excludes 0 (×1). {seeds.COVERS}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="results file A (e.g. results/<grid>.jsonl): the base")
    p.add_argument("b", help="results file B: paired against A")
    for side in ("a", "b"):
        p.add_argument(f"--{side}-added", default=None, metavar="WHAT",
                       help=f"only {side.upper()}'s cells that add WHAT to the task's data, as the report's *added* "
                            "column names it (e.g. extra_train=jaquad; none: the task alone), paired with the other "
                            "file's whatever they add")
    args = p.parse_args(argv)
    only = tuple(None if v is None else "" if v == "none" else v for v in (args.a_added, args.b_added))
    try:
        rows = [read_rows(Path(f)) for f in (args.a, args.b)]
        print("\n".join(table(*rows, names=(args.a, args.b), only=only)))
    except FileNotFoundError as e:
        print(f"error: no results file {e.filename}", file=sys.stderr)
        return 2
    except (ResultsFileError, PairError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
