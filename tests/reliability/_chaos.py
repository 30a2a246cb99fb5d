"""Randomized sessions on real loopback TCP connections, and the oracle that checks each one.

Shared by ``tests/reliability/test_chaos.py`` (CI size) and ``bench/chaos.py`` (>= 100,000 sessions).

A *session* is one connection between a traced server-side "app" and a traced client-side "peer",
driven by a list of operations and ended one way:

- ``("write", n)`` / ``("writelines", [n, ...])``: the app writes n bytes of its stream;
- ``("peer_write", n)``: the peer writes n bytes of its stream to the app;
- ``("storm", k)`` / ``("peer_storm", k)``: k alternating ``pause_reading``/``resume_reading`` calls;
- ``("set_protocol", kind)``: the app swaps in a fresh protocol, plain or buffered (the read path changes);
- ``("start_tls",)``: both sides upgrade to TLS (after a drain; once per session);
- ``("drain",)``: both sides resume reading and wait until each has every byte the other wrote;
- ``("yield",)``: let the loop run one step (interleaves the concurrent sessions).

Ends: ``close``, ``write_eof`` (``close`` over TLS, which cannot half-close), ``peer_close`` (graceful:
everything arrives), ``abort`` (app), ``peer_reset`` (the peer aborts with SO_LINGER 0, so the app
gets a TCP reset).

The oracle, per session: each side received exactly a prefix of the other's stream, in order, and all
of it after a graceful end; each side's record counted exactly what its app wrote (``tx``) and what its
protocol was handed (``rx``); read pauses are the app's pause transitions; write pauses are the
``pause_writing`` calls the app's protocol saw; the close reasons are the documented ones. Several
sessions of a batch run concurrently on one loop.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Optional

from hypothesis import strategies as st

import traced_transport as tt

APP_NAME = "chaos"
PEER_NAME = "chaos-peer"
MAX_WRITE = 200_000
# Two streams with different periods: a byte from the wrong stream or the wrong place shows.
_APP_PERIOD, _PEER_PERIOD = 251, 241
_APP_PATTERN = bytes(range(_APP_PERIOD)) * (MAX_WRITE // _APP_PERIOD + 2)
_PEER_PATTERN = bytes(range(7, 7 + _PEER_PERIOD)) * (MAX_WRITE // _PEER_PERIOD + 2)
WAIT_S = 20.0


def stream(pattern_period: int, pattern: bytes, offset: int, n: int) -> bytes:
    """Bytes ``offset`` to ``offset + n`` of a stream that repeats with ``pattern_period``."""
    start = offset % pattern_period
    if start + n > len(pattern):  # a whole session's stream, for the oracle
        pattern = pattern * ((start + n) // len(pattern) + 1)
    return pattern[start : start + n]


def app_stream(offset: int, n: int) -> bytes:
    return stream(_APP_PERIOD, _APP_PATTERN, offset, n)


def peer_stream(offset: int, n: int) -> bytes:
    return stream(_PEER_PERIOD, _PEER_PATTERN, offset, n)


# -- strategies -----------------------------------------------------------------------------------------
sizes = st.one_of(st.integers(0, 64), st.integers(0, 4096), st.integers(0, MAX_WRITE))
op = st.one_of(
    st.tuples(st.just("write"), sizes),
    st.tuples(st.just("writelines"), st.lists(st.integers(0, 20_000), max_size=6)),
    st.tuples(st.just("peer_write"), sizes),
    st.tuples(st.just("storm"), st.integers(1, 9)),
    st.tuples(st.just("peer_storm"), st.integers(1, 9)),
    st.tuples(st.just("set_protocol"), st.sampled_from(["plain", "buffered"])),
    st.tuples(st.just("start_tls")),
    st.tuples(st.just("drain")),
    st.tuples(st.just("yield")),
)
ENDS = ("close", "write_eof", "peer_close", "abort", "peer_reset")
limits = st.one_of(st.none(), st.tuples(st.integers(1, 1 << 16), st.integers(0, 1 << 15)))


@dataclass
class Session:
    ops: list
    end: str
    limits: Optional[tuple] = None

    def __repr__(self) -> str:
        return f"Session(ops={self.ops!r}, end={self.end!r}, limits={self.limits!r})"


sessions = st.builds(Session, st.lists(op, max_size=14), st.sampled_from(ENDS), limits)
batches = st.lists(sessions, min_size=1, max_size=8)


# -- the two ends -----------------------------------------------------------------------------------------------
class Sink:
    """One side's app state, shared by whichever protocol object is installed now."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: Any = None
        self.data = bytearray()
        self.lost = loop.create_future()
        self.eof = False
        self.write_pauses_seen = 0  # pause_writing calls the protocol got
        self.waiter: Optional[tuple[int, asyncio.Future]] = None

    def received(self, data: Any) -> None:
        self.data += data
        w = self.waiter
        if w is not None and len(self.data) >= w[0] and not w[1].done():
            w[1].set_result(None)

    async def wait_bytes(self, n: int) -> None:
        if len(self.data) >= n:
            return
        fut = self.loop.create_future()
        self.waiter = (n, fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), WAIT_S)
        finally:
            self.waiter = None


class _Common:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def connection_made(self, transport: Any) -> None:
        self.sink.transport = transport

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if not self.sink.lost.done():
            self.sink.lost.set_result(exc)

    def eof_received(self) -> None:
        self.sink.eof = True
        return None  # close our side too

    def pause_writing(self) -> None:
        self.sink.write_pauses_seen += 1

    def resume_writing(self) -> None:
        pass


class Plain(_Common, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        self.sink.received(data)


class Buffered(_Common, asyncio.BufferedProtocol):
    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.buffer = bytearray(8192)
        # A memoryview, not the bytearray: asyncio's SSL read path fills buf[offset:], which for a
        # bytearray is a copy (the bytes would be lost; unwrapped asyncio does the same).
        self.view = memoryview(self.buffer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.sink.received(self.buffer[:nbytes])


KINDS = {"plain": Plain, "buffered": Buffered}


class Side:
    """One end as the session sees it: what it wrote, its own model of pause transitions."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.sent = 0
        self.paused = False
        self.pause_transitions = 0

    @property
    def transport(self) -> Any:
        return self.sink.transport

    def pause(self) -> None:
        self.transport.pause_reading()
        if not self.paused:
            self.paused = True
            self.pause_transitions += 1

    def resume(self) -> None:
        self.transport.resume_reading()
        self.paused = False

    def storm(self, k: int) -> None:
        for i in range(k):
            self.pause() if i % 2 == 0 else self.resume()


# -- running ------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    app_rx: int = 0
    app_tx: int = 0
    peer_rx: int = 0
    peer_tx: int = 0
    tls: bool = False
    end: str = ""
    app_reason: Optional[str] = None
    peer_reason: Optional[str] = None
    problems: list = field(default_factory=list)


class Harness:
    """A traced server on loopback; ``await harness.run_batch(sessions)`` runs them concurrently."""

    def __init__(
        self, *, registry: Any = None, observer: Any = None, server_ctx: Any = None, client_ctx: Any = None
    ) -> None:
        self.registry = registry
        self.observer = observer
        self.server_ctx = server_ctx
        self.client_ctx = client_ctx
        self.server: Any = None
        self.port = 0
        self._accepted: Optional[asyncio.Queue] = None
        self.sessions = 0
        self.bytes = 0
        self._open: set = set()  # sinks of connections not yet lost (for abort_all)

    def _kw(self) -> dict:
        kw: dict = {}
        if self.registry is not None:
            kw["registry"] = self.registry
        if self.observer is not None:
            kw["observer"] = self.observer
        return kw

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._accepted = asyncio.Queue()

        def factory():
            sink = Sink(loop)
            self._accepted.put_nowait(sink)
            return Plain(sink)

        self.server = await loop.create_server(tt.traced(factory, name=APP_NAME, **self._kw()), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def abort_all(self) -> None:
        """After a failure: abort what is still open and stop the server, so the loop can close."""
        for sink in list(self._open):
            if sink.transport is not None and not sink.lost.done():
                sink.transport.abort()
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 5)
            except asyncio.TimeoutError:
                pass

    async def _connect(self) -> tuple[Sink, Sink]:
        loop = asyncio.get_running_loop()
        peer_sink = Sink(loop)
        await loop.create_connection(
            tt.traced(lambda: Plain(peer_sink), name=PEER_NAME, side="client", **self._kw()), "127.0.0.1", self.port
        )
        app_sink = await asyncio.wait_for(self._accepted.get(), WAIT_S)
        for sink in (app_sink, peer_sink):
            self._open.add(sink)
            sink.lost.add_done_callback(lambda _f, sink=sink: self._open.discard(sink))
        return app_sink, peer_sink

    async def run_batch(self, batch: list) -> list:
        pairs = [await self._connect() for _ in batch]
        outcomes = await asyncio.gather(*(self._run(s, a, p) for s, (a, p) in zip(batch, pairs)))
        self.sessions += len(batch)
        self.bytes += sum(o.app_tx + o.peer_tx for o in outcomes)
        return outcomes

    async def _run(self, session: Session, app_sink: Sink, peer_sink: Sink) -> Outcome:
        try:
            return await self._session(session, app_sink, peer_sink)
        except BaseException:
            for sink in (app_sink, peer_sink):
                if sink.transport is not None:
                    sink.transport.abort()
            raise

    async def _session(self, session: Session, app_sink: Sink, peer_sink: Sink) -> Outcome:
        loop = asyncio.get_running_loop()
        app, peer = Side(app_sink), Side(peer_sink)
        app_rec = app.transport.traced_record
        peer_rec = peer.transport.traced_record
        out = Outcome(end=session.end)
        if session.limits is not None:
            high, low = session.limits
            app.transport.set_write_buffer_limits(high=max(high, low), low=min(high, low))
        kind = "plain"

        async def drain() -> None:
            for side in (app, peer):
                if side.paused:
                    side.resume()
            await asyncio.gather(peer_sink.wait_bytes(app.sent), app_sink.wait_bytes(peer.sent))

        for operation in session.ops:
            name = operation[0]
            if name == "write":
                app.transport.write(app_stream(app.sent, operation[1]))
                app.sent += operation[1]
            elif name == "writelines":
                chunks = []
                for n in operation[1]:
                    chunks.append(app_stream(app.sent, n))
                    app.sent += n
                app.transport.writelines(chunks)
            elif name == "peer_write":
                peer.transport.write(peer_stream(peer.sent, operation[1]))
                peer.sent += operation[1]
            elif name == "storm":
                app.storm(operation[1])
            elif name == "peer_storm":
                peer.storm(operation[1])
            elif name == "set_protocol":
                kind = operation[1]
                app.transport.set_protocol(KINDS[kind](app_sink))
                if app.transport.get_protocol().sink is not app_sink:
                    out.problems.append("get_protocol() is not the protocol just set")
            elif name == "start_tls":
                if out.tls or self.server_ctx is None:
                    continue
                await drain()
                server_side = loop.start_tls(app.transport, KINDS[kind](app_sink), self.server_ctx, server_side=True)
                client_side = loop.start_tls(
                    peer.transport, Plain(peer_sink), self.client_ctx, server_hostname="localhost"
                )
                app_sink.transport, peer_sink.transport = await asyncio.wait_for(
                    asyncio.gather(server_side, client_side), WAIT_S
                )
                out.tls = True
                if app.transport.traced_record is not app_rec or peer.transport.traced_record is not peer_rec:
                    out.problems.append("start_tls changed the record")
            elif name == "drain":
                await drain()
            else:
                await asyncio.sleep(0)

        end = session.end
        if end == "write_eof" and not app.transport.can_write_eof():
            end = "close"
        if end in ("close", "write_eof", "peer_close"):
            await drain()
            if end == "close":
                app.transport.close()
            elif end == "write_eof":
                app.transport.write_eof()
            else:
                peer.transport.close()
        elif end == "abort":
            if peer.paused:
                peer.resume()  # so that the peer notices
            app.transport.abort()
        else:  # peer_reset
            if app.paused:
                app.resume()
            sock = peer.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.transport.abort()
        await asyncio.wait_for(asyncio.gather(app_sink.lost, peer_sink.lost), WAIT_S)

        # -- the oracle ------------------------------------------------------------------------------------
        p = out.problems
        graceful = end in ("close", "write_eof", "peer_close")
        got_app, got_peer = bytes(app_sink.data), bytes(peer_sink.data)
        if graceful:
            if got_peer != app_stream(0, app.sent):
                p.append(f"peer received {len(got_peer)} bytes, not the {app.sent} the app wrote (or not in order)")
            if got_app != peer_stream(0, peer.sent):
                p.append(f"app received {len(got_app)} bytes, not the {peer.sent} the peer wrote (or not in order)")
        else:
            if len(got_peer) > app.sent or got_peer != app_stream(0, len(got_peer)):
                p.append(f"peer received {len(got_peer)} bytes that are not a prefix of the app's {app.sent}")
            if len(got_app) > peer.sent or got_app != peer_stream(0, len(got_app)):
                p.append(f"app received {len(got_app)} bytes that are not a prefix of the peer's {peer.sent}")
        counts = {
            "app tx": (app_rec.tx, app.sent),
            "app rx": (app_rec.rx, len(got_app)),
            "peer tx": (peer_rec.tx, peer.sent),
            "peer rx": (peer_rec.rx, len(got_peer)),
            "app read_pauses": (app_rec.read_pauses, app.pause_transitions),
            "peer read_pauses": (peer_rec.read_pauses, peer.pause_transitions),
            "app write_pauses": (app_rec.write_pauses, app_sink.write_pauses_seen),
            "peer write_pauses": (peer_rec.write_pauses, peer_sink.write_pauses_seen),
        }
        for what, (recorded, actual) in counts.items():
            if recorded != actual:
                p.append(f"{what}: recorded {recorded}, actually {actual}")
        for rec in (app_rec, peer_rec):
            if rec.closed_at is None or rec.read_paused_since is not None or rec.write_paused_since is not None:
                p.append(f"record not closed cleanly: {rec!r}")
        expected = EXPECTED_REASONS[end]
        if (app_rec.close_reason, peer_rec.close_reason) not in expected:
            p.append(f"close reasons {app_rec.close_reason}/{peer_rec.close_reason}, expected one of {expected}")
        out.app_rx, out.app_tx, out.peer_rx, out.peer_tx = app_rec.rx, app_rec.tx, peer_rec.rx, peer_rec.tx
        out.app_reason, out.peer_reason = app_rec.close_reason, peer_rec.close_reason
        return out


# (app, peer) close reasons per end (README "Decisions": close reasons).
EXPECTED_REASONS = {
    "close": {("closed", "eof")},
    "write_eof": {("eof", "eof"), ("closed", "eof")},
    "peer_close": {("eof", "closed")},
    # The peer sees FIN or RST depending on whether the app had unread input when it aborted.
    # uvloop's TLS transport, on a TCP EOF without close_notify, closes without calling
    # eof_received: the peer's record sees a plain close.
    "abort": {("aborted", "eof"), ("aborted", "reset"), ("aborted", "closed")},
    # A RST arriving while the app has nothing to send: read error -> reset (EOF if the kernel
    # reports a clean end first, which loopback does not do, but is not a counting error).
    "peer_reset": {("reset", "aborted"), ("eof", "aborted")},
}


def telemetry_stack() -> tuple:
    """``(telemetry, registry, reader, processor)``: a Telemetry over the real SDK.

    Metrics go to an ``InMemoryMetricReader``; every span is sampled and ends in a processor that
    only counts starts and ends (keeping the spans would grow memory with the run).
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    class CountingProcessor(SpanProcessor):
        def __init__(self) -> None:
            self.started = self.ended = 0

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            self.started += 1

        def on_end(self, span: Any) -> None:
            self.ended += 1

    registry = tt.Registry()
    reader = InMemoryMetricReader()
    processor = CountingProcessor()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(processor)
    telemetry = tt.Telemetry(
        registry, meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=tracer_provider
    )
    return telemetry, registry, reader, processor


def metric_points(reader: Any) -> dict:
    """{(metric name, transport.name): summed value (a histogram's count)} of one collection."""
    out: dict = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, point.attributes.get("transport.name"))
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count
                    out[key] = out.get(key, 0) + value
    return out


def verify_totals(done: list, registry: Any, reader: Any, processor: Any) -> None:
    """After a run: the registry, the exported metrics and the spans agree with every session's counts."""
    app, peer = registry.totals(APP_NAME), registry.totals(PEER_NAME)
    n = len(done)
    assert (app.opened, app.closed, app.active) == (n, n, 0), app
    assert (peer.opened, peer.closed, peer.active) == (n, n, 0), peer
    assert (app.rx, app.tx) == (sum(o.app_rx for o in done), sum(o.app_tx for o in done))
    assert (peer.rx, peer.tx) == (sum(o.peer_rx for o in done), sum(o.peer_tx for o in done))
    points = metric_points(reader)
    for name, t in ((APP_NAME, app), (PEER_NAME, peer)):
        assert points[("transport.received", name)] == t.rx
        assert points[("transport.sent", name)] == t.tx
        assert points[("transport.connection.opened", name)] == n
        assert points[("transport.connection.active", name)] == 0
        assert points[("transport.connection.duration", name)] == n
    assert processor.started == processor.ended == 2 * n, (processor.started, processor.ended)
    assert not registry.live()


def check(outcomes: list, batch: list) -> None:
    problems = [(s, o.problems) for s, o in zip(batch, outcomes) if o.problems]
    assert not problems, "\n".join(f"{s!r}: {ps}" for s, ps in problems)
