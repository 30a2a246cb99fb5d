"""Connection spans decided at close: the span policy, and spans equal to the eager ones."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from _helpers import Collect, closed, tcp_pair
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import traced_transport as tt
from traced_transport import report as _safety
from traced_transport.datapath.extra import snapshot_extra
from traced_transport.telemetry.policy import DEFAULT, ENV, SpanPolicy, span_policy


class CountingProvider(TracerProvider):
    """A real SDK provider whose tracers count start_span calls (every span call starts there)."""

    def __init__(self) -> None:
        super().__init__()
        self.exporter = InMemorySpanExporter()
        self.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.starts = 0

    def get_tracer(self, *args, **kwargs):
        tracer = super().get_tracer(*args, **kwargs)
        provider = self

        class Counting:
            def start_span(self, *a, **kw):
                provider.starts += 1
                return tracer.start_span(*a, **kw)

            def __getattr__(self, name):
                raise AssertionError(f"unexpected tracer call {name}")

        return Counting()

    def spans(self):
        return self.exporter.get_finished_spans()


class FanOut:
    """One group's records to several observers, each with its own per-connection state."""

    wants_event_times = True
    parent_context = False

    def __init__(self, *observers) -> None:
        self.observers = observers
        self.states: dict[int, list] = {}

    def _each(self, hook, rec, *args) -> None:
        states = self.states.setdefault(id(rec), [None] * len(self.observers))
        for i, observer in enumerate(self.observers):
            rec.state = states[i]
            getattr(observer, hook)(rec, *args)
            states[i] = rec.state
        rec.state = None

    def on_open(self, rec, transport):
        self._each("on_open", rec, transport)

    def on_event(self, rec, name, seconds):
        self._each("on_event", rec, name, seconds)

    def on_tls(self, rec, transport):
        self._each("on_tls", rec, transport)

    def on_close(self, rec, exc):
        self._each("on_close", rec, exc)


async def _clean(wrap_server, pause: bool = False) -> None:
    server, s_app, c_tr, c_app = await tcp_pair(wrap_server=wrap_server)
    if pause:
        s_app.transport.pause_reading()
        s_app.transport.resume_reading()
    c_tr.write(b"abc")
    await s_app.wait_bytes(3)
    c_tr.close()
    await s_app.lost
    await closed(server)


async def _aborted(wrap_server) -> None:
    server, s_app, c_tr, c_app = await tcp_pair(wrap_server=wrap_server)
    s_app.transport.abort()
    await s_app.lost
    await c_app.lost
    await closed(server)


def _accepting():
    """A protocol factory for one connection, and a future of the app protocol it made."""
    accepted = asyncio.get_running_loop().create_future()

    def factory():
        app = Collect()
        accepted.set_result(app)
        return app

    return factory, accepted


async def _reset(wrap_server) -> None:
    loop = asyncio.get_running_loop()
    factory, accepted = _accepting()
    server = await loop.create_server(wrap_server(factory), "127.0.0.1", 0)
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, server.sockets[0].getsockname())
    s_app = await accepted
    await s_app.made
    await loop.sock_sendall(sock, b"abc")
    await s_app.wait_bytes(3)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    exc = await s_app.lost
    assert isinstance(exc, ConnectionResetError)
    await closed(server)


SCENARIOS = {"clean": _clean, "paused": lambda w: _clean(w, pause=True), "aborted": _aborted, "reset": _reset}


def _run_policy(run, policy, scenario, where="telemetry"):
    provider = CountingProvider()
    telemetry = tt.Telemetry(
        tt.Registry(), tracer_provider=provider, span_policy=policy if where == "telemetry" else "none"
    )
    wrap = lambda f: tt.traced(  # noqa: E731
        f, name="s", observer=telemetry, span_policy=policy if where == "traced" else None
    )
    run(SCENARIOS[scenario], wrap)
    return provider


# (policy, scenario) -> whether the connection's span is kept
CASES = [
    ("all", "clean", True),
    ("none", "clean", False),
    ("none", "reset", False),
    ("errors", "clean", False),
    ("errors", "paused", False),
    ("errors", "aborted", True),
    ("errors", "reset", True),
    ("slower_than=0", "clean", True),
    ("slower_than=60", "clean", False),
    ("slower_than=60", "reset", False),
    ("paused_longer_than=0", "paused", True),
    ("paused_longer_than=0", "clean", False),
    ("paused_longer_than=60", "paused", False),
    ("ratio=1", "clean", True),
    ("ratio=0", "clean", False),
    ("errors,slower_than=60,ratio=0", "reset", True),
    ("errors,slower_than=60", "clean", False),
    (DEFAULT, "clean", False),
    (DEFAULT, "paused", False),
    (DEFAULT, "reset", True),
]


@pytest.mark.parametrize("policy,scenario,kept", CASES)
def test_policy_keeps_or_drops(run, policy, scenario, kept):
    provider = _run_policy(run, policy, scenario)
    if kept:
        assert provider.starts == 1
        (span,) = provider.spans()
        assert span.name == "s connection"
    else:
        # A dropped connection makes no SDK span call at all.
        assert provider.starts == 0 and provider.spans() == ()


@pytest.mark.parametrize("policy,scenario,kept", [("errors", "reset", True), ("none", "reset", False)])
def test_traced_policy_overrides_telemetry(run, policy, scenario, kept):
    provider = _run_policy(run, policy, scenario, where="traced")
    assert provider.starts == (1 if kept else 0)


def test_default_policy_from_environment(run, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert span_policy() == SpanPolicy(DEFAULT)
    monkeypatch.setenv(ENV, "errors,ratio=0.5")
    assert tt.Telemetry(tt.Registry(), tracer_provider=TracerProvider()).span_policy == SpanPolicy("ratio=0.5,errors")
    monkeypatch.setenv(ENV, "errors,slower=5")
    with pytest.raises(ValueError, match=f"{ENV}: .*unknown condition 'slower=5'"):
        tt.Telemetry(tt.Registry(), tracer_provider=TracerProvider())


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "expected"),
        ("errors,", "expected"),
        ("sometimes", "unknown condition"),
        ("ratio=2", "between 0 and 1"),
        ("ratio=half", "needs a number"),
        ("slower_than=-1", ">= 0"),
        ("slower_than=nan", "needs a number"),
        ("none,errors", "cannot be combined"),
        ("errors=1", "unknown condition"),
    ],
)
def test_bad_policies_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        SpanPolicy(text)
    with pytest.raises(ValueError, match=message):
        tt.traced(Collect, name="s", registry=tt.Registry(), span_policy=text)


def test_policy_parsing():
    p = SpanPolicy(" errors , slower_than=2.5,paused_longer_than=1, ratio=0.01 ")
    assert (p.errors, p.slower_than, p.paused_longer_than, p.ratio, p.all) == (True, 2.5, 1.0, 0.01, False)
    assert SpanPolicy("none").keeps_nothing and SpanPolicy("ratio=0").keeps_nothing
    assert not SpanPolicy("all").keeps_nothing


def _span_view(span) -> dict:
    return {
        "name": span.name,
        "kind": span.kind,
        "parent": span.parent,
        "attributes": dict(span.attributes),
        "events": [(e.name, dict(e.attributes), e.timestamp) for e in span.events],
        "status": (span.status.status_code, span.status.description),
        "start_time": span.start_time,
        "end_time": span.end_time,
    }


@pytest.mark.parametrize("scenario", ["clean", "paused", "aborted", "reset"])
def test_span_built_at_close_equals_the_eager_one(run, scenario):
    eager_provider, deferred_provider = CountingProvider(), CountingProvider()
    eager = tt.Telemetry(tt.Registry(), tracer_provider=eager_provider, parent_context=True)
    deferred = tt.Telemetry(tt.Registry(), tracer_provider=deferred_provider, span_policy="all")
    fan = FanOut(eager, deferred)
    run(SCENARIOS[scenario], lambda f: tt.traced(f, name="s", observer=fan, registry=tt.Registry()))
    (eager_span,) = eager_provider.spans()
    (deferred_span,) = deferred_provider.spans()
    view = _span_view(deferred_span)
    assert view == _span_view(eager_span)
    # And they say what happened.
    names = [e[0] for e in view["events"]]
    if scenario in ("clean", "paused"):
        assert names[-1] == "transport.eof" and view["attributes"]["transport.close_reason"] == "eof"
    if scenario == "paused":
        assert names[:2] == ["transport.reading.paused", "transport.reading.resumed"]
    if scenario == "reset":
        assert names == ["exception"] and view["attributes"]["error.type"] == "ConnectionResetError"
    assert view["start_time"] < view["end_time"]
    assert view["attributes"]["network.peer.address"] == "127.0.0.1"


def test_client_connection_span_keeps_the_parent_it_opened_in(run):
    provider = CountingProvider()
    telemetry = tt.Telemetry(tt.Registry(), tracer_provider=provider, span_policy="all")
    tracer = TracerProvider().get_tracer("app")

    async def main():
        with tracer.start_as_current_span("request") as request:
            server, s_app, c_tr, c_app = await tcp_pair(
                wrap_client=lambda f: tt.traced(f, name="c", side="client", observer=telemetry)
            )
        c_tr.close()
        await s_app.lost
        await c_app.lost
        await closed(server)
        return request.get_span_context()

    parent = run(main)
    (span,) = provider.spans()
    assert span.name == "c connection" and span.parent.span_id == parent.span_id
    assert span.context.trace_id == parent.trace_id


def test_server_groups_skip_on_open_and_dropped_connections_cost_no_span_call(run):
    provider = CountingProvider()
    telemetry = tt.Telemetry(tt.Registry(), tracer_provider=provider)  # the default policy
    server_group = tt.traced(Collect, name="s", observer=telemetry).group
    assert server_group.on_open is None and not server_group.eof_event and server_group.timed_eof
    client_group = tt.traced(Collect, name="c", side="client", observer=telemetry).group
    assert client_group.on_open is not None
    run(SCENARIOS["paused"], lambda f: tt.traced(f, name="s", observer=telemetry, span_policy=DEFAULT))
    assert provider.starts == 0


def test_a_failing_span_at_close_still_records_the_duration(run):
    class Broken(CountingProvider):
        def get_tracer(self, *args, **kwargs):
            class Raising:
                def start_span(self, *a, **kw):
                    raise RuntimeError("SDK broke")

            return Raising()

    telemetry = tt.Telemetry(tt.Registry(), tracer_provider=Broken(), span_policy="all")
    run(SCENARIOS["clean"], lambda f: tt.traced(f, name="s", observer=telemetry))
    _, points = telemetry.histograms["transport.connection.duration"].points()
    assert sum(p.count for p in points if p.attributes["transport.name"] == "s") == 1


async def _tls(wrap_server, server_ctx, client_ctx) -> None:
    server, s_app, c_tr, c_app = await tcp_pair(wrap_server=wrap_server, ssl_server=server_ctx, ssl_client=client_ctx)
    c_tr.write(b"abc")
    await s_app.wait_bytes(3)
    c_tr.close()
    await s_app.lost
    await closed(server)


async def _unix(wrap_server, path) -> None:
    loop = asyncio.get_running_loop()
    factory, accepted = _accepting()
    server = await loop.create_unix_server(wrap_server(factory), path)
    c_tr, _ = await loop.create_unix_connection(Collect, path)
    s_app = await accepted
    await s_app.made
    c_tr.write(b"abc")
    await s_app.wait_bytes(3)
    c_tr.close()
    await s_app.lost
    await closed(server)


def _typed_items(span) -> list:
    return [(k, type(v), v) for k, v in span.attributes.items()]


async def _client(wrap_client) -> None:
    server, s_app, c_tr, c_app = await tcp_pair(wrap_client=wrap_client)
    c_tr.write(b"abc")
    await s_app.wait_bytes(3)
    s_app.transport.close()
    await c_app.lost
    await closed(server)


@pytest.mark.parametrize("scenario", ["clean", "paused", "aborted", "reset", "tls", "unix", "client"])
def test_span_built_at_close_has_the_eager_ones_attributes_in_order_and_type(
    run, scenario, server_ctx, client_ctx, tmp_path
):
    # The span built at close takes a shorter road for a plain connection: it
    # must still say the same thing, key for key, in the same order, with the same types.
    eager_provider, deferred_provider = CountingProvider(), CountingProvider()
    eager = tt.Telemetry(tt.Registry(), tracer_provider=eager_provider, parent_context=True)
    deferred = tt.Telemetry(tt.Registry(), tracer_provider=deferred_provider, span_policy="all")
    fan = FanOut(eager, deferred)
    wrap = lambda f: tt.traced(f, name="s", observer=fan, registry=tt.Registry())  # noqa: E731
    if scenario == "tls":
        run(_tls, wrap, server_ctx, client_ctx)
    elif scenario == "unix":
        run(_unix, wrap, str(tmp_path / "s.sock"))
    elif scenario == "client":
        run(_client, lambda f: tt.traced(f, name="s", side="client", observer=fan, registry=tt.Registry()))
    else:
        run(SCENARIOS[scenario], wrap)
    (eager_span,) = eager_provider.spans()
    (deferred_span,) = deferred_provider.spans()
    assert _typed_items(deferred_span) == _typed_items(eager_span)
    assert _span_view(deferred_span) == _span_view(eager_span)
    attributes = deferred_span.attributes
    if scenario == "tls":
        assert attributes["tls.established"] is True and attributes["tls.protocol.name"] == "tls"
    elif scenario == "unix":
        assert attributes["network.transport"] == "unix" and attributes["network.local.address"].endswith("s.sock")
    elif scenario == "client":
        assert deferred_span.kind == SpanKind.CLIENT and "server.port" not in attributes
    else:
        assert attributes["network.peer.address"] == "127.0.0.1" and type(attributes["network.peer.port"]) is int


class KeepingProvider(CountingProvider):
    """An SDK that keeps the very dicts it is given and scribbles on them afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.given: list[dict] = []

    def get_tracer(self, *args, **kwargs):
        tracer = TracerProvider.get_tracer(self, *args, **kwargs)
        given = self.given

        class Span:
            def __init__(self, span) -> None:
                self.span = span

            def set_attributes(self, attributes) -> None:
                self.span.set_attributes(attributes)
                given.append(attributes)

            def __getattr__(self, name):
                return getattr(self.span, name)

        class Tracer:
            def start_span(self, *a, **kw):
                return Span(tracer.start_span(*a, **kw))

        return Tracer()


def test_connections_of_one_key_get_their_own_peers_and_the_cached_part_stays_intact(run):
    provider = KeepingProvider()
    telemetry = tt.Telemetry(tt.Registry(), tracer_provider=provider, span_policy="all")
    peers = []

    async def main():
        loop = asyncio.get_running_loop()
        lost = []

        class App(Collect):
            def connection_made(self, transport):
                super().connection_made(transport)
                lost.append(self.lost)

        server = await loop.create_server(tt.traced(App, name="s", observer=telemetry), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        # Loopback answers on all of 127/8: two source addresses, one listener, one ConnKey.
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.1"):
            c_tr, _ = await loop.create_connection(Collect, "127.0.0.1", port, local_addr=(source, 0))
            peers.append(c_tr.get_extra_info("sockname")[:2])
            c_tr.close()
            await lost[-1]
            if len(provider.given) == 1:
                # Whatever the SDK does with the dict it was given must not reach the next span.
                for attributes in provider.given:
                    attributes.clear()
                    attributes["transport.name"] = "scribbled"
        await closed(server)

    run(main)
    spans = provider.spans()
    assert len(spans) == 3
    assert [(s.attributes["network.peer.address"], s.attributes["network.peer.port"]) for s in spans] == peers
    for span in spans:
        a = span.attributes
        assert (a["transport.name"], a["transport.side"], a["network.transport"], a["network.type"]) == (
            "s",
            "server",
            "tcp",
            "ipv4",
        )
        assert a["server.port"] == a["network.local.port"] and a["network.local.address"] == "127.0.0.1"
    assert len({id(d) for d in provider.given}) == 3


class _AskedTransport:
    """Records what it is asked; ``fail`` names the fields whose reading raises."""

    def __init__(self, fail=()) -> None:
        self.asked: list[str] = []
        self.fail = fail

    def get_extra_info(self, name, default=None):
        self.asked.append(name)
        if name in self.fail:
            raise OSError(f"no {name}")
        return {"peername": ("10.0.0.1", 5), "sockname": ("10.0.0.2", 6)}.get(name, default)


def test_extra_snapshot_asks_no_ssl_object_of_a_connection_known_to_be_plain():
    plain = _AskedTransport()
    assert snapshot_extra(plain, tls=False) == {"peername": ("10.0.0.1", 5), "sockname": ("10.0.0.2", 6)}
    assert plain.asked == ["peername", "sockname"]
    maybe = _AskedTransport()
    assert snapshot_extra(maybe) == {"peername": ("10.0.0.1", 5), "sockname": ("10.0.0.2", 6)}
    assert maybe.asked == ["peername", "sockname", "ssl_object"]


def test_extra_snapshot_keeps_what_it_could_read(caplog):
    _safety.reset_rate_limit()
    with caplog.at_level("WARNING", logger="traced_transport"):
        assert snapshot_extra(_AskedTransport(fail=("peername",)), tls=False) == {"sockname": ("10.0.0.2", 6)}
    assert [r.getMessage() for r in caplog.records if "peername" in r.getMessage()]
    assert not [r.getMessage() for r in caplog.records if "sockname" in r.getMessage()]


@pytest.mark.parametrize("cap", [0, 1, 2])
@pytest.mark.parametrize("scenario", ["clean", "paused"])
def test_span_built_at_close_caps_events_as_the_eager_one(run, scenario, cap):
    eager_provider, deferred_provider = CountingProvider(), CountingProvider()
    eager = tt.Telemetry(tt.Registry(), tracer_provider=eager_provider, parent_context=True, max_span_events=cap)
    deferred = tt.Telemetry(tt.Registry(), tracer_provider=deferred_provider, span_policy="all", max_span_events=cap)
    fan = FanOut(eager, deferred)
    run(SCENARIOS[scenario], lambda f: tt.traced(f, name="s", observer=fan, registry=tt.Registry()))
    (eager_span,) = eager_provider.spans()
    (deferred_span,) = deferred_provider.spans()
    assert _typed_items(deferred_span) == _typed_items(eager_span)
    assert _span_view(deferred_span) == _span_view(eager_span)
    assert len(deferred_span.events) <= cap
