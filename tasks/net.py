"""Is a host reachable? One quick DNS probe before any download, shared by every data source.

An offline machine (no network, or only package registries) should fail in seconds with one clear
line, not after minutes of a download library's retries. The probe runs under a 5 s socket timeout and
sets the process-wide default back afterwards: a timeout left behind would cut every later
connection short.
"""
from __future__ import annotations

import socket

PROBE_TIMEOUT_S = 5.0


def reachable(host: str, port: int = 443) -> bool:
    """True when DNS resolves `host` within PROBE_TIMEOUT_S."""
    try:
        socket.setdefaulttimeout(PROBE_TIMEOUT_S)
        socket.getaddrinfo(host, port)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)
