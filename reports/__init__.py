"""Reports from results/ alone: `python -m reports` (or `run_matrix.py --report-only`).

`write_reports(results_dir, reports_dir, grid=None)` turns every `results/<grid>.jsonl` (or just the
named grid) into `reports/<grid>/README.md` with its PNG figures beside it, and the benchmark files
(`results/bench_*.jsonl`) into sections of every grid report (and `reports/benchmarks/` on their
own). It never reads a checkpoint or reruns a model: everything comes from the rows.

A grid report is self-contained, so it can be quoted without its context: a header names the data
protocol (in the words its task declared, the rows' `protocol_text`), budget, device, commit and package versions; then one table per (task, protocol) with
the task's references (floors and ceilings) sorted among the models, figures, and the benchmarks.

Modules: load (reading and checking rows), columns (the table columns registry), tables (markdown),
seeds (aggregates over seeds, each mixer against attention), additions (pretraining and extra data
against the task alone), figures (PNG), bench (benchmark sections).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from reports import additions, bench, figures, seeds
from core.files import write_atomic
from core.results import ResultsFileError
from reports.load import Results, is_reference, load
from reports.tables import (esc, full_split_table, grid_table, label, legend, mark_variants, primary_metric,
                            reference_rules)

BENCH_DIR = "benchmarks"


def write_reports(results_dir: Path, reports_dir: Path, grid: str | None = None) -> list[Path]:
    """Write `reports_dir/<grid>/README.md` (+ figures) for every grid file; returns the READMEs.

    Raises `core.results.ResultsFileError` naming file and line for a malformed results file.
    """
    res = load(results_dir, grid)
    if grid is not None and grid not in res.grids:  # a mistyped name must not pass for "nothing to do"
        path = Path(results_dir) / f"{grid}.jsonl"
        if path.exists():
            raise ResultsFileError(f"no grid {grid!r}: {path} holds no grid rows")
        have = ", ".join(res.every_grid)  # (load's own rule for a grid file: rows without 'bench')
        raise ResultsFileError(f"no grid {grid!r}: no {path}" + (f" (grids there: {have})" if have else ""))
    written = [write_grid_report(name, rows, res, Path(reports_dir) / name) for name, rows in sorted(res.grids.items())]
    if res.bench and grid is None:
        written.append(write_bench_report(res, Path(reports_dir) / BENCH_DIR))
    return written


def _clean(out_dir: Path) -> None:
    """Figures are regenerated on every run: drop the old ones so none goes stale."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for png in out_dir.glob("*.png"):
        png.unlink()


def _values(rows: list[dict[str, Any]], get) -> str:
    """Distinct values with their counts, most common first: '`a` (3), `b` (1)' or '`a`'."""
    c = Counter(str(v) for v in (get(r) for r in rows) if v is not None)
    if not c:
        return "n/a"
    if len(c) == 1:
        return f"`{esc(next(iter(c)))}`"
    return ", ".join(f"`{esc(v)}` ({n} rows)" for v, n in c.most_common())


def _versions(rows: list[dict[str, Any]]) -> str:
    seen: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        for k, v in (r.get("versions") or {}).items():
            seen[k].add(str(v))
    return ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in seen.items()) or "n/a"


def missing_cells(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells the grid expected (its manifest) that have no row: never finished (killed) or not run yet."""
    have = {r.get("key") for r in rows}
    return [c for c in expected if c["key"] not in have]


def header(name: str, rows: list[dict[str, Any]], source: Path | None,
           expected: list[dict[str, Any]] | None = None) -> list[str]:
    models = [r for r in rows if not is_reference(r)]
    missing = missing_cells(rows, expected or [])
    refs = [r for r in rows if is_reference(r)]
    ok = sum(r["status"] == "ok" for r in models)
    protocols = sorted({str(r.get("protocol")) for r in rows})
    texts = {str(r.get("protocol")): r["protocol_text"] for r in rows if r.get("protocol_text")}
    stamps = sorted(r["started_at"] for r in rows if r.get("started_at"))
    info = [
        ("data protocol", "<br>".join(f"`{esc(p)}`: {texts.get(p, 'see the task module')}" for p in protocols)),
        ("budget (per cell)", _values(models, lambda r: r.get("budget"))),
        ("pretraining", _values(models, _pretrain_text) if any(r.get("pretrain") for r in models) else "none"),
        ("preset", _values(models, lambda r: r.get("preset"))),
        ("device", _values(models or rows, lambda r: r.get("device"))),
        ("git commit", _values(rows, lambda r: r.get("git_commit"))),
        ("packages", _versions(rows)),
        ("rows written", f"{stamps[0]} … {stamps[-1]} (UTC)" if stamps else "n/a"),
    ]
    return [
        f"# wavebench report: `{esc(name)}`", "",
        f"Generated by `python -m reports` from `{source.name if source else name + '.jsonl'}`: "
        f"{len(models)} model cells ({ok} ok, {len(models) - ok} failed"
        + (f", **{len(missing)} of {len(models) + len(missing)} expected missing**" if missing else "")
        + f") and {len(refs)} reference rows. "
        "Every number below comes from those rows (no checkpoint read, no model rerun); the device column "
        "says where each was measured.", "",
        *([f"**Missing cells** (expected by the grid, no row: interrupted or not run yet; rerun the grid's "
           f"command to finish them): {', '.join(esc(c.get('label') or c['key']) for c in missing)}.", ""]
          if missing else []),
        "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in info), "",
    ]


def _pretrain_text(r: dict[str, Any]) -> str:
    """'passages + dir:… for 80% of the budget (1,234,567 corpus tokens)', or 'none'."""
    p = r.get("pretrain")
    if not p:
        return "none"
    cap = f", ≤{p['max_chars']:,} characters per source" if p.get("max_chars") else ""
    toks = (p.get("corpus") or {}).get("tokens")
    return f"{' + '.join(p['sources'])} for {p['frac']:.0%} of the budget{cap}" + (f" ({toks:,} corpus tokens)" if toks else "")


def _data_line(rows: list[dict[str, Any]]) -> str | None:
    d = next((r.get("data") for r in rows if not is_reference(r) and r.get("data")), None) \
        or next((r.get("data") for r in rows if r.get("data")), None)
    if not d:
        return None
    parts = []
    if "train_questions" in d:
        parts.append(f"{d['train_questions']:,} training / {d.get('dev_questions', 0):,} dev questions "
                     f"({fmt(d.get('train_tokens'))} training tokens)")
    sub = d.get("train_subset")
    if sub:  # JSQuAD's `train_frac`
        parts.append(f"trained on a seeded {sub['frac']:.0%} of the JSQuAD training paragraphs ({sub['paragraphs']:,} "
                     f"of {sub['of_paragraphs']:,}, `train_frac={sub['frac']:g}`; the tokenizer is the whole file's)")
    x = d.get("extra_train")
    if x:
        parts.append(f"of them {x['questions']:,} from {x['dataset']} ({x['articles_kept']} articles kept, "
                     f"{x['articles_dropped']} dropped for sharing a title ({x['dropped_by_title']}) or a paragraph "
                     f"({x['dropped_by_paragraph']}) with the held-out text)")
    if "eval_questions" in d:
        total = d.get("eval_questions_total")
        sample = f" (a seeded sample of {total:,})" if total and total > d["eval_questions"] else ""
        parts.append(f"{d['eval_questions']:,} evaluation questions{sample}")
    tok = d.get("tokenizer") or {}
    if tok:
        parts.append(f"tokenizer: vocab {d.get('vocab_size', tok.get('vocab_size'))}, "
                     f"`{tok.get('normalization')}` normalisation")
    if "max_len" in d:
        parts.append(f"max length {d['max_len']} tokens")
    if d.get("eval_truncated"):
        parts.append(f"{d['eval_truncated']} evaluation contexts truncated, {d.get('eval_answer_cut', 0)} of them "
                     "losing every gold answer (they stay in the denominator)")
    return "Data: " + "; ".join(parts) + "." if parts else None


def early_best_line(rows: list[dict[str, Any]]) -> str | None:
    """Which model cells kept the first dev check of a stage as their checkpoint while later checks of that
    stage did no better. Such a cell's dev loss is lowest where the first look was taken: the rest of the
    budget did not improve the model, and a better checkpoint may lie before that check (a long budget
    on a small training set overfits: docs/pretraining.md; a diffusion cell's dev loss can also rise from
    the start). Its scores are an early checkpoint's, not what the budget buys, which a reader of the table
    must know (None when no cell is such)."""
    hits: dict[tuple[str, str], list[tuple[Any, float]]] = defaultdict(list)
    n = 0
    for r in rows:
        curve, best = r.get("loss_curve") or [], (r.get("train") or {}).get("best_fraction")
        if is_reference(r) or r["status"] != "ok" or not curve or best is None:
            continue
        n += 1
        at = next((p for p in curve if p["frac"] == best), None)  # the kept check (None: no check of the curve)
        stage = [p for p in curve if at is not None and p.get("stage") == at.get("stage")]
        if len(stage) > 1 and stage[0] is at:
            hits[(label(r), r["objective"])].append((r.get("seed"), best))
    if not hits:
        return None
    cells = "; ".join(f"{esc(m)} × {o} (seed{'s' if len(v) > 1 else ''} {', '.join(str(s) for s, _ in v)}: at "
                      f"{', '.join(f'{b:.0%}' for _, b in v)} of the budget)" for (m, o), v in sorted(hits.items()))
    k = sum(len(v) for v in hits.values())
    return (f"**Best at the first dev check: {k} of {n} cells** (the stage's first; {cells}): no later check of that "
            "stage did better, so the rest of the budget did not improve these models (a small training set overfitted, "
            "or training moved away from the answers) and a better checkpoint may lie before that check. Their scores "
            "are an early checkpoint's, not what the budget buys; more checks (`--dev-checks`), a smaller budget or "
            "more training data say more.")


def _num(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def fmt(v: Any) -> str:
    from reports.columns import fmt_count

    return fmt_count(v) if isinstance(v, (int, float)) else "n/a"


def _run_details(rows: list[dict[str, Any]]) -> list[str]:
    models = [r for r in rows if not is_reference(r) and r["status"] == "ok"]
    if not models:
        return []
    lines = ["<details><summary>Run details per cell (backend, loss path, steps, checkpoint, seconds)</summary>", "",
             "| mixer | objective | seed | objective options | backend | loss path | steps | epochs | best ckpt at "
             "| best dev loss | dev tokens | prepare s | train wall s | dev checks s | final eval s | wall s |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(models, key=lambda r: (label(r), r["objective"], str(r.get("seed")))):
        b, t = r.get("backend") or {}, r.get("train") or {}
        best = t.get("best_fraction")
        opts = {k: v for k, v in (r.get("objective_info") or {}).items() if k != "loss_impl"}
        cells = [esc(label(r)), esc(r["objective"]), str(r.get("seed")),
                 esc(", ".join(f"{k}={v}" for k, v in opts.items())) or "—", esc(",".join(b.get("mixer") or [])) or "—",
                 esc(b.get("loss") or "—"), _num(t.get("steps"), "d"), _num(t.get("epochs"), ".2f"),
                 f"{best:.0%} of budget" if isinstance(best, (int, float)) else "—",
                 _num(t.get("best_dev_loss"), ".3f"), _num(t.get("dev_tokens"), ",d"),
                 *(_num((r.get("timing") or {}).get(k), ".1f") for k in ("prepare_s", "train_s", "dev_s", "eval_s")),
                 _num(r.get("wall_s"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "</details>", ""]


def group_section(task: str, protocol: str, rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    title = f"{task} · {protocol}"
    mark_variants(rows)  # rows that differ in more than their seed are named apart
    prefix = bench.slug(f"{task}_{protocol}")
    key = primary_metric(rows)
    table, cols = grid_table(rows)
    lines = [f"## {esc(title)}", ""]
    data = _data_line(rows)
    if data:
        lines += [data, ""]
    lines += [table, "", legend(cols, rows), ""]
    rules = reference_rules(rows)
    if rules:
        lines += ["References (same metric code, same evaluation items as the models):", "", *rules, ""]
    full = full_split_table(rows)
    if full:
        lines += ["References on the **whole** evaluation split (the models above scored a sample of it):", "",
                  full, ""]
    models = [r for r in rows if not is_reference(r) and r["status"] == "ok"]
    ratios = seeds.ppl_ratios(rows)  # the perplexity ratios' bootstraps, once for the table and the figure
    agg = seeds.seed_section(rows, key, ratios)
    if agg:
        lines += ["### Across seeds: mean ± 95% interval, and each mixer against attention", "", *agg, ""]
    early = early_best_line(rows)
    if early:
        lines += [early, ""]
    if models and len({r.get("seed") for r in models}) < 2:
        lines += ["One seed per cell: a difference smaller than the seed-to-seed spread is not evidence "
                  "(run `--seeds 0,1,2` for a spread).", ""]
    sweep = seeds.lr_sweep_section(rows)
    if sweep:
        lines += ["### Learning-rate sweep", "", *sweep, ""]
    figs = []
    devices = sorted({str(r["device"]) for r in models if r.get("device")})
    title = f"{title} · {' / '.join(devices)}" if devices else title  # every figure names its device(s)
    if key:
        figs.append(("score by mixer", figures.score_by_mixer(rows, key, title, out_dir / f"{prefix}_{key}_by_mixer.png")))
    figs.append(("loss curves", figures.loss_curves(rows, title, out_dir / f"{prefix}_loss_curves.png")))
    if key:
        figs.append(("quality vs speed", figures.quality_vs_speed(rows, key, title, out_dir / f"{prefix}_quality_vs_speed.png")))
        if any(r.get("sweep") for r in models):
            figs.append(("vs sequence length", figures.sweep_curves(rows, key, "seq_len", "d_model", title,
                                                                     out_dir / f"{prefix}_{key}_vs_seq_len.png")))
            figs.append(("vs width", figures.sweep_curves(rows, key, "d_model", "seq_len", title,
                                                           out_dir / f"{prefix}_{key}_vs_width.png")))
    figs.append(("perplexity against attention", figures.ppl_ratio(rows, title, out_dir / f"{prefix}_ppl_ratio.png", ratios)))
    drawn = [(alt, p) for alt, p in figs if p is not None]
    if drawn:
        lines += ["### Figures", ""]
        lines += [f"![{alt}]({p.name})\n" for alt, p in drawn]
    lines += _run_details(rows)
    return lines


def write_grid_report(name: str, rows: list[dict[str, Any]], res: Results, out_dir: Path) -> Path:
    _clean(out_dir)
    lines = header(name, rows, res.files.get(name), res.expected.get(name))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        # a sweep's points differ in protocol (e.g. MQAR's sequence length): one group, one set of curves
        protocol = f"{r.get('task')}-sweep" if r.get("sweep") else str(r.get("protocol") or r.get("task"))
        groups[(str(r.get("task")), protocol)].append(r)
    for (task, protocol), rs in sorted(groups.items()):
        lines += group_section(task, protocol, rs, out_dir)
    lines += additions.section(rows, out_dir)  # across protocols: extra data changes a cell's protocol
    lines += _bench_sections(res, out_dir)
    out = out_dir / "README.md"
    write_atomic(out, "\n".join(lines).rstrip() + "\n")
    return out


def _bench_sections(res: Results, out_dir: Path) -> list[str]:
    lines = []
    if res.bench.get("scaling"):
        lines += bench.scaling_section(res.bench["scaling"], out_dir)
    if res.bench.get("loss_memory"):
        lines += bench.loss_memory_section(res.bench["loss_memory"], out_dir)
    if res.bench.get("decode"):
        lines += bench.decode_section(res.bench["decode"], out_dir)
    return lines


def write_bench_report(res: Results, out_dir: Path) -> Path:
    _clean(out_dir)
    rows = [r for rs in res.bench.values() for r in rs]
    lines = ["# wavebench benchmarks", "",
             f"Generated by `python -m reports` from `results/bench_*.jsonl` ({len(rows)} rows).", "",
             "| | |", "|---|---|", f"| device | {_values(rows, lambda r: r.get('device'))} |",
             f"| git commit | {_values(rows, lambda r: r.get('git_commit'))} |", f"| packages | {_versions(rows)} |", ""]
    lines += _bench_sections(res, out_dir)
    if res.bench.get("span_answers"):  # about one training each: the benchmarks' page only, not every grid's
        lines += bench.span_answers_section(res.bench["span_answers"])
    out = out_dir / "README.md"
    write_atomic(out, "\n".join(lines).rstrip() + "\n")
    return out
