"""Shared fixtures: every core test runs on the default loop and on uvloop; promtool and prometheus binaries."""

from __future__ import annotations

import asyncio
import os
import ssl

import pytest
from _helpers import require_binary

# The tests written before span policies expect a span for every connection (the
# eager behaviour); tests/test_span_policy.py sets its policies explicitly.
os.environ.setdefault("TRACED_TRANSPORT_SPAN_POLICY", "all")

import traced_transport as tt

try:
    import uvloop
except ImportError:  # pragma: no cover - CI installs it
    uvloop = None

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOPS)
def loop_kind(request):
    if request.param == "uvloop" and uvloop is None:
        if os.environ.get("CI") == "true":
            pytest.fail("uvloop is required in CI")
        pytest.skip("uvloop not installed")
    return request.param


@pytest.fixture
def run(loop_kind):
    """run(coro_fn, timeout=...) on a fresh loop of the parametrized kind."""

    def runner(coro_fn, *args, timeout: float = 10.0):
        if loop_kind == "uvloop":
            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro_fn(*args), timeout))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return runner


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return require_binary("promtool", "prometheus")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return require_binary("prometheus", "prometheus")


@pytest.fixture
def registry():
    return tt.Registry()


@pytest.fixture(scope="session")
def ca():
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture(scope="session")
def server_ctx(ca):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def client_ctx(ca):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx
