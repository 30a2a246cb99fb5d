"""The wrapper answers a loop's probes as the app's protocol does: same asyncio bases, same optional callbacks.

Each behaviour test runs a scenario twice, plain and with ``instrument(pipes=True)``
(through ``tracing()``, so that it stays in the test), and compares what the app
saw (its callbacks in order) and what reached the loop's exception handler.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest

import traced_transport as tt
from traced_transport.datapath import protocols, shapes
from traced_transport.datapath.record import ConnectionRecord, Group
from traced_transport.datapath.registry import Registry


class Log:
    """Callbacks shared by the duck-typed protocols below; each class picks the ones it has."""

    def __init__(self) -> None:
        self.calls: list = []
        self.lost = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.calls.append("made")

    def connection_lost(self, exc) -> None:
        self.calls.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(None)


def _data_received(self, data) -> None:
    self.calls.append(("data", bytes(data)))


def _eof_received(self):
    self.calls.append("eof")


def _get_buffer(self, hint):
    self.buf = bytearray(max(hint, 1) if hint > 0 else 65536)
    return self.buf


def _buffer_updated(self, n) -> None:
    self.calls.append(("buffered", bytes(self.buf[:n])))


def _mk(name: str, bases: tuple, **methods) -> type:
    return type(name, (Log, *bases), dict(methods))


DuckNoEof = _mk("DuckNoEof", (), data_received=_data_received)
DuckBuffered = _mk("DuckBuffered", (), get_buffer=_get_buffer, buffer_updated=_buffer_updated)
DuckBoth = _mk(
    "DuckBoth",
    (),
    get_buffer=_get_buffer,
    buffer_updated=_buffer_updated,
    data_received=_data_received,
    eof_received=_eof_received,
)
BaseNoEof = _mk("BaseNoEof", (asyncio.BaseProtocol,), data_received=_data_received)
ProtocolWithBuffer = _mk(
    "ProtocolWithBuffer", (asyncio.Protocol,), get_buffer=_get_buffer, buffer_updated=_buffer_updated
)

SHAPED = [
    DuckNoEof,
    DuckBuffered,
    DuckBoth,
    BaseNoEof,
    ProtocolWithBuffer,
    _mk("Bare", ()),
    _mk("Plain", (asyncio.Protocol,)),
    _mk("Buffered", (asyncio.BufferedProtocol,)),
    _mk("Datagram", (asyncio.DatagramProtocol,)),
    _mk("Subprocess", (asyncio.SubprocessProtocol,)),
    _mk("DuckDatagram", (), datagram_received=lambda self, d, a: None),
    _mk("DuckSubprocess", (), pipe_data_received=lambda self, fd, d: None, process_exited=lambda self: None),
    _mk("DatagramAndSubprocess", (asyncio.DatagramProtocol, asyncio.SubprocessProtocol)),
    asyncio.streams.StreamReaderProtocol,
]


def _instance(cls):
    if cls is asyncio.streams.StreamReaderProtocol:
        return cls(asyncio.StreamReader())
    return cls()


@pytest.mark.parametrize("cls", SHAPED, ids=lambda c: c.__name__)
def test_wrapper_answers_every_probe_as_the_app(run, cls):
    async def main():
        app = _instance(cls)
        wrapper = protocols.wrap(app, ConnectionRecord(Group("t", "server", Registry())))
        for name in shapes.OPTIONAL_CALLBACKS:
            assert hasattr(wrapper, name) == hasattr(app, name), name
        for base in shapes.PROTOCOL_BASES:
            assert isinstance(wrapper, base) == isinstance(app, base), base
        # What each loop decides from those probes.
        assert (hasattr(wrapper, "get_buffer") and not isinstance(wrapper, asyncio.Protocol)) == (
            hasattr(app, "get_buffer") and not isinstance(app, asyncio.Protocol)
        )
        # Same shape, same class: no class per connection.
        assert type(protocols.wrap(_instance(cls), wrapper._rec)) is type(wrapper)

    run(main)


def test_common_shapes_keep_their_classes(run):
    async def main():
        rec = ConnectionRecord(Group("t", "server", Registry()))
        assert type(protocols.wrap(asyncio.Protocol(), rec)) is protocols.PlainWrapper
        assert type(protocols.wrap(asyncio.BufferedProtocol(), rec)) is protocols.BufferedWrapper
        assert type(protocols.wrap(asyncio.DatagramProtocol(), rec)) is protocols.DatagramWrapper
        assert type(protocols.wrap(asyncio.SubprocessProtocol(), rec)) is protocols.SubprocessWrapper

    run(main)


async def _both(scenario, registry: Registry):
    """``scenario()`` plain, then traced; returns both outcomes and checks the traced run was traced."""
    plain = await scenario()
    before = registry.totals().opened
    with tt.tracing(server_name="server", client_name="client", pipes=True, registry=registry):
        traced = await scenario()
    assert registry.totals().opened > before, "the traced run made no traced connection"
    return plain, traced


def _errors(loop) -> list:
    errors: list = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append((ctx["message"], type(ctx.get("exception")).__name__)))
    return errors


@pytest.mark.parametrize("unread", [False, True], ids=["reader-read-all", "reader-left-data"])
def test_write_pipe_to_a_base_protocol_ends_as_unwrapped(run, registry, unread):
    # The reproduction: uvloop looks eof_received up on a write pipe's
    # protocol when the reading end goes away.
    async def scenario():
        loop = asyncio.get_running_loop()
        errors = _errors(loop)
        r, w = os.pipe()
        transport, proto = await loop.connect_write_pipe(_mk("WritePipe", (asyncio.BaseProtocol,)), os.fdopen(w, "wb"))
        if unread:
            transport.write(b"x" * 10)
        else:
            await asyncio.sleep(0)
        os.close(r)
        await asyncio.wait_for(proto.lost, 5)
        closing = transport.is_closing()
        transport.close()
        return proto.calls, errors, closing

    plain, traced = run(_both, scenario, registry)
    assert traced == plain
    assert plain[0][-1] == ("lost", None) or plain[0][-1][0] == "lost"


def _peer_sends_then_closes(proto_cls, payload: bytes = b"hello"):
    async def scenario():
        loop = asyncio.get_running_loop()
        errors = _errors(loop)
        a, b = socket.socketpair()
        a.setblocking(False)
        transport, proto = await loop.create_connection(proto_cls, sock=a)
        b.sendall(payload)
        b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(proto.lost, 5)
        b.close()
        transport.close()
        calls = proto.calls
        # Buffered and plain reads may split differently: compare the bytes.
        got = b"".join(c[1] for c in calls if isinstance(c, tuple) and c[0] in ("data", "buffered"))
        kinds = [c if not isinstance(c, tuple) or c[0] == "lost" else c[0] for c in calls]
        deduped = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
        return deduped, got, errors

    return scenario


@pytest.mark.parametrize(
    "cls", [DuckNoEof, DuckBuffered, DuckBoth, BaseNoEof, ProtocolWithBuffer], ids=lambda c: c.__name__
)
def test_stream_read_path_and_eof_as_unwrapped(run, registry, cls):
    plain, traced = run(_both, _peer_sends_then_closes(cls), registry)
    assert traced == plain
    assert plain[0][0] == "made" and plain[0][-1][0] == "lost"


def test_duck_typed_protocol_without_pause_writing(run, registry):
    # Loops call pause_writing without looking first: a protocol without it
    # makes the loop report "protocol.pause_writing() failed", wrapped or not.
    async def scenario():
        loop = asyncio.get_running_loop()
        errors = _errors(loop)
        a, b = socket.socketpair()
        a.setblocking(False)
        transport, proto = await loop.create_connection(DuckNoEof, sock=a)
        transport.set_write_buffer_limits(high=1)
        transport.write(b"x" * (1 << 22))
        transport.abort()
        await asyncio.wait_for(proto.lost, 5)
        b.close()
        return [m for m, _ in errors], hasattr(proto, "pause_writing")

    plain, traced = run(_both, scenario, registry)
    assert traced == plain
    assert "protocol.pause_writing() failed" in plain[0]


def test_duck_typed_datagram_without_error_received(run, registry):
    async def scenario():
        loop = asyncio.get_running_loop()
        errors = _errors(loop)
        got = loop.create_future()

        class Receiver:
            def connection_made(self, transport):
                pass

            def datagram_received(self, data, addr):
                if not got.done():
                    got.set_result(data)

            def connection_lost(self, exc):
                pass

        server, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
        client, proto = await loop.create_datagram_endpoint(
            lambda: _mk("DuckSender", ())(), remote_addr=server.get_extra_info("sockname")
        )
        client.sendto(b"ping")
        data = await asyncio.wait_for(got, 5)
        server.close()
        client.close()
        await asyncio.wait_for(proto.lost, 5)
        return data, proto.calls, errors, hasattr(proto, "error_received")

    plain, traced = run(_both, scenario, registry)
    assert traced == plain


def test_duck_typed_subprocess_protocol(run, registry):
    async def scenario():
        loop = asyncio.get_running_loop()
        errors = _errors(loop)
        done = loop.create_future()

        class Child(Log):
            def pipe_data_received(self, fd, data):
                self.calls.append(("pipe", fd, data))

            def process_exited(self):
                self.calls.append("exited")
                if not done.done():
                    done.set_result(None)

            # asyncio calls pipe_connection_lost without looking first: a protocol without it never sees
            # connection_lost when the process exits before its pipes close (plain or wrapped alike).
            def pipe_connection_lost(self, fd, exc):
                self.calls.append(("pipe_lost", fd))

        transport, proto = await loop.subprocess_exec(Child, sys.executable, "-c", "print('hi', end='')")
        await asyncio.wait_for(done, 60)
        await asyncio.wait_for(proto.lost, 60)
        transport.close()
        return sorted(map(str, proto.calls)), errors

    plain, traced = run(_both, scenario, registry)
    assert traced == plain
    assert "('pipe', 1, b'hi')" in plain[0]
