"""One way to write a whole file: to a temporary name beside it, then renamed over it.

Caches (tokenizer, learning-rate trials, token metadata), a grid's manifest and the files that worker
processes hand back are all read by another process, possibly while they are written, possibly after a
kill. Written in place, a reader could see half a file; written to a temporary name and renamed
(`os.replace` is atomic on one filesystem) it sees the old file or the new one. The temporary name is
hidden and carries the writer's pid, so two processes filling the same cache never write into each
other's file and a `*.json` glob never lists it. A write that fails part-way (a kill, a full disk, text
that cannot be encoded, a target that is a folder) removes its temporary file: a cache folder does not
collect `.tmp` debris from failed runs.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def temp_path(path: Path | str) -> Path:
    """Where `write_atomic(path, ...)` writes before the rename: `dir/.name.<pid>.tmp`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """The temporary path to write `path`'s new contents to, for a writer that streams (a token file, a
    tar archive): renamed over `path` when the block ends, removed if the block (or the rename) fails, the
    original error raised. `path`'s folder must exist."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path | str, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write `data` (text in `encoding`, or bytes) to `path` whole or not at all; make its folder.

    Returns `path`. On any failure the old file (if any) is left as it was, the temporary file is
    removed, and the original error is raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding=encoding)
    return path
