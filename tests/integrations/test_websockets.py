"""websockets (asyncio implementation) with ``traced_transport.websockets.serve``/``connect``: long-lived
connections under flow control. A client that stops reading drives the server into ``pause_writing``; a
fast uploader to a handler that does not read drives the server's ``pause_reading``. Both show in metrics
and span events, and the transfers complete intact. ``unix_serve`` is traced as unix."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

pytest.importorskip("websockets.asyncio.server")

from _support import Otel, closed_connections, wait_until

import traced_transport.websockets as tt_ws

CHUNK = 64 * 1024
COUNT = 160  # 10 MiB: far more than loopback's socket buffers hold


def payload(i: int) -> bytes:
    return bytes([i % 251]) * CHUNK


def live(otel: Otel, name: str):
    return [r for r in otel.registry.live() if r.group.name == name]


def events(span) -> list[str]:
    return [e.name for e in span.events]


def test_slow_reader_pauses_server_writing(run):
    otel = Otel()

    async def handler(ws):
        for i in range(COUNT):
            await ws.send(payload(i))
        await ws.close()

    async def main():
        async with tt_ws.serve(
            handler, "127.0.0.1", 0, name="ws", observer=otel.telemetry, compression=None, max_size=None
        ) as server:
            port = server.sockets[0].getsockname()[1]
            client = await tt_ws.connect(
                f"ws://127.0.0.1:{port}",
                name="wsc",
                observer=otel.telemetry,
                max_queue=1,
                compression=None,
                max_size=None,
            )
            # the client reads nothing until the server's transport has paused its writing
            await wait_until(lambda: any(r.write_paused_since for r in live(otel, "ws")), "server writing paused")
            digest = hashlib.sha256()
            for i in range(COUNT):
                message = await client.recv()
                assert message == payload(i)
                digest.update(message)
            await client.wait_closed()
            await closed_connections(otel.registry, "ws", 1)
            await closed_connections(otel.registry, "wsc", 1)

    run(main, timeout=60)
    (server_span,) = otel.spans("ws")
    (client_span,) = otel.spans("wsc")
    assert "transport.writing.paused" in events(server_span) and "transport.writing.resumed" in events(server_span)
    assert server_span.attributes["transport.writing.pauses"] >= 1
    assert otel.value("transport.writing.pause.duration", transport_name="ws") >= 1
    # the client's websockets connection paused its own reading (max_queue=1)
    assert "transport.reading.paused" in events(client_span)
    server, client = otel.registry.totals("ws"), otel.registry.totals("wsc")
    assert server.tx == client.rx > COUNT * CHUNK and server.rx == client.tx
    otel.shutdown()


def test_fast_uploader_pauses_server_reading(run):
    otel = Otel()
    go = None

    async def handler(ws):
        # not reading: websockets pauses the transport once max_queue messages wait
        await asyncio.wait_for(go.wait(), 30)
        digest = hashlib.sha256()
        for i in range(COUNT):
            message = await ws.recv()
            assert message == payload(i)
            digest.update(message)
        await ws.send(digest.hexdigest())

    async def main():
        nonlocal go
        go = asyncio.Event()
        async with tt_ws.serve(
            handler, "127.0.0.1", 0, name="ws", observer=otel.telemetry, compression=None, max_queue=2, max_size=None
        ) as server:
            port = server.sockets[0].getsockname()[1]
            client = await tt_ws.connect(
                f"ws://127.0.0.1:{port}", name="wsc", observer=otel.telemetry, compression=None, max_size=None
            )
            expected = hashlib.sha256()

            async def upload():
                for i in range(COUNT):
                    await client.send(payload(i))
                    expected.update(payload(i))

            uploading = asyncio.ensure_future(upload())
            await wait_until(lambda: any(r.read_paused_since for r in live(otel, "ws")), "server reading paused")
            go.set()
            await uploading
            reply = await client.recv()
            await client.close()
            await closed_connections(otel.registry, "ws", 1)
            return reply, expected.hexdigest()

    reply, expected = run(main, timeout=60)
    assert reply == expected
    (server_span,) = otel.spans("ws")
    assert "transport.reading.paused" in events(server_span) and "transport.reading.resumed" in events(server_span)
    assert otel.value("transport.reading.pause.duration", transport_name="ws") >= 1
    assert otel.registry.totals("ws").rx == otel.registry.totals("wsc").tx > COUNT * CHUNK
    otel.shutdown()


def test_unix_serve_traced_as_unix(run, tmp_path):
    """``traced_transport.websockets.unix_serve`` with a real ``unix_connect`` client (traced with ``tracing``):
    keyed ``network.transport`` unix on both sides, each side's bytes the other's."""
    from websockets.asyncio.client import unix_connect

    import traced_transport as tt

    otel = Otel()
    path = str(tmp_path / "ws.sock")
    messages = ["hello", "x" * 10_000, "over unix"]

    async def handler(ws):
        async for message in ws:
            await ws.send(message[::-1])

    async def main():
        async with tt_ws.unix_serve(handler, path, name="ws", observer=otel.telemetry, compression=None):
            with tt.tracing(client_name="wsc", observer=otel.telemetry):
                client = await unix_connect(path, compression=None)
            replies = []
            for message in messages:
                await client.send(message)
                replies.append(await client.recv())
            await client.close()
            await closed_connections(otel.registry, "ws", 1)
            await closed_connections(otel.registry, "wsc", 1)
            return replies, len(client.request.serialize()), len(client.response.serialize())

    replies, request_head, response_head = run(main, timeout=30)
    assert replies == [m[::-1] for m in messages]
    keys = {(k.name, k.side, k.network_transport) for k in otel.registry.snapshot().closed}
    assert keys == {("ws", "server", "unix"), ("wsc", "client", "unix")}
    (server_span,) = otel.spans("ws")
    assert server_span.attributes["network.transport"] == "unix"
    server, client = otel.registry.totals("ws"), otel.registry.totals("wsc")
    payload = sum(len(m) for m in messages)
    assert server.opened == client.opened == 1
    assert server.rx == client.tx > payload and server.tx == client.rx > payload

    # and what went over the socket, from the protocol: the upgrade, then the frames (client's masked), each
    # with a 2-byte header (+2 for a 16-bit length), and the closing handshake (code 1000, no reason)
    def frames(masked: bool) -> int:
        mask = 4 if masked else 0
        return sum(2 + (2 if len(m) >= 126 else 0) + mask + len(m) for m in messages) + 2 + mask + 2

    assert server.rx == request_head + frames(masked=True)
    assert server.tx == response_head + frames(masked=False)
    assert otel.value("transport.received", transport_name="ws", network_transport="unix") == server.rx
    otel.shutdown()
