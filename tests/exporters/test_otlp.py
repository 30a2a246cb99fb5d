"""OTLP export end to end: a traced echo server and client, exporters configured from OTEL_* only,
and a real OTLP receiver (HTTP/protobuf and gRPC) in the test process."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
import threading

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")
pytest.importorskip("opentelemetry.proto")

from _helpers import Collect, closed, tcp_pair
from _otlp_receiver import GRPC, HTTP, OTLPReceiver
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from traced_transport.exporters import otlp

import traced_transport as tt
from traced_transport.telemetry.telemetry import DURATION_BUCKETS

PAYLOAD = bytes(range(256)) * 37 + b"tail"  # 9476 bytes
N = len(PAYLOAD)
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
RESOURCE_ATTRIBUTES = "deployment.environment.name=test,team=net%20ops"


@pytest.fixture(scope="module")
def receiver():
    with OTLPReceiver() as r:
        yield r


@pytest.fixture
def service(monkeypatch, receiver, request):
    """A clean OTEL_* environment pointing at the receiver (HTTP), with a service name unique to the test."""
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    name = "tt-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")
    monkeypatch.setenv("OTEL_SERVICE_NAME", name)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", RESOURCE_ATTRIBUTES)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint)
    # Exports are flushed explicitly in-process; a long interval keeps them to one per flush.
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    receiver.clear()
    return name


@contextlib.contextmanager
def pipeline():
    """Providers built from otlp_components() alone, as traced_transport.exporters.sdk does; shut down on exit."""
    resource = Resource.create()
    readers, processors = otlp.otlp_components(resource)
    meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for processor in processors:
        tracer_provider.add_span_processor(processor)
    telemetry = tt.Telemetry(tt.Registry(), meter_provider=meter_provider, tracer_provider=tracer_provider)

    def flush():
        assert tracer_provider.force_flush(10_000)
        assert meter_provider.force_flush(10_000)

    telemetry.flush_exports = flush
    try:
        yield telemetry, readers, processors
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


async def echo(telemetry):
    """One echo exchange of PAYLOAD; returns (server port, client's local port) once both ends closed."""
    server, s_proto, c_transport, c_proto = await tcp_pair(
        lambda: Collect(echo=True),
        Collect,
        wrap_server=lambda f: tt.traced(f, name="echo", observer=telemetry),
        wrap_client=lambda f: tt.traced(f, name="echo-client", side="client", observer=telemetry),
    )
    port = server.sockets[0].getsockname()[1]
    client_port = c_transport.get_extra_info("sockname")[1]
    c_transport.write(PAYLOAD)
    c_transport.write_eof()
    await c_proto.wait_bytes(N)
    assert bytes(c_proto.data) == PAYLOAD
    await c_proto.lost
    await s_proto.lost
    await closed(server)
    return port, client_port


# -- expectations ------------------------------------------------------------------
def server_attrs(port):
    return {
        "transport.name": "echo",
        "transport.side": "server",
        "network.transport": "tcp",
        "network.type": "ipv4",
        "server.port": port,
    }


CLIENT_ATTRS = {
    "transport.name": "echo-client",
    "transport.side": "client",
    "network.transport": "tcp",
    "network.type": "ipv4",
}


def check_resource(resource, service):
    assert resource["service.name"] == service
    assert resource["deployment.environment.name"] == "test"
    assert resource["team"] == "net ops"
    assert resource["telemetry.sdk.language"] == "python"


def latest_points(receiver, service, name):
    """{side: point} from the latest export of ``name``."""
    metric = receiver.latest(name, service)
    return {} if metric is None else {a["transport.side"]: p for a, p in metric.points()}


def duration_points(receiver, service, temporality):
    """{side: [(attrs, point)]}: the latest export's points (cumulative) or every export's (delta)."""
    durations = [m for m in receiver.metrics(service) if m.name == "transport.connection.duration"]
    if temporality == CUMULATIVE:
        durations = durations[-1:]
    out: dict = {}
    for metric in durations:
        for attrs, point in metric.points():
            out.setdefault(attrs["transport.side"], []).append((attrs, point))
    return out


def metrics_complete(service, temporality):
    """Predicate: the exports show the whole exchange, both connections closed.

    With a periodic reader an export may catch the exchange half way, so this
    waits for the final state rather than the first export.
    """

    def check(receiver):
        received = latest_points(receiver, service, "transport.received")
        active = latest_points(receiver, service, "transport.connection.active")
        durations = duration_points(receiver, service, temporality)
        return (
            {side: p.as_int for side, p in received.items()} == {"server": N, "client": N}
            and {side: p.as_int for side, p in active.items()} == {"server": 0, "client": 0}
            and {side: sum(p.count for _, p in pts) for side, pts in durations.items()} == {"server": 1, "client": 1}
        )

    return check


def spans_arrived(service, count):
    return lambda receiver: len(receiver.spans(service)) >= count


def check_metrics(receiver, service, port, temporality=CUMULATIVE, protocol=HTTP):
    receiver.wait_for(
        metrics_complete(service, temporality),
        what=f"transport.received = {N}, no connection active, one duration, on both sides",
    )
    expected_attrs = [server_attrs(port), CLIENT_ATTRS]

    def by_side(name, kind, unit):
        metric = receiver.latest(name, service)
        assert metric is not None, name
        check_resource(metric.resource, service)
        assert metric.scope == "traced_transport"
        assert metric.request.protocol == protocol
        assert metric.kind == kind, (name, metric.kind)
        assert metric.metric.unit == unit, (name, metric.metric.unit)
        points = metric.points()
        assert sorted((p for p, _ in points), key=lambda a: a["transport.side"], reverse=True) == expected_attrs
        return metric, {attrs["transport.side"]: point for attrs, point in points}

    for name in ("transport.received", "transport.sent"):
        metric, points = by_side(name, "sum", "By")
        assert metric.data.is_monotonic
        assert metric.data.aggregation_temporality == temporality
        assert {side: p.as_int for side, p in points.items()} == {"server": N, "client": N}

    metric, points = by_side("transport.connection.opened", "sum", "{connection}")
    assert metric.data.is_monotonic
    assert {side: p.as_int for side, p in points.items()} == {"server": 1, "client": 1}

    metric, points = by_side("transport.connection.active", "sum", "{connection}")
    assert not metric.data.is_monotonic
    assert metric.data.aggregation_temporality == CUMULATIVE
    assert {side: p.as_int for side, p in points.items()} == {"server": 0, "client": 0}

    durations = [m for m in receiver.metrics(service) if m.name == "transport.connection.duration"]
    for metric in durations:
        assert metric.kind == "histogram"
        assert metric.metric.unit == "s"
        assert metric.data.aggregation_temporality == temporality
    points = duration_points(receiver, service, temporality)
    for side, expected in zip(("server", "client"), expected_attrs):
        for attrs, point in points[side]:
            assert attrs == expected  # no error.type: both closed cleanly
            assert list(point.explicit_bounds) == [float(b) for b in DURATION_BUCKETS]
            assert len(point.bucket_counts) == len(DURATION_BUCKETS) + 1
            assert sum(point.bucket_counts) == point.count
            assert 0 <= point.sum < 10
        assert sum(point.count for _, point in points[side]) == 1


def check_spans(receiver, service, port, client_port, protocol=HTTP):
    receiver.wait_for(spans_arrived(service, 2), what="two connection spans")
    spans = {s.name: s for s in receiver.spans(service)}
    assert sorted(spans) == ["echo connection", "echo-client connection"]
    server, client = spans["echo connection"], spans["echo-client connection"]
    for s in (server, client):
        check_resource(s.resource, service)
        assert s.scope == "traced_transport"
        assert s.request.protocol == protocol
        assert s.span.end_time_unix_nano >= s.span.start_time_unix_nano > 0
        assert s.span.status.code != trace_pb2.Status.STATUS_CODE_ERROR
        assert s.attributes["network.transport"] == "tcp"
        assert s.attributes["network.type"] == "ipv4"
        assert s.attributes["network.peer.address"] == "127.0.0.1"
        assert s.attributes["network.local.address"] == "127.0.0.1"
        assert s.attributes["transport.received"] == N
        assert s.attributes["transport.sent"] == N
        assert s.attributes["transport.close_reason"] in ("eof", "closed")
        assert "error.type" not in s.attributes
    assert server.span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert client.span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert server.attributes["transport.name"] == "echo"
    assert server.attributes["transport.side"] == "server"
    assert server.attributes["server.port"] == port
    assert server.attributes["network.local.port"] == port
    assert server.attributes["network.peer.port"] == client_port
    assert client.attributes["transport.side"] == "client"
    assert client.attributes["network.peer.port"] == port
    assert client.attributes["network.local.port"] == client_port
    assert "server.port" not in client.attributes


# -- end to end, in process --------------------------------------------------------------
@pytest.mark.parametrize("protocol", [HTTP, GRPC])
def test_echo_exports_spans_and_metrics(protocol, service, receiver, run, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint(protocol))
    with pipeline() as (telemetry, readers, processors):
        assert len(readers) == 1 and len(processors) == 1
        port, client_port = run(echo, telemetry)
        telemetry.flush_exports()
        check_spans(receiver, service, port, client_port, protocol)
        check_metrics(receiver, service, port, protocol=protocol)
    assert not receiver.rejected


@pytest.mark.parametrize("protocol", [HTTP, GRPC])
def test_headers_and_gzip(protocol, service, receiver, run, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint(protocol))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,x-token=a%20b")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    with pipeline() as (telemetry, _, _):
        port, client_port = run(echo, telemetry)
        telemetry.flush_exports()
        check_spans(receiver, service, port, client_port, protocol)
        check_metrics(receiver, service, port, protocol=protocol)
    requests = receiver.requests
    assert {r.signal for r in requests} == {"traces", "metrics"}
    for r in requests:
        assert r.headers["x-tenant"] == "acme"
        assert r.headers["x-token"] == "a b"
        if protocol == HTTP:
            assert r.content_encoding == "gzip"


def test_per_signal_endpoints_and_protocols(service, receiver, run, monkeypatch):
    """Traces over gRPC, metrics over HTTP to a signal-specific URL (used as is)."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", GRPC)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.grpc_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", receiver.http_endpoint + "/v1/metrics")
    assert otlp.otlp_enabled()
    with pipeline() as (telemetry, _, _):
        port, client_port = run(echo, telemetry)
        telemetry.flush_exports()
        check_spans(receiver, service, port, client_port, GRPC)
        check_metrics(receiver, service, port, protocol=HTTP)


def test_delta_temporality_preference(service, receiver, run, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    with pipeline() as (telemetry, _, _):
        port, _ = run(echo, telemetry)
        telemetry.flush_exports()
        check_metrics(receiver, service, port, temporality=DELTA)


@pytest.mark.parametrize(
    "sampler, arg, expected",
    [
        ("always_on", None, 2),
        ("always_off", None, 0),
        ("traceidratio", "0", 0),
        ("traceidratio", "1", 2),
        ("parentbased_always_off", None, 0),
    ],
)
def test_sampler_from_env(sampler, arg, expected, service, receiver, run, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    if arg is not None:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    with pipeline() as (telemetry, _, processors):
        assert len(processors) == 1
        port, client_port = run(echo, telemetry)
        telemetry.flush_exports()
        # Metrics do not depend on sampling.
        check_metrics(receiver, service, port)
        if expected:
            check_spans(receiver, service, port, client_port)
        else:
            # The flush returned after the receiver stored anything sent.
            assert receiver.spans(service) == []


def test_traces_exporter_none(service, receiver, run, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    with pipeline() as (telemetry, readers, processors):
        assert processors == [] and len(readers) == 1
        port, _ = run(echo, telemetry)
        telemetry.flush_exports()
        check_metrics(receiver, service, port)
    assert [r for r in receiver.requests if r.signal == "traces"] == []


def test_metrics_exporter_none(service, receiver, run, monkeypatch):
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    with pipeline() as (telemetry, readers, processors):
        assert readers == [] and len(processors) == 1
        port, client_port = run(echo, telemetry)
        telemetry.flush_exports()
        check_spans(receiver, service, port, client_port)
    assert [r for r in receiver.requests if r.signal == "metrics"] == []


# -- the periodic path, in a fresh process on the global providers ---------------------------
CHILD = textwrap.dedent("""
    import asyncio, sys
    import traced_transport as tt

    mode, loop_kind = sys.argv[1], sys.argv[2]
    if mode == "sdk":
        from traced_transport.exporters import sdk
        sdk.setup(endpoint=False, otlp=True)
    else:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from traced_transport.exporters.otlp import otlp_components
        resource = Resource.create()
        readers, processors = otlp_components(resource)
        metrics.set_meter_provider(MeterProvider(metric_readers=readers, resource=resource))
        tracer_provider = TracerProvider(resource=resource)
        for p in processors:
            tracer_provider.add_span_processor(p)
        trace.set_tracer_provider(tracer_provider)

    PAYLOAD = bytes.fromhex("PAYLOAD_HEX")

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(tt.traced(Echo, name="echo"), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await tt.open_connection("127.0.0.1", port, name="echo-client")
        client_port = writer.get_extra_info("sockname")[1]
        writer.write(PAYLOAD)
        writer.write_eof()
        got = await reader.read()
        assert got == PAYLOAD, len(got)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return port, client_port

    if loop_kind == "uvloop":
        import uvloop
        port, client_port = uvloop.run(main())
    else:
        port, client_port = asyncio.run(main())
    print(port, client_port, flush=True)
    sys.stdin.readline()  # the test says when it has seen the exports
""").replace("PAYLOAD_HEX", PAYLOAD.hex())


def run_child(receiver, service, mode, loop_kind, protocol, **extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        {
            "OTEL_SERVICE_NAME": service,
            "OTEL_RESOURCE_ATTRIBUTES": RESOURCE_ATTRIBUTES,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint(protocol),
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_METRIC_EXPORT_INTERVAL": "100",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_TRACES_SAMPLER": "always_on",
            **extra_env,
        }
    )
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, loop_kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = child.stdout.readline()
        if not line:
            raise AssertionError(f"child failed: {child.communicate(timeout=10)[1]}")
        port, client_port = map(int, line.split())
        # No flush in the child: only the periodic reader and the batch processor's delay deliver these.
        check_spans(receiver, service, port, client_port, protocol)
        check_metrics(receiver, service, port, protocol=protocol)
    finally:
        out, err = child.communicate("\n", timeout=20)
    assert child.returncode == 0, err
    return err


@pytest.mark.parametrize("loop_kind, protocol", [("asyncio", GRPC), ("uvloop", HTTP)])
def test_periodic_export_from_env_in_subprocess(loop_kind, protocol, service, receiver):
    if loop_kind == "uvloop":
        pytest.importorskip("uvloop")
    err = run_child(receiver, service, "manual", loop_kind, protocol)
    assert "Traceback" not in err, err


def test_sdk_setup_exports_over_otlp(service, receiver):
    """traced_transport.exporters.sdk.setup(endpoint=False, otlp=True) in a fresh process: global providers, OTLP from env."""
    import importlib.util

    if importlib.util.find_spec("traced_transport.exporters.sdk") is None:
        pytest.skip("exporters/sdk.py is not there yet")
    err = run_child(receiver, service, "sdk", "asyncio", HTTP)
    assert "Traceback" not in err, err


# -- configuration from the environment, without exporting --------------------------------
@pytest.mark.parametrize(
    "env, enabled",
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4318/v1/metrics"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_METRICS_EXPORTER": "prometheus,otlp"}, True),
        ({"OTEL_METRICS_EXPORTER": "otlp_proto_grpc"}, True),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, False),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "none",
            },
            False,
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, False),  # a protocol alone asks for nothing
    ],
)
def test_otlp_enabled(env, enabled):
    assert otlp.otlp_enabled(env) is enabled


def test_exporter_names_and_protocols():
    assert otlp.exporter_names("traces", {}) == ["otlp"]
    assert otlp.exporter_names("traces", {"OTEL_TRACES_EXPORTER": " OTLP , console "}) == ["otlp", "console"]
    assert otlp.exporter_names("metrics", {"OTEL_METRICS_EXPORTER": "none"}) == []
    assert otlp.otlp_protocol("traces", {}) == "http/protobuf"
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"}
    assert otlp.otlp_protocol("traces", env) == "grpc"
    assert otlp.otlp_protocol("metrics", env) == "http/protobuf"
    assert otlp.otlp_protocol("metrics", env, "otlp_proto_grpc") == "grpc"
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json'"):
        otlp.otlp_protocol("traces", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"})
    with pytest.raises(ValueError):
        otlp.exporter_names("logs", {})


def test_components_match_the_environment(service, monkeypatch):
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp,console,prometheus")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1234")
    readers, processors = otlp.otlp_components(Resource.create())
    try:
        assert [type(r) for r in readers] == [PeriodicExportingMetricReader] * 2
        assert [type(r._exporter) for r in readers] == [GrpcMetrics, ConsoleMetricExporter]
        assert readers[0]._export_interval_millis == 1234
        assert [type(p) for p in processors] == [BatchSpanProcessor]
        assert isinstance(processors[0].span_exporter, HttpSpans)
    finally:
        for r in readers:
            r.shutdown()
        for p in processors:
            p.shutdown()


def test_nothing_when_sdk_disabled_or_all_none(service, monkeypatch):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert otlp.otlp_components(Resource.create()) == ([], [])
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert otlp.otlp_components(Resource.create()) == ([], [])


def test_unsupported_protocol_starts_nothing(service, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    before = threading.active_count()
    with pytest.raises(ValueError, match="http/json"):
        otlp.otlp_components(Resource.create())
    assert threading.active_count() == before


def test_missing_extra_names_it(service, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    before = threading.active_count()
    with pytest.raises(ImportError, match=r"'otlp' extra.*traced-transport\[otlp\]"):
        otlp.otlp_components(Resource.create())
    assert threading.active_count() == before  # the metric reader was not started either
    assert otlp.otlp_enabled()  # needs no exporter package


def test_module_imports_no_exporter_package():
    code = (
        "import sys, traced_transport.exporters.otlp; "
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.exporter', 'grpc', "
        "'opentelemetry.sdk'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
