"""Stopping a subprocess together with everything it started.

A benchmark part or a mutant's test run is started in a session of its own (`start_new_session=True`),
so its pid is also its process group's id. Killing pytest alone would leave what it started (the Triton
tests' interpreter subprocess, a worker of a grid) running on, orphaned, on a core the next run shares.
"""
from __future__ import annotations

import os
import signal
import subprocess


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the process group led by `proc` (a no-op once it and all its children have exited), then reap it.

    `proc` must have been started with `start_new_session=True`, or the group killed would be ours.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing of the group is left to kill
        pass
    proc.wait()
