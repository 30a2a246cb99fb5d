"""Tests of CPython's test_asyncio that cannot pass with every factory wrapped, by design.

Keyed by Python version ("3.11"), or "*" for every version; each entry maps a
test id to the reason. Keep this list short: anything here must be a test that
inspects the real transport's private class or state, not a behaviour an app
could rely on.
"""
from __future__ import annotations

EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    "*": {},
}


def for_version(version: str) -> dict[str, str]:
    """The entries that apply to Python ``version`` ("3.X")."""
    out = dict(EXPECTED_FAILURES.get("*", {}))
    out.update(EXPECTED_FAILURES.get(version, {}))
    return out
