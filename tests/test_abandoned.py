"""Connections that never get connection_lost leave the live set once their transport is gone.

Each case on both loops: a loop closed with transports open, a transport
dropped without close, a create_connection that failed after the transport
existed, a server closed while accepting. ``gc.collect()`` stands for time
passing: the transports involved sit in reference cycles (transport ->
protocol -> transport), as they do unwrapped.
"""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest
import uvloop

import traced_transport as tt
from traced_transport.datapath.record import ABANDONED, ConnectionRecord, Group


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()


class Keep(asyncio.Protocol):
    """Keeps its transport, as most protocols do."""

    made = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        Keep.made += 1


def _gone(registry) -> dict:
    gc.collect()
    return registry.totals().close_reasons


@pytest.fixture
def quiet():
    # The loops warn about the unclosed transports these tests leave on purpose.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield


def test_loop_closed_with_open_transports(loop_kind, registry, quiet):
    loop = new_loop(loop_kind)

    async def main():
        server = await loop.create_server(tt.traced(Keep, registry=registry), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, proto = await loop.create_connection(
            tt.traced(Keep, side="client", registry=registry), "127.0.0.1", port
        )
        transport.write(b"hi")
        while registry.totals().opened < 2:
            await asyncio.sleep(0.01)
        return server, transport, proto

    server, transport, proto = loop.run_until_complete(main())
    server.close()
    loop.close()  # neither transport closed: no connection_lost will come
    assert registry.totals().active == 2
    assert not registry.totals().close_reasons
    del server, transport, proto
    reasons = _gone(registry)
    assert reasons == {ABANDONED: 2}
    assert registry.totals().active == 0
    assert registry.live() == []
    assert registry.totals().tx == 2


def test_transport_dropped_without_close(loop_kind, registry, quiet):
    loop = new_loop(loop_kind)
    a, b = socket.socketpair()
    try:

        async def main():
            a.setblocking(False)
            transport, proto = await loop.create_connection(tt.traced(Keep, side="client", registry=registry), sock=a)
            # Not reading: nothing of the loop's refers to it any more (asyncio).
            transport.pause_reading()
            assert registry.totals().active == 1
            del transport, proto
            await asyncio.sleep(0)
            return _gone(registry)

        reasons = loop.run_until_complete(main())
        # Both loops free a transport that is not reading and that nobody
        # holds (closing its socket, with a ResourceWarning).
        assert reasons == {ABANDONED: 1}
        assert registry.totals().active == 0
    finally:
        if not loop.is_closed():
            loop.close()
        a.close()
        b.close()


def test_failed_create_connection(loop_kind, registry, quiet):
    # The app's task is cancelled after the transport was made and connection_made
    # ran, before create_connection returned: the loop closes the transport, and
    # the loop is closed right away (asyncio.run's end does the same).
    loop = new_loop(loop_kind)
    a, b = socket.socketpair()
    try:

        async def connect():
            a.setblocking(False)
            task = asyncio.current_task()

            class CancelMe(Keep):
                def connection_made(self, transport):
                    super().connection_made(transport)
                    task.cancel()

            return await loop.create_connection(tt.traced(CancelMe, side="client", registry=registry), sock=a)

        task = loop.create_task(connect())
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(task)
        del task
        loop.close()
        reasons = _gone(registry)
        # asyncio gets to call connection_lost before the loop closes; uvloop
        # closes the handle without calling it.
        assert reasons == ({"closed": 1} if loop_kind == "asyncio" else {ABANDONED: 1})
        assert registry.totals().active == 0
    finally:
        a.close()
        b.close()


def test_server_closed_mid_accept(loop_kind, registry, quiet):
    # Connections accepted by a server whose loop stops before the app's
    # connection_made ran, then closed.
    loop = new_loop(loop_kind)

    async def main():
        server = await loop.create_server(tt.traced(Keep, registry=registry), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        # Let the loop accept (the sockets exist on the server side) but stop
        # as soon as one connection_made ran.
        while Keep.made == made_before:
            await asyncio.sleep(0.001)
        server.close()
        return clients

    made_before = Keep.made
    clients = loop.run_until_complete(main())
    loop.close()
    for c in clients:
        c.close()
    totals = registry.totals()
    assert totals.opened >= 1
    reasons = _gone(registry)
    assert registry.totals().active == 0
    assert reasons.get(ABANDONED, 0) >= 1


def test_a_read_closes_the_records_whose_transports_are_gone_and_only_those():
    # Nothing runs when a transport is freed (a plain weak reference): the next read finds it.
    class Transport(asyncio.Transport):
        def get_extra_info(self, name, default=None):
            return default

    registry = tt.Registry()
    closed = []

    class Observer:
        def on_close(self, rec, exc):
            closed.append(rec.close_reason)

    group = Group("g", "server", registry, Observer())
    kept, dropped = Transport(), Transport()
    records = []
    for transport in (kept, dropped):
        rec = ConnectionRecord(group)
        rec.open(transport)
        records.append(rec)
    del dropped, transport
    gc.collect()
    assert closed == [] and len(registry._live) == 2  # not before a read
    assert registry.live() == [records[0]]
    assert closed == [ABANDONED] and records[1].error_type == ABANDONED and records[0].closed_at is None
    totals = registry.totals()
    assert (totals.active, totals.closed, totals.close_reasons) == (1, 1, {ABANDONED: 1})
