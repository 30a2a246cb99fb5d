"""A connection is counted once, whatever traces it: every framework helper alone, under ``instrument()``,
inside a ``tracing()`` scope and wrapped again with explicit ``traced()``. The totals are summed over ALL
``transport.name`` values, so a connection traced twice (once per layer) shows up as double bytes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from _support import make_app

import traced_transport as tt

pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")
pytest.importorskip("websockets")
pytest.importorskip("hypercorn")

MODES = ["helper", "instrument", "tracing", "traced"]
REQUESTS = 3

asgi_app = make_app(lambda scope, size: b"r" * 700)


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)
    return sock


@contextlib.asynccontextmanager
async def _uvicorn(registry: tt.Registry, mode: str) -> AsyncIterator[int]:
    import uvicorn

    import traced_transport.uvicorn as tt_uvicorn

    http: Any = tt_uvicorn.http("h11", name="helper", registry=registry)
    if mode == "traced":
        # uvicorn calls the class it is given with keyword arguments; a traced() factory takes them too.
        http = tt.traced(http, name="outer", registry=registry)
    sock = _listening_socket()
    server = uvicorn.Server(
        uvicorn.Config(asgi_app, http=http, ws="none", loop="none", lifespan="off", log_level="warning")
    )
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:  # uvicorn sets no event
            assert not task.done(), task
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def _aiohttp(registry: tt.Registry, mode: str) -> AsyncIterator[int]:
    from aiohttp import web

    import traced_transport.aiohttp as tt_aiohttp

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=b"a" * 700)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = tt_aiohttp.AppRunner(app, name="helper", registry=registry, access_log=None)
    await runner.setup()
    try:
        if mode == "traced":
            server = await asyncio.get_running_loop().create_server(
                tt.traced(runner.server, name="outer", registry=registry), "127.0.0.1", 0
            )
            try:
                yield server.sockets[0].getsockname()[1]
            finally:
                server.close()
                await server.wait_closed()
        else:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _websockets(registry: tt.Registry, mode: str) -> AsyncIterator[int]:
    import traced_transport.websockets as tt_ws

    async def handler(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async with tt_ws.serve(handler, "127.0.0.1", 0, name="helper", registry=registry, compression=None) as server:
        yield server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def _hypercorn(registry: tt.Registry, mode: str) -> AsyncIterator[int]:
    from hypercorn.config import Config

    import traced_transport.hypercorn as tt_hypercorn

    sock = _listening_socket()
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = config.errorlog = None
    config.graceful_timeout = 1
    stop = asyncio.Event()
    task = asyncio.ensure_future(
        tt_hypercorn.serve(asgi_app, config, name="helper", registry=registry, shutdown_trigger=stop.wait)
    )
    try:
        yield port
    finally:
        stop.set()
        await task


def _http_client(port: int, i: int) -> tuple[int, int]:
    """One request on a raw blocking socket (not traced by instrument()): bytes sent and received."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        request = f"GET /{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        s.sendall(request)
        received = 0
        while chunk := s.recv(65536):
            received += len(chunk)
    return len(request), received


def _ws_client(port: int, i: int) -> tuple[int, int]:
    """A WebSocket handshake, one masked message, a close frame; read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        data = (
            f"GET /{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        data += b"\x82\x85\x00\x00\x00\x00hello"  # binary, masked with a zero key
        data += b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # close 1000
        s.sendall(data)
        received = 0
        while chunk := s.recv(65536):
            received += len(chunk)
    return len(data), received


FRAMEWORKS: dict[str, tuple[Callable, Callable]] = {
    "uvicorn": (_uvicorn, _http_client),
    "aiohttp": (_aiohttp, _http_client),
    "websockets": (_websockets, _ws_client),
    "hypercorn": (_hypercorn, _http_client),
}


# websockets and hypercorn build their protocol factories internally: there is no factory to traced().
COMBINATIONS = [(f, m) for f in FRAMEWORKS for m in MODES if not (m == "traced" and f in ("websockets", "hypercorn"))]


@pytest.mark.parametrize(("framework", "mode"), COMBINATIONS)
def test_counted_once_over_all_names(run, framework, mode):
    serving, client = FRAMEWORKS[framework]
    registry = tt.Registry()

    async def main():
        with contextlib.ExitStack() as outer:
            if mode == "instrument":
                tt.instrument(server_name="outer", client_name="outer-client", registry=registry)
                outer.callback(tt.uninstrument)
            elif mode == "tracing":
                outer.enter_context(tt.tracing(server_name="outer", registry=registry))
            async with serving(registry, mode) as port:
                sent = received = 0
                for i in range(REQUESTS):
                    s, r = await asyncio.to_thread(client, port, i)
                    sent, received = sent + s, received + r
                deadline = asyncio.get_running_loop().time() + 10
                while registry.totals().closed < REQUESTS:  # the server's side closes after the client's read
                    assert asyncio.get_running_loop().time() < deadline, registry.totals()
                    await asyncio.sleep(0.01)
        return sent, received

    sent, received = run(main, timeout=30)
    everything = registry.totals()  # summed over every transport.name
    assert (everything.opened, everything.closed) == (REQUESTS, REQUESTS)
    assert (everything.rx, everything.tx) == (sent, received)
    assert registry.totals("helper").opened == REQUESTS  # the innermost (the helper's) name wins
