"""Report sections for the benchmarks: cost vs sequence length, and output-loss memory.

Both explain *why* grid cells differ (speed and memory), from `results/bench_*.jsonl` rows
(benchmarks/scaling.py, benchmarks/loss_memory.py). One sub-section per device.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from reports import figures, stats
from reports.columns import fmt_bytes, fmt_count
from reports.load import finite
from reports.tables import FREE_ANSWERS, esc


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60]


def by_device(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[r["device"]].append(r)
    return dict(sorted(out.items()))


def _failed(r: dict[str, Any]) -> str:
    return "OOM" if str(r.get("error", "")).startswith("OutOfMemory") else "failed"


def _pivot(rows: list[dict[str, Any]], value, title: str) -> list[str]:
    lengths = sorted({r["seq_len"] for r in rows})
    mixers = sorted({r["mixer"] for r in rows})
    cell = {(r["mixer"], r["seq_len"]): r for r in rows}
    lines = [f"| {title} | " + " | ".join(f"N={L:,}" for L in lengths) + " |", "|---|" + "---:|" * len(lengths)]
    for m in mixers:
        vals = []
        for L in lengths:
            r = cell.get((m, L))
            if r is None:
                vals.append("")
            elif r["status"] != "ok":
                vals.append(f"**{_failed(r)}**")
            else:
                vals.append(value(r))
        backend = next((r.get("backend") for r in rows if r["mixer"] == m and r.get("backend")), None)
        lines.append(f"| {esc(m)}{f' ({esc(backend)})' if backend else ''} | " + " | ".join(vals) + " |")
    return lines


def scaling_section(rows: list[dict[str, Any]], out_dir: Path, level: str = "##") -> list[str]:
    lines = [f"{level} Cost versus sequence length", "",
             "One mixer alone (no embedding, MLP or loss), forward + backward with gradients of the input and every "
             "parameter, at a fixed number of tokens per step (batch = tokens ÷ N). On the log-log time plot a linear "
             "mixer climbs with slope 1 and quadratic attention with slope 2 (dotted and dashed guides). "
             "A mixer stops at its first out-of-memory length. From `python -m benchmarks.scaling`.", ""]
    for dev, rs in by_device(rows).items():
        r0 = rs[0]
        lines += [f"**{esc(dev)}**: d_model={r0.get('d_model')}, {r0.get('tokens_per_step')} tokens per step, "
                  f"{r0.get('dtype')}, {'causal' if r0.get('causal') else 'bidirectional'}. "
                  f"Peak memory: {_measure(rs)}.", ""]
        path = figures.scaling(rs, out_dir / f"scaling_{slug(dev)}.png")
        if path:
            lines += [f"![cost vs sequence length on {esc(dev)}]({path.name})", ""]
        lines += _pivot(rs, lambda r: f"{r['ms_per_seq']:.2f}", "fwd+bwd ms per sequence") + [""]
        lines += _pivot(rs, lambda r: fmt_count(r["tokens_per_s"]), "tokens / s") + [""]
        lines += _pivot(rs, lambda r: fmt_bytes(r["peak_mem_bytes"]) if r.get("peak_mem_bytes") is not None else "n/a",
                        "peak memory") + [""]
        notes = [f"- {esc(r['mixer'])} at N={r['seq_len']:,}: {esc(r['note'])}" for r in rs if r.get("note")]
        notes += [f"- {esc(r['mixer'])} at N={r['seq_len']:,}: {esc(r['error'])}" for r in rs
                  if r["status"] != "ok" and _failed(r) != "OOM"]
        lines += notes + ([""] if notes else [])
    return lines


def _measure(rows: list[dict[str, Any]]) -> str:
    m = next((r.get("mem_measure") for r in rows if r.get("peak_mem_bytes") is not None), None)
    return m or "n/a on this device"


def loss_memory_section(rows: list[dict[str, Any]], out_dir: Path, level: str = "##") -> list[str]:
    lines = [f"{level} Output-loss memory: Cut Cross-Entropy vs materialised logits", "",
             "Forward + backward of the mean token NLL (gradients of the hidden states and the classifier) for each "
             "path of `harness/loss.py`: `cce` (Triton kernel, CUDA only), `cce_compile` (its torch.compile version), "
             "`chunked` (exact PyTorch fallback, 4,096 tokens of logits at a time) and `plain` (all N×V logits). "
             "Each cell: peak memory · time. Every path also holds the classifier gradient (V × D, fp32), which "
             "dominates at small N; `chunked` computes one chunk when N ≤ 4,096. The `loss spread` column checks "
             "that the paths compute the same loss. "
             "From `python -m benchmarks.loss_memory`.", ""]
    for dev, rs in by_device(rows).items():
        impls = [i for i in ("cce", "cce_compile", "chunked", "plain") if any(r["impl"] == i for r in rs)]
        impls += sorted({r["impl"] for r in rs} - set(impls))
        r0 = rs[0]
        lines += [f"**{esc(dev)}**: d_model={r0.get('d_model')}, {r0.get('dtype')}. Peak memory: {_measure(rs)}.", ""]
        path = figures.loss_memory(rs, out_dir / f"loss_memory_{slug(dev)}.png")
        if path:
            lines += [f"![output-loss memory on {esc(dev)}]({path.name})", ""]
        cell = {(r["vocab_size"], r["n_tokens"], r["impl"]): r for r in rs}
        lines += ["| vocab | tokens | fp32 logits | " + " | ".join(impls) + " | loss spread |",
                  "|---:|---:|---:|" + "---|" * len(impls) + "---:|"]
        for V, N in sorted({(r["vocab_size"], r["n_tokens"]) for r in rs}):
            vals, losses = [], []
            for i in impls:
                r = cell.get((V, N, i))
                if r is None:
                    vals.append("")
                elif r["status"] != "ok":
                    vals.append(f"**{_failed(r)}**")
                else:
                    mem = fmt_bytes(r["peak_mem_bytes"]) if r.get("peak_mem_bytes") is not None else "n/a"
                    vals.append(f"{mem} · {r['ms_fwd_bwd']:.1f} ms")
                    if finite(r.get("loss")) is not None:
                        losses.append(r["loss"])
            spread = f"{max(losses) - min(losses):.1e}" if len(losses) > 1 else "—"
            lines.append(f"| {V:,} | {N:,} | {fmt_bytes(4 * V * N)} | " + " | ".join(vals) + f" | {spread} |")
        lines.append("")
    return lines


def decode_section(rows: list[dict[str, Any]], out_dir: Path, level: str = "##") -> list[str]:
    lines = [f"{level} Decoding cost versus context", "",
             "Greedy decoding with carried state (`LM.prefill` once, then `LM.step` per token): a KV cache for "
             "attention, running sums / ring buffers / SSM and context vectors for the others. `step ms` is the "
             "median time of one generated token after a prompt of that many tokens; `rerun ms` the same token "
             "on the prefix-rerun path (the whole context through the model), `speed-up` their ratio. "
             "`state_floats` is what the mixers claim per sequence at that context (all layers), `state` what "
             "the decoding state holds (KV caches are allocated with doubling headroom). Warm-up excluded. "
             "The grid rows' `gen_latency_ms` (answer ms) use this stateful path for autoregressive cells. "
             "From `python -m benchmarks.decode`.", ""]
    for dev, rs in by_device(rows).items():
        ok = [r for r in rs if r["status"] == "ok"]
        r0 = (ok or rs)[0]
        lines += [f"**{esc(dev)}**: {r0.get('preset')} preset (d_model={r0.get('d_model')}, {r0.get('n_layers')} "
                  f"layers), {r0.get('dtype')}, {r0.get('threads')} CPU threads, medians of {r0.get('reps')} prompts "
                  f"x {r0.get('steps')} steps.", ""]
        path = figures.decode(rs, out_dir / f"decode_{slug(dev)}.png")
        if path:
            lines += [f"![decoding cost vs context on {esc(dev)}]({path.name})", ""]
        contexts = sorted({r["context"] for r in rs})
        top = max(contexts)
        lines += ["| mixer | batch | " + " | ".join(f"step ms @{T:,}" for T in contexts)
                  + f" | rerun ms @{top:,} | speed-up @{top:,} | prefill ms @{top:,} | state_floats @{top:,} "
                  f"| state @{top:,} | path |",
                  "|---|---:|" + "---:|" * len(contexts) + "---:|---:|---:|---:|---:|---|"]
        cell = {(r["mixer"], r["batch"], r["context"]): r for r in rs}
        for m, B in sorted({(r["mixer"], r["batch"]) for r in rs}):
            vals = []
            for T in contexts:
                r = cell.get((m, B, T))
                vals.append("" if r is None else f"**{_failed(r)}**" if r["status"] != "ok" else f"{r['step_ms']:.3f}")
            r = cell.get((m, B, top))
            if r is not None and r["status"] == "ok":
                tail = [f"{r['rerun_ms']:.2f}" if r.get("rerun_ms") else "—",
                        f"{r['speedup']:.0f}x" if r.get("speedup") else "—", f"{r['prefill_ms']:.1f}",
                        fmt_count(r["state_floats"]), fmt_bytes(r["state_bytes"]),
                        f"{esc(r.get('decode_path'))} ({esc(r.get('backend'))})"]
            else:
                tail = ["—"] * 6
            lines.append(f"| {esc(m)} | {B} | " + " | ".join(vals) + " | " + " | ".join(tail) + " |")
        lines.append("")
    return lines


# run_matrix.py options that choose which cells of one training setting run, and where: commands that
# differ only in these trained the same way (the rows say the mixer, objective and seed)
_NOT_SETTINGS = {"--seeds": True, "--mixers": True, "--objectives": True, "--out": True, "--cache-dir": True,
                 "--no-progress": False}  # option: whether it takes a value


def training_setting(command: str) -> str:
    """`command` (a span_answers row's run_matrix arguments) without the options of `_NOT_SETTINGS`: the seeds
    of one setting run by several commands (seeds 0-2, then 3-5; one mixer, then another) share a table and
    its means."""
    words, out, skip = command.split(), [], False  # the benchmark wrote it as " ".join(arguments)
    for w in words:
        if skip:
            skip = False
            continue
        name = w.split("=", 1)[0]
        if name in _NOT_SETTINGS:
            skip = _NOT_SETTINGS[name] and "=" not in w
            continue
        out.append(w)
    return " ".join(out)


def span_answers_section(rows: list[dict[str, Any]], level: str = "##") -> list[str]:
    """One table per training setting (`training_setting`: the command less the options that choose cells
    and folders): each way of answering on the same weights (benchmarks/span_answers.py), on the dev slice's
    questions and the evaluation split's; where the setting trained several seeds, each decoder's mean over
    them first, with a 95% t-interval and its difference from free answers paired by seed. A cell, seed,
    split and way written twice counts once, the later row. Rows written before the split was recorded are
    `eval`."""
    lines = [f"{level} Answers on one training, scored every way", "",
             "Each trained cell scored free and span-constrained as each decoder can apply the constraint, on the "
             "same weights and the same questions (`spans`: answers that are a span of their title or paragraph; "
             "`empty`: no answer). Choose a way on the `dev` rows (the dev slice: articles held out of the training "
             "file), never on the `eval` rows (the evaluation split the grid reports). From "
             "`python -m benchmarks.span_answers`. The means join each decoder's rows by how they answered "
             "(`answers`): a default `span` row counts under the named order it ran as (each seed's `answers` "
             "say which), and `F1 − free` is each seed's difference from its own free answers.", ""]
    way = lambda w: (w != "free", w != "span", w)  # noqa: E731  free, then the default span, then the others
    split = lambda r: r.get("split", "eval")  # noqa: E731
    by_setting: dict[str, dict[tuple, dict[str, Any]]] = defaultdict(dict)
    for r in rows:  # in file order: a later row of the same cell, seed, split and way replaces the earlier
        by_setting[training_setting(str(r.get("command")))][
            r["mixer"], r["objective"], r.get("seed"), split(r), r["way"]] = r
    for command, latest in sorted(by_setting.items()):
        rs = list(latest.values())
        devices = ", ".join(sorted({str(r["device"]) for r in rs}))
        lines += [f"`{esc(command)}` ({esc(devices)})", ""]
        # a mean per decoder: rows join by how they answered (`answers`), whatever their way was called when
        # they ran (`span` names the objective's default, which changed for diffusion on 2026-12-05, and is
        # then also one of the named orders: one decoding, counted once per seed)
        ok: dict[tuple, dict[Any, dict[str, Any]]] = defaultdict(dict)
        names: dict[tuple, set[str]] = defaultdict(set)  # (objective, answers) -> the ways it ran as, any mixer
        for r in sorted(rs, key=lambda r: way(r["way"])):
            if r["status"] == "ok":
                k = (r["mixer"], r["objective"], split(r), str(r.get("answers")))
                ok[k].setdefault(r.get("seed"), r)
                names[r["objective"], k[3]].add(r["way"])
        if any(len(v) > 1 for v in ok.values()):
            lines += ["| mixer | objective | split | way | seeds | F1 | F1 − free (paired by seed) | EM "
                      "| spans (mean) | empty (mean) |",
                      "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
            # a decoder is named by its order (`span_left_to_right`), `span` only where it has no other name,
            # and by its `answers` too where two decoders of a cell would share a name
            short = {k: " = ".join(sorted(names[k[1], k[3]] - {"span"} or {"span"}, key=way)) for k in ok}
            shared = Counter((*k[:3], short[k]) for k in ok)
            label = {k: short[k] if shared[(*k[:3], short[k])] == 1 else f"{short[k]} ({k[3]})" for k in ok}
            for k in sorted(ok, key=lambda k: (k[0], k[1], k[2], way(short[k]), k[3])):
                v = list(ok[k].values())
                mean = lambda f: sum(r[f] for r in v) / len(v)  # noqa: E731
                free = ok.get((*k[:3], FREE_ANSWERS), {})
                paired = [r["f1"] - free[r.get("seed")]["f1"] for r in v if r.get("seed") in free]
                vs_free = "—" if k[3] == FREE_ANSWERS or not paired else stats.mean_ci(paired).text(signed=True)
                lines.append(f"| {esc(k[0])} | {esc(k[1])} | {esc(k[2])} | {esc(label[k])} | {len(v)} "
                             f"| {stats.mean_ci([r['f1'] for r in v]).text()} | {vs_free} "
                             f"| {stats.mean_ci([r['em'] for r in v]).text()} "
                             f"| {mean('spans'):.1f} / {mean('n'):.0f} | {mean('empty'):.1f} |")
            lines += ["", "Each seed:", ""]
        lines += ["| mixer | objective | seed | split | way | F1 | EM | spans | empty | answers |",
                  "|---|---|---:|---|---|---:|---:|---:|---:|---|"]
        for r in sorted(rs, key=lambda r: (r["mixer"], r["objective"], r.get("seed", -1), split(r), way(r["way"]))):
            head = f"| {esc(r['mixer'])} | {esc(r['objective'])} | {r.get('seed', '—')} | {split(r)} | {esc(r['way'])} |"
            if r["status"] != "ok":
                lines.append(f"{head} **failed** | | | | |")
                continue
            lines.append(f"{head} {r['f1']:.3f} | {r['em']:.3f} | {r['spans']} / {r['n']} | {r['empty']} "
                         f"| {esc(r['answers'])} |")
        lines.append("")
    return lines
