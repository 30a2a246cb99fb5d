"""Loop-side histogram aggregates handed to SDK readers (traced_transport.exporters.histograms) equal the SDK's own."""

from __future__ import annotations

import asyncio
import math

from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from traced_transport.exporters import histograms
from traced_transport.exporters.prometheus import prometheus_reader

import traced_transport as tt

HISTOGRAMS = (
    "transport.connection.duration",
    "transport.reading.pause.duration",
    "transport.writing.pause.duration",
)


class Pipeline:
    def __init__(self, attach: bool, **reader_kw):
        self.reader = InMemoryMetricReader(**reader_kw)
        self.provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.telemetry = tt.Telemetry(tt.Registry(), meter_provider=self.provider, spans=False)
        # The SDK skips a collection with no data at all (no connection ever opened, so
        # none of our counters observe anything); real use always has those counters.
        self.provider.get_meter("test").create_observable_gauge("up", [lambda options: [Observation(1)]])
        if attach:
            histograms.attach(self.reader, self.telemetry)

    def points(self) -> dict:
        """{(metric, attributes): point}; fails on a metric name that appears twice in a scope."""
        out = {}
        for rm in self.reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                names = [m.name for m in sm.metrics]
                assert len(names) == len(set(names)), names
                for m in sm.metrics:
                    if m.name in HISTOGRAMS:
                        for p in m.data.data_points:
                            out[(m.name, frozenset(p.attributes.items()))] = p
        return out


class Server(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        # A reading pause per request, so the pause histogram gets values too.
        self.transport.pause_reading()
        self.transport.write(data)
        self.transport.resume_reading()
        if data.endswith(b"!"):
            self.transport.abort()


async def _traffic(observers, n=12):
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(tt.traced(Server, name="h", observer=o), "127.0.0.1", 0) for o in observers]
    for i in range(n):
        for srv in servers:
            reader, writer = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
            payload = b"x" * (i + 1) + (b"!" if i % 3 == 0 else b".")
            writer.write(payload)
            await reader.read(len(payload))
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
    for srv in servers:
        srv.close()
        await srv.wait_closed()
    # Every connection has ended on the server side once active is back to 0.
    for _ in range(200):
        if all(o.registry.totals().active == 0 for o in observers):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("connections still open")


def test_attached_reader_gets_the_same_points_as_the_sdk(run):
    sdk, ours = Pipeline(attach=False), Pipeline(attach=True)
    run(_traffic, [sdk.telemetry, ours.telemetry])

    def portless(points):  # the two servers listen on different ports
        return {(n, frozenset((a, v) for a, v in attrs if a != "server.port")): p for (n, attrs), p in points.items()}

    expected, got = portless(sdk.points()), portless(ours.points())
    assert {k[0] for k in got} == set(HISTOGRAMS[:2])  # no write backpressure here
    assert any(dict(k[1]).get("error.type") == "aborted" for k in got)
    # Same attribute sets, bucket layout and counts; the values themselves differ (two servers'
    # own timings): exact equality of the aggregation is the next test's.
    assert set(expected) == set(got)
    for key, p in got.items():
        q = expected[key]
        assert p.explicit_bounds == q.explicit_bounds
        assert p.count == q.count == sum(p.bucket_counts)
        assert p.min <= p.max and p.sum >= 0
    # The attached telemetry never called the SDK instrument.
    assert ours.telemetry._pending == type(ours.telemetry._pending)()


def test_aggregate_is_exactly_what_the_sdk_computes_for_the_same_values():
    # Feed the same values (bucket edges included) to both paths of one Telemetry.
    sdk, ours = Pipeline(attach=False), Pipeline(attach=True)
    key = tt.ConnKey("h", "server", "tcp", "ipv4", 80, None)
    values = [0.0, 0.01, 0.010001, 0.02, 0.3, 1.0, 299.9, 300.0, 301.0, 1e-9, 5.0, 5.0]
    for v in values:
        sdk.telemetry._record(sdk.telemetry._duration, v, key)
        ours.telemetry._record(ours.telemetry._duration, v, key)
    sdk.telemetry.flush()
    ((k, expected),) = sdk.points().items()
    got = ours.points()[k]
    assert list(got.bucket_counts) == list(expected.bucket_counts)
    assert (got.count, got.min, got.max) == (expected.count, expected.min, expected.max)
    assert math.isclose(got.sum, expected.sum)
    assert got.start_time_unix_nano <= got.time_unix_nano


def test_delta_reader_gets_each_interval():
    ours = Pipeline(attach=True, preferred_temporality={Histogram: AggregationTemporality.DELTA})
    key = tt.ConnKey("h", "server", "tcp", "ipv4", 80, None)
    for v in (0.5, 2.0):
        ours.telemetry._record(ours.telemetry._duration, v, key)
    (first,) = ours.points().values()
    assert (first.count, first.min, first.max) == (2, 0.5, 2.0)
    assert ours.points() == {}  # nothing new: no point, as the SDK does for delta
    ours.telemetry._record(ours.telemetry._duration, 7.0, key)
    (third,) = ours.points().values()
    assert (third.count, third.sum, third.min, third.max) == (1, 7.0, 7.0, 7.0)
    assert third.start_time_unix_nano >= first.time_unix_nano


def test_values_recorded_before_attaching_are_not_counted_twice():
    p = Pipeline(attach=False)
    key = tt.ConnKey("h", "server", "tcp", "ipv4", 80, None)
    p.telemetry._record(p.telemetry._duration, 0.5, key)
    p.telemetry.flush()  # reached the SDK instrument
    p.telemetry._record(p.telemetry._duration, 0.7, key)  # still pending
    histograms.attach(p.reader, p.telemetry)
    p.telemetry._record(p.telemetry._duration, 0.9, key)
    (point,) = p.points().values()
    assert point.count == 3 and math.isclose(point.sum, 2.1)
    histograms.detach(p.reader, p.telemetry)
    assert p.telemetry._histogram_readers == 0  # values go to the API instruments again


def test_prometheus_text_has_each_histogram_once(run, promtool_check):
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    reader, _collector = prometheus_reader(registry)
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    telemetry = tt.Telemetry(tt.Registry(), meter_provider=provider, spans=False)
    histograms.attach(reader, telemetry)
    run(_traffic, [telemetry], 3)
    text = generate_latest(registry).decode()
    assert text.count("# TYPE transport_connection_duration_seconds histogram") == 1
    assert "transport_connection_duration_seconds_bucket{" in text
    assert "transport_reading_pause_duration_seconds_count" in text
    assert promtool_check(text) == ""
