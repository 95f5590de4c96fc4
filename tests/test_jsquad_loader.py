"""Loading JSQuAD: local directories for both protocols, the online path (through `datasets`, here
pointed at local files), and one clear error for bad input."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

import tasks
from fixtures.jsquad_mini import TRAIN_ARTICLES, to_squad, write_split
from tasks import DataError, PrepareContext
from tasks import jsquad as jsq
from tasks import jsquad_baselines as jb


def _prepare(data_dir, cache_dir, max_len=256, **opts):
    return tasks.build("jsquad", **opts).prepare(PrepareContext(data_dir, cache_dir, 300, max_len, log=lambda s: None))


def test_offline_protocol_trains_on_valid_and_evaluates_on_test(offline_dir, cache_dir):
    d = _prepare(offline_dir, cache_dir)
    assert d.protocol == "jsquad-offline"
    assert d.info["files"]["train"].endswith("valid-v1.3.json") and d.info["files"]["eval"].endswith("test-v1.3.json")
    train_titles = {it.title for _, it in d.items}
    assert train_titles == {"桜", "新幹線", "囲碁"}
    assert len(d.items) == 5 and d.info["dev_questions"] > 0
    assert d.info["train_questions"] + d.info["dev_questions"] == 14
    assert d.info["tokenizer"]["vocab_size"] == 300  # vocab_size=0 (the default) asks the preset's, here 300
    assert (d.info["eval_truncated"], d.info["eval_answer_cut"]) == (0, 0)  # max_len 256 keeps every paragraph
    assert len(d.dev) == d.info["dev_questions"] and len(d.train) == d.info["train_questions"]
    asked = _prepare(offline_dir, cache_dir, vocab_size=350)  # an explicit size wins over the preset's
    assert asked.info["tokenizer"]["vocab_size"] == 350


def test_dev_slice_is_whole_articles_from_the_training_file(offline_dir, cache_dir):
    train_items = jsq.load_file(offline_dir / "valid-v1.3.json")
    tr, dev = jsq.split_dev(train_items, 0.2)
    assert {i.title for i in tr}.isdisjoint({i.title for i in dev})
    assert len(tr) + len(dev) == len(train_items)
    assert jsq.split_dev(train_items, 0.2)[1] == dev  # same slice every time


@pytest.mark.parametrize("dev_frac", [0.2, 0.3, 0.5])
def test_dev_slice_takes_every_question_of_its_articles(offline_dir, dev_frac):
    """The dev slice is whole articles: each dev title brings all its questions, and the number of
    dev articles is `dev_frac` of the titles. At 0.2 on this fixture the first questions in file order
    happen to be one whole article; 0.3 and 0.5 cut through an article, so a slice taken question by
    question (a paragraph shared between training and dev) cannot pass."""
    items = jsq.load_file(offline_dir / "valid-v1.3.json")
    tr, dev = jsq.split_dev(items, dev_frac)
    dev_titles = {i.title for i in dev}
    n_titles = len({i.title for i in items})
    assert len(dev_titles) == max(1, round(dev_frac * n_titles))
    assert [i.qid for i in dev] == [i.qid for i in items if i.title in dev_titles]  # every question of each
    assert [i.qid for i in tr] == [i.qid for i in items if i.title not in dev_titles]


def test_tokenizer_trains_on_the_training_split_only(offline_dir, cache_dir, monkeypatch):
    """SentencePiece learns its pieces from the training articles left after the dev slice is held out:
    never from the evaluation split (its pieces would fit the scored text) nor from the dev slice
    (checkpoint selection would see text the tokenizer was fitted to). Every training paragraph and
    question is in it. The texts the task hands to `train_or_load` are captured."""
    seen: list[list[str]] = []
    real = jsq.train_or_load

    def capture(texts, settings, cache):
        seen.append(list(texts))
        return real(texts, settings, cache)

    monkeypatch.setattr(jsq, "train_or_load", capture)
    _prepare(offline_dir, cache_dir, dev_frac=0.3)
    assert len(seen) == 1
    corpus = "\n".join(seen[0])
    train, dev = jsq.split_dev(jsq.load_file(offline_dir / "valid-v1.3.json"), 0.3)
    held = dev + jsq.load_file(offline_dir / "test-v1.3.json")
    assert dev and train
    for it in held:
        assert it.paragraph not in corpus and it.question not in corpus, it.qid
    for it in train:
        assert it.paragraph in seen[0] and it.question in seen[0], it.qid


def test_official_protocol_from_a_directory(official_dir, cache_dir):
    d = _prepare(official_dir, cache_dir)
    assert d.protocol == "jsquad"
    assert d.info["files"]["eval"].endswith("valid-v1.3.json")


def test_online_path_goes_through_datasets(official_dir, cache_dir, monkeypatch):
    """The online loader, with JGLUE's URL swapped for a local directory (no network here)."""
    pytest.importorskip("datasets")  # optional (requirements-online.txt); CI installs it
    got = jsq.fetch_official(cache_dir, base=str(official_dir))
    assert len(got["train"]) == 14 and len(got["valid"]) == 5
    monkeypatch.setattr(jsq, "fetch_official", lambda cache, base=jsq.OFFICIAL_BASE: got)
    d = _prepare(None, cache_dir)
    assert d.protocol == "jsquad"


def test_online_without_network_is_one_clear_line(cache_dir, monkeypatch):
    def no_dns(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(DataError, match="--data-dir") as e:
        _prepare(None, cache_dir)
    assert "\n" not in str(e.value)


def test_online_without_datasets_or_with_a_failed_download_is_one_clear_line(official_dir, cache_dir, monkeypatch):
    """The download's two other failures, each one line that says what to do: the optional `datasets`
    package missing (which file installs it), and a download that fails (whatever `datasets` raised:
    its type and its message's first line, as a grid row's `error`, then the offline way)."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(DataError, match=r"needs the optional `datasets` package .*requirements-online.txt") as e:
        jsq.fetch_official(cache_dir, base=str(official_dir))
    assert "\n" not in str(e.value) and "--data-dir" in str(e.value)

    def load_dataset(*a, **k):
        raise ConnectionError("HTTPSConnectionPool: read timed out\n" + "x" * 500)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError, match=r"could not download JSQuAD from .* \(ConnectionError: HTTPS") as e:
        jsq.fetch_official(cache_dir, base=str(official_dir))
    msg = str(e.value)
    assert "\n" not in msg and "read timed out)" in msg and "xxx" not in msg  # its first line
    assert "--data-dir" in msg and e.value.__cause__ is None  # one error, not a chain


def test_the_network_probe_waits_5_s_at_most_and_leaves_no_timeout_behind(cache_dir, monkeypatch):
    """Before downloading, the loader asks DNS for JGLUE's host under a 5 s socket timeout (an offline
    machine answers in seconds, not minutes), and sets the process-wide default back afterwards: a
    5 s timeout left behind would cut every later download and connection short."""
    asked: list[tuple[str, int, float | None]] = []

    def no_dns(host, port, *a, **k):
        asked.append((host, port, socket.getdefaulttimeout()))
        raise OSError("no network")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert socket.getdefaulttimeout() is None
    with pytest.raises(DataError, match="cannot reach raw.githubusercontent.com"):
        jsq.fetch_official(cache_dir)
    assert asked == [("raw.githubusercontent.com", 443, 5)]
    assert socket.getdefaulttimeout() is None


def test_example_format_and_targets(offline_dir, cache_dir):
    d = _prepare(offline_dir, cache_dir)
    s = d.special
    ids, tgt, n = d.train.ids[0], d.train.target[0], int(d.train.lengths[0])
    assert ids[0] == s.bos and ids[n - 1] == s.eos
    assert (ids[:n] == s.sep).sum() == 3
    answer = d.decode(ids[:n][tgt[:n]].tolist())
    assert tgt[n - 1] and not tgt[0] and answer  # answer + EOS are the targets
    gold_answers = {a for it in jsq.load_file(offline_dir / "valid-v1.3.json") for a in it.answers}
    assert answer in gold_answers


def test_dev_items_are_the_dev_slices_questions_as_evaluation_prompts(offline_dir, cache_dir):
    """`TaskData.dev_items`, where benchmarks.span_answers chooses a way of answering: every question of the
    dev slice (whole articles held out of the training file, none of the evaluation split's), each with the
    prompt the evaluation builds for a question; building them leaves the evaluation's truncation count
    alone; a question with no answer or no room for a context is left out, not an error."""
    import dataclasses

    for max_len, cap in ((256, 24), (64, 6)):  # at 64 tokens prompts are cut (eval_truncated > 0)
        d = _prepare(offline_dir, cache_dir, max_len=max_len, max_answer_tokens=cap)
        _, dev = jsq.split_dev(jsq.load_file(offline_dir / "valid-v1.3.json"), 0.1)
        assert [it.qid for _, it in d.dev_items] == [it.qid for it in dev] and len(d.dev_items) == d.info["dev_questions"]
        assert not {it.title for _, it in d.dev_items} & {it.title for _, it in d.items}
        enc = jsq._Encoder(d.tokenizer, max_len, "context_first")
        assert [p for p, _ in d.dev_items] == [enc.prompt(it, reserve=cap + 1)[0] for _, it in d.dev_items]
        enc.eval_truncated = 0
        for _, it in d.items:
            enc.prompt(it, reserve=cap + 1)
        assert d.info["eval_truncated"] == enc.eval_truncated  # the evaluation split's prompts only
    assert d.info["eval_truncated"] > 0 and any(len(p) == max_len - cap - 1 for p, _ in d.dev_items)
    task, it = tasks.build("jsquad", max_answer_tokens=cap), d.dev_items[0][1]
    kept = task._dev_prompts(enc, [dataclasses.replace(it, question="とても長い質問" * 40), it,
                                   dataclasses.replace(it, answers=[], starts=[])])
    assert [x.qid for _, x in kept] == [it.qid]


def test_training_truncation_keeps_the_answer(offline_dir, cache_dir):
    """A max_len far below the paragraph length windows the paragraph around the answer: in every kept
    row the answer is inside the windowed paragraph (a window elsewhere teaches copying text that is not
    there), and no question of this fixture is dropped to hide one."""
    d = _prepare(offline_dir, cache_dir, max_len=64, max_answer_tokens=6)
    assert d.info["train_truncated"] > 0
    assert d.train.lengths.max() <= 64
    assert d.info["eval_truncated"] > 0 and 0 <= d.info["eval_answer_cut"] <= d.info["eval_truncated"]
    items = {it.answers[0] for it in jsq.load_file(offline_dir / "valid-v1.3.json")}
    for i in range(len(d.train)):
        n = int(d.train.lengths[i])
        ids = d.train.ids[i, :n]
        ans = d.decode(ids[d.train.target[i, :n]].tolist())
        assert ans in items
        # the answer text is still inside the (windowed) paragraph: between the prompt's first two SEPs
        sep = (ids == d.special.sep).nonzero().flatten().tolist()
        assert ans in d.decode(ids[sep[0] + 1 : sep[1]].tolist()), (i, ans)
    # every question fits with its answer at this length: each one is a kept row checked above
    assert d.info["train_dropped"] == 0 and d.info["train_questions"] == len(d.train) == 12


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"version": 1}', "no top-level 'data'"),
    ('{"data": [{"title": "x", "paragraphs": [{"context": "x"}]}]}', "bad or missing field"),
    ('{"data": []}', "no questions"),
    ('{"data": {"title": "x", "paragraphs": []}}', "expected a 'data' list of articles"),
])
def test_malformed_files_name_the_file(tmp_path, cache_dir, content, match):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "valid-v1.3.json").write_text(content)
    (d / "test-v1.3.json").write_text(content)
    with pytest.raises(DataError, match=match) as e:
        _prepare(d, cache_dir)
    assert "valid-v1.3.json" in str(e.value)


def test_load_file_of_a_missing_file_names_it(tmp_path):
    """A file that is not there is one DataError naming it, not a FileNotFoundError traceback."""
    with pytest.raises(DataError, match=r"valid-v1\.3\.json: file not found"):
        jsq.load_file(tmp_path / "valid-v1.3.json")


def test_missing_files_and_directories(tmp_path, cache_dir):
    with pytest.raises(DataError, match="data directory not found"):
        _prepare(tmp_path / "nowhere", cache_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no valid-v1.3.json or test-v1.3.json"):
        _prepare(tmp_path / "empty", cache_dir)


@pytest.mark.parametrize("missing", ["test", "valid"])
def test_an_offline_directory_missing_one_file_names_that_file(offline_dir, cache_dir, missing):
    """The offline protocol needs both files; a directory with only one is one clear error naming the
    other, not a crash inside the loader."""
    (offline_dir / f"{missing}-v1.3.json").unlink()
    with pytest.raises(DataError, match=rf"no {missing}-v1\.3\.json \(the offline protocol"):
        _prepare(offline_dir, cache_dir)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared/data/jsquad-v1.3/test-v1.3.json").exists(),
                    reason="shared JSQuAD files not present")
def test_shared_offline_files_parse():
    """The real files (read from ../shared at run time, never copied) have the documented sizes."""
    root = Path(__file__).resolve().parents[2] / "shared/data/jsquad-v1.3"
    assert len(jsq.load_file(root / "valid-v1.3.json")) == 4442
    assert len(jsq.load_file(root / "test-v1.3.json")) == 4420


class _Oracle:
    """A stand-in objective that answers each prompt with its own question's gold answer, encoded, and
    records the batches `generate` was given."""

    def __init__(self, data, wrong_for=()):
        self.gold = {tuple(p): data.tokenizer.encode(it.answers[0]) for p, it in data.items}
        self.wrong = {tuple(p) for p, it in data.items if it.qid in wrong_for}  # these get an empty answer
        self.batches: list[int] = []
        self.training_seen: set[bool] = set()  # the model's mode at each call

    def generate(self, model, prompts, max_new, batch_size):
        self.batches.append(len(prompts))
        self.training_seen.add(model.training)
        return [[] if tuple(p) in self.wrong else self.gold[tuple(p)] for p in prompts]

    def decode_path(self, model):
        return "oracle"


def test_each_answer_is_scored_against_its_own_question(offline_dir, cache_dir):
    """`evaluate` generates in batches of prompts sorted by length and must put every answer back at its
    own question: an answer kept in sorted order is scored against another question's gold. The oracle
    answers every question right except two chosen ones; the scores must say exactly that, by id."""
    import torch

    from tasks.jsquad_metric import score

    task = tasks.build("jsquad", latency_n=0)
    d = task.prepare(PrepareContext(offline_dir, cache_dir, 300, 256, log=lambda s: None))
    lengths = [len(p) for p, _ in d.items]
    assert lengths != sorted(lengths) and len(set(lengths)) == len(lengths)  # the sort moves the questions
    # what the oracle's right answer scores after the tokenizer's round trip (1.0 where it is lossless)
    best = {it.qid: score(d.decode(d.tokenizer.encode(it.answers[0])), it.answers) for _, it in d.items}
    wrong = {d.items[0][1].qid, d.items[3][1].qid}
    oracle = _Oracle(d, wrong_for=wrong)
    shown: list[tuple[int, int]] = []
    got = task.evaluate(torch.nn.Linear(1, 1), oracle, d, torch.device("cpu"), batch_size=2,
                        progress=lambda i, n: shown.append((i, n)))
    assert oracle.batches == [2, 2, 1]
    assert shown == [(0, 5), (2, 5), (4, 5), (5, 5)]  # the progress line starts at 0 and counts answers
    assert oracle.training_seen == {False}  # answers come from the model in eval mode (no dropout)
    pq = got["per_question"]
    assert pq["id"] == [it.qid for _, it in d.items]
    expect = {q: (0, 0.0) if q in wrong else (int(em), round(f1, 4)) for q, (em, f1) in best.items()}
    assert dict(zip(pq["id"], zip(pq["em"], pq["f1"]))) == expect
    assert all(best[q] == (1.0, 1.0) for q in best if q not in wrong)  # the fixture's answers round-trip
    assert got["eval_n"] == 5 and got["em"] == pytest.approx(3 / 5)
    # a few predictions for the row, by id, with their own scores (no question or gold text)
    assert got["samples"] == [{"qid": it.qid, "pred": "" if it.qid in wrong else d.decode(oracle.gold[tuple(p)]),
                               "em": expect[it.qid][0], "f1": pytest.approx(expect[it.qid][1], abs=1e-4)}
                              for p, it in d.items]  # the first 5: all of them here


# ----------------------------------------------------------------------------- options and protocols

def test_dev_slice_needs_two_articles(offline_dir):
    """With one article the dev slice would have to be all of it (or nothing): a clear error instead of
    training without checkpoint selection."""
    one = [it for it in jsq.load_file(offline_dir / "valid-v1.3.json") if it.title == "富士山"]
    with pytest.raises(DataError, match="fewer than 2 articles: cannot hold out a dev slice"):
        jsq.split_dev(one, 0.5)


@pytest.mark.parametrize("dev_frac", [0.01, 0.5, 0.99])
def test_two_articles_are_enough_and_one_always_stays_for_training(offline_dir, dev_frac):
    """Two articles is the least a dev slice can be cut from: one for dev, one for training, whatever
    `dev_frac` asks (0.99 of 2 rounds to 2, which would leave nothing to train on)."""
    items = jsq.load_file(offline_dir / "valid-v1.3.json")
    two = sorted({it.title for it in items})[:2]
    tr, dev = jsq.split_dev([it for it in items if it.title in two], dev_frac)
    assert len({it.title for it in tr}) == 1 and len({it.title for it in dev}) == 1


@pytest.mark.parametrize("opts", [{"max_answer_tokens": 1}, {"vocab_size": 0}, {"eval_limit": 0, "latency_n": 0}],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_the_least_allowed_option_values_are_accepted(opts):
    """The other side of each bound below: one answer token, the preset's vocabulary, no limit and no
    timing are settings a user may ask for."""
    o = tasks.build("jsquad", **opts).opts
    assert all(getattr(o, k) == v for k, v in opts.items())


@pytest.mark.parametrize("opts, match", [
    ({"max_answer_tokens": 0}, "max_answer_tokens must be >= 1"),
    ({"vocab_size": -1}, r"vocab_size >= 0 \(0: the preset's\)"),
    ({"dev_frac": 0.0}, r"dev_frac must be in \(0, 1\); got 0.0"),
    ({"dev_frac": 1.0}, r"dev_frac must be in \(0, 1\); got 1.0"),
    ({"train_frac": 0.0}, r"train_frac must be in \(0, 1\]; got 0.0"),
    ({"train_frac": 1.5}, r"train_frac must be in \(0, 1\]; got 1.5"),
    ({"protocol": "online"}, "protocol must be auto, offline or official; got 'online'"),
    ({"order": "answer_first"}, "order must be context_first or question_first; got 'answer_first'"),
    ({"extra_train": "squad"}, "extra_train must be '' or 'jaquad'; got 'squad'"),
])
def test_bad_options_are_one_clear_error(offline_dir, cache_dir, opts, match):
    """Each out-of-range or unknown option value stops the run with one line naming the option, before
    any data is prepared with it (an unknown protocol would silently pick one; an unknown order would
    silently build context-first prompts; dev_frac 0 would still hold out an article)."""
    with pytest.raises(ValueError, match=match) as e:
        _prepare(offline_dir, cache_dir, **opts)
    assert "\n" not in str(e.value) and str(e.value).startswith("jsquad: ")


def test_offline_protocol_without_a_directory_does_not_download(cache_dir, monkeypatch):
    """protocol=offline reads local files: without a data directory it says how to pass one, and never
    falls back to downloading the official splits (which would be the other protocol)."""
    monkeypatch.setattr(jsq, "fetch_official", lambda *a, **k: pytest.fail("the offline protocol downloaded"))
    with pytest.raises(DataError, match="the offline protocol reads local files: pass --data-dir"):
        _prepare(None, cache_dir, protocol="offline")


def test_official_protocol_needs_the_train_file(offline_dir, cache_dir):
    """protocol=official on a directory with only valid + test names the two files it needs instead of
    quietly running the offline protocol."""
    with pytest.raises(DataError, match=r"the official protocol needs train-v1\.3\.json and valid-v1\.3\.json"):
        _prepare(offline_dir, cache_dir, protocol="official")


# ----------------------------------------------------------------------------- extra_train=jaquad: where its files are

def _write_jaquad(root: Path, train: str | None = None) -> Path:
    """A tiny JaQuAD directory: one article in train (or the text `train`), one in dev (SQuAD format,
    no "title [SEP]" prefix)."""
    import json

    def squad(title, context, question, answer):
        return json.dumps(to_squad([(title, [(context, [(question, answer)])])]), ensure_ascii=False)

    files = {"train/jaquad_train_0000.json": squad("天の川", "天の川は夜空に見える星の帯である。", "天の川は何の帯か。", "星")
             if train is None else train,
             "dev/jaquad_dev_0000.json": squad("金閣寺", "金閣寺は京都にある寺院である。", "金閣寺はどこにあるか。", "京都")}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "dot"])
def test_jaquad_dir_defaults_to_jaquad_beside_the_data_directory(offline_dir, cache_dir, monkeypatch, relative):
    """Without `jaquad_dir`, JaQuAD is read from `jaquad-v0.1.0` beside the JSQuAD directory (as in
    ../shared/data): also when the data directory is given as `.`, whose parent is only found once the
    path is resolved. Its questions join the training data and the directory is recorded."""
    jq = _write_jaquad(offline_dir.parent / "jaquad-v0.1.0")
    if relative:
        monkeypatch.chdir(offline_dir)
    d = _prepare(Path(".") if relative else offline_dir, cache_dir, extra_train="jaquad")
    assert d.protocol == "jsquad-offline+jaquad"
    assert d.info["files"]["extra_train"] == str(jq.resolve())
    assert d.info["extra_train"]["questions"] == 2
    assert {"天の川は夜空に見える星の帯である。", "金閣寺は京都にある寺院である。"} <= set(d.passages)


def test_jaquad_without_any_directory_says_how_to_give_one(official_dir, cache_dir, monkeypatch):
    """Online JSQuAD (no data directory) has no directory for JaQuAD to sit beside: one error naming
    the option to set."""
    got = {s: jsq.load_file(official_dir / f"{s}-v1.3.json") for s in ("train", "valid")}
    monkeypatch.setattr(jsq, "fetch_official", lambda cache, base=jsq.OFFICIAL_BASE: got)
    with pytest.raises(DataError, match="extra_train=jaquad reads local files: pass --task-opt jaquad_dir=DIR"):
        _prepare(None, cache_dir, extra_train="jaquad")


@pytest.mark.parametrize("content, error", [
    ("{not json", "JSONDecodeError"),
    ('{"version": "0.1.0"}', "KeyError"),
    ("[1, 2]", "TypeError"),
])
def test_malformed_jaquad_file_names_it(tmp_path, offline_dir, cache_dir, content, error):
    """A JaQuAD file that is not SQuAD-format JSON is one DataError naming the file and what was wrong."""
    jq = _write_jaquad(tmp_path / "jq", train=content)
    with pytest.raises(DataError, match=rf"jaquad_train_0000\.json: not SQuAD-format JaQuAD JSON \({error}") as e:
        _prepare(offline_dir, cache_dir, extra_train="jaquad", jaquad_dir=str(jq))
    assert "\n" not in str(e.value)


def test_xz_compressed_jaquad_files_train_exactly_as_the_plain_ones(tmp_path, offline_dir, cache_dir):
    """JaQuAD's files may be xz-compressed (`NAME.json.xz`: how scripts/prepare_device.sh lets a copy travel
    to a lent GPU): the same articles in the same order, so the same training data, as from the plain files;
    a split may mix the two. A file present both ways is one error (its questions would count twice), and a
    corrupt archive one DataError naming it."""
    import json
    import lzma

    import torch

    from tasks import jaquad

    plain = _write_jaquad(tmp_path / "plain")
    extra = json.dumps(to_squad([("富士山", [("富士山は日本一高い山である。", [("日本一高い山は。", "富士山")])])]),
                       ensure_ascii=False)
    (plain / "train" / "jaquad_train_0001.json").write_text(extra, encoding="utf-8")
    packed = tmp_path / "packed"
    for f in sorted(plain.rglob("*.json")):  # the first train file and the dev file compressed, the second not
        dest = packed / f.relative_to(plain)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if f.name == "jaquad_train_0001.json":
            dest.write_bytes(f.read_bytes())
        else:
            dest.with_name(f.name + ".xz").write_bytes(lzma.compress(f.read_bytes()))
    assert sorted(p.name for p in packed.rglob("*")) == ["dev", "jaquad_dev_0000.json.xz", "jaquad_train_0000.json.xz",
                                                        "jaquad_train_0001.json", "train"]
    want = jaquad.load_articles(plain)
    assert [a["title"] for a in want] == ["天の川", "富士山", "金閣寺"]  # train's files in name order, then dev's
    assert jaquad.load_articles(packed) == want
    a = _prepare(offline_dir, cache_dir, extra_train="jaquad", jaquad_dir=str(plain))
    b = _prepare(offline_dir, cache_dir, extra_train="jaquad", jaquad_dir=str(packed))
    assert b.info["extra_train"] == a.info["extra_train"] and b.info["files"]["extra_train"] == str(packed)
    assert torch.equal(a.train.ids, b.train.ids) and torch.equal(a.train.target, b.train.target)
    assert b.info["extra_train"]["questions"] == 3

    (packed / "train" / "jaquad_train_0001.json.xz").write_bytes(lzma.compress(extra.encode("utf-8")))
    with pytest.raises(DataError, match=r"both jaquad_train_0001\.json and jaquad_train_0001\.json\.xz; keep one"):
        jaquad.load_articles(packed)
    (packed / "train" / "jaquad_train_0001.json").unlink()
    (packed / "dev" / "jaquad_dev_0000.json.xz").write_bytes(b"not xz at all")
    with pytest.raises(DataError, match=r"jaquad_dev_0000\.json\.xz: not SQuAD-format JaQuAD JSON \(LZMAError") as e:
        jaquad.load_articles(packed)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("eval_limit, full", [(0, False), (5, False), (4, True)])
def test_references_score_the_whole_split_only_when_the_models_saw_a_sample(offline_dir, cache_dir,
                                                                           eval_limit, full):
    """The fixture's evaluation split has 5 questions. Scored on all of them (no limit, or a limit of
    exactly 5) a reference's figures are already the whole split's: a second, "full split" scoring would
    cost as much again and say nothing new. Only a sample (4 of 5) gets one."""
    task = tasks.build("jsquad", eval_limit=eval_limit)
    ctx = PrepareContext(offline_dir, cache_dir, 300, 256, log=lambda s: None)
    data = task.prepare(ctx)
    assert len({it.qid for _, it in data.items}) == (eval_limit or 5)  # a sample of distinct questions
    refs = task.references(data, ctx)
    assert {r.name for r in refs} == {*jb.BASELINES, "tokenizer_ceiling"}
    assert {r.score_full is not None for r in refs} == {full}
    if full:  # the whole split is read once, for all the references
        reads = []
        splits = task._splits
        task._splits = lambda c: reads.append(1) or splits(c)
        assert {r.score_full()["eval_n"] for r in refs} == {5} and reads == [1]


def test_a_sample_is_distinct_questions_in_file_order(tmp_path, cache_dir):
    """`eval_limit` scores a seeded sample of the evaluation split: distinct questions (drawn without
    replacement), kept in file order. 10 of 14 here: a draw with replacement repeats one almost surely."""
    data = tmp_path / "jsquad"
    write_split(data, "valid", TRAIN_ARTICLES, "v")
    write_split(data, "test", TRAIN_ARTICLES, "e")  # 14 questions to sample from
    d = _prepare(data, cache_dir, eval_limit=10)
    ids = [it.qid for _, it in d.items]
    order = [it.qid for it in jsq.load_file(data / "test-v1.3.json")]
    assert len(set(ids)) == 10 and ids == [q for q in order if q in ids]
    assert (d.info["eval_questions"], d.info["eval_questions_total"]) == (10, 14)


def test_the_task_declares_em_and_f1_with_f1_the_headline():
    """The rows' metric keys and the report's labels: JGLUE reports EM and F1, and F1 is the figure the
    grid ranks cells by."""
    task = tasks.build("jsquad")
    assert [(m.key, m.header, m.headline) for m in task.metrics] == [("em", "EM", False), ("f1", "F1", True)]


# ----------------------------------------------------------------------------- the files' format, edge by edge

def test_only_the_first_sep_splits_title_from_paragraph_and_a_start_of_0_is_a_start():
    from tasks.jsquad_files import parse_articles

    arts = [{"title": "T", "paragraphs": [
        {"context": "題 [SEP] 前 [SEP] 後", "qas": [{"id": 1, "question": "q", "answers": [{"text": "後", "answer_start": 16}]}]},
        {"context": "京都は古都。", "qas": [{"id": 2, "question": "q", "answers": [{"text": "京都", "answer_start": 0},
                                                                             {"text": "古都"}]}]}]}]
    a, b = parse_articles(arts, "x")
    assert (a.title, a.paragraph, a.starts) == ("題", "前 [SEP] 後", [8])  # 16 - len("題 [SEP] ")
    assert a.paragraph[a.starts[0]] == "後"
    assert (b.title, b.paragraph, b.starts) == ("T", "京都は古都。", [0, -1])  # SQuAD style: the article's title


def test_a_split_without_its_v13_file_is_read_from_its_newest_version(tmp_path):
    from tasks.jsquad_files import find_split

    for v in ("v1.1", "v1.2"):
        (tmp_path / f"valid-{v}.json").write_text("{}", encoding="utf-8")
    assert find_split(tmp_path, "valid") == tmp_path / "valid-v1.2.json"
    assert find_split(tmp_path, "test") is None
    (tmp_path / "valid.json").write_text("{}", encoding="utf-8")
    assert find_split(tmp_path, "valid") == tmp_path / "valid.json"  # an unversioned name before a guess


# ----------------------------------------------------------------------------- train_frac: a smaller training set

def test_train_frac_trains_on_a_seeded_share_of_whole_paragraphs_and_keeps_the_rest(offline_dir, cache_dir,
                                                                                  monkeypatch):
    """`train_frac` keeps a share of the training paragraphs (each with every question; they are also the
    pretraining passages), while the dev slice, the tokenizer's texts and the scored questions stay the
    whole file's: cells with and without it compare on the same vocabulary, dev and test questions."""
    seen: list[list[str]] = []
    real = jsq.train_or_load
    monkeypatch.setattr(jsq, "train_or_load", lambda texts, *a: (seen.append(list(texts)), real(texts, *a))[1])
    whole = _prepare(offline_dir, cache_dir, dev_frac=0.2)
    part = _prepare(offline_dir, cache_dir, dev_frac=0.2, train_frac=0.4)
    train, dev = jsq.split_dev(jsq.load_file(offline_dir / "valid-v1.3.json"), 0.2)
    assert len({it.paragraph for it in train}) == 5
    kept = jsq.keep_paragraphs(train, 0.4)
    paragraphs = {it.paragraph for it in kept}
    assert len(paragraphs) == 2  # round(0.4 x 5)
    assert [it.qid for it in kept] == [it.qid for it in train if it.paragraph in paragraphs]  # every question
    assert part.info["train_questions"] == len(kept) < whole.info["train_questions"] == len(train)
    assert part.info["train_subset"] == {"frac": 0.4, "of_paragraphs": 5, "paragraphs": 2}
    assert "train_subset" not in whole.info
    assert sorted(part.passages) == sorted(paragraphs)  # what --pretrain passages reads
    assert len(seen) == 2 and seen[0] == seen[1]  # the tokenizer: the whole file's
    assert part.info["dev_questions"] == whole.info["dev_questions"] == len(dev)
    assert part.eval_ids == whole.eval_ids


def _items(spec: dict[str, int]) -> list[jsq.QAItem]:
    """Two questions on each of `spec[title]` paragraphs of each title."""
    return [jsq.QAItem(f"{t}-{p}-{q}", t, f"{t} の段落 {p}", f"問 {q}", ["a"], [0])
            for t, n in spec.items() for p in range(n) for q in range(2)]


@pytest.mark.parametrize("frac, n", [(0.01, 1), (0.3, 3), (0.5, 5), (0.7, 7), (1.0, 10)])
def test_a_smaller_train_frac_keeps_a_subset_of_a_larger_ones_paragraphs(frac, n):
    """The unit is the paragraph, not the article (one article of 8 paragraphs and two of 1 here: a share
    of articles could not be 3 of 10 paragraphs), with both its questions. The paragraphs are ranked once
    (a fixed seed): the same subset every time, at least one, and a larger share adds paragraphs to a
    smaller one's rather than drawing others (a data-scaling curve adds data at each point). 1 keeps all."""
    items = _items({"長い記事": 8, "短い記事": 1, "別の記事": 1})
    got = [jsq.keep_paragraphs(items, f) for f in (frac, min(1.0, frac + 0.2))]
    keys = [{(it.title, it.paragraph) for it in g} for g in got]
    assert len(keys[0]) == n and keys[0] <= keys[1]
    assert len(got[0]) == 2 * n and [it.qid for it in got[0]] == [it.qid for it in items
                                                                  if (it.title, it.paragraph) in keys[0]]
    assert jsq.keep_paragraphs(items, frac) == got[0]
    assert jsq.keep_paragraphs(items, 1.0) == items


def test_train_frac_leaves_jaquad_whole_and_names_its_own_grid(offline_dir, cache_dir):
    """JaQuAD's questions are added whole to the JSQuAD subset (the share is of JSQuAD's paragraphs), and
    the grid gets its own name: a model trained on a tenth of the data answers another question."""
    _write_jaquad(offline_dir.parent / "jaquad-v0.1.0")
    d = _prepare(offline_dir, cache_dir, dev_frac=0.2, train_frac=0.4, extra_train="jaquad")
    train, _ = jsq.split_dev(jsq.load_file(offline_dir / "valid-v1.3.json"), 0.2)
    assert d.info["train_questions"] == len(jsq.keep_paragraphs(train, 0.4)) + 2
    assert d.info["train_subset"]["paragraphs"] == 2
    tag = [tasks.build("jsquad", **o).grid_tag() for o in (
        {}, {"train_frac": 0.25}, {"train_frac": 1.0}, {"answer_constraint": "span", "train_frac": 0.1})]
    assert tag == ["", "train-0.25", "", "answers-span_train-0.1"]
