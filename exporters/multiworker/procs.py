"""Whether a worker process still runs: ``kill(pid, 0)`` and ``/proc/{pid}/stat`` (state, start time).

The start time tells a live worker from a new process that got its pid.
"""

from __future__ import annotations

import os
from typing import Optional


def _proc_stat(pid: int) -> Optional[tuple[str, int]]:
    """``(state, starttime)`` from ``/proc/{pid}/stat``; None without ``/proc`` or such a pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:
        fields = raw[raw.rindex(b")") + 2 :].split()
        return fields[0].decode("ascii"), int(fields[19])
    except (ValueError, IndexError):
        return None


def own_start() -> Optional[int]:
    stat = _proc_stat(os.getpid())
    return stat[1] if stat else None


def pid_alive(pid: int, start: Optional[int] = None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, when ``start`` is known, is the one that started then."""
    if os.name == "nt":  # os.kill() would terminate it: without a safe probe, final files decide
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    except OSError:
        return False
    if not os.path.isdir("/proc/self"):
        return True  # no /proc: what kill() says
    stat = _proc_stat(pid)
    if stat is None:
        return False  # gone since kill()
    state, started = stat
    if state in ("Z", "X", "x"):
        return False
    return start is None or started == start
