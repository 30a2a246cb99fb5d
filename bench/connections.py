#!/usr/bin/env python3
"""Cost of a /connections request with many live traced connections, and what it does to the event loop.

This process runs a traced echo server on its own loop thread (``--loop``: uvloop or asyncio) and a scrape
endpoint with the live view on (``ScrapeEndpoint(connections=registry)``); a child process (bench/scrape.py's
client) opens ``--connections`` (10 000) plain client connections over loopback and echoes a little data on each.
Then, with the loop running and a probe coroutine on it measuring how late a 1 ms sleep wakes up:

1. the first request (every connection seen for the first time: peer and local address read once);
2. ``--repeat`` requests of each query below, over HTTP (http.client on this process's main thread);
3. the registry lock's hold time for the live-list copy (``Registry.live()``), the only lock the loop shares.

Loop lateness is reported as the probe's worst and 99th-percentile lateness while requests run, next to the same
figures over an idle stretch of the same length. Target: < 50 ms per request, loop held < a few ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.scrape import CLIENT, Echo, raise_nofile  # noqa: E402

QUERIES = (
    ("default (age, limit 100)", ""),
    ("sort by rx bytes/s", "?sort=rx_bytes_per_s"),
    ("filter peer prefix + sort tx", "?peer=127.0.0.1:1&sort=tx_bytes"),
    ("paused only", "?paused=any"),
    ("limit 1000", "?limit=1000"),
    ("sort by write buffer", "?sort=write_buffer_bytes"),
)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class Probe:
    """On the loop: how late does ``sleep(0.001)`` wake up? Lateness samples (ms) since the last ``take()``."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.running = True

    async def run(self) -> None:
        clock = time.perf_counter
        while self.running:
            t0 = clock()
            await asyncio.sleep(0.001)
            self.samples.append((clock() - t0 - 0.001) * 1e3)

    def take(self) -> list[float]:
        out, self.samples = self.samples, []
        return out


class GcWatch:
    """The longest collection per generation (ms), whichever thread triggered it: a full collection holds the
    GIL, and with many live connections it is the longest pause a request can set off."""

    def __init__(self) -> None:
        self.started = 0.0
        self.longest = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            gen = info["generation"]
            self.counts[gen] += 1
            self.longest[gen] = max(self.longest[gen], (time.perf_counter() - self.started) * 1e3)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * (len(values) - 1)))] if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30, help="requests per query (default: %(default)s)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument(
        "--slice-ms",
        type=float,
        default=None,
        help="work between two GIL releases of a request, ms (default: the module's); 0: never release",
    )
    args = parser.parse_args(argv)

    from prometheus_client import CollectorRegistry
    from traced_transport.exporters import connections
    from traced_transport.exporters.prometheus import ScrapeEndpoint

    if args.slice_ms is not None:
        connections._SLICE_S = args.slice_ms / 1e3 if args.slice_ms > 0 else float("inf")

    import traced_transport as tt

    limit = raise_nofile(args.connections + 512)
    if limit < args.connections + 64:
        print(f"RLIMIT_NOFILE is {limit}: not enough for {args.connections} connections", file=sys.stderr)
        return 2
    registry = tt.Registry()
    loop = new_loop(args.loop)
    thread = threading.Thread(target=loop.run_forever, name="app-loop", daemon=True)
    thread.start()

    def on_loop(coro, timeout=600):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def start():
        return await asyncio.get_running_loop().create_server(
            tt.traced(Echo, name="echo", registry=registry), "127.0.0.1", 0, backlog=4096
        )

    server = on_loop(start())
    port = server.sockets[0].getsockname()[1]
    endpoint = ScrapeEndpoint(CollectorRegistry(), port=0, connections=registry).start()
    conn = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=30)

    def request(query: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        conn.request("GET", "/connections" + query, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - t0) * 1e3
        assert resp.status == 200, body[:200]
        return elapsed, len(body)

    child = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(port), str(args.connections), ROOT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    probe = Probe()
    results: dict = {"connections": args.connections, "loop": args.loop, "queries": {}}
    try:
        assert child.stdout.readline().startswith("connected")
        child.stdin.write("send 1 1000\n")
        child.stdin.flush()
        assert child.stdout.readline().startswith("sent")
        while len(registry.live()) < args.connections:
            time.sleep(0.05)
        asyncio.run_coroutine_threadsafe(probe.run(), loop)
        time.sleep(0.5)
        probe.take()

        # the registry lock: how long the live-list copy holds it
        holds = []
        for _ in range(20):
            t0 = time.perf_counter()
            registry.live()
            holds.append((time.perf_counter() - t0) * 1e3)
        results["lock_hold_ms"] = {"median": statistics.median(holds), "max": max(holds)}

        watch = GcWatch()
        gc.callbacks.append(watch)
        first, size = request("")
        results["first_request_ms"] = first
        busy_started = time.perf_counter()
        probe.take()
        busy: list[float] = []
        for label, query in QUERIES:
            times, sizes = [], 0
            for _ in range(args.repeat):
                t, sizes = request(query)
                times.append(t)
            late = probe.take()
            busy += late
            results["queries"][label] = {
                "median": statistics.median(times),
                "p90": pct(times, 0.9),
                "max": max(times),
                "bytes": sizes,
                "loop_late_max": max(late) if late else float("nan"),
                "loop_late_p99": pct(late, 0.99),
            }
        busy_s = time.perf_counter() - busy_started
        gc.callbacks.remove(watch)
        results["gc"] = {"collections": watch.counts, "longest_ms": watch.longest}
        time.sleep(busy_s)
        idle = probe.take()
        results["loop_late_ms"] = {
            "during_requests": {"max": max(busy), "p99": pct(busy, 0.99), "samples": len(busy)},
            "idle": {"max": max(idle), "p99": pct(idle, 0.99), "samples": len(idle)},
        }
    finally:
        probe.running = False
        conn.close()
        endpoint.stop()
        try:
            child.stdin.write("quit\n")
            child.stdin.flush()
        except OSError:
            pass
        child.wait(60)

        async def stop():
            server.close()

        on_loop(stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    n = args.connections
    print(
        f"\n/connections with {n} live traced connections ({args.loop}), {args.repeat} requests per query, "
        f"GIL handed over after every {connections._SLICE_S * 1e3:g} ms of work\n"
    )
    print("| Query | median ms | p90 ms | max ms | response bytes | loop late max / p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| first request (cold: addresses read once) | {results['first_request_ms']:.1f} | | | | |")
    for label, r in results["queries"].items():
        print(
            f"| {label} | {r['median']:.1f} | {r['p90']:.1f} | {r['max']:.1f} | {r['bytes']} "
            f"| {r['loop_late_max']:.1f} / {r['loop_late_p99']:.1f} |"
        )
    lk = results["lock_hold_ms"]
    late = results["loop_late_ms"]
    print(f"\nRegistry lock held for the live-list copy: median {lk['median']:.2f} ms, max {lk['max']:.2f} ms")
    d, i = late["during_requests"], late["idle"]
    print(
        f"Loop lateness (1 ms sleep probe): during requests max {d['max']:.1f} ms, p99 {d['p99']:.1f} ms "
        f"({d['samples']} samples); idle max {i['max']:.1f} ms, p99 {i['p99']:.1f} ms"
    )
    g = results["gc"]
    print(
        "Garbage collections during the requests (gen 0/1/2): "
        + "/".join(str(n) for n in g["collections"])
        + ", longest "
        + " / ".join(f"{ms:.1f}" for ms in g["longest_ms"])
        + " ms"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
