"""instrument()/uninstrument(): zero-code tracing on any loop."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from _helpers import Collect, closed

import traced_transport as tt
from traced_transport.loops import patches as _hooks


@pytest.fixture
def instrumented():
    registry = tt.Registry()
    tt.instrument(registry=registry, pipes=True)
    try:
        yield registry
    finally:
        tt.uninstrument()


async def _echo_round_trip(payload: bytes) -> None:
    async def handle(reader, writer):
        writer.write(await reader.readexactly(len(payload)))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert tt.is_proxy(writer.transport)
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()
    await closed(server)


def test_instrument_traces_unmodified_code(run, instrumented):
    run(_echo_round_trip, b"hello" * 100)
    s, c = instrumented.totals("server"), instrumented.totals("client")
    assert (s.opened, s.closed, s.rx, s.tx) == (1, 1, 500, 500)
    assert (c.opened, c.closed, c.rx, c.tx) == (1, 1, 500, 500)


def test_instrument_is_idempotent_and_uninstrument_restores(run):
    # The unhooked methods (importing traced_transport already hooked them).
    originals = {
        name: getattr(vars(asyncio.BaseEventLoop)[name], _hooks._MARK, vars(asyncio.BaseEventLoop)[name])
        for name in ("create_server", "create_connection", "start_tls", "sendfile")
    }
    registry = tt.Registry()
    tt.instrument(registry=registry)
    tt.instrument(registry=registry)  # again: still one hook layer, same behaviour
    assert tt.is_instrumented()
    hooked = vars(asyncio.BaseEventLoop)["create_connection"]
    assert getattr(hooked, _hooks._MARK) is originals["create_connection"]
    run(_echo_round_trip, b"x")
    assert registry.totals("server").opened == 1
    tt.uninstrument()
    tt.uninstrument()
    assert not tt.is_instrumented()
    # The hooks stay (traced() needs them before its first call) and pass through.
    for name, fn in originals.items():
        assert getattr(vars(asyncio.BaseEventLoop)[name], _hooks._MARK, fn) is fn, name

    async def plain():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        assert not tt.is_proxy(writer.transport)
        writer.close()
        await closed(server)

    run(plain)
    assert registry.totals("server").opened == 1


def test_explicitly_traced_factories_are_not_wrapped_twice(run, instrumented):
    async def main():
        loop = asyncio.get_running_loop()
        own = tt.Registry()
        apps = []

        def factory():
            apps.append(Collect(echo=True))
            return apps[-1]

        server = await loop.create_server(tt.traced(factory, name="mine", registry=own), "127.0.0.1", 0)
        tr, app = await loop.create_connection(Collect, *server.sockets[0].getsockname())
        tr.write(b"abc")
        await app.wait_bytes(3)
        # one layer of proxy on the server side
        assert tt.unwrap(apps[0].transport) is apps[0].transport.traced_inner
        tr.close()
        await apps[0].lost
        await closed(server)
        assert own.totals("mine").rx == 3
        assert instrumented.totals("server").opened == 0
        assert instrumented.totals("client").tx == 3

    run(main)


def test_instrument_pipes_and_datagrams(run, instrumented):
    async def main():
        loop = asyncio.get_running_loop()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print('x' * 10)", stdout=asyncio.subprocess.PIPE
        )
        out = await proc.stdout.read()
        assert await proc.wait() == 0
        assert out.strip() == b"x" * 10

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(data, addr)

        got = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.set_result(data)

        s_tr, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        c_tr, _ = await loop.create_datagram_endpoint(Client, remote_addr=s_tr.get_extra_info("sockname"))
        c_tr.sendto(b"dgram")
        assert await got == b"dgram"
        c_tr.close()
        s_tr.close()
        rfd, wfd = os.pipe()
        os.close(wfd)
        r_tr, r_app = await loop.connect_read_pipe(Collect, os.fdopen(rfd, "rb", 0))
        await r_app.lost
        assert tt.is_proxy(r_tr)

    run(main)
    snap = instrumented.snapshot()
    kinds = {(k.side, k.network_transport) for k in snap.closed}
    assert ("client", "pipe") in kinds and ("server", "udp") in kinds and ("client", "udp") in kinds
    assert instrumented.totals("client").rx >= 11 + 5


def test_instrument_counts_a_subprocess_once(run, instrumented):
    # asyncio's subprocess transport connects its stdin/stdout through
    # loop.connect_write_pipe / connect_read_pipe: those are not connections of
    # their own, or a subprocess counts 3 times and its bytes twice.
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read())",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert tt.is_proxy(proc.stdin.transport)
        assert proc.stdin.transport.traced_inner is tt.unwrap(proc.stdin.transport)  # one layer
        out, _ = await proc.communicate(b"x" * 100)
        assert out == b"x" * 100

    run(main)
    totals = instrumented.totals("client")
    assert (totals.opened, totals.rx, totals.tx) == (1, 100, 100)


def test_traced_inline_in_the_first_call_after_uninstrument(run):
    # `loop.create_connection(traced(f), ...)`: the method is looked up before
    # traced(f) runs, so the hooks must already be there.
    tt.instrument()
    tt.uninstrument()
    registry = tt.Registry()

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Collect, "127.0.0.1", 0)
        tr, app = await loop.create_connection(
            tt.traced(Collect, side="client", registry=registry), *server.sockets[0].getsockname()
        )
        assert tt.is_proxy(tr) and isinstance(app, Collect) and app.transport is tr
        tr.close()
        await app.lost
        await closed(server)

    run(main)


@pytest.mark.parametrize("outer", ["instrument", "traced"])
def test_a_factory_whose_products_are_traced_is_not_traced_again(run, outer):
    """A factory that builds its protocol through a traced() factory (as uvicorn does with the helper's class):
    instrument() or another traced() around it hands the connection over once; totals over all names count
    each connection and byte once, and the loop still returns (proxy, app protocol)."""
    registry = tt.Registry()

    async def main():
        loop = asyncio.get_running_loop()
        inner_server = tt.traced(lambda: Collect(echo=True), name="inner-server", registry=registry)
        inner_client = tt.traced(Collect, name="inner-client", registry=registry, side="client")
        server_factory, client_factory = (lambda: inner_server()), (lambda: inner_client())
        if outer == "traced":
            server_factory = tt.traced(server_factory, name="outer-server", registry=registry)
            client_factory = tt.traced(client_factory, name="outer-client", registry=registry, side="client")
        else:
            tt.instrument(server_name="outer-server", client_name="outer-client", registry=registry)
        try:
            server = await loop.create_server(server_factory, "127.0.0.1", 0)
            transport, protocol = await loop.create_connection(client_factory, *server.sockets[0].getsockname())
        finally:
            tt.uninstrument()
        assert tt.is_proxy(transport) and type(protocol) is Collect
        transport.write(b"hello")
        await protocol.wait_bytes(5)
        transport.close()
        await protocol.lost
        while registry.totals().closed < 2:  # the server's side closes on the EOF (run() bounds the wait)
            await asyncio.sleep(0.01)
        await closed(server)

    run(main)
    everything = registry.totals()
    assert (everything.opened, everything.rx, everything.tx) == (2, 10, 10)
    assert registry.totals("inner-server").opened == registry.totals("inner-client").opened == 1
