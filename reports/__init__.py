"""Reports from results/ alone: `python -m reports` (or `run_matrix.py --report-only`).

`write_reports(results_dir, reports_dir, grid=None)` turns every `results/<grid>.jsonl` (or just the
named grid) into `reports/<grid>/README.md`. It never reads a checkpoint or reruns a model.

Columns follow the rows: EM/F1 when a grid has them (JSQuAD), recall accuracy when it has
`accuracy` (MQAR), and the sweep point (seq_len, d_model) when rows carry `sweep`; a sweep grid
also gets the accuracy-by-length table (one line per mixer x objective x width).
"""
from __future__ import annotations

from pathlib import Path

from harness.results import latest_by_key, read_rows


def _fmt(v, spec: str = ".3f") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _main_table(rows: list[dict]) -> list[str]:
    has = lambda k: any(k in (r.get("metrics") or {}) for r in rows)  # noqa: E731
    sweep = any(r.get("sweep") for r in rows)
    head = ["mixer", "objective", "seed"] + (["seq_len", "d_model"] if sweep else []) \
        + (["EM", "F1"] if has("em") else []) + (["recall acc"] if has("accuracy") else []) \
        + ["ppl", "tokens/s", "params", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r.get("metrics") or {}
        s = r.get("sweep") or {}
        cells = [r["mixer"], r["objective"], r.get("seed")] + ([s.get("seq_len"), s.get("d_model")] if sweep else []) \
            + ([_fmt(m.get("em")), _fmt(m.get("f1"))] if has("em") else []) \
            + ([_fmt(m.get("accuracy"))] if has("accuracy") else []) \
            + [_fmt(m.get("ppl", m.get("ppl_bound")), ".2f"), _fmt(m.get("tokens_per_s"), ".0f"), r.get("params"),
               f"{r['status']}{': ' + r['error'] if r.get('error') else ''}"]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return lines


def _sweep_table(rows: list[dict]) -> list[str]:
    """Recall accuracy by sequence length, one line per (mixer, objective, d_model): the Zoology
    figure as a table (mean over seeds; failed points are n/a)."""
    pts = [r for r in rows if r.get("sweep")]
    if not pts:
        return []
    lengths = sorted({r["sweep"]["seq_len"] for r in pts})
    acc: dict[tuple, dict[int, list[float]]] = {}
    for r in pts:
        line = acc.setdefault((r["mixer"], r["objective"], r["sweep"]["d_model"]), {})
        a = (r.get("metrics") or {}).get("accuracy") if r["status"] == "ok" else None
        if a is not None:
            line.setdefault(r["sweep"]["seq_len"], []).append(a)
    out = ["", "## Recall accuracy by sequence length", "",
           "| mixer | objective | d_model | " + " | ".join(f"T={L}" for L in lengths) + " |",
           "|---|---|---|" + "---|" * len(lengths)]
    for (mixer, obj, d), by_len in sorted(acc.items()):
        vals = [_fmt(sum(v) / len(v)) if (v := by_len.get(L)) else "n/a" for L in lengths]
        out.append(f"| {mixer} | {obj} | {d} | " + " | ".join(vals) + " |")
    return out


def write_reports(results_dir: Path, reports_dir: Path, grid: str | None = None) -> list[Path]:
    paths = sorted(Path(results_dir).glob("*.jsonl"))
    if grid:
        paths = [p for p in paths if p.stem == grid]
    written = []
    for path in paths:
        rows = list(latest_by_key(read_rows(path)).values())
        out = Path(reports_dir) / path.stem / "README.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"# {path.stem}", ""] + _main_table(rows) + _sweep_table(rows)
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(out)
    return written
