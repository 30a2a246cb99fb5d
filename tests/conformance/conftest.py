"""The conformance run is slow (about a minute per Python): it runs only when
selected, with ``pytest -m conformance`` (or CONFORMANCE=1)."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "conformance: CPython's test_asyncio, plain and with every factory traced")


def pytest_collection_modifyitems(config, items):
    if "conformance" in (config.getoption("markexpr", "") or "") or os.environ.get("CONFORMANCE") == "1":
        return
    skip = pytest.mark.skip(reason="slow: select with -m conformance (or CONFORMANCE=1)")
    for item in items:
        if "conformance" in item.keywords:
            item.add_marker(skip)
