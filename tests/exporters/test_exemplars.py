"""Histogram exemplars: a bucket points at a connection whose span was sampled, never at one without.

In process, on both loops: the loop-side aggregates keep them; the scrape endpoint renders them in the
OpenMetrics format (parsed back with prometheus_client's parser) and leaves the classic text format as it was
(promtool); OTLP carries them to the test receiver; the multi-worker aggregator keeps the workers' ones.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.prometheus")

from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Timestamp
from traced_transport.exporters import histograms
from traced_transport.exporters import multiworker as mw
from traced_transport.exporters.multiworker import _files as mw_files
from traced_transport.exporters.prometheus import exposition, prometheus_reader

import traced_transport as tt
from traced_transport.datapath.classify import ConnKey
from traced_transport.telemetry.histogram import HistogramAggregate

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
HISTOGRAMS = {
    "transport_connection_duration_seconds",
    "transport_reading_pause_duration_seconds",
    "transport_writing_pause_duration_seconds",
    "transport_tls_handshake_duration_seconds",
}
BIG = 8 * 1024 * 1024  # more than loopback socket buffers hold: the server's writing pauses


# -- the aggregate ------------------------------------------------------------------------------------------
def test_latest_exemplar_per_bucket_and_none_from_record():
    agg = HistogramAggregate("h", "s", "", (1.0, 2.0))
    agg.record(0.5, "k", {"a": "x"})
    assert agg.points()[1][0].exemplars is None  # record alone never makes exemplar slots
    agg.record_with_exemplar(0.7, "k", {"a": "x"}, trace_id=1, span_id=2, time_ns=100)
    agg.record_with_exemplar(0.9, "k", {"a": "x"}, trace_id=3, span_id=4, time_ns=200)
    agg.record_with_exemplar(1.0, "k", {"a": "x"}, trace_id=5, span_id=6, time_ns=150)  # le=1.0 is inclusive
    agg.record_with_exemplar(9.0, "k", {"a": "x"}, trace_id=7, span_id=8, time_ns=300)
    (point,) = agg.points()[1]
    assert point.counts == (4, 0, 1) and point.count == 5
    first, second, inf = point.exemplars
    assert (first.value, first.trace_id, first.span_id, first.time_ns) == (0.9, 3, 4, 200)  # latest, not last
    assert second is None
    assert (inf.value, inf.trace_id) == (9.0, 7)


def test_exemplar_added_later_and_delta_intervals():
    agg = HistogramAggregate("h", "s", "", (1.0,))
    interval = agg.open_interval()
    agg.record(0.5, "k", {})
    agg.add_exemplar(0.5, "k", trace_id=9, span_id=10, time_ns=5)  # a span decided after the value was counted
    agg.add_exemplar(0.5, "other", trace_id=1, span_id=1, time_ns=5)  # never counted: nowhere to go
    _, (cumulative,) = agg.points()
    _, (delta,) = agg.points(interval)
    for p in (cumulative, delta):
        assert p.count == 1 and p.exemplars[0].trace_id == 9 and p.exemplars[1] is None
    agg.record_with_exemplar(2.0, "k", {}, trace_id=11, span_id=12, time_ns=6)
    _, (delta,) = agg.points(interval)  # the new interval has only what came after the last read
    assert delta.count == 1 and delta.exemplars[0] is None and delta.exemplars[1].trace_id == 11
    _, (cumulative,) = agg.points()
    assert [e.trace_id for e in cumulative.exemplars] == [9, 11]


def test_telemetry_attaches_an_exemplar_to_a_value_counted_before_the_span_was_kept():
    """The close-time path of a kept span: a pause counted without a span gets the span's exemplar afterwards."""
    p = Pipeline(spans=False)
    try:
        # The SDK skips a collection with no data of its own (no connection opened here: no counters).
        p.meter_provider.get_meter("test").create_observable_gauge("up", [lambda options: [Observation(1)]])
        key = ConnKey("late", "server", None, None, None, None)
        p.telemetry._record(p.telemetry._read_pause, 0.003, key)
        text = p.scrape(OPENMETRICS)
        assert "transport_reading_pause_duration_seconds_count" in text and bucket_exemplars(text) == []
        p.telemetry._exemplar_for_earlier((0xAB, 0xCD), 1_700_000_000_123_456_789, p.telemetry._read_pause, 0.003, key)
        ((name, labels, exemplar),) = bucket_exemplars(p.scrape(OPENMETRICS))
        assert name == "transport_reading_pause_duration_seconds" and labels["le"] == "0.005"
        assert exemplar.labels == {"trace_id": f"{0xAB:032x}", "span_id": f"{0xCD:016x}"}
        assert exemplar.value == 0.003 and exemplar.timestamp == Timestamp(1_700_000_000, 123_456_789)
        assert " 0.003 1700000000.123456789\n" in p.scrape(OPENMETRICS)  # the exact time, to the nanosecond
    finally:
        p.close()


# -- traffic with spans, some sampled and some recorded only ----------------------------------------------
class ByName(Sampler):
    """Connections named ``record-only`` get a recording span that is not sampled (never exported)."""

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        decision = Decision.RECORD_ONLY if name.startswith("record-only") else Decision.RECORD_AND_SAMPLE
        return SamplingResult(decision, attributes)

    def get_description(self) -> str:
        return "ByName"


class Server(asyncio.Protocol):
    """Pauses its reading once per request; answers a request ending in b"!" with BIG bytes (a writing pause)."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.pause_reading()
        self.transport.resume_reading()
        self.transport.write(b"y" * BIG if data.endswith(b"!") else data)


def tls_contexts():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def traffic(telemetry):
    loop = asyncio.get_running_loop()
    server_ctx, client_ctx = tls_contexts()
    servers = []
    for name, ctx in (("sampled", None), ("record-only", None), ("sampled-tls", server_ctx)):
        servers.append(
            (await loop.create_server(tt.traced(Server, name=name, observer=telemetry), "127.0.0.1", 0, ssl=ctx), ctx)
        )
    for server, ctx in servers:
        host, port = server.sockets[0].getsockname()[:2]
        for payload, expect in ((b"ping.", 5), (b"big!", BIG)):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=client_ctx if ctx else None, server_hostname=host if ctx else None
            )
            writer.write(payload)
            await reader.readexactly(expect)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass
    for server, _ in servers:
        server.close()
        await server.wait_closed()
    while telemetry.registry.totals().active:  # the servers' ends close after the clients'
        await asyncio.sleep(0.01)


class Pipeline:
    """setup()'s Prometheus wiring over a fresh registry, spans kept in memory."""

    def __init__(self, spans: bool = True, parent_context: bool = False) -> None:
        self.prom = CollectorRegistry(auto_describe=False)
        self.reader, _ = prometheus_reader(self.prom)
        self.memory = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader, self.memory], shutdown_on_exit=False)
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(sampler=ByName(), shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.telemetry = tt.Telemetry(
            tt.Registry(),
            meter_provider=self.meter_provider,
            tracer_provider=self.tracer_provider,
            spans=spans,
            parent_context=parent_context,
        )
        for reader in (self.reader, self.memory):
            histograms.attach(reader, self.telemetry)

    def exported(self) -> dict[tuple[str, str], str]:
        """{(trace id hex, span id hex): span name} of every exported span."""
        return {
            (f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}"): s.name for s in self.spans.get_finished_spans()
        }

    def scrape(self, accept: str = "") -> str:
        status, _, body = exposition(self.prom, accept)
        assert status == 200
        return body.decode()

    def close(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


@pytest.fixture
def pipeline():
    p = Pipeline()
    yield p
    p.close()


def bucket_exemplars(text: str) -> list[tuple[str, dict, object]]:
    """(family name, bucket sample labels, exemplar) of every exemplar in an OpenMetrics exposition."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.exemplar is not None:
                assert family.type == "histogram" and s.name == family.name + "_bucket", s
                out.append((family.name, s.labels, s.exemplar))
    return out


def check_exemplars(found, exported: dict, families: dict) -> set[str]:
    """Every exemplar points at an exported span of its own series' server and lies in its bucket."""
    names = set()
    for name, labels, exemplar in found:
        assert set(exemplar.labels) == {"trace_id", "span_id"}
        assert len(exemplar.labels["trace_id"]) == 32 and len(exemplar.labels["span_id"]) == 16
        span_name = exported.get((exemplar.labels["trace_id"], exemplar.labels["span_id"]))
        assert span_name == f"{labels['transport_name']} connection", (labels, exemplar)
        bounds = families[name]
        le = float(labels["le"])
        below = max((b for b in bounds if b < le), default=-math.inf)
        assert below < exemplar.value <= le, (labels, exemplar)
        assert exemplar.timestamp is not None
        names.add(name)
    return names


def series_without_exemplars(text: str) -> list:
    """Histogram series of sampled connections (count > 0) with no exemplar on any bucket."""
    missing = []
    for f in text_string_to_metric_families(text):
        if f.type != "histogram":
            continue
        series: dict = {}
        for s in f.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if s.name.endswith("_count") and s.value > 0:
                series.setdefault(key, False)
            elif s.name.endswith("_bucket") and s.exemplar is not None:
                series[key] = True
        missing += [(f.name, k) for k, has in series.items() if not has and ("transport_name", "record-only") not in k]
    return missing


def bounds_of(text: str) -> dict[str, list[float]]:
    return {
        f.name: sorted({float(s.labels["le"]) for s in f.samples if s.name.endswith("_bucket")})
        for f in text_string_to_metric_families(text)
        if f.type == "histogram"
    }


def test_openmetrics_scrape_carries_exemplars_of_sampled_spans_only(run, pipeline, promtool_check):
    run(traffic, pipeline.telemetry, timeout=60)
    text = pipeline.scrape(OPENMETRICS)
    assert text.endswith("# EOF\n")
    found = bucket_exemplars(text)
    names = check_exemplars(found, pipeline.exported(), bounds_of(text))
    assert names == HISTOGRAMS
    assert series_without_exemplars(text) == []
    assert not [f for f in found if f[1]["transport_name"] == "record-only"]  # recorded, not sampled: none
    # ... though record-only connections are counted as ever
    record_only = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "transport_connection_duration_seconds_count" and s.labels["transport_name"] == "record-only"
    ]
    assert record_only and record_only[0].value == 2
    # Handshake exemplars sit on the series with the negotiated cipher, where the value was counted.
    tls = [f for f in found if f[0] == "transport_tls_handshake_duration_seconds"]
    assert tls and all(f[1].get("tls_cipher") for f in tls)

    classic = pipeline.scrape("text/plain")
    assert " # {" not in classic and "trace_id" not in classic
    assert promtool_check(classic) == ""
    # The OpenMetrics text is the classic one plus exemplars (and its own framing).
    assert 'transport_connection_duration_seconds_bucket{le="0.01"' in classic


@pytest.mark.parametrize("parent_context", [True, False], ids=["eager-span", "span-at-close"])
def test_api_histograms_record_in_the_span_context_until_a_reader_is_attached(run, parent_context):
    """An app's own SDK set-up without attach(): its exemplar filter sees the connection span as the context.

    A span decided at close does not exist yet when a pause or the handshake is counted, so through the
    app's own SDK only the duration (counted at close) carries it; an eager span (parent_context) gives all four.
    """
    p = Pipeline(parent_context=parent_context)
    try:
        for reader in (p.reader, p.memory):
            histograms.detach(reader, p.telemetry)
        run(traffic, p.telemetry, timeout=60)
        text = p.scrape(OPENMETRICS)
        found = bucket_exemplars(text)
        expected = HISTOGRAMS if parent_context else {"transport_connection_duration_seconds"}
        assert check_exemplars(found, p.exported(), bounds_of(text)) == expected
        assert not [f for f in found if f[1]["transport_name"] == "record-only"]
    finally:
        p.close()


def test_no_exemplars_without_spans(run):
    p = Pipeline(spans=False)
    try:
        run(traffic, p.telemetry, timeout=60)
        text = p.scrape(OPENMETRICS)
        assert "transport_connection_duration_seconds_bucket" in text
        assert bucket_exemplars(text) == []
    finally:
        p.close()


def test_sdk_data_points_carry_the_exemplars(run, pipeline):
    run(traffic, pipeline.telemetry, timeout=60)
    exported = pipeline.exported()
    seen = set()
    for rm in pipeline.memory.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in getattr(m.data, "data_points", ()):
                    for e in getattr(p, "exemplars", ()):
                        assert (f"{e.trace_id:032x}", f"{e.span_id:016x}") in exported
                        assert p.attributes["transport.name"] != "record-only"
                        seen.add(m.name)
    assert seen == {
        "transport.connection.duration",
        "transport.reading.pause.duration",
        "transport.writing.pause.duration",
        "transport.tls.handshake.duration",
    }


# -- OTLP --------------------------------------------------------------------------------------------------
def test_otlp_carries_exemplars(run, monkeypatch):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from _otlp_receiver import OTLPReceiver
    from opentelemetry.sdk.resources import Resource
    from traced_transport.exporters import otlp

    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    with OTLPReceiver() as receiver:
        monkeypatch.setenv("OTEL_SERVICE_NAME", "tt-exemplars")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint)
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
        resource = Resource.create()
        readers, processors = otlp.otlp_components(resource)
        meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        tracer_provider = TracerProvider(resource=resource, sampler=ByName(), shutdown_on_exit=False)
        for processor in processors:
            tracer_provider.add_span_processor(processor)
        telemetry = tt.Telemetry(tt.Registry(), meter_provider=meter_provider, tracer_provider=tracer_provider)
        for reader in readers:
            histograms.attach(reader, telemetry)
        try:
            run(traffic, telemetry, timeout=60)
            assert tracer_provider.force_flush(10_000) and meter_provider.force_flush(10_000)
            duration = receiver.wait_for(lambda r: r.latest("transport.connection.duration"), what="duration")
        finally:
            tracer_provider.shutdown()
            meter_provider.shutdown()
        spans = {(s.span.trace_id, s.span.span_id): s.name for s in receiver.spans()}
        names = set()
        for name in ("transport.connection.duration", "transport.tls.handshake.duration"):
            metric = receiver.latest(name)
            for attributes, point in metric.points():
                for e in point.exemplars:
                    assert spans[(e.trace_id, e.span_id)] == f"{attributes['transport.name']} connection"
                    assert e.time_unix_nano > 0 and e.as_double > 0
                    names.add((name, attributes["transport.name"]))
        assert ("transport.connection.duration", "sampled") in names
        assert ("transport.tls.handshake.duration", "sampled-tls") in names
        assert not [n for n in names if n[1] == "record-only"]
        assert duration is not None


# -- multi-worker ------------------------------------------------------------------------------------------
def test_multiworker_aggregate_keeps_the_workers_exemplars(run, pipeline, tmp_path):
    worker = mw.WorkerExporter(
        str(tmp_path),
        reader=pipeline.memory,
        meter_provider=pipeline.meter_provider,
        telemetry=pipeline.telemetry,
        interval=3600,
    )
    run(traffic, pipeline.telemetry, timeout=60)
    assert worker.flush()
    registry = CollectorRegistry()
    registry.register(mw.AggregatingCollector(str(tmp_path)))
    _, _, body = exposition(registry, OPENMETRICS)
    text = body.decode()
    found = bucket_exemplars(text)
    assert check_exemplars(found, pipeline.exported(), bounds_of(text)) == HISTOGRAMS
    assert series_without_exemplars(text) == []
    # The same exemplars the worker's own endpoint serves.
    mine = {
        (n, tuple(sorted(labels.items())), e.labels["span_id"])
        for n, labels, e in bucket_exemplars(pipeline.scrape(OPENMETRICS))
    }
    theirs = {(n, tuple(sorted(labels.items())), e.labels["span_id"]) for n, labels, e in found}
    assert theirs == mine
    _, _, classic = exposition(registry, "text/plain")
    assert b" # {" not in classic


def _doc(pid: int, exemplars: dict) -> dict:
    return {
        "format": mw_files.FORMAT,
        "pid": pid,
        "final": True,
        "time": 0,
        "resource": {},
        "metrics": [
            {
                "name": "transport.connection.duration",
                "description": "d",
                "unit": "s",
                "kind": mw_files.HISTOGRAM,
                "scope": {"name": "traced_transport", "version": "", "schema_url": "", "attributes": {}},
                "points": [
                    [
                        {"transport.name": "w"},
                        {"bounds": [1.0], "counts": [1, 1], "sum": 2.5, "count": 2, "exemplars": exemplars},
                    ]
                ],
            }
        ],
    }


def test_multiworker_merge_keeps_the_latest_exemplar_per_bucket(tmp_path):
    a = "a" * 32, "1" * 16
    b = "b" * 32, "2" * 16
    mw_files.write_json(str(tmp_path / "1-aa.json"), _doc(1, {"0": [*a, 0.5, 100], "1": [*a, 2.0, 100]}))
    mw_files.write_json(str(tmp_path / "2-bb.json"), _doc(2, {"0": [*b, 0.25, 200]}))
    for compact in (False, True):  # dead workers folded into retired.json keep them too
        registry = CollectorRegistry()
        collector = mw.AggregatingCollector(str(tmp_path), compact=compact, alive=lambda pid, start: False)
        registry.register(collector)
        _, _, body = exposition(registry, OPENMETRICS)
        found = {labels["le"]: e for _, labels, e in bucket_exemplars(body.decode())}
        assert found["1.0"].labels["trace_id"] == "b" * 32 and found["1.0"].value == 0.25
        assert found["+Inf"].labels["trace_id"] == "a" * 32 and found["+Inf"].value == 2.0
    assert os.path.exists(tmp_path / mw_files.RETIRED)
