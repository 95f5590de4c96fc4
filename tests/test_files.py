"""core.files.write_atomic: a whole file or none, and no temporary file left by a failed write, for the
helper itself and for every writer that goes through it (caches, the grid's manifest, the GPU check's part
records and archive)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.files import temp_path, write_atomic


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_text_and_bytes_are_written_whole_in_a_folder_it_makes(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    assert write_atomic(target, '{"名": 1}\n') == target
    assert target.read_bytes() == '{"名": 1}\n'.encode("utf-8")  # UTF-8 whatever the locale says
    write_atomic(target, b"\x00\xffraw")  # replaces the file, bytes as given
    assert target.read_bytes() == b"\x00\xffraw"
    write_atomic(tmp_path / "l1.txt", "é", encoding="latin-1")
    assert (tmp_path / "l1.txt").read_bytes() == b"\xe9"
    assert _files(tmp_path) == ["a/b/x.json", "l1.txt"]  # nothing else: no temporary file left


def test_the_temporary_name_is_hidden_beside_the_target_and_holds_the_pid(tmp_path):
    """Beside the target: the rename stays on one filesystem (atomic). Hidden and not ending in the target's
    suffix: a reader's `*.json` glob never lists a file being written. The pid: two processes filling the same
    cache never write into each other's temporary file."""
    tmp = temp_path(tmp_path / "c.json")
    assert tmp.parent == tmp_path and tmp.name == f".c.json.{os.getpid()}.tmp"
    tmp.write_text("half")
    assert list(tmp_path.glob("*.json")) == []


def test_a_text_that_cannot_be_encoded_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """A lone surrogate (text from a file decoded with surrogateescape) fails in the middle of the write,
    after the temporary file was opened."""
    target = write_atomic(tmp_path / "m.json", "old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "new \ud800")
    assert target.read_text() == "old" and _files(tmp_path) == ["m.json"]


def test_a_failed_rename_raises_its_own_error_and_leaves_no_temporary(tmp_path):
    (tmp_path / "d").mkdir()  # the target is a folder: the rename fails after the whole write
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "d", "x")
    assert _files(tmp_path) == [] and (tmp_path / "d").is_dir()


def test_ctrl_c_in_the_middle_of_a_write_leaves_no_temporary(tmp_path, monkeypatch):
    target = write_atomic(tmp_path / "k.json", "old")
    real = Path.write_text

    def half_then_interrupt(self, data, *a, **k):
        real(self, data[: len(data) // 2], *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "a new text")
    assert target.read_text() == "old" and _files(tmp_path) == ["k.json"]


def _trial_cache(folder: Path) -> None:
    from harness import lr_sweep
    from harness.budget import Budget
    lr_sweep.TrialCache(folder / "sweep" / "c.json").put(lr_sweep.Trial(1e-3, 2.0, 100, 1.0), Budget("tokens", 100))


def _manifest(folder: Path) -> None:
    from core.results import write_expected
    from harness.cell import Cell
    write_expected(folder / "results" / "g.jsonl",
                   [Cell(task="jsquad", mixer="attention", objective="autoregressive", preset="tiny",
                         budget="tokens=1")])


def _tokenizer(folder: Path) -> None:
    from fixtures.jsquad_mini import TRAIN_TEXTS
    from tasks.tokenizer import TokenizerSettings, train_or_load
    train_or_load(TRAIN_TEXTS, TokenizerSettings(vocab_size=300), folder / "tok")


def _gpu_check_parts(folder: Path) -> None:
    from benchmarks import gpu_check as gc
    gc.record_parts(folder / "report", [gc.Part("grid", [], 1, status="ok", seconds=1.0)])


def _gpu_check_archive(folder: Path) -> None:
    from benchmarks import gpu_check as gc
    gc.pack(folder.parent / "src", folder / "report.tgz")  # the report folder packed, beside `folder`


def _scan_stages(folder: Path) -> None:
    """benchmarks.mamba_scan: the GPU check's bench_scan_stages writes into its results/ and is killed at its
    time limit, while the report reads the file."""
    from benchmarks import mamba_scan
    mamba_scan.main(["--parts", "sweep", "--sweep-scans", "parallel", "--scan-alone", "0", "--d-model", "8",
                     "--tokens", "16", "--min-length", "16", "--max-length", "16", "--repeats", "1", "--device", "cpu",
                     "--out", str(folder / "results" / "stages.json")])


def _compile_times(folder: Path) -> None:
    """benchmarks.compile_times: its file lands in results/ (the compile table of docs/cpu-evidence.md reads it)."""
    from unittest import mock

    from benchmarks import compile_times
    with mock.patch.object(compile_times, "measure", lambda mixer, *a: {"mixer": mixer}):
        compile_times.main(["--mixers", "attention", "--device", "cpu", "--out", str(folder / "results" / "ct.json")])


def _scan_memory(folder: Path) -> None:
    """benchmarks.scan_memory: its file lands in results/ too (measurements stubbed: the write is the point)."""
    from unittest import mock

    from benchmarks import scan_memory
    with mock.patch.object(scan_memory, "measure", lambda preset, rows, length: {"rows": rows, "length": length}), \
            mock.patch.object(scan_memory, "stub_triton_launches", lambda: None):
        scan_memory.main(["--presets", "tiny", "--out", str(folder / "results" / "sm.json")])


def _grid_report(folder: Path) -> None:
    """A grid's report README (`python -m reports`, also run at the end of every grid)."""
    import reports
    from reports.load import Results
    reports.write_grid_report("g", [], Results(), folder / "reports" / "g")


def _bench_report(folder: Path) -> None:
    import reports
    from reports.load import Results
    reports.write_bench_report(Results(), folder / "reports" / "benchmarks")


@pytest.mark.parametrize("write", [_trial_cache, _manifest, _tokenizer, _gpu_check_parts, _gpu_check_archive,
                                   _scan_stages, _compile_times, _scan_memory, _grid_report, _bench_report],
                         ids=["lr-trial-cache", "grid-manifest", "tokenizer-cache", "gpu-check-part",
                              "gpu-check-archive", "scan-stages", "compile-times", "scan-memory", "grid-report",
                              "bench-report"])
def test_every_writer_leaves_no_temporary_file_when_the_rename_fails(tmp_path, monkeypatch, write):
    """The writers that other processes read (caches shared by cells, the manifest a report reads, the
    records a later device command merges, the benchmark files under results/, the reports) go through one
    helper; a failure at the last step (a full disk at the rename, a read-only folder) leaves the folder as it
    was, bar the folders it made."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "README.md").write_text("report\n")
    out = tmp_path / "out_root"
    out.mkdir()
    write(out)  # works, and writes exactly one file
    assert len(_files(out)) == 1
    for p in out.rglob("*"):
        if p.is_file():
            p.unlink()

    def no_space(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space left on device"):
        write(out)
    assert _files(out) == []

