#!/usr/bin/env python3
"""Scrape cost with many open traced connections: does a collection stay cheap, whatever the traffic?

This process runs a traced echo server (uvloop when installed) with ``traced_transport.exporters.sdk.setup()`` providers
and its scrape endpoint; a child process opens ``--connections`` (10 000) plain client connections to it
over loopback (each process raises RLIMIT_NOFILE within its hard limit). Then, with the server's loop
running:

1. a full collection is timed ``--repeat`` times from another thread, as the endpoint does it:
   ``MeterProvider`` collect through the Prometheus reader (observable callbacks summing the registry's
   records) plus text generation (``traced_transport.exporters.prometheus.exposition``); and a real HTTP scrape of the
   endpoint (urllib) for the round trip;
2. every connection echoes ``--rounds`` x ``--bytes`` through the server (a lot of data);
3. the same measurements again.

The cost must not grow with traffic: the registry holds counts, not events. Collections are spaced
60 ms apart, beyond Telemetry's 50 ms reuse of one registry pass, so each one pays the full pass.
Prints a table and one markdown line for the README. Target: < 50 ms per collection at 10 000 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGET_MS = 50.0


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# -- the client process -------------------------------------------------------------------------------
CLIENT = r"""
import asyncio, os, resource, sys
sys.path.insert(0, sys.argv[3])
from bench.scrape import new_loop, raise_nofile

port, n = int(sys.argv[1]), int(sys.argv[2])
raise_nofile(n + 256)


class Client(asyncio.Protocol):
    def __init__(self):
        self.got = 0
        self.want = 0
        self.done = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.got += len(data)
        if self.done is not None and self.got >= self.want and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("lost"))


async def main():
    loop = asyncio.get_running_loop()
    clients = []
    for start in range(0, n, 500):
        batch = await asyncio.gather(*(loop.create_connection(Client, "127.0.0.1", port)
                                       for _ in range(min(500, n - start))))
        clients += [p for _, p in batch]
    print("connected", len(clients), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "quit":
            break
        rounds, size = int(line[1]), int(line[2])
        payload = b"x" * size
        for _ in range(rounds):
            for c in clients:
                c.want += size
                c.done = loop.create_future()
                c.transport.write(payload)
            await asyncio.gather(*(c.done for c in clients))
        print("sent", flush=True)
    for c in clients:
        c.transport.close()


loop = new_loop()
loop.run_until_complete(main())
loop.close()
"""


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def measure(setup, repeat: int) -> dict:
    """Times (ms) of full collections and HTTP scrapes, run on this (non-loop) thread."""
    from traced_transport.exporters.prometheus import exposition

    collect, http = [], []
    size = 0
    gap = threading.Event()
    for _ in range(repeat):
        gap.wait(0.06)
        t0 = time.perf_counter()
        status, _, body = exposition(setup.prometheus_registry)
        collect.append((time.perf_counter() - t0) * 1e3)
        assert status == 200
        size = len(body)
        gap.wait(0.06)
        t0 = time.perf_counter()
        with urllib.request.urlopen(setup.url, timeout=30) as resp:
            resp.read()
        http.append((time.perf_counter() - t0) * 1e3)
    collect.sort()
    http.sort()
    return {
        "median": statistics.median(collect),
        "p90": collect[int(0.9 * (len(collect) - 1))],
        "max": collect[-1],
        "http": statistics.median(http),
        "size": size,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20, help="collections per measurement (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=8, help="echo rounds per connection (default: %(default)s)")
    parser.add_argument(
        "--bytes", type=int, default=16384, help="bytes per connection per round (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    from traced_transport.exporters import sdk

    import traced_transport as tt

    limit = raise_nofile(args.connections + 512)
    if limit < args.connections + 64:
        print(f"RLIMIT_NOFILE is {limit}: not enough for {args.connections} connections", file=sys.stderr)
        return 2
    setup = sdk.setup(service_name="bench-scrape", metrics_port=0, set_global=False, otlp=False)
    registry = tt.Registry()
    telemetry = tt.Telemetry(registry, meter_provider=setup.meter_provider, tracer_provider=setup.tracer_provider)
    loop = new_loop()
    thread = threading.Thread(target=loop.run_forever, name="app-loop", daemon=True)
    thread.start()

    def on_loop(coro, timeout=600):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def start():
        return await asyncio.get_running_loop().create_server(
            tt.traced(Echo, name="echo", observer=telemetry), "127.0.0.1", 0, backlog=4096
        )

    server = on_loop(start())
    port = server.sockets[0].getsockname()[1]
    rows = []
    try:
        empty = measure(setup, args.repeat)
        rows.append(("0 connections", 0, empty))
        child = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(port), str(args.connections), ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = child.stdout.readline()
            assert line.startswith("connected"), line
            live = len(registry.live())
            deadline = time.monotonic() + 60
            while live < args.connections and time.monotonic() < deadline:  # accepted, but maybe not yet made
                threading.Event().wait(0.05)
                live = len(registry.live())
            before = measure(setup, args.repeat)
            rows.append((f"{live} open", registry.totals().rx, before))
            t0 = time.perf_counter()
            child.stdin.write(f"send {args.rounds} {args.bytes}\n")
            child.stdin.flush()
            assert child.stdout.readline().startswith("sent")
            elapsed = time.perf_counter() - t0
            moved = registry.totals().rx
            after = measure(setup, args.repeat)
            rows.append((f"{len(registry.live())} open, after traffic", moved, after))
            child.stdin.write("quit\n")
            child.stdin.flush()
        finally:
            child.stdin.close()
            child.wait(60)
    finally:

        async def stop():
            server.close()
            await server.wait_closed()

        on_loop(stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        setup.shutdown()

    print(f"\nloop: {type(loop).__module__}; {args.repeat} collections per row, 60 ms apart\n")
    print("| state | bytes received so far | collect+render median | p90 | max | HTTP scrape median | body |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rx, m in rows:
        print(
            f"| {name} | {rx / 1e6:,.1f} MB | {m['median']:.1f} ms | {m['p90']:.1f} ms | {m['max']:.1f} ms "
            f"| {m['http']:.1f} ms | {m['size']:,} B |"
        )
    print(f"\n(traffic: {moved / 1e6:,.0f} MB echoed in {elapsed:.2f} s, {moved / 1e6 / elapsed:,.0f} MB/s)")
    ok = before["median"] < TARGET_MS and after["median"] < TARGET_MS
    growth = after["median"] / before["median"]
    print(f"target < {TARGET_MS:.0f} ms: {'met' if ok else 'NOT met'}; after/before traffic: {growth:.2f}x\n")
    print("README line:\n")
    print(
        f"| Scrape (collect + text), {args.connections:,} open traced connections | "
        f"{before['median']:.1f} ms median (p90 {before['p90']:.1f} ms); {after['median']:.1f} ms after "
        f"{moved / 1e9:.2f} GB echoed |"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
