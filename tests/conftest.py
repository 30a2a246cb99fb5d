"""Shared fixtures: every core test runs on the default loop and on uvloop; promtool and prometheus binaries."""

from __future__ import annotations

import asyncio
import gc
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
        except BaseException:
            _close_leftovers(loop)
            raise
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return runner


def _close_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """After a failed or timed-out test: close the servers and transports its code had no chance to close.

    Otherwise the sockets it left open (kept alive by the traceback pytest holds) are reported as a
    ResourceWarning in whichever later test runs the garbage collector, and one failure cascades (uvloop's
    loop.close() even hangs on them).
    """
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:  # their finally blocks close what they opened
            loop.run_until_complete(asyncio.wait(tasks, timeout=5))
        on_uvloop = type(loop).__module__.startswith("uvloop")
        for obj in gc.get_objects():
            cls = type(obj)
            if on_uvloop:
                # uvloop's objects do not say which loop they belong to; the suite runs one loop at a time.
                ours = cls.__module__ == "uvloop.loop"
            else:
                ours = getattr(obj, "_loop", None) is loop
            if not ours:
                continue
            if cls.__name__ == "Server" and obj.is_serving():
                obj.close()
            elif cls.__name__.endswith("Transport") and hasattr(obj, "abort") and not obj.is_closing():
                obj.abort()
        loop.run_until_complete(asyncio.sleep(0.01))  # the connection_lost callbacks close the sockets
    except Exception:  # noqa: BLE001 - best effort: the test's own failure is what gets reported
        pass


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
