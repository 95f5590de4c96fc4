"""Markdown tables of a grid: one per (task, protocol), references sorted among the models.

Rows are model cells (mixer x objective, and seed / norm / sweep point when those vary) and the
task's references (`objective` = "none": non-neural baselines and ceilings, in italics). Everything
is sorted by the task's headline metric (as its rows declare it: F1 for QA, accuracy for MQAR), best
first in the metric's own direction, so where a model lands between the floors and the ceiling is
visible at a glance; failed cells come last with their error. The best *model* value of each column
is bold (references are not competitors).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from core.schema import Metric, declared_metrics, headline_metric, row_name
from reports.columns import Column, columns, fmt_count, on_cpu
from reports.load import finite, is_reference


def primary_metric(rows: list[dict[str, Any]]) -> str | None:
    """The key of the headline metric the rows' task declares (None: the rows carry none)."""
    m = headline_metric(rows)
    return m.key if m else None


def declared(rows: list[dict[str, Any]], key: str | None) -> Metric:
    """The declaration of metric `key` (a plain higher-is-better one when no row declares it)."""
    return next((m for m in declared_metrics(rows) if m.key == key), Metric(str(key), str(key)))


def sign(rows: list[dict[str, Any]], key: str | None) -> float:
    """+1 when higher values of `key` are better, -1 when lower are."""
    return -1.0 if declared(rows, key).better == "min" else 1.0


def metric(row: dict[str, Any], key: str | None) -> float | None:
    return finite((row.get("metrics") or {}).get(key)) if key else None


def esc(text: Any) -> str:
    """Safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def reference_kind(row: dict[str, Any]) -> str:
    return (row.get("reference") or {}).get("kind", "reference")


def label(row: dict[str, Any]) -> str:
    """How a row is named in tables and legends."""
    if is_reference(row):
        setting = (row.get("reference") or {}).get("setting")
        return f"{row_name(row)} ({setting})" if setting else row_name(row)
    v = variant(row)  # cells that pretrain first are told apart from those that do not
    return f"{row['mixer']} ({v})" if v else str(row["mixer"])


def variant(row: dict[str, Any]) -> str:
    """What sets a model row apart from another of its mixer, objective and seed in one grid: its
    pretraining ('pretrain passages 0.5'), and, where rows of the grid differ in them, its learning-rate
    setting and options (`mark_variants`), or ''. Aggregates over seeds, comparisons with attention,
    colours and legends key on it: two configurations are never averaged as if they were seeds."""
    if "_variant" in row:
        return row["_variant"]
    return settings(row).get("pretrain", "")


# how many dev checks every cell took before `--dev-checks` (2026-12-07) made it a setting: harness/train.py's
# TrainConfig.eval_points, 10 since the first commit (a row then did not record it)
DEV_CHECKS_BEFORE_THE_FLAG = 10


def settings(row: dict[str, Any]) -> dict[str, str]:
    """A model row's training settings beyond mixer, objective, seed, norm and sweep point, as text: what
    its cell key holds (pretraining, learning rate, options, budget, preset, loss path as resolved,
    compilation as asked, cuDNN attention as set on CUDA, dev-check tokens, task options) and, under a
    `seconds` budget, its device.
    A setting a row does not record (an older or a failed row) is left out, but for the dev checks: an ok
    row from before `--dev-checks` took the 10 every cell then took, and is named (or not) as a row of 10,
    so that a grid resumed since (its new rows record 10) keeps one configuration, not two."""
    out = {}
    p = row.get("pretrain")
    if p:
        cap = f" ≤{fmt_count(p['max_chars'])} chars" if p.get("max_chars") else ""
        out["pretrain"] = f"pretrain {'+'.join(p['sources'])} {p['frac']:g}{cap}"
    sw, lr = row.get("lr_sweep"), (row.get("train") or {}).get("lr")
    if sw:  # the sweep's rates, not the rate it chose: seeds of one sweep may choose differently
        out["lr"] = f"lr sweep {','.join(f'{x:g}' for x in sw.get('rates') or [])} ×{sw.get('frac', 0):g}"
    elif isinstance(lr, (int, float)):
        out["lr"] = f"lr {lr:g}"
    for k in ("mixer_opts", "objective_opts"):
        if row.get(k):
            out[k] = ", ".join(f"{a}={b}" for a, b in sorted(row[k].items()))
    train = row.get("train") or {}
    if row.get("budget"):
        out["budget"] = f"budget {row['budget']}"
    if row.get("preset"):
        out["preset"] = f"preset {row['preset']}"
    loss = (row.get("backend") or {}).get("loss")
    if loss:
        out["loss"] = f"loss {loss}"
    if train:  # the setting, not the outcome: a compile that fell back to eager is still a compiled cell
        if train.get("compile") or train.get("compile_error"):
            mode = train.get("compile_mode", "default")
            scope = train.get("compile_scope_asked", train.get("compile_scope", "blocks"))  # (older rows: what ran)
            out["compile"] = " ".join(["compiled", *([mode] if mode != "default" else []),
                                       *([f"scope {scope}"] if scope != "blocks" else [])])
        elif "compile" in train:
            out["compile"] = "eager"
    if train.get("sdpa_cudnn") is not None:  # set on CUDA only (None on a CPU; older rows: not recorded)
        out["sdpa"] = "cuDNN attention" if train["sdpa_cudnn"] else "no cuDNN attention"
    if train.get("dev_tokens_bound") is not None:  # the setting (--dev-tokens), not the sample's size
        out["dev_tokens"] = f"dev ≤{fmt_count(train['dev_tokens_bound'])} tok"
    if train.get("dev_checks_bound") is not None:  # --dev-checks (rows since 2026-12-07)
        out["dev_checks"] = f"{train['dev_checks_bound']} dev checks"
    elif train and row.get("status") == "ok":  # a row from before the flag: it took the trainer's 10 then
        out["dev_checks"] = f"{DEV_CHECKS_BEFORE_THE_FLAG} dev checks"
    point = row.get("sweep") or {}  # a sweep point's task options (MQAR's seq_len) are its own column
    task = {a: b for a, b in (row.get("task_opts") or {}).items() if a not in point}
    out["task_opts"] = ", ".join(f"{a}={b}" for a, b in sorted(task.items()))
    # where it ran, under a budget of the device's own seconds only: there the device decides how much is
    # trained (a token budget trains the same tokens anywhere, an A100-seconds budget is normalised)
    if str(row.get("budget", "")).startswith("seconds=") and row.get("device"):
        ranks = row.get("world_size") or 1
        out["device"] = str(row["device"]) + (f" ×{ranks}" if ranks > 1 else "")
    return out


# options are compared among the rows that can share them: one mixer's (one objective's) rows
_SCOPE = {"mixer_opts": "mixer", "objective_opts": "objective"}


def mark_variants(rows: list[dict[str, Any]]) -> None:
    """Name each model row's variant (`row['_variant']`) within its table: its pretraining always (the
    label's long-standing part); any other setting (`settings`: learning rate, budget, preset, loss,
    compilation, task options, ...) where the table's ok rows differ in it (a grid resumed under its
    name with another --lr, --budget or --no-compile trains cells of other keys beside the first ones; a
    row that records a setting not at all, an older or a failed one, differs from none); its mixer's
    (objective's) options where that mixer's (objective's) ok rows differ in them (a cell rerun with a
    --mixer-opt). A grid of one setting keeps plain names. `row['_shared_variant']` leaves out
    the mixer's options: the comparison with attention pairs cells on it."""
    models = [r for r in rows if not is_reference(r)]
    every = [settings(r) for r in models]
    ok = [(r, s) for r, s in zip(models, every) if r.get("status") == "ok"]

    def varies(k: str, row: dict[str, Any]) -> bool:
        scope = _SCOPE.get(k)
        peers = [s for r, s in ok if scope is None or r.get(scope) == row.get(scope)]
        vals = {s.get(k, "") for s in peers} if scope else {s[k] for s in peers if k in s}
        return len(vals) > 1

    for r, s in zip(models, every):
        shown = {k: v for k, v in s.items() if v and (k == "pretrain" or varies(k, r))}
        r["_variant"] = " · ".join(shown.values())
        r["_shared_variant"] = " · ".join(v for k, v in shown.items() if k != "mixer_opts")


def best_baseline(rows: list[dict[str, Any]], key: str | None, eval_n: Any = None) -> dict[str, Any] | None:
    """The strongest ok non-neural baseline (not a ceiling), on `eval_n` items when given."""
    cands = [r for r in rows if is_reference(r) and r["status"] == "ok" and reference_kind(r) == "baseline"
             and metric(r, key) is not None and (eval_n is None or (r.get("metrics") or {}).get("eval_n") == eval_n)]
    s = sign(rows, key)
    return max(cands, key=lambda r: s * metric(r, key)) if cands else None


def annotate_vs_baseline(rows: list[dict[str, Any]], key: str | None) -> list[dict[str, Any]]:
    """Copies of the rows with `_vs_baseline`: does each ok model cell beat the best baseline?"""
    out, s, name = [], sign(rows, key), declared(rows, key).header
    for r in rows:
        r = dict(r)
        v = metric(r, key)
        if not is_reference(r) and r["status"] == "ok" and v is not None:
            b = best_baseline(rows, key, (r.get("metrics") or {}).get("eval_n"))
            if b is None and best_baseline(rows, key) is not None:
                r["_vs_baseline"] = "n/a (other eval items)"
            elif b is not None:
                d = v - metric(b, key)
                r["_vs_baseline"] = f"{'beats' if s * d > 0 else 'below'} {row_name(b)} ({name} {d:+.3f})"
        out.append(r)
    return out


def sort_rows(rows: list[dict[str, Any]], key: str | None) -> list[dict[str, Any]]:
    """ok rows by the headline metric (best first in its direction, references among them), then failed rows."""
    s = sign(rows, key)

    def order(r: dict[str, Any]):
        v = metric(r, key)
        return (r["status"] != "ok", v is None, -s * (v or 0.0), is_reference(r), row_name(r), str(r.get("objective")))

    return sorted(rows, key=order)


def shown_columns(rows: list[dict[str, Any]]) -> list[Column]:
    """Columns whose rule holds; "varies" looks at model rows only (references have no seed or norm)."""
    models = [r for r in rows if not is_reference(r) and r["status"] == "ok"]
    cols = []
    for c in columns(rows):
        present = [v for v in (c.get(r) for r in rows) if v is not None]
        if c.show == "always" or (c.show == "any" and present) or \
                (c.show == "varies" and len({repr(c.get(r)) for r in models}) > 1):
            cols.append(c)
    return cols


def _competes(row: dict[str, Any], c: Column) -> bool:
    """A value that may be bolded: an ok model's, and for a speed not one measured on a (shared) CPU."""
    return not is_reference(row) and row["status"] == "ok" and not (c.speed and on_cpu(row))


def best_values(rows: list[dict[str, Any]], cols: list[Column]) -> dict[str, Any]:
    """Best model value per column with a direction, as shown; absent on a tie (a bold that every row
    shares, e.g. EM 0.000 everywhere, says nothing)."""
    best = {}
    for c in cols:
        if c.better is None:
            continue
        vals = [v for v in (c.get(r) for r in rows if _competes(r, c)) if isinstance(v, (int, float))]
        if vals:
            top = c.fmt(max(vals) if c.better == "max" else min(vals))
            if sum(c.fmt(v) == top for v in vals) == 1:
                best[c.key] = top
    return best


def state_lengths(rows: list[dict[str, Any]]) -> set[Any]:
    """The evaluation lengths T at which rows report `state_floats`."""
    return {(r.get("metrics") or {}).get("state_T") for r in rows if metric(r, "state_floats") is not None}


def header_text(c: Column, rows: list[dict[str, Any]]) -> str:
    """A column's header; "state floats at T" names T when every row shares it."""
    Ts = state_lengths(rows)
    if c.key == "state_floats" and len(Ts) == 1 and None not in Ts:
        return f"state floats at T={next(iter(Ts))}"
    return c.header


def cell_text(row: dict[str, Any], c: Column, best: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    v = c.get(row)
    if v is None:
        if c.key == "peak_mem" and row.get("status") == "ok" and not is_reference(row):
            return "n/a"
        return "—"
    text = esc(c.fmt(v))
    if c.speed and on_cpu(row) and not is_reference(row):
        text = f"~{text}"  # indicative: measured on a CPU
    if c.key == "state_floats" and len(state_lengths(rows or [row])) > 1:
        text += f" (T={(row.get('metrics') or {}).get('state_T')})"
    if c.key in best and _competes(row, c) and c.fmt(v) == best[c.key]:
        return f"**{text}**"
    return text


def status_text(row: dict[str, Any]) -> str:
    if is_reference(row):
        return f"reference ({reference_kind(row)})" if row["status"] == "ok" else f"failed: {esc(row.get('error'))}"
    if row["status"] == "ok":
        return "ok"
    return f"**failed**: {esc(row.get('error') or 'unknown error')}"


def grid_table(rows: list[dict[str, Any]]) -> tuple[str, list[Column]]:
    """The markdown table of one (task, protocol) group, and the columns it shows."""
    key = primary_metric(rows)
    rows = sort_rows(annotate_vs_baseline(rows, key), key)
    cols = shown_columns(rows)
    best = best_values(rows, cols)
    head = ["mixer", "objective", *(header_text(c, rows) for c in cols), "status"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---", *("---:" if c.numeric else "---" for c in cols), "---"]) + "|"]
    for r in rows:
        if is_reference(r):
            name, obj = f"*{esc(label(r))}*", f"*{reference_kind(r)}*"
        else:
            name, obj = esc(label(r)), esc(r["objective"])
        lines.append("| " + " | ".join([name, obj, *(cell_text(r, c, best, rows) for c in cols), status_text(r)]) + " |")
    return "\n".join(lines), cols


def legend(cols: list[Column], rows: list[dict[str, Any]]) -> str:
    key = primary_metric(rows)
    head = declared(rows, key).header if key else None
    lines = [f"Sorted by {head or 'status'} (best first), failed cells last; **bold**: the best model value of its "
             "column (none on a tie); *italic* rows are references (non-neural baselines and ceilings), not models.", ""]
    lines += [f"- `{header_text(c, rows)}`: {c.doc}" for c in cols if c.doc]
    if any(c.speed and c.get(r) is not None and on_cpu(r) and not is_reference(r) for c in cols for r in rows):
        lines.append("- `~`: a speed measured on a CPU, indicative only (a shared CPU swings several-fold "
                     "within one grid); never bolded")
    if any(c.key == "latency" for c in cols):
        lines.append(decode_paths_line(rows))
    constrained = answer_constraints_line(rows)
    if constrained:
        lines.append(constrained)
    return "\n".join(lines)


FREE_ANSWERS = "none: free generation"  # how a free row's answers were chosen (tasks.jsquad's evaluate)


def answer_constraints_line(rows: list[dict[str, Any]]) -> str | None:
    """How the models' answers were chosen, from each row's `metrics.answer_constraint`, when any cell's
    were constrained (e.g. JSQuAD's spans of the context): such scores answer another question than free
    generation's, and the references beside them are not constrained. None when every answer was free."""
    ways = _cells_by_metric(rows, "answer_constraint", FREE_ANSWERS)
    if all(w.startswith("none") for w in ways):
        return None
    return "- **answers**: " + _counted(ways) + ". A constrained cell's EM/F1 say where the model puts the " \
        "answer, not whether it can spell it: compare them with constrained cells only."


def _cells_by_metric(rows: list[dict[str, Any]], key: str, default: str) -> Counter[str]:
    """How many ok model cells have each text of `metrics[key]` (`default` when a row has none: rows written
    before the field existed)."""
    return Counter((r.get("metrics") or {}).get(key) or default
                   for r in rows if not is_reference(r) and r["status"] == "ok")


def _counted(counts: Counter[str]) -> str:
    """The texts in order, each with its number of cells, joined by "; " (n/a for none)."""
    return "; ".join(f"`{esc(t)}` ({n} cells)" for t, n in sorted(counts.items())) or "n/a"


def decode_paths_line(rows: list[dict[str, Any]]) -> str:
    """How the answers (and `answer ms`) were generated, from each row's `metrics.decode_path`."""
    paths = _cells_by_metric(rows, "decode_path", "rerun: the whole prefix per token (rows written before stateful "
                                                  "decoding existed)")
    return "- decoding path of `answer ms`: " + _counted(paths) + \
        ". Autoregressive cells decode with carried state (KV cache for attention, constant-size state for the " \
        "others: `python -m benchmarks.decode`); masked diffusion reruns the whole sequence at every sampler step."


def full_split_table(rows: list[dict[str, Any]]) -> str | None:
    """References scored on the whole evaluation split, when the models scored a sample of it."""
    refs = [r for r in rows if is_reference(r) and r["status"] == "ok" and (r.get("reference") or {}).get("full_split")]
    if not refs:
        return None
    decl = [m for m in declared_metrics(rows) if any(m.key in r["reference"]["full_split"] for r in refs)]
    keys = [m.key for m in decl]
    head = primary_metric(rows)
    first = head if head in keys else (keys[0] if keys else None)
    s = sign(rows, first)
    lines = ["| reference | kind | " + " | ".join(keys) + " | questions |", "|---|---|" + "---:|" * (len(keys) + 1)]
    for r in sorted(refs, key=lambda r: -s * (finite(r["reference"]["full_split"].get(first)) or 0) if first else 0):
        full = r["reference"]["full_split"]
        vals = [m.format(full[m.key]) if finite(full.get(m.key)) is not None else "—" for m in decl]
        lines.append(f"| *{esc(label(r))}* | {reference_kind(r)} | " + " | ".join(vals) + f" | {full.get('eval_n', '—')} |")
    return "\n".join(lines)


def reference_rules(rows: list[dict[str, Any]]) -> list[str]:
    seen, out = set(), []
    for r in rows:
        if is_reference(r) and row_name(r) not in seen:
            seen.add(row_name(r))
            rule = (r.get("reference") or {}).get("rule", "")
            out.append(f"- *{esc(row_name(r))}* ({reference_kind(r)}): {esc(rule)}")
    return out
