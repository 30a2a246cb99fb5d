"""Protocols used by the tests: real ones, with events to await instead of sleeps; external tools."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest


def require_binary(name: str, package: str) -> str:
    """The path of the tool ``name`` (Debian package ``package``); missing, it fails the test under CI=true
    and skips it otherwise."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install -y {package}; scripts/system-deps.sh does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_module(name: str, package: str):
    """Import ``name`` (pip package ``package``, in the test extra); missing, it fails the test under CI=true
    and skips it otherwise."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"{name} is not installed (pip install {package}; the test extra has it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class _Received:
    """What both collecting protocols share: the connection's events, and waiting for N bytes."""

    def _init_received(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport = None
        self.data = bytearray()
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.waiters: list[tuple[int, asyncio.Future]] = []

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)

    def _received(self, data) -> None:
        self.data += data
        for n, fut in list(self.waiters):
            if len(self.data) >= n and not fut.done():
                fut.set_result(None)

    async def wait_bytes(self, n: int) -> None:
        if len(self.data) >= n:
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append((n, fut))
        await asyncio.wait_for(fut, 15)


class Collect(_Received, asyncio.Protocol):
    """Collects what it receives; events for made / eof / lost."""

    def __init__(self, echo: bool = False, close_on_eof: bool = True):
        self._init_received()
        self.echo = echo
        self.close_on_eof = close_on_eof
        self.eof = asyncio.get_running_loop().create_future()
        self.paused = 0
        self.resumed = 0
        self.resumed_event = asyncio.Event()
        self.paused_event = asyncio.Event()

    def data_received(self, data):
        self._received(data)
        if self.echo:
            self.transport.write(data)

    def eof_received(self):
        self.eof.set_result(None)
        return None if self.close_on_eof else True

    def pause_writing(self):
        self.paused += 1
        self.paused_event.set()

    def resume_writing(self):
        self.resumed += 1
        self.resumed_event.set()


class BufferedCollect(_Received, asyncio.BufferedProtocol):
    """A BufferedProtocol with one fixed buffer, to check no copy is made."""

    def __init__(self, size: int = 4096):
        self._init_received()
        self.buffer = bytearray(size)
        self.view = memoryview(self.buffer)
        self.buffers_handed: set[int] = set()

    def get_buffer(self, sizehint):
        self.buffers_handed.add(id(self.view))
        return self.view

    def buffer_updated(self, nbytes):
        self._received(self.buffer[:nbytes])

    def eof_received(self):
        return None


def _same(factory):
    return factory


async def tcp_pair(
    app_server=Collect,
    app_client=Collect,
    *,
    wrap_server=_same,
    wrap_client=_same,
    ssl_server=None,
    ssl_client=None,
    host="127.0.0.1",
):
    """A server and one client connected to it: (server, server app protocol, client transport, client protocol).

    ``wrap_*`` take the app's protocol factory and return what the loop gets
    (e.g. ``lambda f: traced(f, ...)``); the app protocols come back either way.
    """
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future = loop.create_future()

    def server_factory():
        proto = app_server()
        if not accepted.done():
            accepted.set_result(proto)
        return proto

    server = await loop.create_server(wrap_server(server_factory), host, 0, ssl=ssl_server)
    port = server.sockets[0].getsockname()[1]
    kwargs = {}
    if ssl_client is not None:
        kwargs = {"ssl": ssl_client, "server_hostname": "localhost"}
    c_transport, c_proto = await loop.create_connection(wrap_client(app_client), host, port, **kwargs)
    s_proto = await accepted
    await s_proto.made
    return server, s_proto, c_transport, c_proto


async def closed(server) -> None:
    server.close()
    await server.wait_closed()
