"""Soak: 10,000 connections per loop, 200 at a time, OpenTelemetry SDK on; nothing left behind (see ``_soak``).

``TT_SOAK_CONNECTIONS`` changes the size; ``bench/soak.py`` is the longer run. ResourceWarnings and
unraisable exceptions fail the test (pyproject's filterwarnings).
"""

from __future__ import annotations

import os
import tracemalloc

import pytest

pytest.importorskip("opentelemetry.sdk")

import _soak

CONNECTIONS = int(os.environ.get("TT_SOAK_CONNECTIONS", "10000"))


def test_soak_nothing_leaks(run):
    tracemalloc.start()
    try:
        result = run(lambda: _soak.soak(CONNECTIONS, concurrency=200), timeout=240)
    finally:
        tracemalloc.stop()
    print(
        f"{result.connections} connections in {result.seconds:.1f} s; heap {result.heap_before} -> "
        f"{result.heap_after} ({result.heap_growth:+d} B); {result.objects_tracked} objects tracked"
    )
    assert not result.problems, result.problems
    assert result.objects_tracked >= CONNECTIONS // 5  # the weakref sample really was taken
