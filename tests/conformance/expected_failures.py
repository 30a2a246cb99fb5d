"""Tests of CPython's test_asyncio that cannot pass wrapped, by design.

``EXPECTED_FAILURES`` applies to the default wrapped run (every factory through
``traced()``); ``INSTRUMENT_EXPECTED_FAILURES`` adds entries for
``run.py --wrapper instrument``. Each is keyed by Python version ("3.11") or
"*" for every version, and maps a test id to the reason. Keep these short:
an entry must be a test that inspects the real transport's private class or
identity, not a behaviour an app could rely on.
"""

from __future__ import annotations

EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    "*": {},
}

_PAUSE_READING = (
    "mocks pause_reading on the real pipe transport connect_read_pipe returned (instrument() leaves "
    "a subprocess's own pipes untraced, else they count twice) and reads it back through "
    "get_pipe_transport(1), a proxy: set on one object, read through another"
)
INSTRUMENT_EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    "*": {
        f"test.test_asyncio.test_subprocess.Subprocess{w}WatcherTests.test_pause_reading": _PAUSE_READING
        for w in ("Safe", "Fast", "Threaded", "Pidfd")
    },
}


def for_version(version: str, wrapper: str = "traced") -> dict[str, str]:
    """The entries that apply to Python ``version`` ("3.X") with ``wrapper``."""
    out = dict(EXPECTED_FAILURES.get("*", {}))
    out.update(EXPECTED_FAILURES.get(version, {}))
    if wrapper == "instrument":
        out.update(INSTRUMENT_EXPECTED_FAILURES.get("*", {}))
        out.update(INSTRUMENT_EXPECTED_FAILURES.get(version, {}))
    return out
