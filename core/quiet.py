"""Quiet profiling: torch's profiler without its start and stop notices on stderr.

Shared by the trainer's profiled step (harness/step_profile.py) and the benchmarks that count operators.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator

PROFILER_CHATTER = "USDT:"  # how the lines begin that torch's profiler (kineto) writes to stderr at each start and stop


@contextlib.contextmanager
def no_profiler_chatter() -> Iterator[None]:
    """Run the body with file descriptor 2 written to a temporary file, then pass on to stderr every line
    but the profiler's own start and stop notices. torch 2.13's CPU profiler prints two `USDT:` lines
    from C++ (not through Python's sys.stderr, so only the descriptor can be caught) for every profiled
    call: a benchmark's table came out interleaved with dozens of them. Anything else written meanwhile
    (a warning, an error) still reaches stderr, after the body, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(ln for ln in lines if not ln.startswith(PROFILER_CHATTER)))
            sys.stderr.flush()
