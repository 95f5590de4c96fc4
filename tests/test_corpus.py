"""The pretraining corpora's sources (tasks/corpus.py) on inputs the other tests do not reach: a stand-in
`datasets` module (the optional package is absent from CI, where tests/test_pretrain.py's hub test skips),
a file that is not UTF-8, a task with no passages, and what the token cache's key depends on."""
from __future__ import annotations

import os
import sys
import types

import pytest

from tasks import DataError, corpus
from tasks.corpus import Source


def _fake_datasets(monkeypatch, rows=None, error: Exception | None = None) -> dict:
    """Install a stand-in `datasets` whose streamed `load_dataset` yields `rows` (or raises `error`)."""
    seen: dict = {}

    def load_dataset(name, config=None, **kw):
        seen.update(name=name, config=config, **kw)
        if error is not None:
            raise error
        return iter(rows)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(corpus, "reachable", lambda host: True)
    return seen


def _docs(spec: str, tmp_path) -> list[str]:
    return list(corpus.documents(Source.parse(spec), [], tmp_path))


def test_hf_rows_are_read_from_the_text_column_blank_rows_skipped(tmp_path, monkeypatch):
    seen = _fake_datasets(monkeypatch, [{"id": "1", "text": "ab"}, {"id": "2", "text": "  "}, {"id": "3", "text": "cd"}])
    assert _docs("hf:someone/wiki:ja", tmp_path) == ["ab", "cd"]  # not the id column, which is a string too
    assert seen["name"] == "someone/wiki" and seen["config"] == "ja" and seen["split"] == "train"
    assert seen["streaming"] is True  # never the whole corpus downloaded before the first document


def test_hf_rows_without_a_text_column_use_the_first_string_column(tmp_path, monkeypatch):
    _fake_datasets(monkeypatch, [{"n": 1, "body": "ab", "title": "t"}, {"n": 2, "body": "cd", "title": "u"}])
    assert _docs("hf:someone/books", tmp_path) == ["ab", "cd"]


def test_hf_rows_with_no_string_column_are_one_clear_line(tmp_path, monkeypatch):
    _fake_datasets(monkeypatch, [{"n": 1, "ids": [1, 2]}])
    with pytest.raises(DataError, match=r"hf:someone/nums: no text column"):
        _docs("hf:someone/nums", tmp_path)


def test_a_hub_error_is_one_line_naming_the_source(tmp_path, monkeypatch):
    """Hub errors come in many types (missing repo, gated, connection reset): whichever, one line that
    names the source and the error's type, not a traceback from inside `datasets`."""
    _fake_datasets(monkeypatch, error=ConnectionError("503 Service Unavailable\nretry later"))
    with pytest.raises(DataError, match=r"hf:someone/wiki: could not load it \(ConnectionError: 503") as e:
        _docs("hf:someone/wiki", tmp_path)
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert "\n" not in str(e.value) and "retry later" not in str(e.value)  # the message's first line


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("ok\n", encoding="utf-8")
    (d / "b.txt").write_bytes("日本語\n".encode("shift_jis"))
    with pytest.raises(DataError, match=r"b\.txt: not UTF-8 text"):
        _docs(f"dir:{d}", tmp_path)


def test_passages_of_a_task_without_text_fail_before_tokenising():
    """`--pretrain passages` on a task with no training passages (MQAR's are generated ids): the check run
    before any tokenising stops with one line; a task with passages passes it."""
    with pytest.raises(DataError, match="this task has no training passages"):
        corpus.check(Source.parse("passages"), ["", "  "])
    corpus.check(Source.parse("passages"), ["本文"])


def test_the_cache_key_follows_the_text_a_source_gives(tmp_path):
    """The token cache is keyed by `identity`: a directory's key changes when a file's content changes
    (size, modification time), a dataset's with its name and config, the passages' with the passages."""
    d = tmp_path / "corpus"
    d.mkdir()
    f = d / "a.txt"
    f.write_text("ab\n", encoding="utf-8")
    src = Source.parse(f"dir:{d}")
    os.utime(f, ns=(1, 1))
    before = corpus.identity(src, [])
    assert corpus.identity(src, []) == before  # stable
    f.write_text("cd\n", encoding="utf-8")  # the same size, edited later
    assert corpus.identity(src, []) != before
    f.write_text("abcd\n", encoding="utf-8")
    os.utime(f, ns=(1, 1))  # another size, the first modification time
    assert corpus.identity(src, []) != before
    hf = [corpus.identity(Source.parse(s), []) for s in ("hf:a/wiki:ja", "hf:a/wiki:en", "hf:b/wiki:ja")]
    assert len(set(hf)) == 3
    p = Source.parse("passages")
    assert corpus.identity(p, ["x"]) != corpus.identity(p, ["y"])


@pytest.mark.parametrize("answers", [True, False], ids=["online", "offline"])
def test_the_network_probe_asks_dns_under_5_s_and_leaves_no_timeout_behind(monkeypatch, answers):
    """One probe (tasks/net.py) serves the corpora and the JSQuAD download: DNS for the host on port 443
    under a 5 s socket timeout, the process default set back afterwards either way."""
    import socket

    from tasks.net import reachable

    asked = []

    def dns(host, port, *a, **k):
        asked.append((host, port, socket.getdefaulttimeout()))
        if not answers:
            raise OSError("no network")
        return [("addr",)]

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    assert socket.getdefaulttimeout() is None
    assert reachable(corpus.HF_HOST) is answers
    assert asked == [("huggingface.co", 443, 5)]
    assert socket.getdefaulttimeout() is None


def test_checking_a_dir_source_fails_fast_on_a_missing_or_empty_directory(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        corpus.check(Source.parse(f"dir:{tmp_path / 'missing'}"), [])
    with pytest.raises(DataError, match=r"no \*\.txt files"):
        corpus.check(Source.parse(f"dir:{tmp_path}"), [])
    (tmp_path / "a.txt").write_text("本文\n", encoding="utf-8")
    corpus.check(Source.parse(f"dir:{tmp_path}"), [])  # a directory with text passes


def test_a_dir_document_is_its_lines_joined_by_newlines_also_at_the_end_of_a_file(tmp_path):
    (tmp_path / "a.txt").write_text("一\n二\n\n\n三\n四", encoding="utf-8")  # no blank line, no newline at the end
    assert list(corpus.documents(Source.parse(f"dir:{tmp_path}"), [], tmp_path)) == ["一\n二", "三\n四"]


def test_a_cap_of_one_character_is_a_cap():
    assert list(corpus.documents(Source.parse("passages"), ["ab", "cd"], None, max_chars=1)) == ["a"]
    assert list(corpus.documents(Source.parse("passages"), ["ab", "cd"], None, max_chars=0)) == ["ab", "cd"]


def test_a_sources_short_name_for_grids_and_tables():
    assert Source.parse("hf:someone/wiki:ja").short == "someone-wiki"  # no config, no slash
    assert Source.parse("hf:wiki").short == "wiki"
    assert Source.parse("passages").short == "passages"
    assert Source.parse("dir:/").short == "dir"  # the root has no base name
    assert Source.parse("dir:../shared/data/aozora-pd/").short == "aozora-pd"
