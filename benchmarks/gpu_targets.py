"""Issue 14's done-when figures, read off a GPU check's rows: each target, what was measured, and a
verdict (`met`, `not met`, `not measured`); then the check's comparisons, each default against its
alternative (cuDNN's attention, CUDA graphs, the whole-model compile scope, Mamba's pipelined walks), with the
faster named.

Why this exists: a lent GPU gives a session 15 device minutes, and the check's report holds four tables
(parts, grid cells, mixers alone, loss paths). Whether attention reached 2M tokens/s, whether Mamba
kept half of it, whether Mamba's mixer-alone speed stayed flat in L: each is a small computation over
rows of two of those tables, easy to get wrong by hand under time pressure. Here it is written once,
tested on made-up rows (tests/test_gpu_check.py), and printed at the top of the report. The rules
are the issue's "Done when", stated in each verdict's `target`:

- every cell of the default grid `ok`, and the CUDA-only tests pass (the `cuda_tests` part: at least one
  test passed; cut short by its limit, it decides nothing);
- attention, small preset (T = 512), autoregressive: >= 2,000,000 train tokens/s (the grid row's: with
  pretraining, its task stage's; the packed pretraining rows' figure is shown beside), on an H100 or
  H200 (the bound is theirs);
- the base preset's MFU reported beside it (the `grid_base` row, base preset);
- Mamba without mamba-ssm: >= 0.5x attention's train tokens/s in the small-preset grid, per objective;
- Mamba alone (`bench_scaling`), not on mamba-ssm: at every doubling length from 256 to 8,192 (16,384
  tokens per step), tokens/s within +-30% of its tokens/s at 256; a length that failed fails it.
Missing cells fail the first target only when the grid's command itself failed (a rerun resumes a grid
that ran out of time).

The comparisons call an alternative faster only by more than MARGIN (5%): a few seconds of training
are noisy, and a default should not flip on noise. Rows from a CPU (the dry run) decide nothing.

Rows only: nothing here imports torch, the trainer or a mixer, so a report merged on a CPU machine
(`benchmarks.gpu_check --merge`) gets the same verdicts.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

ATTENTION_TOKENS_PER_S = 2_000_000  # small preset, T = 512, H100/H200 (about 15% MFU)
MAMBA_VS_ATTENTION = 0.5  # Mamba's train tokens/s over attention's, same grid, same objective
FLAT_BAND = 0.30  # Mamba alone: every length's tokens/s within this of the shortest length's
FLAT_LENGTHS = (256, 8192)  # the span the flatness target names
TARGET_PRESET = "small"  # the grid's speed targets are the small preset's
TARGET_GPUS = ("H100", "H200")  # the attention bound is stated for these

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"


@dataclass
class Verdict:
    target: str  # the rule, in words
    measured: str  # what the rows say, with the numbers the verdict rests on
    verdict: str  # MET, NOT_MET or NOT_MEASURED


def _speed(v) -> float | None:
    """A figure that can be a speed (a positive finite number), or None (missing, a NaN)."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else None


def _tps(row: dict) -> float | None:
    """A row's train tokens/s, or None (a failed cell, a NaN)."""
    return _speed((row.get("metrics") or {}).get("tokens_per_s"))


def _latest(rows: Iterable[dict], key) -> dict:
    """The last row per key: a resumed grid or a rerun benchmark appends, and the newest row is the truth."""
    out: dict = {}
    for r in rows:
        out[key(r)] = r
    return out


def by_cell(rows: Iterable[dict]) -> dict:
    """A grid's newest row per (mixer, objective)."""
    return _latest(rows, lambda r: (r.get("mixer"), r.get("objective")))


def _off_gpu(rows: Iterable[dict]) -> str | None:
    """Why rows cannot decide a GPU target (a CPU dry run's: its verdicts say the command works), or None."""
    cpus = sorted({str(r.get("device")) for r in rows if str(r.get("device", "")).startswith("cpu")})
    return f"ran on {cpus[0]} (a dry run), not a GPU" if cpus else None


def _cell(cells: dict, mixer: str, objective: str) -> dict | None:
    r = cells.get((mixer, objective))
    return r if r is not None and r.get("status") == "ok" else None


def _kernel(row: dict) -> str:
    k = (row.get("backend") or {}).get("mixer") or ""
    return ", ".join(k) if isinstance(k, list) else str(k)


def _ran(rec: dict | None) -> bool:
    """A part's record says it ran (not skipped, nor left unstarted before a deadline)."""
    return bool(rec) and not str(rec.get("status", "")).startswith(("skipped", "not run"))


def _grid_ended(parts: list[dict]) -> str | None:
    """How the grid's last command ended when it failed (its process died: a crash, a pre-flight error),
    else None (ok, timed out, or no record). `grid_resume`, when it ran, is the grid's last command."""
    rec = {p.get("name"): p for p in parts}
    last = rec.get("grid_resume") if _ran(rec.get("grid_resume")) else rec.get("grid") or {}
    status = str(last.get("status", ""))
    return f"the grid's command {status}: {last.get('note', '')[:120]}".strip() if status.startswith("failed") else None


def grid_cells(rows: list[dict], expected: list[tuple[str, str]], parts: list[dict] | None = None) -> Verdict:
    """Every expected cell's newest row ok. Missing cells decide nothing when the grid ran out of time (a
    rerun resumes it), but fail the target when the grid's command itself failed (a crash, an error)."""
    target = "every cell of the default grid ends `ok`"
    died = _grid_ended(parts or [])
    if not rows:
        return Verdict(target, died or "no grid rows", NOT_MET if died else NOT_MEASURED)
    cells = by_cell(rows)
    bad = [f"{m} x {o} ({cells[(m, o)].get('status')}: {(cells[(m, o)].get('error') or '')[:60]})"
           for m, o in expected if (m, o) in cells and cells[(m, o)].get("status") != "ok"]
    missing = [f"{m} x {o}" for m, o in expected if (m, o) not in cells]
    ok = len(expected) - len(bad) - len(missing)
    measured = f"{ok} of {len(expected)} cells ok"
    if bad:
        measured += "; not ok: " + "; ".join(bad)
    if missing:
        measured += "; no row: " + ", ".join(missing)
    if bad:
        return Verdict(target, measured, NOT_MET)
    cpu = _off_gpu(cells.values())
    if cpu:
        return Verdict(target, f"{measured}; {cpu}", NOT_MEASURED)
    if missing and died:
        return Verdict(target, f"{measured}; {died}", NOT_MET)
    return Verdict(target, measured, NOT_MEASURED if missing else MET)


def cuda_tests(parts: list[dict]) -> Verdict:
    target = "the CUDA-only tests pass (`cuda_tests`)"
    rec = next((p for p in parts if p.get("name") == "cuda_tests"), None)
    status = str((rec or {}).get("status", "not run"))
    if not _ran(rec):
        return Verdict(target, status, NOT_MEASURED)
    measured = f"{status}: {rec.get('note', '')}".strip()
    if status.startswith("timed out"):  # cut short by its limit: the tests not reached decide nothing
        return Verdict(target, measured, NOT_MEASURED)
    if status != "ok":
        return Verdict(target, measured, NOT_MET)
    passed = re.search(r"(\d+) passed", rec.get("note", ""))
    if not passed or int(passed.group(1)) == 0:  # pytest exits 0 when every selected test skipped
        return Verdict(target, measured + "; no test passed (all skipped?)", NOT_MEASURED)
    return Verdict(target, measured, MET)


def _small(rows: list[dict]) -> tuple[dict, str | None]:
    """The grid's cells by (mixer, objective), and why the speed targets cannot be read off them (None: they can)."""
    cells = by_cell(rows)
    presets = sorted({str(r.get("preset")) for r in cells.values()})
    if cells and presets != [TARGET_PRESET]:
        return cells, f"the grid ran preset {', '.join(presets)}; the target is the {TARGET_PRESET} preset's"
    return cells, _off_gpu(cells.values())


def attention_speed(rows: list[dict], variants: dict[str, list[dict]] | None = None) -> Verdict:
    """The default grid's row decides; `variants` (a compile variant's name -> its grid's rows, e.g. CUDA
    graphs) are shown beside it: when the default misses, they say whether a flag would meet the target."""
    target = (f"attention x autoregressive, {TARGET_PRESET} preset: >= {ATTENTION_TOKENS_PER_S:,} train tokens/s "
              "(H100/H200)")
    cells, why = _small(rows)
    row = _cell(cells, "attention", "autoregressive")
    if why or row is None or _tps(row) is None:
        return Verdict(target, why or "no ok attention x autoregressive row", NOT_MEASURED)
    tps = _tps(row)
    mfu = (row.get("metrics") or {}).get("mfu")
    measured = f"{tps:,.0f} tokens/s ({tps / ATTENTION_TOKENS_PER_S:.2f}x the target"
    measured += f", MFU {100 * mfu:.1f}%)" if isinstance(mfu, (int, float)) else ")"
    max_len = (row.get("data") or {}).get("max_len")
    measured += f" on {row.get('device', '?')}" + (f", rows up to T = {max_len}" if max_len else "")
    measured += _pretraining_speed(row)
    diff = _cell(cells, "attention", "diffusion")
    if diff is not None and _tps(diff) is not None:
        measured += f"; diffusion {_tps(diff):,.0f}"
    for name, vrows in (variants or {}).items():
        v = _cell(by_cell(vrows), "attention", "autoregressive")
        if v is not None and _tps(v) is not None and v.get("preset") == TARGET_PRESET and not _off_gpu([v]):
            measured += f"; with {name}: {_tps(v):,.0f}"
    if not any(gpu in str(row.get("device", "")) for gpu in TARGET_GPUS):  # the bound is an H100/H200's
        return Verdict(target, measured + f"; the target is for {' / '.join(TARGET_GPUS)}", NOT_MEASURED)
    return Verdict(target, measured, MET if tps >= ATTENTION_TOKENS_PER_S else NOT_MET)


def pretrain_stage(row: dict) -> dict:
    """A row's pretraining stage record (`train.stages`), or {} (a cell that does not pretrain)."""
    return next((s for s in (row.get("train") or {}).get("stages") or [] if s.get("stage") == "pretrain"), {})


def _pretraining_speed(row: dict) -> str:
    """A pretraining cell's other figure: its task stage decides (the row's tokens/s, comparable with a cell
    that does not pretrain), its packed pretraining rows (every row full, T = the preset's length) beside."""
    pre = pretrain_stage(row)
    tps = _speed(pre.get("tokens_per_s"))
    if tps is None:
        return ""
    T = ((row.get("pretrain") or {}).get("corpus") or {}).get("row_len")
    mfu = pre.get("mfu")
    return (f"; these are the task stage's (the pretraining stage's packed rows{f', T = {T}' if T else ''}: "
            f"{tps:,.0f}" + (f", MFU {100 * mfu:.1f}%)" if isinstance(mfu, (int, float)) else ")"))


def base_mfu(rows: list[dict]) -> Verdict:
    target = "the base preset's MFU, reported beside the small one's (`grid_base`)"
    row = _cell(by_cell(rows), "attention", "autoregressive")
    if row is None or _tps(row) is None:
        return Verdict(target, "no ok base-preset row", NOT_MEASURED)
    if row.get("preset") != "base":
        return Verdict(target, f"the row ran preset {row.get('preset')}, not base", NOT_MEASURED)
    cpu = _off_gpu([row])
    if cpu:
        return Verdict(target, f"{_tps(row):,.0f} tokens/s; {cpu}", NOT_MEASURED)
    mfu = (row.get("metrics") or {}).get("mfu")
    if not isinstance(mfu, (int, float)):  # a device without a known peak (harness/flops.py)
        return Verdict(target, f"{_tps(row):,.0f} tokens/s; no MFU (no peak FLOP/s known for {row.get('device')})",
                       NOT_MEASURED)
    return Verdict(target, f"MFU {100 * mfu:.1f}% ({_tps(row):,.0f} tokens/s, preset {row.get('preset')})", MET)


def mamba_speed(rows: list[dict], objectives: list[str]) -> Verdict:
    target = (f"Mamba without mamba-ssm: >= {MAMBA_VS_ATTENTION}x attention's train tokens/s, {TARGET_PRESET} "
              "preset, each objective")
    cells, why = _small(rows)
    if why:
        return Verdict(target, why, NOT_MEASURED)
    ratios, notes = [], []
    for o in objectives:
        a, m = _cell(cells, "attention", o), _cell(cells, "mamba", o)
        if a is None or m is None or _tps(a) is None or _tps(m) is None:
            notes.append(f"{o}: no ok pair of rows")
            continue
        r = _tps(m) / _tps(a)
        ratios.append(r)
        notes.append(f"{o} {r:.2f}x ({_tps(m):,.0f} / {_tps(a):,.0f}, kernel {_kernel(m) or '?'})")
    measured = "; ".join(notes)
    kernels = {_kernel(_cell(cells, "mamba", o)) for o in objectives if _cell(cells, "mamba", o) is not None}
    if any("mamba_ssm" in k for k in kernels):
        return Verdict(target, measured + "; ran on mamba-ssm, not the fallback the target is about", NOT_MEASURED)
    if any(r < MAMBA_VS_ATTENTION for r in ratios):
        return Verdict(target, measured, NOT_MET)
    return Verdict(target, measured, MET if len(ratios) == len(objectives) else NOT_MEASURED)


def mamba_flat(scaling_rows: list[dict]) -> Verdict:
    lo, hi = FLAT_LENGTHS
    target = (f"Mamba alone (`bench_scaling`), L = {lo:,} to {hi:,} at a fixed tokens per step: every length's "
              f"tokens/s within +-{FLAT_BAND:.0%} of L = {lo:,}'s")
    rows = _latest([r for r in scaling_rows if r.get("mixer") == "mamba"], lambda r: r.get("seq_len"))
    span = {L: r for L, r in rows.items() if isinstance(L, int) and lo <= L <= hi}
    tps = {L: v for L, r in span.items() if r.get("status") == "ok" and (v := _speed(r.get("tokens_per_s")))}
    failed = [f"{L:,}: {r.get('status')} {(r.get('error') or '')[:60]}".strip() for L, r in sorted(span.items())
              if r.get("status") != "ok"]
    if any("mamba_ssm" in str(r.get("backend", "")) for r in span.values()):
        return Verdict(target, "ran on mamba-ssm, not the fallback the target is about", NOT_MEASURED)
    cpu = _off_gpu(span.values())
    if cpu:
        return Verdict(target, cpu, NOT_MEASURED)
    if failed:  # a length the mixer could not run (out of memory, an error) fails the target
        return Verdict(target, "failed at L = " + "; ".join(failed), NOT_MET)
    if lo not in tps:
        return Verdict(target, f"no ok row at L = {lo:,}", NOT_MEASURED)
    rel = {L: tps[L] / tps[lo] for L in sorted(tps)}
    backend = span[lo].get("backend", "?")
    measured = ", ".join(f"{L:,}: {rel[L]:.2f}x" for L in rel) + f" (L = {lo:,}: {tps[lo]:,.0f} tokens/s, {backend}; " \
        f"fastest / slowest length {max(tps.values()) / min(tps.values()):.2f})"
    outside = [L for L, r in rel.items() if abs(r - 1) > FLAT_BAND + 1e-9]  # 0.70x is inside the band
    if outside:
        return Verdict(target, measured, NOT_MET)
    gaps = [L for L in _doubling(lo, hi) if L not in tps]
    if gaps:  # every length of the span, not only its ends
        return Verdict(target, measured + "; no ok row at L = " + ", ".join(f"{L:,}" for L in gaps), NOT_MEASURED)
    return Verdict(target, measured, MET)


def _doubling(lo: int, hi: int) -> list[int]:
    out = [lo]
    while out[-1] * 2 <= hi:
        out.append(out[-1] * 2)
    return out


def verdicts(grid: list[dict], base: list[dict], scaling: list[dict], parts: list[dict],
             mixer_names: list[str], objective_names: list[str],
             variants: dict[str, list[dict]] | None = None) -> list[Verdict]:
    """Every target, in the issue's order. `grid`: the default grid's rows (`gpu_check`), `base`: the base
    preset's (`gpu_check_base`), `scaling`: bench_scaling's, `parts`: the parts' records; the expected
    cells are every registered mixer x objective. `variants`: the compile variants' grids (flag -> rows),
    whose attention figure is shown beside the default's."""
    expected = [(m, o) for m in mixer_names for o in objective_names]
    return [grid_cells(grid, expected, parts), cuda_tests(parts), attention_speed(grid, variants), base_mfu(base),
            mamba_speed(grid, objective_names), mamba_flat(scaling)]


def table(vs: list[Verdict]) -> list[str]:
    """Markdown lines: one row per target."""
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    return lines + [f"| {v.target} | {v.measured.replace('|', '/')} | **{v.verdict}** |" for v in vs]


# --- the comparisons: each default against its alternative, the choices no CPU could make ---

MARGIN = 0.05  # an alternative must be this much faster to be called faster (timings of a few seconds are noisy)


@dataclass
class Comparison:
    question: str  # which choice, and the default's flag
    measured: str  # the figures
    answer: str  # "the default (...)", "the alternative (...): x1.23", "within 5%", or NOT_MEASURED


def _faster(default: float, alternative: float, default_name: str, alt_name: str) -> str:
    """Which of two speeds (higher is faster) wins, beyond MARGIN."""
    r = alternative / default
    if r >= 1 + MARGIN:
        return f"{alt_name}: {r:.2f}x the default's speed"
    if r <= 1 / (1 + MARGIN):
        return f"{default_name} (the default): {1 / r:.2f}x the alternative's speed"
    return f"within {MARGIN:.0%}: keep the default ({default_name})"


def _grid_speed(grid: list[dict], other: list[dict], question: str, default_name: str, alt_name: str) -> Comparison:
    """attention x autoregressive's train tokens/s in the default grid against a variant grid's."""
    a, b = (_cell(by_cell(rows), "attention", "autoregressive") for rows in (grid, other))
    if a is None or b is None or _tps(a) is None or _tps(b) is None:
        return Comparison(question, "no ok attention x autoregressive row in both grids", NOT_MEASURED)
    warm = lambda r: (r.get("train") or {}).get("warm_seconds")  # noqa: E731
    cached = " (the default warmed from the cache)" if (a.get("train") or {}).get("compile_warmed") else ""
    measured = (f"{_tps(b):,.0f} against {_tps(a):,.0f} train tokens/s; warm-up (compiling) {warm(b)} s against "
                f"{warm(a)} s{cached}")
    cpu = _off_gpu([a, b])
    if cpu:
        return Comparison(question, f"{measured}; {cpu}", NOT_MEASURED)
    return Comparison(question, measured, _faster(_tps(a), _tps(b), default_name, alt_name))


def _sweep_variants(sweep: list[dict], alt: str, question: str, label: str, names: tuple[str, str],
                    flatness: bool = False) -> Comparison:
    """The Triton scan's default (`triton`) against variant `alt` in bench_scan_stages' rows: per length where
    both ran, alt's ms over the default's (> 1: the default faster), decided by their geometric mean;
    `flatness`: also each one's slowest over fastest length (the flat-in-T target)."""
    ms = {(r.get("scan"), r.get("length")): r.get("ms") for r in sweep if isinstance(r.get("ms"), (int, float))}
    lengths = sorted({L for v, L in ms if v == "triton" and (alt, L) in ms})
    if not lengths:
        return Comparison(question, "no length timed with both", NOT_MEASURED)
    ratios = [ms[(alt, L)] / ms[("triton", L)] for L in lengths]
    gmean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    measured = f"{label}, ms: " + ", ".join(f"{L:,}: {r:.2f}" for L, r in zip(lengths, ratios)) \
        + f" (geometric mean {gmean:.2f})"
    if flatness:  # ms at a fixed number of tokens: 1 / speed
        spread = lambda v: max(ms[(v, L)] for L in lengths) / min(ms[(v, L)] for L in lengths)  # noqa: E731
        measured += f"; slowest / fastest length: {names[0]} {spread('triton'):.2f}, {names[1]} {spread(alt):.2f}"
    return Comparison(question, measured, _faster(1.0, 1.0 / gmean, *names))  # speeds: 1 / ms


def scan_stages(sweep: list[dict]) -> Comparison:
    return _sweep_variants(sweep, "triton_unpipelined",
                           "Mamba's Triton walks software-pipelined (`triton`, the default) or not "
                           "(`--mixer-opt mamba.triton_stages=1`)?", "unpipelined / pipelined",
                           ("pipelined", "unpipelined"))


def scan_chunking(sweep: list[dict]) -> Comparison:
    """The Triton scan cut into chunks until ~1,024 programs (`triton`) or ~256 (`triton_programs_256`). Up to
    T = 1,024 at bench_scaling's shapes the second does not chunk at all, from 2,048 it cuts a quarter as
    many chunks: fewer summary walks against fewer programs to fill the GPU."""
    return _sweep_variants(sweep, "triton_programs_256",
                           "Mamba's Triton scan: rows cut into chunks until ~1,024 programs (`triton`, the default) "
                           "or ~256 (`--mixer-opt mamba.triton_programs=256`)?", "256 / 1,024 programs",
                           ("1,024 programs", "256 programs"), flatness=True)


ONE_WARP = "--mixer-opt mamba.triton_bwd_warps=1 --mixer-opt mamba.triton_bwd_block_d=8"  # the backward's variant


def scan_bwd_shape(sweep: list[dict]) -> Comparison:
    """The backward walk on 4 warps of 32 channels per program (`triton`) or one warp of 8 (`triton_bwd_1warp`):
    12 barriers per reverse step against 2 in the sm_90 code, against 4x the programs and their partial sums."""
    return _sweep_variants(sweep, "triton_bwd_1warp",
                           "Mamba's Triton backward walk on 4 warps of 32 channels (`triton`, the default) or one "
                           f"warp of 8 (`{ONE_WARP}`)?",
                           "1 warp / 4 warps", ("4 warps", "1 warp"))


def scan_bwd_pipelined(sweep: list[dict], one_warp: bool = False) -> Comparison:
    """The backward's reverse walk waiting for each step's loads (`triton`, the default) or software-pipelined
    over 2 stages (`triton_bwd_pipelined`; with `one_warp`, `triton_bwd_1warp_pipelined`: that and one warp of 8)."""
    flags = "--mixer-opt mamba.triton_bwd_stages=2" + (f" {ONE_WARP}" if one_warp else "")
    shape = " on one warp of 8" if one_warp else ""
    return _sweep_variants(sweep, "triton_bwd_1warp_pipelined" if one_warp else "triton_bwd_pipelined",
                           f"Mamba's Triton backward: its reverse walk unpipelined (`triton`, the default) or "
                           f"pipelined{shape} (`{flags}`)?", "pipelined / unpipelined",
                           ("unpipelined", "pipelined" + shape))


def comparisons(grid: list[dict], graphs: list[dict], model_scope: list[dict], sweep: list[dict],
                sdpa_cudnn: list[dict] = ()) -> list[Comparison]:
    """The check's second command: cuDNN's attention, CUDA graphs, the whole-model compile scope, the walks'
    pipelining, the scan's chunking, the backward walk's launch shape and its reverse walk's pipelining (alone, and
    with one warp)."""
    return [
        _grid_speed(grid, list(sdpa_cudnn), "attention without cuDNN's SDPA kernel (the default) or with it "
                    "(`--sdpa-cudnn`)?", "without cuDNN", "cuDNN attention"),
        _grid_speed(grid, graphs, "CUDA graphs (`--compile-mode reduce-overhead`) or the default compile mode?",
                    "the default compile mode", "reduce-overhead"),
        _grid_speed(grid, model_scope, "each block compiled (the default) or the whole LM (`--compile-scope model`)?",
                    "each block", "the whole LM"),
        scan_stages(sweep),
        scan_chunking(sweep),
        scan_bwd_shape(sweep),
        scan_bwd_pipelined(sweep),
        scan_bwd_pipelined(sweep, one_warp=True),
    ]


def comparison_table(cs: list[Comparison]) -> list[str]:
    lines = ["| choice | measured | faster |", "|---|---|---|"]
    return lines + [f"| {c.question} | {c.measured.replace('|', '/')} | {c.answer} |" for c in cs]
