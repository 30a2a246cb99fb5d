"""Helpers shared by the exporters' process-level tests."""

from __future__ import annotations

import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll another process's observable state until it holds (no event crosses a process boundary)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        ok, last = predicate()
        if ok:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last: {last}")
        time.sleep(interval)


def samples(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(parsed: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in parsed.items() if n == name and all((k, want) in ls for k, want in labels.items()))
