"""A traced echo server on a loop in its own thread, with client connections a test opens, pauses and closes,
and a scrape endpoint serving its registry's /connections (shared by the JSON, browser and terminal tests)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from typing import Any, Optional

from prometheus_client import CollectorRegistry
from traced_transport.exporters.prometheus import ScrapeEndpoint

import traced_transport as tt


class PausingEcho(asyncio.Protocol):
    """Echoes; b"pause" makes it stop reading (flow control the record sees)."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data.endswith(b"pause"):
            self.transport.pause_reading()
        else:
            self.transport.write(data)


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = 0
        self.waiter: Optional[tuple[int, asyncio.Future]] = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.waiter and self.received >= self.waiter[0] and not self.waiter[1].done():
            self.waiter[1].set_result(None)

    def connection_lost(self, exc: Any) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class LiveServer:
    """``with LiveServer(loop_kind) as s``: s.open(name, nbytes), s.pause(conn), s.close(conn), s.url, s.get()."""

    def __init__(self, loop_kind: str = "asyncio", **endpoint_kwargs: Any) -> None:
        if loop_kind == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.registry = tt.Registry()
        self.endpoint_kwargs = endpoint_kwargs
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-server-loop", daemon=True)
        self.conns: list[Client] = []
        self.served: list[PausingEcho] = []

    def _server_protocol(self) -> PausingEcho:
        p = PausingEcho()
        self.served.append(p)
        return p

    def call(self, coro: Any, timeout: float = 15) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> LiveServer:
        self.thread.start()

        async def start() -> None:
            self.server = await self.loop.create_server(
                tt.traced(self._server_protocol, name="echo", registry=self.registry), "127.0.0.1", 0
            )

        self.call(start())
        self.port = self.server.sockets[0].getsockname()[1]
        kwargs = {"port": 0, "connections": self.registry, **self.endpoint_kwargs}
        self.endpoint = ScrapeEndpoint(CollectorRegistry(), **kwargs).start()
        self.url = self.endpoint.url.rsplit("/", 1)[0] + "/connections"
        return self

    def open(self, name: str = "client", nbytes: int = 0) -> Client:
        """A traced client connection that has had ``nbytes`` echoed back."""

        async def go() -> Client:
            _, proto = await self.loop.create_connection(
                tt.traced(Client, name=name, side="client", registry=self.registry), "127.0.0.1", self.port
            )
            if nbytes:
                fut = self.loop.create_future()
                proto.waiter = (nbytes, fut)
                proto.transport.write(b"x" * nbytes)
                await fut
            return proto

        conn = self.call(go())
        self.conns.append(conn)
        return conn

    def pause(self, conn: Client) -> None:
        """The server side stops reading this connection (seen once the next listing shows it)."""
        self.loop.call_soon_threadsafe(conn.transport.write, b"pause")

    def close(self, conn: Client) -> None:
        async def go() -> None:
            conn.transport.close()
            await conn.lost

        self.call(go())
        self.conns.remove(conn)

    def get(self, query: str = "", accept: str = "application/json", headers: Optional[dict] = None) -> Any:
        request = urllib.request.Request(self.url + query, headers={"Accept": accept, **(headers or {})})
        with urllib.request.urlopen(request, timeout=10) as r:
            body = r.read()
            return json.loads(body) if r.headers.get("Content-Type", "").startswith("application/json") else body

    def __exit__(self, *exc: Any) -> None:
        self.endpoint.stop()

        async def stop() -> None:
            for c in list(self.conns):
                c.transport.close()
            for p in self.served:
                p.transport.close()
            self.server.close()
            await self.server.wait_closed()

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
