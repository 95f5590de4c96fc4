"""The pretraining stage: sources, the token cache, packing, the budget split, JaQuAD's overlap filter."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import run_matrix
from fixtures.jsquad_mini import to_squad
from harness import objectives
from harness import pretrain as pt
from harness.budget import Budget
from core.data import SeqSet, SpecialTokens
from harness.model import LM, LMConfig
from core.results import cell_rows, read_rows
from harness.train import TrainConfig, train
from tasks import DataError, PrepareContext, corpus, jaquad
from tasks.corpus import Source

SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)


class CharTok:
    """A character tokenizer with the interface the token cache uses (ids from an alphabet)."""

    def __init__(self, alphabet: str):
        self.ids = {c: i + 6 for i, c in enumerate(alphabet)}
        self.rev = {i: c for c, i in self.ids.items()} | {3: "|"}
        self.special, self.vocab_size, self.calls = SPECIAL, len(alphabet) + 6, 0
        self.sp = type("SP", (), {"serialized_model_proto": lambda _self: alphabet.encode()})()

    def encode(self, text: str) -> list[int]:
        self.calls += 1
        return [self.ids[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.rev[int(i)] for i in ids)


ALPHA = "abcdefghij\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- sources

def test_dir_source_reads_paragraph_lines_and_blank_line_separated_documents(tmp_path):
    d = tmp_path / "corpus"
    _write(d / "b.txt", "ij\n")
    _write(d / "a.txt", "ab\ncd\n\n\nef\n")  # two documents: a work of two paragraphs, then one
    docs = list(corpus.documents(Source.parse(f"dir:{d}"), [], tmp_path))
    assert docs == ["ab\ncd", "ef", "ij"]  # files in sorted order
    assert list(corpus.documents(Source.parse(f"dir:{d}"), [], tmp_path, max_chars=4)) == ["ab\nc"]


def test_passages_source_is_the_tasks_training_passages(offline_dir, cache_dir):
    """`passages` pretrains on the training articles' paragraphs, each once: never a paragraph of the
    evaluation split (scored text the model would have read) nor of the dev slice (checkpoint selection
    on text it was pretrained on). The held-out paragraphs are read from the files, and the dev slice
    is the one the task's own `dev_frac` picks."""
    import tasks
    from tasks.jsquad import load_file, split_dev

    task = tasks.build("jsquad")
    data = task.prepare(PrepareContext(offline_dir, cache_dir, 300, 128, lambda _m: None))
    docs = list(corpus.documents(Source.parse("passages"), data.passages, cache_dir))
    assert docs == data.passages and len(docs) == len(set(docs)) >= 3  # each distinct paragraph once
    train, dev = split_dev(load_file(offline_dir / "valid-v1.3.json"), task.opts.dev_frac)
    evaluation = load_file(offline_dir / "test-v1.3.json")
    assert dev and set(docs).isdisjoint(it.paragraph for it in dev)  # nor the dev slice's
    assert set(docs).isdisjoint(it.paragraph for it in evaluation)  # never the evaluation split's
    assert set(docs) == {it.paragraph for it in train}  # and every training paragraph


def test_hf_source_streams_a_text_dataset(tmp_path, monkeypatch):
    """A stand-in for the hub: `datasets.load_dataset` of local text files, as streaming gives them.
    `datasets` is an optional extra (requirements-online.txt): without it the test skips."""
    datasets = pytest.importorskip("datasets")

    f = _write(tmp_path / "wiki.txt", "ab\n\ncde\n")
    real = datasets.load_dataset
    seen = {}

    def fake(name, config=None, **kw):
        seen.update(name=name, config=config, streaming=kw.get("streaming"))
        return real("text", data_files=str(f), split="train", streaming=True)

    monkeypatch.setattr(corpus, "reachable", lambda host: True)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert list(corpus.documents(Source.parse("hf:someone/wiki:ja"), [], tmp_path)) == ["ab", "cde"]
    assert seen == {"name": "someone/wiki", "config": "ja", "streaming": True}


def test_hf_source_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "reachable", lambda host: False)
    with pytest.raises(DataError, match="cannot reach huggingface.co") as e:
        list(corpus.documents(Source.parse("hf:wikipedia:20231101.ja"), [], tmp_path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["books", "dir:", "ftp:x", "passages:x"])
def test_bad_source_names_are_refused(text):
    with pytest.raises(DataError, match="a source is 'passages'"):
        Source.parse(text)
    with pytest.raises(DataError, match="a source is 'passages'"):  # when the cell's spec is made, before any work
        pt.PretrainSpec(["passages", text])


# ----------------------------------------------------------------------------- token cache and packing

def test_documents_are_packed_into_full_rows_with_eos_after_each(tmp_path):
    d = tmp_path / "c"
    _write(d / "a.txt", "ab\n\ncde\nf\n\ng\n")  # documents: "ab", "cde\nf", "g"
    tok = CharTok(ALPHA)
    stream, meta = pt.tokenize_cached(Source.parse(f"dir:{d}"), [], tok, tmp_path / "cache")
    assert tok.decode(stream) == "ab|cde\nf|g|" and meta["docs"] == 3 and meta["tokens"] == 11
    rows, tail = pt.pack(stream, 4)
    assert rows.ids.shape == (2, 4) and tail == 3  # "|g|" does not fill a row: dropped and counted
    assert [tok.decode(r) for r in rows.ids.tolist()] == ["ab|c", "de\nf"]
    assert bool(rows.target.all()) and rows.lengths.tolist() == [4, 4]  # every token is real and trained on


def test_token_cache_is_reused_and_invalidated_by_a_new_tokenizer(tmp_path):
    d = tmp_path / "c"
    _write(d / "a.txt", "abc\n\nde\n")
    src, cache = Source.parse(f"dir:{d}"), tmp_path / "cache"
    tok = CharTok(ALPHA)
    first, m1 = pt.tokenize_cached(src, [], tok, cache)
    calls = tok.calls
    again, m2 = pt.tokenize_cached(src, [], tok, cache)
    assert not m1["cached"] and m2["cached"] and tok.calls == calls  # read back, nothing encoded again
    assert isinstance(again, np.memmap) and again.tolist() == first.tolist()
    other = CharTok("edcba\nfghij")  # another vocabulary: another model, other ids
    third, m3 = pt.tokenize_cached(src, [], other, cache)
    assert not m3["cached"] and other.calls > 0 and third.tolist() != first.tolist()
    assert other.decode(third) == tok.decode(first) == "abc|de|"
    assert len(list((cache / "pretrain").glob("*.tok"))) == 2
    _write(d / "a.txt", "abc\n\ndef\n")  # the text changed: not the old tokens
    fourth, m4 = pt.tokenize_cached(src, [], tok, cache)
    assert not m4["cached"] and tok.decode(fourth) == "abc|def|"


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "absent", "absent: no such directory"),
    (lambda d: _write(d / "e" / "a.txt", "\n \n").parent, "e: empty corpus"),  # whitespace only
    (lambda d: (d / "none").mkdir() or d / "none", "none: no *.txt files in it"),
], ids=["absent", "blank", "no-txt"])
def test_missing_or_empty_corpus_is_a_data_error(tmp_path, make, says):
    with pytest.raises(DataError) as e:
        pt.tokenize_cached(Source.parse(f"dir:{make(tmp_path)}"), [], CharTok(ALPHA), tmp_path / "cache")
    assert "\n" not in str(e.value) and says in str(e.value), str(e.value)


@pytest.mark.parametrize("bad", ["empty", "not-utf8", "interrupted", "rename-fails"])
def test_a_source_that_fails_part_way_leaves_nothing_in_the_cache(tmp_path, monkeypatch, bad):
    """An empty corpus, a file that is not UTF-8 after a good one, Ctrl-C mid-way, or a full disk at the
    rename into place: the error reaches the user and the token cache holds no partial file (a temporary
    file left per failed try would pile up)."""
    d = tmp_path / "c"
    _write(d / "a.txt", "abc\n" if bad != "empty" else "\n \n")
    if bad == "not-utf8":
        (d / "b.txt").write_bytes(b"\xff\xfe\n")
    tok, cache = CharTok(ALPHA), tmp_path / "cache"
    if bad == "interrupted":
        def encode(text, encode=tok.encode):
            if text == "abc":  # the first document (the newline's ids are asked for before any file is opened)
                raise KeyboardInterrupt
            return encode(text)
        monkeypatch.setattr(tok, "encode", encode)
    if bad == "rename-fails":
        def no_space(a, b):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises({"interrupted": KeyboardInterrupt, "rename-fails": OSError}.get(bad, DataError)):
        pt.tokenize_cached(Source.parse(f"dir:{d}"), [], tok, cache)
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_a_task_without_passages_is_told_so_before_anything_is_tokenised(tmp_path):
    """`passages` of a task with none (only blank ones) fails on the source's own check, which says why,
    not as an empty corpus after a tokenising pass over nothing."""
    with pytest.raises(DataError, match=r"^--pretrain passages: this task has no training passages"):
        pt.tokenize_cached(Source.parse("passages"), [" ", ""], CharTok(ALPHA), tmp_path / "cache")


def test_a_token_file_without_its_meta_or_a_meta_without_its_tokens_is_tokenised_again(tmp_path):
    """The meta is written last: a token file with none was never finished (a kill between the two
    writes), and a meta alone has lost its tokens. Either is rebuilt, not read."""
    d = _write(tmp_path / "c" / "a.txt", "abc\n").parent
    src, cache = Source.parse(f"dir:{d}"), tmp_path / "cache"
    pt.tokenize_cached(src, [], CharTok(ALPHA), cache)
    (tok_file,) = (cache / "pretrain").glob("*.tok")
    (meta_file,) = (cache / "pretrain").glob("*.json")
    for gone in (meta_file, tok_file):
        gone.unlink()
        stream, meta = pt.tokenize_cached(src, [], CharTok(ALPHA), cache)
        assert not meta["cached"] and CharTok(ALPHA).decode(stream) == "abc|"


@pytest.mark.parametrize("vocab, dtype", [(65_536, "uint16"), (65_537, "uint32")])
def test_the_token_file_is_16_bit_while_every_id_fits(tmp_path, vocab, dtype):
    """Ids run 0..vocab-1: a vocabulary of 65,536 still fits uint16 (half the disk and memory of uint32)."""
    tok = CharTok(ALPHA)
    tok.vocab_size = vocab
    stream, meta = pt.tokenize_cached(Source.parse("passages"), ["ab"], tok, tmp_path / "cache")
    assert meta["dtype"] == dtype and stream.dtype == np.dtype(dtype) and tok.decode(stream) == "ab|"
    _, meta = pt.tokenize_cached(Source.parse("passages"), ["abcdef"], tok, tmp_path / "cache")
    assert meta["tokens_per_char"] == 1.1667  # 7 tokens (EOS included) over 6 characters, to 4 places
    _, meta = pt.tokenize_cached(Source.parse("passages"), ["a"], tok, tmp_path / "cache")
    assert meta["tokens_per_char"] == 2.0  # one character: 2 tokens over 1


# ----------------------------------------------------------------------------- the stages in training

def _toy(n: int, length: int, seed: int) -> SeqSet:
    rng = np.random.default_rng(seed)
    seqs = [[2] + rng.integers(6, 20, length - 2).tolist() + [3] for _ in range(n)]
    return SeqSet.from_lists(seqs, [[i >= length - 3 for i in range(length)] for _ in seqs], 0)


def _pretrain_run(budget: str, frac: float = 0.5, n_rows: int = 40, task: SeqSet | None = None,
                  objective: str = "autoregressive", eval_points: int = 2, compile: bool = False, **opts):
    """A toy run with pretraining: 1-layer attention, `n_rows` packed rows of 16 tokens, then the task
    (default: 32 rows of 12 tokens), batches of 4."""
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer="attention",
                        causal=objective == "autoregressive", mlp_hidden=32))
    obj = objectives.build(objective, SPECIAL, "chunked", **opts)
    rows, _ = pt.pack(np.random.default_rng(2).integers(6, 20, n_rows * 16), 16)
    cfg = TrainConfig(batch_size=4, lr=3e-3, progress=False, eval_points=eval_points, compile=compile)
    return train(model, obj, _toy(32, 12, 0) if task is None else task, _toy(4, 12, 1), Budget.parse(budget), cfg,
                 torch.device("cpu"), pretrain=(pt.Corpus(rows, {"sources": [{"source": "toy"}]}), frac))


@pytest.mark.parametrize("objective, opts", [("autoregressive", {"loss_on": "answer"}),
                                             ("diffusion", {"steps": 4, "gen_length": 4, "nll_samples": 1})])
def test_budget_is_split_exactly_and_the_curve_spans_both_stages(objective, opts):
    res = _pretrain_run("tokens=1000", 0.6, objective=objective, eval_points=4, **opts)
    pre, task = res.stages
    assert pre["stage"] == "pretrain" and task["stage"] == "task" and pre["sources"] == ["toy"]
    assert 0.6 * 1000 <= pre["tokens"] < 0.6 * 1000 + 4 * 16  # within one pretraining batch
    assert pre["tokens"] + task["tokens"] == res.tokens_seen and task["tokens"] > 0
    assert {p["stage"] for p in res.loss_curve} == {"pretrain", "task"} and len(res.loss_curve) == 4
    assert res.epochs == pytest.approx(task["tokens"] / _toy(32, 12, 0).n_tokens)


def test_each_stage_has_its_own_speed_and_the_rows_is_the_task_stages(monkeypatch):
    """Packed pretraining rows (full length, no padding, every token a target) and the task's length
    buckets run at different speeds: one tokens/s over both would depend on the split, and a grid with
    `--pretrain` could not be compared with one without. Each stage records its own tokens/s and
    padding; the run's (the row's `tokens_per_s`, `padding_frac`, the MFU) is the task stage's. A virtual
    clock makes a pretraining step cost 10 s and a task step 2.5 s (the real step's milliseconds, on a loaded
    CPU a tenth of a second, are then noise well below the tolerances: at 1 s and 0.25 s they failed once)."""
    import types

    import harness.train as ht

    offset = [0.0]
    monkeypatch.setattr(ht, "time", types.SimpleNamespace(perf_counter=lambda: __import__("time").perf_counter() + offset[0]))
    real = ht._Run._loss_backward

    def timed(self, fn, stage, batch):
        offset[0] += 10.0 if stage.name == "pretrain" else 2.5
        return real(self, fn, stage, batch)

    monkeypatch.setattr(ht._Run, "_loss_backward", timed)
    rng = np.random.default_rng(0)
    seqs = [[2] + rng.integers(6, 20, L - 2).tolist() + [3] for L in [8, 9, 10, 11, 12] * 7]  # (batches straddle lengths: padding)
    task = SeqSet.from_lists(seqs, [[i >= len(q) - 3 for i in range(len(q))] for q in seqs], 0)
    res = _pretrain_run("tokens=2000", task=task)
    pre, tk = res.stages
    assert pre["tokens_per_s"] == pytest.approx(4 * 16 / 10.0, rel=0.05)  # 64 tokens a step
    assert 4 * 8 / 2.5 * 0.95 < tk["tokens_per_s"] < 4 * 12 / 2.5 * 1.05  # 32-48 tokens a step (both: ~9)
    assert res.tokens_per_s == pytest.approx(tk["tokens_per_s"], abs=0.05)  # (the stage record rounds to 0.1)
    assert pre["padding_frac"] == 0.0 and 0.0 < tk["padding_frac"] == res.padding_frac


def test_a_compiled_model_never_recompiles_mid_pretraining_at_an_epochs_end(monkeypatch):
    """Packed rows all have one length, so every pretraining batch has one shape, except an epoch's
    last when the rows do not fill it: 42 rows in batches of 4 end each epoch on 2. On a GPU that
    short batch was a compilation in the middle of the budgeted stage, cold (the warm-up workers stop
    after each stage's first steps), and an eager fallback no longer possible. The short batch is left
    out (its rows come back next epoch), so the stage compiles in its warm-up only."""
    from torch._dynamo.testing import CompileCounter

    import harness.compiling as hc

    real, counter = torch.compile, CompileCounter()
    monkeypatch.setattr(hc.torch, "compile", lambda m, **k: real(m, backend=counter))
    torch._dynamo.reset()
    res = _pretrain_run("tokens=3000", n_rows=42, compile=True)
    torch._dynamo.reset()
    pre = res.stages[0]
    assert pre["tokens"] > 2 * 42 * 16  # the stage crossed epoch ends
    assert pre["tokens"] % (4 * 16) == 0  # every batch whole
    assert res.late_compiles == 0 and counter.frame_count > 0


def test_the_packed_sampler_leaves_out_only_an_epochs_short_last_batch():
    data, _ = pt.pack(np.arange(11 * 4) % 20 + 6, 4)  # 11 rows
    sampler = pt.BatchSampler(data, 4, seed=0, drop_last=True)
    for _ in range(3):
        batches = sampler.epoch_batches()
        assert [len(b) for b in batches] == [4, 4] and len(set(np.concatenate(batches).tolist())) == 8
    assert [len(b) for b in pt.BatchSampler(data, 4, seed=0).epoch_batches()] in ([4, 4, 3], [4, 3, 4], [3, 4, 4])
    assert [len(b) for b in pt.BatchSampler(data.subset(np.arange(3)), 4, seed=0, drop_last=True).epoch_batches()] == [3]


def test_pretraining_form_of_each_objective():
    ar = objectives.build("autoregressive", SPECIAL, "chunked", loss_on="answer")
    assert ar.pretraining().opts.loss_on == "all" and ar.opts.loss_on == "answer"
    dif = objectives.build("diffusion", SPECIAL, "chunked", steps=4, gen_length=4)
    p = dif.pretraining()
    assert (p.opts.mask_on, p.opts.eos_fill, p.opts.steps) == ("all", False, 4) and dif.opts.mask_on == "answer"


@pytest.mark.parametrize("name, opts, task_form, lm_form", [
    ("autoregressive", {"loss_on": "answer"}, {"loss_on": "answer"}, {"loss_on": "all"}),
    ("diffusion", {"steps": 4, "gen_length": 4}, {"mask_on": "answer", "eos_fill": True},
     {"mask_on": "all", "eos_fill": False}),
], ids=["autoregressive", "diffusion"])
def test_the_pretraining_stage_trains_the_objectives_language_modelling_form(name, opts, task_form, lm_form):
    """Packed unlabeled rows have no answer: the task objective on them would train on the EOS targets
    alone (answer-only loss) or mask only the answer region and pad it with EOS filler (diffusion). The
    stage plan gives the pretraining stage `objective.pretraining()` (loss or masking over every token,
    no filler) and keeps the task objective, as configured, for the task stage."""
    obj = objectives.build(name, SPECIAL, "chunked", **opts)
    rows, _ = pt.pack(np.arange(8 * 16) % 14 + 6, 16)
    plan = pt.stage_plan(object(), obj, (pt.Corpus(rows, {"sources": [{"source": "toy"}]}), 0.5), 4, 0, 1,
                         torch.device("cpu"))
    pre, task = plan.stages
    assert (pre.name, task.name) == ("pretrain", "task") and task.objective is obj
    assert {k: getattr(task.objective.opts, k) for k in task_form} == task_form
    assert type(pre.objective) is type(obj) and {k: getattr(pre.objective.opts, k) for k in lm_form} == lm_form
    assert pre.objective.opts == dataclasses.replace(obj.opts, **lm_form)  # every other option as configured


# ----------------------------------------------------------------------------- JaQuAD and its overlap filter

def _jaquad_dir(root: Path, extra=()) -> Path:
    """A planted shared title, a planted shared paragraph (half-width digits, an edited ending, its own
    title), and one clean article; `extra` articles join the train file."""
    train = [("囲碁", [("囲碁は黒と白の石を使う。", [("何色の石か。", "黒と白")])]),
             ("碁盤の話", [("囲碁は黒と白の石を交互に置いて陣地を争うゲームである。正式な盤は19路盤で、初心者には9路盤が勧められている。",
                            [("正式な盤は。", "19路盤")])]), *extra]
    dev = [("天の川", [("天の川は夜空に見える星の帯である。", [("天の川は何の帯か。", "星")])])]
    _write(root / "train" / "jaquad_train_0000.json", json.dumps(to_squad(train), ensure_ascii=False))
    _write(root / "dev" / "jaquad_dev_0000.json", json.dumps(to_squad(dev), ensure_ascii=False))
    return root


def test_overlap_filter_drops_planted_shared_articles(tmp_path):
    arts = jaquad.load_articles(_jaquad_dir(tmp_path / "jq"))
    kept, info = jaquad.filter_overlap(arts, {"ＡＢＣ", "囲碁"}, {"囲碁は黒と白の石を交互に置いて陣地を争うゲームである。正式な盤は１９路盤で、初心者には９路盤がよく勧められる。"})
    assert [a["title"] for a in kept] == ["天の川"]
    assert info == {"articles_dropped": 2, "dropped_by_title": 1, "dropped_by_paragraph": 1, "questions_dropped": 2}


def test_jaquad_joins_training_without_the_held_out_articles(tmp_path, offline_dir, cache_dir):
    """JaQuAD joins the training data minus every article it shares with the held-out text: the
    evaluation split (囲碁 by title, 碁盤の話 by paragraph) and the dev slice too (an article titled
    like the dev slice's, half-width as JaQuAD writes it), since training on the dev slice's article
    would make checkpoint selection favour memorising it. The tokenizer stays JSQuAD's: the same model
    with JaQuAD as without."""
    import unicodedata

    import tasks
    from tasks.jsquad import load_file, split_dev

    dev = split_dev(load_file(offline_dir / "valid-v1.3.json"), tasks.build("jsquad").opts.dev_frac)[1]
    title = unicodedata.normalize("NFKC", dev[0].title)  # ＡＩ研究所 -> AI研究所
    jq = _jaquad_dir(tmp_path / "jq", [(title, [(f"{title}には百人の研究員が所属している。", [("研究員は何人か。", "百人")])])])
    ctx = PrepareContext(offline_dir, cache_dir, 300, 128, lambda _m: None)
    base = tasks.build("jsquad").prepare(ctx)
    data = tasks.build("jsquad", extra_train="jaquad", jaquad_dir=str(jq)).prepare(ctx)
    assert data.protocol == "jsquad-offline+jaquad"
    x = data.info["extra_train"]
    assert (x["articles"], x["articles_kept"], x["dropped_by_title"], x["dropped_by_paragraph"]) == (4, 1, 2, 1)
    assert data.info["train_questions"] == base.info["train_questions"] + 1
    assert "天の川は夜空に見える星の帯である。" in data.passages
    assert not any("陣地を争う" in p or "百人の研究員" in p for p in data.passages)
    assert len(data.dev) == len(base.dev)  # the same dev slice
    assert pt.tokenizer_id(data.tokenizer) == pt.tokenizer_id(base.tokenizer)  # the same tokenizer
    with pytest.raises(DataError, match="no JaQuAD files"):
        tasks.build("jsquad", extra_train="jaquad", jaquad_dir=str(tmp_path / "absent")).prepare(ctx)


# ----------------------------------------------------------------------------- end to end

def _args(data_dir, out, cache, *extra):
    return ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(data_dir), "--out", str(out),
            "--cache-dir", str(cache), "--no-progress", "--no-report", "--mixers", "attention", "--task-opt", "latency_n=1", *extra]


def test_grid_with_pretraining_records_both_stages(offline_dir, tmp_path, cache_dir, capsys):
    out = tmp_path / "out"
    _write(tmp_path / "c" / "a.txt", "吾輩は猫である。名前はまだ無い。\n")
    args = _args(offline_dir, out, cache_dir, "--objectives", "autoregressive", "--pretrain", "passages",
                 "--pretrain", f"dir:{tmp_path / 'c'}", "--pretrain-frac", "0.5")
    assert run_matrix.main(args) == 0
    assert re.search(r"ok .* pretrain [\d.]+ epochs task [\d.]+ epochs", capsys.readouterr().out)
    path = out / "results" / "jsquad-offline_pt-passages-c-f0.5_tiny_tokens-3000.jsonl"
    rows = cell_rows(read_rows(path))
    assert len(rows) == 1
    for r in rows:
        assert r["status"] == "ok", r.get("error")
        assert r["pretrain"]["sources"] == ["passages", f"dir:{tmp_path / 'c'}"] and r["pretrain"]["frac"] == 0.5
        assert [s["source"] for s in r["pretrain"]["corpus"]["sources"]] == r["pretrain"]["sources"]
        pre, task = r["train"]["stages"]
        assert pre["tokens"] >= 1500 and task["tokens"] > 0 and pre["seconds"] >= 0 and task["sources"] == ["jsquad-offline"]
        assert r["loss_curve"][0]["stage"] == "pretrain" and r["loss_curve"][-1]["stage"] == "task"
        # each stage's speed; the row's is the task stage's, and the pretraining stage has its MFU (None: a CPU)
        assert pre["tokens_per_s"] > 0 and r["metrics"]["tokens_per_s"] == pytest.approx(task["tokens_per_s"], abs=0.1)
        assert "mfu" in pre and pre["mfu"] is None is r["metrics"]["mfu"] and pre["padding_frac"] == 0.0
        # passes over each stage's text: the corpus's packed tokens, the task's training split
        assert pre["epochs"] == round(pre["tokens"] / r["pretrain"]["corpus"]["tokens"], 2) > 0
        assert task["epochs"] == round(r["train"]["epochs"], 2)
    from reports import header
    from reports.tables import label

    assert any(line.startswith("| pretraining | `passages + dir:") and "50% of the budget" in line
               for line in header("g", rows, None))
    assert label(rows[0]) == "attention (pretrain passages+dir:%s 0.5)" % (tmp_path / "c")


@pytest.mark.parametrize("source, match", [
    ("dir:{tmp}/absent", "error: dir:{tmp}/absent: no such directory"),
    ("dir:{tmp}/empty", "error: --pretrain dir:{tmp}/empty: empty corpus"),
    ("books", "error: --pretrain 'books': a source is"),
])
def test_missing_or_empty_corpus_is_one_clear_line(offline_dir, tmp_path, cache_dir, capsys, monkeypatch, source, match):
    _write(tmp_path / "empty" / "a.txt", "\n\n")
    src = source.format(tmp=tmp_path)
    monkeypatch.setattr(sys, "argv", ["run_matrix.py", *_args(offline_dir, tmp_path / "out", cache_dir, "--pretrain", src)])
    assert run_matrix.cli() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(match.format(tmp=tmp_path)) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "results").exists()


@pytest.mark.parametrize("flags, match", [
    (["--pretrain-frac", "0"], "error: --pretrain-frac must be in (0, 1), got 0.0"),
    (["--pretrain-frac", "1"], "error: --pretrain-frac must be in (0, 1), got 1.0"),  # nothing left for the task
    (["--pretrain-frac", "-0.5"], "error: --pretrain-frac must be in (0, 1), got -0.5"),
    (["--pretrain-max-chars", "-1"], "error: --pretrain-max-chars must be >= 0, got -1"),
], ids=["frac-0", "frac-1", "frac-negative", "max-chars-negative"])
def test_a_bad_pretraining_setting_is_one_clear_line(tmp_path, cache_dir, capsys, monkeypatch, flags, match):
    """A share of the budget outside (0, 1) (0: no pretraining, 1: no task training) or a negative
    character cap is refused in one line before anything runs, not trained on."""
    monkeypatch.setattr(sys, "argv", ["run_matrix.py", *_args(tmp_path / "absent", tmp_path / "out", cache_dir,
                                                                "--pretrain", "passages", *flags)])
    assert run_matrix.cli() == 2
    assert capsys.readouterr().err.strip() == match
    assert not (tmp_path / "out").exists()


def test_a_pretraining_spec_needs_a_source_and_takes_the_edges_of_its_ranges():
    """No source is refused (a cell would pretrain on nothing); a cap of 0 (no cap) and shares just inside
    (0, 1) are accepted."""
    with pytest.raises(DataError, match="^--pretrain needs at least one source$"):
        pt.PretrainSpec([])
    assert pt.PretrainSpec(["passages"], frac=0.01, max_chars=0).slug() == "pt-passages-f0.01"
    assert pt.PretrainSpec(["passages"], frac=0.99, max_chars=5).slug() == "pt-passages-c5-f0.99"
    spec = pt.PretrainSpec(["passages"])
    assert spec.max_chars == 0 and spec.frac == pt.DEFAULT_FRAC == 0.5  # by default: all the text, half the budget


def test_pretraining_a_task_without_a_text_tokenizer_is_one_clear_line(tmp_path, capsys, monkeypatch):
    """MQAR's sequences are synthetic ids: there is no tokenizer to encode a text corpus with, so
    `--pretrain` on it is refused in one line (when the cells are planned, before any trains)."""
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "run_matrix.py", "--task", "mqar", "--preset", "tiny", "--budget", "tokens=2000", "--mixers", "attention",
        "--objectives", "autoregressive", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
        "--task-opt", "vocab_size=64", "--task-opt", "train_tokens=4000", "--task-opt", "eval_seqs=16",
        "--task-opt", "dev_seqs=8", "--pretrain", "passages"])
    assert run_matrix.cli() == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --pretrain needs a task with a text tokenizer (e.g. jsquad)"
    assert not (out / "results").exists()


def test_tokenising_a_large_source_logs_its_progress_every_5000_documents(tmp_path):
    """A corpus of many documents takes minutes to tokenise on first use: a line every 5,000 documents
    (with the characters so far) shows it is moving; the count is of documents, each logged once."""
    lines: list[str] = []
    passages = ["ab"] * 10_001
    _, meta = pt.tokenize_cached(Source.parse("passages"), passages, CharTok(ALPHA), tmp_path / "cache",
                                 log=lines.append)
    assert meta["docs"] == 10_001
    assert lines[:-1] == ["[pretrain] passages: 10,000 characters tokenised ...",
                          "[pretrain] passages: 20,000 characters tokenised ..."]
    assert lines[-1].startswith("[pretrain] passages: 10,001 documents, 20,002 characters -> 30,003 tokens")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_first_steps_of_every_stage_are_warm_up_not_budget(compiled, monkeypatch):
    """The task stage after pretraining brings a new objective form and new batch shapes, so a compiled
    model compiles again there, mid-run: those seconds must stay off the budget as the run's first
    steps' do, and the steps queued before them must be charged. A virtual clock makes the first step
    of each stage cost 1,000 s (as a compilation would); the budget never sees them."""
    import types

    import harness.train as ht

    offset = [0.0]
    monkeypatch.setattr(ht, "time", types.SimpleNamespace(perf_counter=lambda: __import__("time").perf_counter() + offset[0]))
    seen, warm_steps = [], (2 if compiled else 1)
    real = ht._Run._loss_backward

    def compiling(self, fn, stage, batch):
        if stage.steps < warm_steps:  # a stage's first steps: compilation
            offset[0] += 1000.0
            seen.append(stage.name)
        return real(self, fn, stage, batch)

    monkeypatch.setattr(ht._Run, "_loss_backward", compiling)
    if compiled:  # the trainer's torch.compile stands in as the eager module: the test is about the clock
        monkeypatch.setattr(ht.torch, "compile", lambda module, mode=None: module)
    res = _pretrain_run("tokens=1000", compile=compiled)
    assert seen == ["pretrain"] * warm_steps + ["task"] * warm_steps  # both stages compiled
    assert res.train_seconds < 1000.0  # none of it on the clock
    assert all(s["seconds"] < 1000.0 for s in res.stages) and res.tokens_per_s > 1000 / 1000.0


def test_each_stages_warm_up_is_charged_at_that_stages_own_rate(step_clock):
    """Under a time budget the warm-up steps' tokens are charged at their own stage's clocked seconds per
    token: a pretraining token (packed rows) and a task token (another loss form, padded buckets) cost
    different times, so one rate over the run would charge either stage's warm-up wrongly. A virtual
    clock: 0.01 s per pretraining token, 0.03 s per task token, 1,000 s more per warm-up step."""
    warm, rate = {"pretrain": 0, "task": 0}, {"pretrain": 0.01, "task": 0.03}

    def cost(run, stage, batch):
        if run.in_warm:
            warm[stage.name] += batch.n_tokens
        return rate[stage.name] * batch.n_tokens + (1000.0 if run.in_warm else 0.0)

    step_clock(cost)
    res = _pretrain_run("seconds=20", frac=0.5)
    pre, task = res.stages
    assert (pre["warm_tokens"], task["warm_tokens"]) == (warm["pretrain"], warm["task"]) and min(warm.values()) > 0
    assert res.warm_charged_seconds == pytest.approx(0.01 * warm["pretrain"] + 0.03 * warm["task"])
    assert res.train_seconds == pytest.approx(0.01 * (pre["tokens"] - warm["pretrain"])
                                              + 0.03 * (task["tokens"] - warm["task"]))
    assert 20 <= res.train_seconds + res.warm_charged_seconds < 20 + 0.03 * 4 * 12 + 1e-9  # within a task batch


def test_jaquad_articles_parse_to_items_with_the_articles_title_and_answer_spans(tmp_path):
    """SQuAD format without JSQuAD's "title [SEP]" prefix: the title is the article's, the paragraph the
    whole context, and each answer start indexes its text in the paragraph (a start of 0 included)."""
    from tasks.jsquad_files import parse_articles

    arts = [("富士山", [("富士山は日本で最も高い山である。標高は3776mである。",
                         [("日本で最も高い山は。", "富士山"), ("標高は。", "3776m")])]),
            ("琵琶湖", [("琵琶湖は滋賀県にある湖である。", [("どこにある湖か。", "滋賀県")])])]
    root = tmp_path / "jq"
    _write(root / "train" / "a.json", json.dumps(to_squad(arts[:1]), ensure_ascii=False))
    _write(root / "dev" / "b.json", json.dumps(to_squad(arts[1:]), ensure_ascii=False))
    items = parse_articles(jaquad.load_articles(root), "jq")
    want = [(t, c, q, a) for t, pars in arts for c, qas in pars for q, a in qas]
    assert [(it.title, it.paragraph, it.question, it.answers[0]) for it in items] == want
    for it in items:
        assert it.starts == [it.paragraph.index(it.answers[0])]
        assert it.paragraph[it.starts[0] : it.starts[0] + len(it.answers[0])] == it.answers[0]
    assert items[0].starts == [0]


@pytest.mark.parametrize("n_tokens, row_len", [(11, 4), (12, 4), (3, 8)])
def test_packed_rows_count_every_token_as_a_target(n_tokens, row_len):
    """The host-side counts (lengths, target_lengths: what batches' max_target is read from) agree with
    the rows' own masks; full rows cut in stream order, the tail counted (a short stream: one short row)."""
    stream = np.arange(10, 10 + n_tokens)
    rows, tail = pt.pack(stream, row_len)
    full = n_tokens // row_len
    assert tail == (n_tokens - full * row_len if full else 0)
    want_rows = [stream[i * row_len : (i + 1) * row_len].tolist() for i in range(full)] or [stream.tolist()]
    assert rows.ids.tolist() == want_rows
    assert rows.lengths.tolist() == [len(r) for r in want_rows]
    assert rows.target_lengths.tolist() == rows.target.sum(1).tolist() == [len(r) for r in want_rows]
    assert rows.batch(np.arange(len(rows))).max_target == len(want_rows[0])


# ----------------------------------------------------------------------------- corpus building: keys, nesting, sources

def test_the_token_cache_key_holds_the_cap_and_the_files_modification_time(tmp_path):
    """A capped corpus is its own file (never the uncapped tokens read back, nor the reverse); a file
    rewritten to the same size is tokenised again (its modification time is in the key)."""
    import os

    d = tmp_path / "c"
    f = _write(d / "a.txt", "abc\n\nde\n")
    src, cache, tok = Source.parse(f"dir:{d}"), tmp_path / "cache", CharTok(ALPHA)
    whole, _ = pt.tokenize_cached(src, [], tok, cache)
    capped, m = pt.tokenize_cached(src, [], tok, cache, max_chars=3)
    assert not m["cached"] and m["max_chars"] == 3 and tok.decode(capped) == "abc|"
    assert tok.decode(pt.tokenize_cached(src, [], tok, cache)[0]) == tok.decode(whole) == "abc|de|"
    st = f.stat()
    _write(f, "abc\n\nfg\n")  # same size, new text
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    again, m2 = pt.tokenize_cached(src, [], tok, cache)
    assert not m2["cached"] and tok.decode(again) == "abc|fg|"


def test_dir_source_reads_nested_folders_in_path_order(tmp_path):
    """dir:PATH takes every *.txt under PATH, sub-folders included (an author's works in their folder)."""
    d = tmp_path / "aozora"
    _write(d / "b" / "c.txt", "gh\n")
    _write(d / "a.txt", "ab\n")
    _write(d / "b" / "a" / "x.txt", "ef\n")
    _write(d / "b" / "notes.md", "ij\n")  # not text of the corpus
    assert list(corpus.documents(Source.parse(f"dir:{d}"), [], tmp_path)) == ["ab", "ef", "gh"]


def test_prepare_packs_every_source_in_order_each_capped_on_its_own(tmp_path):
    """Two sources: each tokenised (and capped) on its own, concatenated in the order given, then packed."""
    d = _write(tmp_path / "c" / "a.txt", "hij\n\nhh\n").parent
    data = type("Data", (), {"tokenizer": CharTok(ALPHA), "passages": ["abcd", " ", "ef"]})()
    spec = pt.PretrainSpec(["passages", f"dir:{d}"], frac=0.5, max_chars=5)
    got = pt.prepare(spec, data, tmp_path / "cache", row_len=3, log=lambda _m: None)
    text = "".join(data.tokenizer.decode(r) for r in got.data.ids.tolist())
    assert text == "abcd|e|hij|h"  # "abcd|e|" (5 chars) + "hij|hh|" (5): 4 full rows
    assert [s["source"] for s in got.info["sources"]] == ["passages", f"dir:{d}"]
    assert got.info["rows"] == 4 and got.info["tail_dropped"] == 2 and got.info["tokens"] == 12


def _toy_plan(pretrain: bool = True, **kw) -> pt.StagePlan:
    """A plan over a packed corpus of 4 rows of 3 tokens until fraction 0.5 (or no pretraining), then the task."""
    ids = torch.arange(12).view(4, 3)
    n = np.full(4, 3, dtype=np.int64)
    packed = pt.Corpus(SeqSet(ids, torch.ones_like(ids, dtype=torch.bool), n, target_lengths=n.copy()),
                       {"sources": [{"source": "passages"}]})
    objective = type("Obj", (), {"pretraining": lambda self: "lm form"})()
    return pt.stage_plan("task sampler", objective, (packed, 0.5) if pretrain else None, batch_size=2, seed=0,
                         pad_to=1, device=torch.device("cpu"), **kw)


def test_the_pretraining_stage_is_sharded_like_the_task_stage():
    """Data-parallel ranks: the packed corpus's sampler goes through the same `shard` as the task's."""
    plan = _toy_plan(shard=lambda s: ("shard", s))
    pre = plan.stages[0]
    assert pre.sampler[0] == "shard" and isinstance(pre.sampler[1], pt.BatchSampler)
    assert pre.objective == "lm form" and pre.until == 0.5 and pre.data_tokens == 12 and plan.task.sampler == "task sampler"


def test_overlap_matches_the_first_40_characters_without_whitespace():
    """Two Wikipedia snapshots differ in later edits and in spacing: a JaQuAD paragraph whose first 40
    characters (NFKC, whitespace removed) equal a held-out paragraph's is the same paragraph; 39 equal
    characters are not enough, and a title differing only in spaces is the same title."""
    head = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらり"  # 40 characters
    assert len(head) == jaquad.PREFIX_CHARS == 40

    def art(title, context):
        return {"title": title, "paragraphs": [{"context": context, "qas": [{"id": "q"}]}]}

    held = {head + "る。"}
    arts = [art("一", head + "れ。"), art("二", head[:39] + "ん" + "る。"), art("三", " ".join(head) + "\nる。")]
    kept, info = jaquad.filter_overlap(arts, set(), held)
    assert [a["title"] for a in kept] == ["二"] and info["dropped_by_paragraph"] == 2
    kept, info = jaquad.filter_overlap([art("オスマン 帝国", "別の本文。")], {"オスマン帝国"}, set())
    assert kept == [] and info["dropped_by_title"] == 1


def test_a_new_stage_has_counted_nothing_and_a_step_without_positions_adds_none():
    """A stage's counters start at 0 (a stage that never ran reports no tokens, speed, padding or epochs), and
    `account` without positions (a caller that does not count them) leaves the padding unknown, not made up."""
    s = pt.Stage("task", 1.0, None, None, ["task"])
    assert s.describe() == {"stage": "task", "sources": ["task"], "tokens": 0, "steps": 0, "seconds": 0.0,
                            "warm_tokens": 0, "tokens_per_s": None, "padding_frac": None, "epochs": None}
    assert (s.steady_tokens, s.steady_seconds, s.real_pos, s.computed_pos, s.data_tokens) == (0, 0.0, 0, 0, 0)
    s.account(100, 0.5)
    s.account(100, 0.5)
    assert (s.tokens, s.steps, s.real_pos, s.computed_pos, s.warm_tokens) == (200, 2, 0, 0, 0)
    assert s.padding_frac() is None


def test_the_plan_moves_forward_only_and_a_step_at_the_budgets_end_is_the_tasks():
    """A stage ends at the first step whose fraction reaches its `until`; the plan never goes back to
    pretraining (a later step is never earlier in the budget), and the last step, at fraction 1 or past
    it (a time budget's last step overshoots), is the task's."""
    plan = _toy_plan(task_sources=["jsquad"])
    pre, task = plan.stages
    assert [plan.at(f) for f in (0.0, 0.49, 0.5, 0.2, 1.0, 1.3)] == [pre, pre, task, task, task, task]
    assert task.sources == ["jsquad"]
    alone = _toy_plan(pretrain=False)
    assert [s.name for s in alone.stages] == ["task"] and alone.task.sources == ["task"] and alone.at(1.3) is alone.task


def test_no_warm_charge_before_a_token_was_clocked():
    """Warm-up tokens are charged at a clocked rate; a run whose stages have seconds (a drain) but no clocked
    token yet has no rate to charge them at: 0, not a division by zero."""
    s = pt.Stage("task", 1.0, None, None, ["task"])
    s.account(100, 0.0, warm=True)
    s.seconds = 0.2
    assert s.clocked_tokens == 0 and pt.StagePlan([s]).warm_charge() == 0.0
    s.account(50, 0.3)
    assert pt.StagePlan([s]).warm_charge() == pytest.approx(100 * 0.5 / 50)


def test_a_stage_not_timed_yet_is_charged_at_the_runs_rate_and_a_stage_reports_rounded():
    """One clocked token is a rate (0.5 s a token here): the pretraining stage's 100 warm tokens, never
    clocked themselves, are charged at the run's rate, and the task's at its own. A stage's record rounds
    its seconds to 3 places, its speed to 1 and its passes over its text to 2."""
    pre = pt.Stage("pretrain", 0.5, None, None, ["passages"])
    pre.account(100, 0.0, warm=True)
    task = pt.Stage("task", 1.0, None, None, ["task"], data_tokens=300)
    task.account(1, 0.5)
    assert task.clocked_rate() == 0.5 and pre.clocked_rate() is None
    assert pt.StagePlan([pre, task]).warm_charge() == pytest.approx(100 * 0.5)
    task.account(999, 0.73456)
    task.steady_tokens, task.steady_seconds = 1000, 0.81
    d = task.describe()
    assert (d["seconds"], d["tokens_per_s"], d["epochs"]) == (1.235, 1234.6, 3.33)


def test_one_source_is_packed_on_its_own_and_logged_and_its_tokenising_timed(tmp_path, monkeypatch):
    """The common case, one source: its stream packed as it is; one line says how many rows; the meta
    records the tokenising time from the clock read around it, to hundredths."""
    import types

    clock = iter([10.0, 12.3456])
    monkeypatch.setattr(pt, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    data = type("Data", (), {"tokenizer": CharTok(ALPHA), "passages": ["abcd", "ef"]})()
    lines: list[str] = []
    got = pt.prepare(pt.PretrainSpec(["passages"]), data, tmp_path / "cache", row_len=3, log=lines.append)
    assert "".join(data.tokenizer.decode(r) for r in got.data.ids.tolist()) == "abcd|e"  # of "abcd|ef|": 2 rows of 3
    assert got.info["rows"] == 2 and got.info["tail_dropped"] == 2 and got.info["sources"][0]["tokenize_s"] == 2.35
    assert lines[-1] == "[pretrain] passages: 2 rows of 3 tokens"


def test_a_stage_with_tokens_but_no_seconds_has_no_rate_and_its_padding_is_to_4_places():
    s = pt.Stage("task", 1.0, None, None, ["task"])
    s.account(10, 0.0, real_pos=1, computed_pos=3)
    assert s.clocked_rate() is None and s.padding_frac() == 0.6667


def test_a_token_file_that_cannot_be_opened_fails_with_the_systems_error(tmp_path, monkeypatch):
    """The cleanup of a failed tokenising pass must not hide why it failed: a file the cache cannot open
    (a full disk, a read-only folder) raises that error, not the cleanup's FileNotFoundError."""
    real_open = Path.open

    def open_(self, mode="r", *a, **k):
        if ".tmp" in self.name:
            raise OSError(28, "No space left on device")
        return real_open(self, mode, *a, **k)

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(OSError, match="No space left on device"):
        pt.tokenize_cached(Source.parse("passages"), ["ab"], CharTok(ALPHA), tmp_path / "cache")
