"""Reports from results/ alone: `python -m reports` (or `run_matrix.py --report-only`).

`write_reports(results_dir, reports_dir, grid=None)` turns every `results/<grid>.jsonl` (or just the
named grid) into `reports/<grid>/README.md`. It never reads a checkpoint or reruns a model.
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


def write_reports(results_dir: Path, reports_dir: Path, grid: str | None = None) -> list[Path]:
    paths = sorted(Path(results_dir).glob("*.jsonl"))
    if grid:
        paths = [p for p in paths if p.stem == grid]
    written = []
    for path in paths:
        rows = list(latest_by_key(read_rows(path)).values())
        out = Path(reports_dir) / path.stem / "README.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        # exact perplexity (autoregressive) and its upper bound (diffusion) never share a column
        lines = [f"# {path.stem}", "", "| mixer | objective | seed | EM | F1 | ppl | ppl_bound | tokens/s | params | status |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            m = r.get("metrics") or {}
            lines.append(f"| {r['mixer']} | {r['objective']} | {r.get('seed')} | {_fmt(m.get('em'))} | {_fmt(m.get('f1'))} | "
                         f"{_fmt(m.get('ppl'), '.2f')} | {_fmt(m.get('ppl_bound'), '.2f')} | "
                         f"{_fmt(m.get('tokens_per_s'), '.0f')} | {r.get('params')} | "
                         f"{r['status']}{': ' + r['error'] if r.get('error') else ''} |")
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(out)
    return written
