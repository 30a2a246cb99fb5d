"""Chaos: randomized sessions (writes, writelines, pause storms, set_protocol, start_tls, write_eof, abort,
peer resets), several at once on one loop, every byte and every count checked (see ``_chaos``).

CI size: ``TT_CHAOS_EXAMPLES`` hypothesis examples per loop (default 300, each a batch of 1-8 concurrent
sessions, ~1,300 sessions); ``bench/chaos.py`` runs the same code for >= 100,000 sessions.
"""
from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import HealthCheck, given, settings

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider  # noqa: E402

import traced_transport as tt  # noqa: E402
import _chaos  # noqa: E402

EXAMPLES = int(os.environ.get("TT_CHAOS_EXAMPLES", "300"))


class CountingProcessor(SpanProcessor):
    def __init__(self):
        self.started = self.ended = 0

    def on_start(self, span, parent_context=None):
        self.started += 1

    def on_end(self, span):
        self.ended += 1


def metric_points(reader) -> dict:
    """{(metric name, transport.name): summed value} of one collection."""
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


def new_loop(kind):
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def test_chaos_sessions(loop_kind, server_ctx, client_ctx):
    registry = tt.Registry()
    reader = InMemoryMetricReader()
    processor = CountingProcessor()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(processor)
    telemetry = tt.Telemetry(registry, meter_provider=MeterProvider(metric_readers=[reader]),
                             tracer_provider=tracer_provider)
    harness = _chaos.Harness(observer=telemetry, server_ctx=server_ctx, client_ctx=client_ctx)
    loop = new_loop(loop_kind)
    done = []  # outcomes of the examples that passed
    try:
        loop.run_until_complete(harness.start())

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(batch=_chaos.batches)
        def one_batch(batch):
            outcomes = loop.run_until_complete(asyncio.wait_for(harness.run_batch(batch), 60))
            _chaos.check(outcomes, batch)
            done.extend(outcomes)

        try:
            one_batch()
        finally:
            loop.run_until_complete(harness.abort_all())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    assert len(done) == harness.sessions >= EXAMPLES
    print(f"{loop_kind}: {len(done)} sessions, {harness.bytes} bytes, {sum(o.tls for o in done)} with TLS")
    assert any(o.tls for o in done) and {o.end for o in done} >= {"close", "abort", "peer_reset"}
    # Totals: the registry and the exported metrics agree with the sum of every session's crossing bytes.
    app, peer = registry.totals(_chaos.APP_NAME), registry.totals(_chaos.PEER_NAME)
    assert (app.opened, app.closed, app.active) == (len(done), len(done), 0)
    assert (peer.opened, peer.closed, peer.active) == (len(done), len(done), 0)
    assert (app.rx, app.tx) == (sum(o.app_rx for o in done), sum(o.app_tx for o in done))
    assert (peer.rx, peer.tx) == (sum(o.peer_rx for o in done), sum(o.peer_tx for o in done))
    points = metric_points(reader)
    for name, t in ((_chaos.APP_NAME, app), (_chaos.PEER_NAME, peer)):
        assert points[("transport.received", name)] == t.rx
        assert points[("transport.sent", name)] == t.tx
        assert points[("transport.connection.opened", name)] == len(done)
        assert points[("transport.connection.active", name)] == 0
        assert points[("transport.connection.duration", name)] == len(done)
    assert processor.started == processor.ended == 2 * len(done)
    assert not registry.live()
