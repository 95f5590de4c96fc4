"""Span-constrained answers (tasks/answer_span.py, JSQuAD's `answer_constraint=span`).

The constraint works on UTF-8 bytes: a token may follow the answer so far when the answer's bytes and
the token's stay a substring of the title or the paragraph, starting at a character boundary; EOS once
the answer is a non-empty run of whole characters. The decoders' side (greedy under the constraint,
the diffusion sampler's relaxed masks and the cut that follows) is tested in tests/test_decode.py and
tests/test_diffusion.py.
"""
from __future__ import annotations

import collections
import itertools

import pytest
import torch

import tasks
from core.data import SpecialTokens
from fixtures.jsquad_mini import TRAIN_TEXTS
from harness.model import LM, LMConfig
from harness.objectives import build as build_objective
from tasks import PrepareContext
from tasks.answer_span import PieceTrie, SpanConstraint

EOS = 3
# a hand-made vocabulary: 0-5 spell nothing (PAD, UNK, BOS, EOS, SEP, MASK), then pieces, then every byte
WORDS = ["東", "京", "東京", "タワー", "タ", "ワ", "ー", "日本", "本", "犬"]
PIECES: list[bytes | None] = [None] * 6 + [w.encode() for w in WORDS] + [bytes([b]) for b in range(256)]
ID = {w: 6 + i for i, w in enumerate(WORDS)}


def byte_id(b: int) -> int:
    return 6 + len(WORDS) + b


@pytest.fixture
def span() -> SpanConstraint:
    return SpanConstraint(["日本", "東京タワー"], PieceTrie(PIECES), EOS)  # a title and a paragraph


def test_an_answer_starts_at_any_character_of_either_text_never_mid_character(span):
    first = set(span.next_tokens([]))
    words = {ID[w] for w in ("東", "京", "東京", "タワー", "タ", "ワ", "ー", "日本", "本")}
    leads = {byte_id(c.encode()[0]) for c in "日本東京タワー"}  # each character's first byte, spelled alone
    assert first == words | leads
    assert ID["犬"] not in first and EOS not in first  # not in the text; never an empty answer
    assert byte_id("東".encode()[1]) not in first  # a continuation byte would start mid-character


def test_the_next_token_continues_an_occurrence_and_eos_ends_a_whole_character_answer(span):
    assert set(span.next_tokens([ID["東"]])) == {ID["京"], byte_id("京".encode()[0]), EOS}
    assert set(span.next_tokens([ID["東京"], ID["タ"]])) == {ID["ワ"], byte_id("ワ".encode()[0]), EOS}
    # any spelling of the same bytes is the same answer: the byte pieces of 東 then the piece 京
    assert set(span.next_tokens([byte_id(b) for b in "東".encode()])) == set(span.next_tokens([ID["東"]]))
    # half a character: only the next bytes of the characters it starts (日, 本 and 東 share it); no EOS
    lead = "東".encode()[0]
    assert set(span.next_tokens([byte_id(lead)])) == {byte_id(c.encode()[1]) for c in "日本東京" if c.encode()[0] == lead}
    assert len(span.next_tokens([byte_id(lead)])) == 3


def test_a_span_never_crosses_from_the_title_into_the_paragraph(span):
    assert span.next_tokens([ID["日本"]]) == [EOS]  # the title ends here; 東 follows it only if joined
    assert span.next_tokens([ID["ー"]]) == [EOS]  # the end of the paragraph


def test_an_answer_that_is_no_span_can_only_end(span):
    assert span.next_tokens([ID["京"], ID["東"]]) == [EOS]  # 京東 occurs nowhere
    assert span.next_tokens([ID["犬"]]) == [EOS]
    assert span.next_tokens([EOS]) == [EOS] and span.next_tokens([0]) == [EOS]  # ids that spell nothing
    assert span.next_tokens([len(PIECES)]) == [EOS] == span.next_tokens([-1])  # ids outside the vocabulary


def _walk_reference(span: SpanConstraint, ids: list[int]) -> list[int]:
    """The longest prefix a left-to-right decoder could have produced: every token allowed by
    `next_tokens` after the ones before it, and EOS allowed after the last. (Every prefix reached is a
    span, so its EOS is the rule's, never the 'no choice left' one: byte pieces always continue a
    character cut in half.)"""
    best: list[int] = []
    for k, t in enumerate(ids):
        if t == EOS or t not in span.next_tokens(ids[:k]):
            break
        if EOS in span.next_tokens(ids[: k + 1]):
            best = ids[: k + 1]
    return best


def test_longest_answer_keeps_the_longest_prefix_the_rules_allow(span):
    """What masked diffusion returns under the constraint (its sampler fills positions out of order)."""
    tower = [ID["東京"], ID["タ"], ID["ワ"], ID["ー"]]
    assert span.longest_answer(tower) == tower  # a whole span is kept
    assert span.longest_answer([ID["東京"], ID["本"], ID["タ"]]) == [ID["東京"]]  # 東京本 occurs nowhere
    assert span.longest_answer([ID["日本"], ID["東"]]) == [ID["日本"]]  # never from the title into the paragraph
    half = [ID["東"], byte_id("京".encode()[0]), ID["犬"]]
    assert span.longest_answer(half) == [ID["東"]]  # cut back to whole characters, not to half a 京
    spelled = [byte_id(b) for b in "京タ".encode()]
    assert span.longest_answer(spelled) == spelled  # any spelling of a span's bytes
    assert span.longest_answer([ID["東"], EOS, ID["京"]]) == [ID["東"]]  # an id that spells nothing cuts
    assert span.longest_answer([ID["犬"], ID["東"]]) == [] == span.longest_answer([])  # no allowed start


def test_longest_answer_is_what_a_token_by_token_walk_allows(span):
    """Its one-test-per-prefix shortcut against the rules applied in order, on random id strings drawn
    mostly from the texts' own pieces (so that long allowed prefixes occur)."""
    import random
    rng = random.Random(0)
    pool = [ID[w] for w in WORDS] + [byte_id(b) for b in "日本東京タワー".encode()] + [EOS, 0]
    kept = []
    for _ in range(2000):
        ids = [rng.choice(pool) for _ in range(rng.randint(0, 6))]
        got = span.longest_answer(ids)
        assert got == _walk_reference(span, ids), ids
        kept.append(len(got))
    assert max(kept) >= 3 and kept.count(0) < len(kept)  # the draw reaches long allowed prefixes


def test_tokens_are_every_id_some_allowed_answer_can_hold(span):
    got = set(span.tokens())
    assert EOS in got and ID["犬"] not in got and ID["東京"] in got
    assert {byte_id(b) for b in "日本東京タワー".encode()} <= got  # inside an answer a byte piece may be any byte
    assert byte_id(0xFF) not in got  # no UTF-8 text holds it


def test_piece_bytes_concatenate_to_what_decode_gives(tok):
    """The constraint's spelling of an id is the tokenizer's: for the fixture texts and for text outside
    the vocabulary (byte fallback), the ids' bytes joined are the text's; specials spell nothing."""
    pieces = tok.piece_bytes()
    assert len(pieces) == tok.vocab_size
    for text in TRAIN_TEXTS + ["🍣と鰻の蒲焼", "全角　スペース と半角"]:
        ids = tok.encode(text)
        assert b"".join(pieces[i] for i in ids) == text.encode("utf-8")
    sp = tok.special
    assert all(pieces[i] is None for i in (sp.pad, sp.bos, sp.eos, sp.sep, sp.mask, sp.unk))
    assert sum(p is not None and len(p) == 1 for p in pieces) >= 256  # every byte has its piece


def _prepare(data_dir, cache_dir, max_len=256, **opts):
    task = tasks.build("jsquad", latency_n=0, **opts)
    return task, task.prepare(PrepareContext(data_dir, cache_dir, 300, max_len, log=lambda s: None))


def test_every_gold_answer_of_the_fixture_can_be_decoded_under_the_constraint(offline_dir, cache_dir):
    """The tokenizer encodes a gold answer on its own (how it is trained), maybe cut apart differently
    from the same characters in the paragraph: the constraint must still allow those very ids."""
    task, d = _prepare(offline_dir, cache_dir, answer_constraint="span")
    cons = task.span_constraints([p for p, _ in d.items], d)
    for c, (_, it) in zip(cons, d.items):
        ids = d.tokenizer.encode(it.answers[0])
        for k in range(len(ids) + 1):
            assert (ids[k] if k < len(ids) else d.special.eos) in c.next_tokens(ids[:k]), (it.qid, k)


def test_span_constraints_without_the_tokenizer_stop_in_one_line(offline_dir, cache_dir):
    """The rule spells ids as the tokenizer's bytes: task data that carries none (a task built by hand, a
    TaskData copied without it) gets a one-line error naming what is missing, not an AttributeError."""
    import dataclasses

    task, d = _prepare(offline_dir, cache_dir, answer_constraint="span")
    with pytest.raises(tasks.DataError, match=r"answer_constraint=span needs the task's tokenizer"):
        task.span_constraints([p for p, _ in d.items], dataclasses.replace(d, tokenizer=None))


@pytest.mark.parametrize("order", ["context_first", "question_first"])
def test_a_truncated_prompt_constrains_to_the_paragraph_it_kept(offline_dir, cache_dir, order):
    """The title and the paragraph are cut back out of the prompt, in either order of its sections."""
    task, d = _prepare(offline_dir, cache_dir, max_len=72, answer_constraint="span", order=order)
    assert d.info["eval_truncated"] > 0
    cons = task.span_constraints([p for p, _ in d.items], d)
    cut = 0
    for c, (_, it) in zip(cons, d.items):
        title, par = c.texts
        assert title == it.title.encode() and it.paragraph.encode().startswith(par) and par
        cut += len(par) < len(it.paragraph.encode())
    assert cut == d.info["eval_truncated"]


# the constrained decoders: greedy autoregressive, diffusion left to right (blocks of one position: exact, the
# default under a constraint), and diffusion in confidence order (the relaxed sampler, then the cut)
DECODERS = [("autoregressive", {}), ("diffusion", {"gen_length": 8, "steps": 8}),
            ("diffusion", {"gen_length": 8, "steps": 8, "constrained_order": "confidence"})]
DECODER_IDS = ["autoregressive", "diffusion_left_to_right", "diffusion_confidence"]


def _untrained(d, causal: bool, device: str = "cpu") -> LM:
    torch.manual_seed(0)
    return LM(LMConfig(vocab_size=d.vocab_size, d_model=32, n_layers=1, mixer="attention", causal=causal,
                       mlp_hidden=48)).eval().to(device)


def _answers(task, model, obj, d, device: str = "cpu") -> list[tuple[str, object]]:
    """(answer, item) for each fixture question, through the task's `evaluate` on `device`; the row's
    metric says how the answers were chosen."""
    got = task.evaluate(model, obj, d, torch.device(device), batch_size=2)
    span = task.opts.answer_constraint == "span"
    assert got["answer_constraint"] == (f"span: {obj.constraint_path}" if span else "none: free generation")
    preds = {s["qid"]: s["pred"] for s in got["samples"]}
    assert len(preds) == len(d.items) == 5
    return [(preds[it.qid], it) for _, it in d.items]


def _is_span(answer: str, it) -> bool:
    return answer in it.paragraph or answer in it.title


def test_span_answers_from_an_untrained_model_are_spans_of_their_context(offline_dir, cache_dir):
    """End to end through `evaluate`: a random autoregressive LM's answers, free, are mostly not spans;
    under `answer_constraint=span` every one is a non-empty substring of its title or paragraph."""
    task, d = _prepare(offline_dir, cache_dir, answer_constraint="span")
    model, obj = _untrained(d, causal=True), build_objective("autoregressive", d.special, "chunked")
    assert all(a and _is_span(a, it) for a, it in _answers(task, model, obj, d))
    free_task, _ = _prepare(offline_dir, cache_dir)
    free = _answers(free_task, model, obj, d)
    assert any(not a or not _is_span(a, it) for a, it in free)  # the constraint is what made them spans


def test_span_answers_from_an_untrained_diffusion_model_are_spans_once_cut(offline_dir, cache_dir, monkeypatch):
    """Masked diffusion in confidence order (`constrained_order=confidence`) fills positions out of order,
    so its sampler's masks keep the ids right but not their order; `longest_answer` then cuts each answer
    to a span. Without the cut, some are not spans. Left to right (the default) they are spans without it."""
    task, d = _prepare(offline_dir, cache_dir, answer_constraint="span")
    model = _untrained(d, causal=False)
    obj = build_objective("diffusion", d.special, "chunked", gen_length=8, steps=8, constrained_order="confidence")
    got = _answers(task, model, obj, d)
    assert all(_is_span(a, it) for a, it in got) and any(a for a, _ in got)
    monkeypatch.setattr(SpanConstraint, "longest_answer", lambda self, ids: list(ids))
    assert any(not _is_span(a, it) for a, it in _answers(task, model, obj, d))
    # left to right under the prefix rule: spans (never empty) without any cut
    exact = build_objective("diffusion", d.special, "chunked", gen_length=8, steps=8)
    assert all(a and _is_span(a, it) for a, it in _answers(task, model, exact, d))


@pytest.mark.parametrize("objective,opts", DECODERS, ids=DECODER_IDS)
def test_span_answers_under_bf16_autocast_are_spans(offline_dir, cache_dir, objective, opts, monkeypatch):
    """CUDA's evaluation runs under bf16 autocast (core.env.autocast), CPU's in fp32: the same contract
    simulated here under CPU autocast (bf16 logits, the masks' -inf, the picks read back)."""
    import tasks.jsquad

    monkeypatch.setattr(tasks.jsquad, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    task, d = _prepare(offline_dir, cache_dir, answer_constraint="span")
    causal = objective == "autoregressive"
    obj = build_objective(objective, d.special, "chunked", **opts)
    got = _answers(task, _untrained(d, causal), obj, d)
    assert all(_is_span(a, it) for a, it in got)
    assert (all if obj.constraint_path.startswith("exact") else any)(a for a, _ in got)  # exact: never empty


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("objective,opts", DECODERS, ids=DECODER_IDS)
def test_span_answers_on_cuda_are_spans(offline_dir, cache_dir, objective, opts):
    """The constrained decoders on the device (allowed-id masks uploaded, picks read back, under evaluate's
    bf16 autocast): every answer still a span of its context (autoregressive: never empty)."""
    task, d = _prepare(offline_dir, cache_dir, answer_constraint="span")
    causal = objective == "autoregressive"
    obj = build_objective(objective, d.special, "chunked", **opts)
    got = _answers(task, _untrained(d, causal, "cuda"), obj, d, "cuda")
    assert all(_is_span(a, it) for a, it in got)
    assert (all if obj.constraint_path.startswith("exact") else any)(a for a, _ in got)  # exact: never empty


def test_a_bad_constraint_and_an_objective_that_cannot_decode_under_one_stop_in_one_line():
    with pytest.raises(ValueError, match=r"answer_constraint must be one of none, span; got 'spans'"):
        tasks.build("jsquad", answer_constraint="spans")

    class NoConstraints:
        name, constraint_path = "stub", None

    tasks.build("jsquad").check_objective(NoConstraints())  # free generation asks nothing of it
    with pytest.raises(ValueError, match=r"answer_constraint=span needs an objective .*; stub does not"):
        tasks.build("jsquad", answer_constraint="span").check_objective(NoConstraints())
    special = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)
    for name in ("autoregressive", "diffusion"):  # both of ours can
        tasks.build("jsquad", answer_constraint="span").check_objective(build_objective(name, special, "chunked"))


def test_a_span_grid_has_its_own_name_rows_and_report_line(offline_dir, tmp_path, cache_dir):
    """End to end: `--task-opt answer_constraint=span` names the grid apart (its rows never join a free
    grid's file or report), every cell records how its objective applied the constraint, and the report
    says that its EM/F1 are constrained."""
    import run_matrix
    from core.results import cell_rows, read_rows

    out = tmp_path / "out"
    args = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--mixers", "attention", "--task-opt", "latency_n=1",
            "--task-opt", "answer_constraint=span", "--objectives", "autoregressive,diffusion"]
    assert run_matrix.main(args) == 0
    rows = cell_rows(read_rows(out / "results" / "jsquad-offline_answers-span_tiny_tokens-3000.jsonl"))
    assert {r["objective"]: r["status"] for r in rows} == {"autoregressive": "ok", "diffusion": "ok"}
    for r in rows:
        path = build_objective(r["objective"], SpecialTokens(0, 1, 2, 3, 4, 5), "chunked").constraint_path
        assert r["metrics"]["answer_constraint"] == f"span: {path}"
        assert r["metrics"]["answer_constraint"].startswith("span: exact: ")  # both objectives, by default
        assert all(s["pred"] for s in r["samples"])  # the rule never lets an answer be empty
    report = (out / "reports" / "jsquad-offline_answers-span_tiny_tokens-3000" / "README.md").read_text()
    assert "- **answers**: `span: exact: each token " in report and "`span: exact: positions filled left to right" in report
    assert "compare them with constrained cells only" in report
    from reports.tables import answer_constraints_line

    free = [{**r, "metrics": {**r["metrics"], "answer_constraint": "none: free generation"}} for r in rows]
    assert answer_constraints_line(free) is None  # a free grid's report has no such line
    assert answer_constraints_line([{**free[0], "metrics": {}}]) is None  # nor one written before the option
    assert answer_constraints_line(free[:1] + rows[1:]).startswith("- **answers**: `none: free generation` (1 cells)")


def test_longest_run_finds_an_allowed_answer_anywhere(span):
    """benchmarks.span_answers' alternative cut: the longest allowed run, wherever it starts."""
    from benchmarks.span_answers import longest_run

    assert longest_run(span, [ID["犬"], ID["東"], ID["京"], ID["犬"]]) == [ID["東"], ID["京"]]
    assert span.longest_answer([ID["犬"], ID["東"], ID["京"]]) == []  # the product's cut keeps a prefix only
    assert longest_run(span, [ID["日本"], ID["東京"], ID["タ"]]) == [ID["東京"], ID["タ"]]  # the longest of two
    assert longest_run(span, [ID["犬"], EOS]) == []


@pytest.fixture
def decodes(monkeypatch) -> collections.Counter:
    """Every call of `JSQuAD.answer_ids` (one whole split's answers), counted by (objective, constrained)."""
    import tasks.jsquad

    counts: collections.Counter = collections.Counter()
    answer_ids = tasks.jsquad.JSQuAD.answer_ids

    def counted(self, model, objective, prompts, batch_size, cons=None, progress=None):
        counts[objective.name, cons is not None] += 1
        return answer_ids(self, model, objective, prompts, batch_size, cons, progress)

    monkeypatch.setattr(tasks.jsquad.JSQuAD, "answer_ids", counted)
    return counts


def test_the_span_answers_benchmark_scores_one_training_every_way(offline_dir, tmp_path, cache_dir, decodes):
    """`python -m benchmarks.span_answers`: each cell's row as usual, and one line per seed, split and way
    of answering on the same weights; the evaluation split's free and default-span lines are what the rows
    report, the dev split's answer the dev slice's questions; every cut answer is a span or empty, every
    exact one a span; each seed keeps its own lines (a key of their own), which the report averages; the
    task's `evaluate` is itself again afterwards. Each distinct decoding runs once per split, and the
    evaluation's own answers are not decoded again for the grid's way (`free` here)."""
    import json

    import harness.cell
    import tasks.jsquad
    from benchmarks import span_answers
    from core.results import cell_rows, read_rows

    evaluate, base_row = tasks.jsquad.JSQuAD.evaluate, harness.cell.base_row
    out = tmp_path / "out"
    bench = out / "results" / "bench_span_answers.jsonl"
    grid = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--mixers", "attention", "--task-opt", "latency_n=1",
            "--objective-opt", "diffusion.gen_length=8", "--objective-opt", "diffusion.steps=8", "--seeds", "0,1"]
    assert span_answers.main(["--bench-out", str(bench), *grid]) == 0
    assert tasks.jsquad.JSQuAD.evaluate is evaluate and harness.cell.base_row is base_row
    # per seed: the evaluation (free), then autoregressive span on eval (free is the evaluation's), free and
    # span on dev; diffusion's 4 constrained decodings on eval (span is left to right's), free and 4 on dev
    assert decodes == {("autoregressive", False): 2 * (1 + 1), ("autoregressive", True): 2 * (1 + 1),
                       ("diffusion", False): 2 * (1 + 1), ("diffusion", True): 2 * (4 + 4)}
    lines = [json.loads(x) for x in bench.read_text().splitlines()]
    ways = {(x["objective"], x["seed"], x["split"], x["way"]): x for x in lines}
    per_seed = [("autoregressive", "free"), ("autoregressive", "span"), ("diffusion", "free"), ("diffusion", "span"),
                ("diffusion", "span_confidence"), ("diffusion", "span_left_to_right"), ("diffusion", "span_run"),
                ("diffusion", "span_uncut")]
    assert sorted(ways) == sorted((o, seed, split, w) for o, w in per_seed for seed in (0, 1) for split in ("dev", "eval"))
    assert len({x["key"] for x in lines}) == len(lines) == 32  # no seed or split supersedes another in reports
    rows = cell_rows(read_rows(out / "results" / "jsquad-offline_tiny_tokens-3000.jsonl"))
    assert sorted((r["objective"], r["seed"]) for r in rows) == sorted((o, s) for o in ("autoregressive", "diffusion") for s in (0, 1))
    for r in rows:
        assert ways[r["objective"], r["seed"], "eval", "free"]["f1"] == pytest.approx(r["metrics"]["f1"])
        assert r["metrics"]["answer_constraint"] == ways[r["objective"], r["seed"], "eval", "free"]["answers"]
        assert ways[r["objective"], r["seed"], "dev", "free"]["n"] == r["data"]["dev_questions"] > 0
    for x in lines:
        assert x["n"] == (5 if x["split"] == "eval" else rows[0]["data"]["dev_questions"]) and x["mixer"] == "attention"
        if x["way"] in ("span", "span_run", "span_left_to_right", "span_confidence"):
            assert x["spans"] + x["empty"] == x["n"], x
        if x["answers"].startswith("span: exact"):
            assert x["spans"] == x["n"], x
    assert ways["diffusion", 0, "eval", "span_uncut"]["answers"].endswith("; not cut")
    for seed, split in itertools.product((0, 1), ("dev", "eval")):  # the default order is left to right
        default, ltr = ways["diffusion", seed, split, "span"], ways["diffusion", seed, split, "span_left_to_right"]
        assert (default["f1"], default["answers"]) == (ltr["f1"], ltr["answers"])
        assert ways["diffusion", seed, split, "span_confidence"]["answers"].startswith("span: relaxed while sampling")
    assert all(x["bench"] == "span_answers" and x["command"] == " ".join(grid) for x in lines)
    from reports import write_reports

    write_reports(out / "results", out / "reports")  # benchmark rows a report can read: a table of every way
    page = (out / "reports" / "benchmarks" / "README.md").read_text()
    assert "## Answers on one training, scored every way" in page
    for seed in (0, 1):
        for split in ("dev", "eval"):
            x = ways["diffusion", seed, split, "span_left_to_right"]
            assert f"| attention | diffusion | {seed} | {split} | span_left_to_right | {x['f1']:.3f} | " in page
    for split in ("dev", "eval"):
        mean = sum(ways["diffusion", seed, split, "span_left_to_right"]["f1"] for seed in (0, 1)) / 2
        assert f"| attention | diffusion | {split} | span_left_to_right | 2 | {mean:.3f} ± " in page  # over the seeds
    grid_page = (out / "reports" / "jsquad-offline_tiny_tokens-3000" / "README.md").read_text()
    assert "scored every way" not in grid_page  # about one training: not a section of every grid's report


def test_the_span_answers_benchmark_reuses_a_span_grids_own_answers(offline_dir, tmp_path, cache_dir, decodes):
    """Over a span grid (`answer_constraint=span`) the evaluation's answers are the `span` way's on the
    evaluation split (and, for diffusion, left to right's: the same decoding): scored from what the cell's
    `evaluate` decoded, not decoded again, and equal to the row's figures."""
    import json

    from benchmarks import span_answers
    from core.results import cell_rows, read_rows

    out, bench = tmp_path / "out", tmp_path / "bench.jsonl"
    grid = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--mixers", "attention", "--task-opt", "latency_n=1",
            "--task-opt", "answer_constraint=span", "--objective-opt", "diffusion.gen_length=8",
            "--objective-opt", "diffusion.steps=8"]
    assert span_answers.main(["--bench-out", str(bench), "--splits", "eval", *grid]) == 0
    # the evaluation (constrained), then free; diffusion also the confidence order, uncut and cut to a run
    assert decodes == {("autoregressive", True): 1, ("autoregressive", False): 1,
                       ("diffusion", True): 1 + 3, ("diffusion", False): 1}
    ways = {(x["objective"], x["way"]): x for x in map(json.loads, bench.read_text().splitlines())}
    rows = cell_rows(read_rows(out / "results" / "jsquad-offline_answers-span_tiny_tokens-3000.jsonl"))
    assert sorted(r["objective"] for r in rows) == ["autoregressive", "diffusion"]
    for r in rows:
        span = ways[r["objective"], "span"]
        assert (span["f1"], span["em"]) == pytest.approx((r["metrics"]["f1"], r["metrics"]["em"]))
        assert span["answers"] == r["metrics"]["answer_constraint"] and span["n"] == r["metrics"]["eval_n"]
    ltr = ways["diffusion", "span_left_to_right"]
    assert (ltr["f1"], ltr["answers"]) == (ways["diffusion", "span"]["f1"], ways["diffusion", "span"]["answers"])


def test_the_span_answers_benchmark_refuses_an_unknown_split(capsys):
    """`--splits` names whose questions answer: a typo is one line before any cell trains."""
    from benchmarks import span_answers

    with pytest.raises(SystemExit):
        span_answers.main(["--splits", "eval,test", "--data-dir", "nowhere"])
    assert "--splits takes one or both of eval, dev; got 'eval,test'" in capsys.readouterr().err


def test_the_span_answers_benchmark_scores_only_the_ways_named(offline_dir, tmp_path, cache_dir, decodes):
    """`--ways free,span`: each objective's free and default-span answers, nothing else, and no decoding for
    the ways left out (diffusion's other orders and cuts cost a decode of each split each); the command the
    rows record is the grid's, without `--ways`, so they share a table with a run that scored every way."""
    import json

    from benchmarks import span_answers

    bench = tmp_path / "bench.jsonl"
    grid = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(tmp_path / "out"),
            "--cache-dir", str(cache_dir), "--no-progress", "--mixers", "attention", "--task-opt", "latency_n=1",
            "--objective-opt", "diffusion.gen_length=8", "--objective-opt", "diffusion.steps=8"]
    assert span_answers.main(["--bench-out", str(bench), "--ways", "free, span", *grid]) == 0
    # each objective: the evaluation (free), span on eval, free and span on dev
    assert decodes == {("autoregressive", False): 2, ("autoregressive", True): 2,
                       ("diffusion", False): 2, ("diffusion", True): 2}
    lines = [json.loads(x) for x in bench.read_text().splitlines()]
    assert sorted((x["objective"], x["split"], x["way"]) for x in lines) == sorted(
        (o, split, w) for o in ("autoregressive", "diffusion") for split in ("dev", "eval") for w in ("free", "span"))
    assert {x["command"] for x in lines} == {" ".join(grid)}
    diffusion_span = [x for x in lines if x["objective"] == "diffusion" and x["way"] == "span"]
    assert all(x["answers"].startswith("span: exact: positions filled left to right") for x in diffusion_span)

    grid[grid.index("--out") + 1] = str(tmp_path / "again")  # the cells train again (a resumed grid evaluates none)
    assert span_answers.main(["--bench-out", str(bench), "--ways", "span_confidence", "--splits", "eval", *grid]) == 0
    new = [json.loads(x) for x in bench.read_text().splitlines()][len(lines):]  # autoregressive has no such way
    assert [(x["objective"], x["split"], x["way"]) for x in new] == [("diffusion", "eval", "span_confidence")]


@pytest.mark.parametrize("ways", ["free,spam", " , ", "span_left_to_right,Free"])
def test_the_span_answers_benchmark_refuses_an_unknown_way(capsys, ways):
    """`--ways` names ways of `benchmarks.span_answers.WAYS`: a typo (or nothing) is one line before any cell
    trains."""
    from benchmarks import span_answers

    with pytest.raises(SystemExit):
        span_answers.main(["--ways", ways, "--data-dir", "nowhere"])
    assert f"--ways takes some of free, span, span_left_to_right, span_confidence, span_uncut, span_run; got {ways!r}" \
        in capsys.readouterr().err


def test_the_span_answers_benchmark_skips_a_split_without_questions(offline_dir, tmp_path, cache_dir, monkeypatch,
                                                                    capsys):
    """A split with no questions (here the dev slice's, emptied) gets a line saying so and no rows: a score
    of no questions would be NaN; the other split's rows are written as usual."""
    import json

    import tasks.jsquad
    from benchmarks import span_answers

    monkeypatch.setattr(tasks.jsquad.JSQuAD, "_dev_prompts", lambda self, enc, items: [])
    bench = tmp_path / "bench.jsonl"
    grid = ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(tmp_path / "out"),
            "--cache-dir", str(cache_dir), "--no-progress", "--mixers", "attention", "--objectives", "autoregressive",
            "--task-opt", "latency_n=1"]
    assert span_answers.main(["--bench-out", str(bench), *grid]) == 0
    lines = [json.loads(x) for x in bench.read_text().splitlines()]
    assert sorted((x["split"], x["way"]) for x in lines) == [("eval", "free"), ("eval", "span")]
    assert "span_answers: this cell's data has no dev questions; no dev rows" in capsys.readouterr().out
