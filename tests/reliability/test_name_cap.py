"""A cap on distinct ``transport.name`` values: a per-peer or per-request name is refused, loudly."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid

import pytest

import traced_transport as tt
from traced_transport.loops import factory as _factory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Proto:
    pass


@pytest.fixture
def small_cap():
    """A cap two above the names this process already uses; restored afterwards."""
    room = 2
    previous = tt.set_max_transport_names(len(tt.transport_names()) + room)
    yield room
    tt.set_max_transport_names(previous)


def test_default_cap_is_100():
    assert _factory.DEFAULT_MAX_NAMES == 100
    if not os.environ.get(_factory.MAX_NAMES_ENV):
        assert _factory._max_names == 100


def test_new_names_beyond_the_cap_are_refused_with_a_clear_error(small_cap):
    registry = tt.Registry()
    prefix = uuid.uuid4().hex[:8]
    for i in range(small_cap):
        tt.traced(_Proto, name=f"{prefix}-{i}", registry=registry)
    with pytest.raises(ValueError) as info:
        tt.traced(_Proto, name=f"{prefix}-peer-10.0.0.7", registry=registry)
    message = str(info.value)
    assert "transport.name" in message and "label" in message
    assert "set_max_transport_names" in message and _factory.MAX_NAMES_ENV in message
    assert f"{prefix}-peer-10.0.0.7" not in tt.transport_names()
    # names already in use are always accepted, on any side, any number of times
    for _ in range(3):
        tt.traced(_Proto, name=f"{prefix}-0", side="client", registry=registry)
    # raising the cap lets the refused name in
    tt.set_max_transport_names(len(tt.transport_names()) + 1)
    tt.traced(_Proto, name=f"{prefix}-peer-10.0.0.7", registry=registry)


def test_streams_and_every_entry_point_share_the_cap(small_cap, run):
    prefix = uuid.uuid4().hex[:8]
    for i in range(small_cap):
        tt.traced(_Proto, name=f"{prefix}-{i}", registry=tt.Registry())

    async def main():
        with pytest.raises(ValueError, match="transport.name"):
            await tt.start_server(lambda r, w: None, "127.0.0.1", 0, name=f"{prefix}-x", registry=tt.Registry())

    run(main)


def test_concurrent_registration_never_exceeds_the_cap(small_cap):
    prefix = uuid.uuid4().hex[:8]
    accepted, refused = [], []
    barrier = threading.Barrier(8)

    def worker(i):
        barrier.wait()
        try:
            tt.traced(_Proto, name=f"{prefix}-{i}", registry=tt.Registry())
            accepted.append(i)
        except ValueError:
            refused.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == small_cap and len(refused) == 8 - small_cap


@pytest.mark.parametrize("bad", [0, -1, 2.5, "10", True, None])
def test_cap_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError):
        tt.set_max_transport_names(bad)


@pytest.mark.parametrize("env, cap", [("2", 2), ("0", 100), ("lots", 100)])
def test_cap_from_the_environment(env, cap):
    code = (
        "import traced_transport as tt\n"
        "from traced_transport.loops import factory as _factory\n"
        f"assert _factory._max_names == {cap}, _factory._max_names\n"
        "refused = 0\n"
        "for i in range(3):\n"
        "    try:\n"
        "        tt.traced(object, name=f'n{i}', registry=tt.Registry())\n"
        "    except ValueError:\n"
        "        refused += 1\n"
        f"assert refused == {max(0, 3 - cap)}, refused\n"
    )
    env_vars = dict(os.environ, PYTHONPATH=ROOT, **{_factory.MAX_NAMES_ENV: env})
    proc = subprocess.run([sys.executable, "-c", code], env=env_vars, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    if cap == 100:  # a bad value is reported, not fatal
        assert _factory.MAX_NAMES_ENV in proc.stderr
