"""The mutation audit plants exactly one bug at a time, tells killed from survived, and restores the file."""
from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from test_gpu_check import _gone

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutation_audit", ROOT / "scripts" / "mutation_audit.py")
audit = importlib.util.module_from_spec(_spec)
sys.modules["mutation_audit"] = audit  # dataclasses look their module up while the class is built
_spec.loader.exec_module(audit)

TOY = '''"""A docstring: 1 < 2 is not mutated."""
from __future__ import annotations


def clip(x: int, limit: int = 3) -> int:
    """Also a docstring."""
    if x > limit and not x == 0:
        return limit
    print(f"{x + 1}")
    return x - 1
'''


def _toy_project(tmp_path: Path, test_source: str, module_source: str = TOY) -> tuple[Path, Path]:
    """The toy module and a test file importing it, in tmp_path: (module, test file)."""
    module = tmp_path / "toy.py"
    module.write_text(module_source, encoding="utf-8")
    (tmp_path / "conftest.py").write_text(f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n", encoding="utf-8")
    test = tmp_path / "test_toy.py"
    test.write_text(test_source, encoding="utf-8")
    return module, test


def test_each_site_is_one_mutation_and_docstrings_annotations_and_fstrings_are_left_alone():
    found = audit.sites(TOY)
    kinds = sorted(s.kind for s in found)
    assert kinds == sorted(["Gt->GtE", "And->Or", "drop not", "Eq->NotEq", "const 0->1",
                            "const 3->4", "drop call", "Sub->Add", "const 1->2"])
    original = ast.unparse(ast.parse(TOY))
    mutants = [audit.mutate(TOY, s.index) for s in found]
    assert original not in mutants and len(set(mutants)) == len(found)  # one distinct bug each
    for s, mutated in zip(found, mutants):  # and only one: the mutant differs on one line
        diff = [a for a, b in zip(original.splitlines(), mutated.splitlines()) if a != b]
        assert len(diff) == 1, s
    with pytest.raises(IndexError):
        audit.mutate(TOY, len(found))


def test_a_dropped_not_and_a_dropped_call_mean_what_they_say(capsys):
    found = {s.kind: s.index for s in audit.sites(TOY)}
    ns: dict = {}
    exec(audit.mutate(TOY, found["drop not"]), ns)
    assert ns["clip"](5) == 4  # `not x == 0` became `x == 0`: false for 5, so no clipping
    assert capsys.readouterr().out == "6\n"
    exec(audit.mutate(TOY, found["drop call"]), ns)
    assert ns["clip"](1) == 0 and capsys.readouterr().out == ""  # the print is gone


def test_a_run_counts_killed_and_survived_and_restores_the_module(tmp_path):
    # the toy's test asks 5 and 2, never the threshold 3 itself
    module, test = _toy_project(
        tmp_path, "from toy import clip\n\ndef test_clip():\n    assert clip(5) == 3\n    assert clip(2) == 1\n")
    out = tmp_path / "rows.jsonl"
    index = {s.kind: s.index for s in audit.sites(TOY)}
    picked = [index[k] for k in ("Gt->GtE", "const 3->4")]  # one pytest run each
    rc = audit.main([str(module), str(test), "--out", str(out),
                     "--only", ",".join(map(str, picked))])
    assert rc == 0
    assert module.read_text(encoding="utf-8") == TOY
    rows = {r["kind"]: r["result"] for r in map(json.loads, out.read_text().splitlines())}
    assert rows == {"Gt->GtE": "survived", "const 3->4": "killed"}  # clip(3) is never asked


def test_a_killed_run_restores_the_module(tmp_path):
    """The audit rewrites a source file in place: `kill` (what stops a background job, which ignores
    Ctrl-C) in the middle of a mutant's tests must leave the original behind, not the mutant."""
    import subprocess
    import time

    started = tmp_path / "started"
    module, test = _toy_project(  # passes fast unmutated; under a mutant it waits to be killed
        tmp_path, "import pathlib, time\nfrom toy import clip\n\ndef test_clip():\n"
        f"    if clip(5) != 3:\n        pathlib.Path({str(started)!r}).touch()\n        time.sleep(60)\n")
    index = {s.kind: s.index for s in audit.sites(TOY)}["const 3->4"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "mutation_audit.py"), str(module),
                             str(test), "--out", str(tmp_path / "rows.jsonl"), "--only", str(index)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():  # the mutant is in place and its tests are running
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert module.read_text(encoding="utf-8") != TOY
        proc.terminate()
        assert proc.wait(timeout=30) != 0
    finally:
        proc.kill()
    assert module.read_text(encoding="utf-8") == TOY


def test_a_mutant_that_inflates_a_size_runs_out_of_memory_instead_of_taking_the_machines(tmp_path):
    """Session 37's loss mutant `-(-D // 64)` -> `-(-D * 64)` took one pytest to 17.7 GB. Under
    `--max-memory` such a mutant fails its tests with a MemoryError: killed, its row marked `memory`.
    Here the mutant (`0 * 3` -> `1 * 3`) asks 3 GiB, which the test would get without the cap, and pass."""
    row = _audit_one(tmp_path, "def gib():\n    return 0 * 3\n",
                     "from toy import gib\n\ndef test_buffer():\n    assert len(bytearray(gib() << 30)) == gib() << 30\n",
                     "const 0->1", "--max-memory", "1")
    assert (row["result"], row.get("memory")) == ("killed", True)


def _audit_one(tmp_path, toy: str, test_source: str, kind: str, *flags: str) -> dict:
    """Audit the one mutant of `kind` in a toy module against one test; its row (the module restored)."""
    module, test = _toy_project(tmp_path, test_source, module_source=toy)
    out = tmp_path / "rows.jsonl"
    index = {s.kind: s.index for s in audit.sites(toy)}[kind]
    assert audit.main([str(module), str(test), "--out", str(out), "--only", str(index), *flags]) == 0
    assert module.read_text(encoding="utf-8") == toy
    (row,) = map(json.loads, out.read_text().splitlines())
    return row


def test_a_test_that_names_an_out_of_memory_error_fails_on_its_assertion_not_on_memory(tmp_path):
    """Report and benchmark tests carry rows whose error is torch's `OutOfMemoryError`: a mutant that fails
    such a test on an assertion is killed, not marked `memory` (the word inside another name is no
    MemoryError)."""
    row = _audit_one(tmp_path, 'def error():\n    return "OutOfMemoryError: " + str(0 * 3)\n',
                     "from toy import error\n\ndef test_error():\n    assert error() == 'OutOfMemoryError: 0'\n",
                     "const 0->1", "--max-memory", "1")
    assert row["result"] == "killed" and not row.get("memory")
    assert audit.MEMORY_ERRORS.search("E   MemoryError") and audit.MEMORY_ERRORS.search("_ArrayMemoryError: Unable")
    assert not audit.MEMORY_ERRORS.search("torch.OutOfMemoryError: CUDA out of memory")


def test_a_timed_out_run_stops_what_its_tests_started(tmp_path):
    """The Triton tests run their kernels in a pytest subprocess. At a timeout the audit must stop that
    one too, not only pytest: an orphan would keep a core busy for up to 15 min under later mutants."""
    import os
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    _, test = _toy_project(tmp_path, "import pathlib, subprocess, sys, time\n\ndef test_waits():\n"
                           "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                           f"    pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
                           "    time.sleep(120)\n")
    result, secs, _ = audit._run_tests([str(test)], timeout=20)
    assert result == "timeout" and secs < 60
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    try:
        while not _gone(pid):
            assert time.monotonic() < deadline, f"the tests' subprocess {pid} outlived the timed-out run"
            time.sleep(0.1)
    finally:
        if not _gone(pid):  # the test failed: do not leave the orphan behind either
            os.kill(pid, signal.SIGKILL)
