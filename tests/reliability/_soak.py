"""Soak: many connections opened and closed, many at once, telemetry on; then look for anything left behind.

Shared by ``tests/reliability/test_soak.py`` and ``bench/soak.py``. One traced echo server and traced
clients on one loop, the OpenTelemetry SDK behind both (``_chaos.telemetry_stack``: in-memory metric
reader, every span sampled). Connections run in waves of ``concurrency``; each client writes a few bytes
(1-256, varying), reads the echo, and ends one of three ways (client close, client abort, server close
after the echo). Afterwards:

- weak references to a sample of the app protocols, proxies and records made: all dead after
  ``gc.collect()``, and no instance of those classes at all among the gc-tracked objects;
- the registry has no live record; opened == closed, the byte totals exact;
- the SDK's ``transport.connection.active`` is 0 and ``transport.connection.opened`` is the count;
- every span started has ended;
- the traced heap (tracemalloc), measured after a warm-up wave and again at the end, grew by less
  than ``HEAP_SLACK`` bytes.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import weakref
from dataclasses import dataclass, field
from typing import Any

import _chaos

import traced_transport as tt

SERVER, CLIENT = "soak", "soak-client"
# 10,000 connections make 20,000 records, proxies and protocols: a leak of even 4 bytes per
# connection side (no Python object is smaller than 16) is 80 KB, over the limit. Measured growth
# after the two warm-up waves: +14 KB on asyncio (its fd -> transport map resizing), -2 KB on
# uvloop, so 64 KiB leaves a 4x margin for allocator noise.
HEAP_SLACK = 64 * 1024


class EchoServer(asyncio.Protocol):
    def __init__(self, tracker: Tracker) -> None:
        tracker.track(self)
        self.tracker = tracker
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.tracker.track(transport)
        self.tracker.track(transport.traced_record)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        if data[-1:] == b"!":  # the client asks the server to close
            self.transport.close()

    def connection_lost(self, exc: Any) -> None:
        self.transport = None  # as a careful app does; the proxy must not need it
        self.tracker.server_lost()


class Client(asyncio.Protocol):
    def __init__(self, tracker: Tracker, want: int) -> None:
        tracker.track(self)
        loop = asyncio.get_running_loop()
        self.want = want
        self.got = 0
        self.echoed = loop.create_future()
        self.lost = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.want and not self.echoed.done():
            self.echoed.set_result(None)

    def connection_lost(self, exc: Any) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        if not self.echoed.done():
            self.echoed.set_result(None)


class Tracker:
    """Weak references to a sample of the objects made (every ``SAMPLE``-th connection's), in a list
    allocated up front so that the tracking itself does not grow the heap being measured; the
    end-of-run check also scans every gc-tracked object for instances of the classes involved."""

    SAMPLE = 20

    def __init__(self, capacity: int) -> None:
        self.refs: list = [None] * (capacity // self.SAMPLE * 6 + 64)
        self.n_refs = 0
        self.made = 0
        self.lost = 0
        self._waiter: Any = None

    def track(self, obj: Any) -> None:
        self.made += 1
        if (self.made // 5) % self.SAMPLE == 0 and self.n_refs < len(self.refs):
            self.refs[self.n_refs] = weakref.ref(obj)
            self.n_refs += 1

    def alive(self) -> list:
        return [o for o in (r() for r in self.refs[: self.n_refs]) if o is not None]

    def server_lost(self) -> None:
        self.lost += 1
        w = self._waiter
        if w is not None and self.lost >= w[0] and not w[1].done():
            w[1].set_result(None)

    async def servers_lost(self, n: int) -> None:
        """Clients see their end first: wait for the server side of ``n`` connections to end too."""
        if self.lost >= n:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiter = (n, fut)
        await asyncio.wait_for(fut, 30)
        self._waiter = None


def instances() -> dict:
    """Every live object of the classes a connection makes, by class name (gc-tracked objects)."""
    from traced_transport.datapath.proxy import TracedTransport

    kinds = (TracedTransport, tt.ConnectionRecord, EchoServer, Client)
    out: dict = {}
    for o in gc.get_objects():
        if isinstance(o, kinds):
            out[type(o).__name__] = out.get(type(o).__name__, 0) + 1
    return out


@dataclass
class SoakResult:
    connections: int = 0
    bytes_each_way: int = 0
    seconds: float = 0.0
    heap_before: int = 0
    heap_after: int = 0
    objects_tracked: int = 0
    leaked_objects: int = 0
    problems: list = field(default_factory=list)

    @property
    def heap_growth(self) -> int:
        return self.heap_after - self.heap_before


async def soak(connections: int, concurrency: int, warmup: int = 0) -> SoakResult:
    loop = asyncio.get_running_loop()
    # Two full waves first: the last wave's finished tasks are alive at both measurements, and the
    # loop's tables (asyncio's fd -> transport map) and our caches reach their working size.
    warmup = warmup or 2 * concurrency
    telemetry, registry, reader, processor = _chaos.telemetry_stack()
    # Records of earlier connections in this process (other tests') may still sit in a registry's queue
    # of ended records until a reader folds them: count only what this soak leaves beyond them.
    tt.default_registry.snapshot()
    gc.collect()
    baseline = instances()
    tracker = Tracker(connections + warmup)
    server = await loop.create_server(
        tt.traced(lambda: EchoServer(tracker), name=SERVER, observer=telemetry), "127.0.0.1", 0, backlog=4096
    )  # no SYN dropped (1 s retry)
    port = server.sockets[0].getsockname()[1]
    client_factory = tt.traced(Client, name=CLIENT, side="client", observer=telemetry)
    sent = [0]

    async def one(i: int) -> None:
        size = 1 + (i * 37) % 256
        transport, proto = await loop.create_connection(lambda: client_factory(tracker, size), "127.0.0.1", port)  # noqa: F821 (deleted after the last call)
        tracker.track(transport)
        style = i % 3
        payload = bytes([65 + i % 26]) * (size - 1) + (b"!" if style == 2 else b".")
        transport.write(payload)
        sent[0] += size
        await asyncio.wait_for(proto.echoed, 20)
        if style == 0:
            transport.close()
        elif style == 1:
            transport.abort()
        await asyncio.wait_for(proto.lost, 20)

    async def waves(start: int, count: int) -> None:
        for base in range(start, start + count, concurrency):
            await asyncio.gather(*(one(i) for i in range(base, min(base + concurrency, start + count))))  # noqa: F821 (deleted after the last call)

    def settle() -> int:
        # Hand pending histogram values to the SDK and drop the 50 ms totals cache, then measure.
        reader.get_metrics_data()
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    result = SoakResult(connections=connections)
    await waves(0, warmup)
    await tracker.servers_lost(warmup)
    result.heap_before = settle()
    started = loop.time()
    await waves(warmup, connections)
    await tracker.servers_lost(warmup + connections)
    result.seconds = loop.time() - started
    server.close()
    await server.wait_closed()
    total = warmup + connections
    result.bytes_each_way = sent[0]
    del one, waves, client_factory
    settle()
    result.objects_tracked = tracker.n_refs
    alive = tracker.alive()
    tracker.refs[:] = [None] * len(tracker.refs)  # the sample's weakrefs are the harness's, not a leak
    result.heap_after = settle()
    left = {k: n - baseline.get(k, 0) for k, n in instances().items() if n > baseline.get(k, 0)}
    result.leaked_objects = len(alive) + sum(left.values())

    p = result.problems
    if alive:
        p.append(
            f"{len(alive)} sampled protocols/proxies/records still alive after gc: "
            f"{sorted({type(o).__name__ for o in alive})}"
        )
    if left:
        p.append(f"still alive after gc: {left}")
    if registry.live():
        p.append(f"{len(registry.live())} records still live in the registry")
    for name in (SERVER, CLIENT):
        t = registry.totals(name)
        if (t.opened, t.closed, t.active, t.rx, t.tx) != (total, total, 0, sent[0], sent[0]):
            p.append(f"{name} totals {t} != opened/closed {total}, bytes {sent[0]}")
    points = _chaos.metric_points(reader)
    for name in (SERVER, CLIENT):
        if points.get(("transport.connection.active", name)) != 0:
            p.append(f"{name}: active gauge {points.get(('transport.connection.active', name))}")
        if points.get(("transport.connection.opened", name)) != total:
            p.append(f"{name}: opened counter {points.get(('transport.connection.opened', name))} != {total}")
        if points.get(("transport.sent", name)) != sent[0]:
            p.append(f"{name}: sent counter {points.get(('transport.sent', name))} != {sent[0]}")
    if not processor.started == processor.ended == 2 * total:
        p.append(f"spans started {processor.started}, ended {processor.ended}, expected {2 * total}")
    if result.heap_growth > HEAP_SLACK:
        p.append(f"heap grew by {result.heap_growth} bytes (limit {HEAP_SLACK})")
    return result
