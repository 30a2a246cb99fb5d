"""``traced-transport demo``: traced servers under a built-in load, with the scrape endpoint up.

On loopback it starts a traced TCP echo server, a traced TLS echo server (its
certificate made at start-up), a traced HTTP server (aiohttp) and the
Prometheus scrape endpoint, then a load generator that exercises them:
ping-pong echo clients, slow readers that drive flow-control pauses on both
sides, TLS clients (some failing their handshake on purpose), HTTP clients,
and a few aborted connections, so every metric and dashboard panel moves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import socket
import ssl
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Optional

import traced_transport as tt

from . import demo_view

NAMES = ("echo", "tls-echo", "http", "echo-client", "tls-client", "http-client")


class BackpressureEcho(asyncio.Protocol):
    """Echoes; stops reading while its own writes are backed up (classic backpressure)."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


@dataclass
class Endpoints:
    echo: int
    tls: int
    http: int
    metrics_url: Optional[str]


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
    """(server, client, client that stops at TLS 1.2): so the TLS version breakdown has two versions."""
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client12 = ssl.create_default_context()
    ca.configure_trust(client12)
    client12.maximum_version = ssl.TLSVersion.TLSv1_2
    return server, client, client12


def http_app() -> Any:
    from aiohttp import web

    async def index(request: Any) -> Any:
        return web.Response(text="traced-transport demo\n")

    async def download(request: Any) -> Any:
        size = min(int(request.match_info["size"]), 8 * 1024 * 1024)
        return web.Response(body=b"d" * size)

    async def upload(request: Any) -> Any:
        total = 0
        async for chunk in request.content.iter_chunked(65536):
            total += len(chunk)
        return web.Response(text=str(total))

    app = web.Application()
    app.add_routes([web.get("/", index), web.get("/bytes/{size}", download), web.post("/upload", upload)])
    return app


class Load:
    """The load generator: bounded concurrency, stops when told."""

    def __init__(
        self,
        host: str,
        ends: Endpoints,
        client_ctx: ssl.SSLContext,
        concurrency: int,
        seed: int,
        client_ctx_tls12: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.host = host
        self.ends = ends
        self.client_ctx = client_ctx
        self.client_ctx_tls12 = client_ctx_tls12 or client_ctx
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.stop = asyncio.Event()
        self.errors = 0
        self._reported: set[tuple[str, type]] = set()

    async def run(self) -> None:
        kinds = [self.echo, self.echo, self.slow_reader, self.tls, self.http, self.http, self.abort, self.bad_tls]
        workers = [asyncio.create_task(self._loop(kinds[i % len(kinds)])) for i in range(max(self.concurrency, 1))]
        await self.stop.wait()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _loop(self, kind: Any) -> None:
        while not self.stop.is_set():
            try:
                await kind()
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
                self.errors += 1
            except Exception as exc:  # noqa: BLE001 - one session failed; this client's load goes on
                self.errors += 1
                self._report(kind, exc)
            await asyncio.sleep(self.rng.uniform(0.01, 0.1))  # pacing of the load, not synchronisation

    def _report(self, kind: Any, exc: Exception) -> None:
        # Once per kind of session and kind of failure: enough to see why, without a flood.
        what = (getattr(kind, "__name__", repr(kind)), type(exc))
        if what not in self._reported:
            self._reported.add(what)
            print(f"demo: a {what[0]} session failed (reported once):", file=sys.stderr)
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)

    async def echo(self) -> None:
        reader, writer = await tt.open_connection(self.host, self.ends.echo, name="echo-client")
        for _ in range(self.rng.randint(1, 30)):
            size = self.rng.choice((64, 512, 4096, 65536))
            writer.write(b"e" * size)
            await reader.readexactly(size)
        writer.close()
        await writer.wait_closed()

    async def slow_reader(self) -> None:
        # Sends a lot and reads nothing back for a while: the server's writes back
        # up (writing pauses), so it stops reading (reading pauses) until we catch up.
        reader, writer = await tt.open_connection(self.host, self.ends.echo, name="echo-client", limit=16384)
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        total = 4 * 1024 * 1024
        writer.write(b"s" * total)
        await asyncio.sleep(self.rng.uniform(0.2, 0.5))  # a consumer that stalls, on purpose
        got = 0
        while got < total:
            chunk = await reader.read(65536)
            if not chunk:
                break
            got += len(chunk)
        writer.close()
        await writer.wait_closed()

    async def tls(self) -> None:
        # Half the TLS clients stop at TLS 1.2, so connections by TLS version have two series.
        ctx = self.client_ctx_tls12 if self.rng.random() < 0.5 else self.client_ctx
        reader, writer = await tt.open_connection(
            self.host, self.ends.tls, name="tls-client", ssl=ctx, server_hostname="localhost"
        )
        for _ in range(self.rng.randint(1, 10)):
            writer.write(b"t" * 1024)
            await reader.readexactly(1024)
        writer.close()
        await writer.wait_closed()

    async def bad_tls(self) -> None:
        if self.rng.random() < 0.5:
            # plain text to the TLS port
            reader, writer = await asyncio.open_connection(self.host, self.ends.tls)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            await reader.read()
            writer.close()
        else:
            # a client that does not trust the server
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                _, writer = await asyncio.open_connection(
                    self.host, self.ends.tls, ssl=ssl.create_default_context(), server_hostname="localhost"
                )
                writer.close()
        await asyncio.sleep(0.5)

    async def http(self) -> None:
        reader, writer = await tt.open_connection(self.host, self.ends.http, name="http-client")
        for _ in range(self.rng.randint(1, 5)):
            if self.rng.random() < 0.5:
                size = self.rng.choice((100, 10_000, 1_000_000))
                writer.write(f"GET /bytes/{size} HTTP/1.1\r\nHost: demo\r\n\r\n".encode())
            else:
                body = b"u" * self.rng.choice((10, 50_000))
                writer.write(
                    f"POST /upload HTTP/1.1\r\nHost: demo\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
                )
            await _read_http_response(reader)
        writer.close()
        await writer.wait_closed()

    async def abort(self) -> None:
        reader, writer = await tt.open_connection(self.host, self.ends.echo, name="echo-client")
        writer.write(b"a" * 1000)
        await reader.readexactly(1000)
        writer.transport.abort()
        await asyncio.sleep(0.2)


async def _read_http_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)


class Summary:
    """The live table on a terminal (``rich``); plain lines when stdout is not one, or with ``--plain``."""

    def __init__(self, started: float, metrics_url: Optional[str], live: bool) -> None:
        self.started = started
        self.metrics_url = metrics_url
        self._live: Any = None
        if live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(), auto_refresh=False, transient=False)
            self._live.start()

    def _rows(self) -> list:
        return demo_view.rows(tt.default_registry, NAMES)

    def _table(self, final: bool = False) -> Any:
        elapsed = time.monotonic() - self.started
        return demo_view.rich_table(self._rows(), elapsed, self.metrics_url, final=final)

    def update(self) -> None:
        if self._live is not None:
            self._live.update(self._table(), refresh=True)
        else:
            print("\n".join(demo_view.plain(self._rows(), time.monotonic() - self.started)), flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._table(final=True), refresh=True)
            self._live.stop()
        else:
            print("\n".join(demo_view.plain(self._rows(), time.monotonic() - self.started, final=True)), flush=True)


async def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from . import sdk
    from .connections_page import is_loopback, url_of

    started = time.monotonic()
    # The demo fills every dashboard row, the TCP one too: TCP_INFO is off by default (docs/tcp-info.md).
    # Set before sdk.setup(), which attaches the default Telemetry's histograms to its readers.
    tt.set_default_telemetry(tt.Telemetry(tcp_info=True))
    setup = sdk.setup(
        service_name="traced-transport-demo",
        metrics_host=args.host,
        metrics_port=args.metrics_port,
        endpoint=args.metrics_port >= 0,
        # The live-connections view shows peer addresses: on by itself only on loopback.
        connections=is_loopback(args.host),
    )
    loop = asyncio.get_running_loop()
    server_ctx, client_ctx, client_ctx_tls12 = tls_contexts()
    echo = await loop.create_server(tt.traced(BackpressureEcho, name="echo"), args.host, args.echo_port)
    tls = await loop.create_server(
        tt.traced(BackpressureEcho, name="tls-echo"), args.host, args.tls_port, ssl=server_ctx
    )
    runner = web.AppRunner(http_app(), access_log=None)
    await runner.setup()
    http = await loop.create_server(tt.traced(runner.server, name="http"), args.host, args.http_port)
    ends = Endpoints(
        echo=echo.sockets[0].getsockname()[1],
        tls=tls.sockets[0].getsockname()[1],
        http=http.sockets[0].getsockname()[1],
        metrics_url=getattr(setup.endpoint, "url", None),
    )
    print("traced-transport demo", flush=True)
    print(f"  metrics   {ends.metrics_url or '(endpoint off)'}", flush=True)
    if ends.metrics_url and setup.endpoint.connections is not None:
        print(f"  live      {url_of(ends.metrics_url)}  (or: traced-transport top)", flush=True)
    print(f"  echo      tcp://{args.host}:{ends.echo}", flush=True)
    print(f"  tls echo  tls://{args.host}:{ends.tls}", flush=True)
    print(f"  http      http://{args.host}:{ends.http}/", flush=True)
    print(f"  loop      {type(loop).__module__}.{type(loop).__name__}; Ctrl-C stops", flush=True)
    load = Load(args.host, ends, client_ctx, args.concurrency, args.seed, client_ctx_tls12)
    load_task = asyncio.create_task(load.run()) if args.concurrency > 0 else None
    summary = Summary(started, ends.metrics_url, live=sys.stdout.isatty() and not args.plain)
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        deadline = None if args.duration <= 0 else started + args.duration
        while not stop.is_set():
            timeout = args.interval
            if deadline is not None:
                timeout = min(timeout, max(deadline - time.monotonic(), 0))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)
            summary.update()
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        load.stop.set()
        if load_task is not None:
            await load_task
        for server in (echo, tls, http):
            server.close()
        await runner.cleanup()
        summary.close()
        setup.shutdown()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address every demo server and the scrape endpoint bind to (default: %(default)s, loopback)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        help="Prometheus scrape endpoint port; 0 picks a free one, -1 turns it off (default: %(default)s)",
    )
    parser.add_argument("--echo-port", type=int, default=0, help="TCP echo server port (default: a free port)")
    parser.add_argument("--tls-port", type=int, default=0, help="TLS echo server port (default: a free port)")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP server port (default: a free port)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="concurrent load-generator clients; 0 serves without load (default: %(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=0, help="seconds to run; 0 runs until Ctrl-C (default: %(default)s)"
    )
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between summary updates (default: %(default)s)"
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain summary lines even on a terminal (default: a live table there)"
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop" if _has_uvloop() else "asyncio",
        help="event loop (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the load generator (default: %(default)s)")


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main(args: argparse.Namespace) -> int:
    coro = run(args)
    try:
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    add_arguments(p)
    sys.exit(main(p.parse_args()))
