"""Telemetry failures never reach the app; odd transports are handled."""

from __future__ import annotations

import logging

from _helpers import Collect, closed, tcp_pair

import traced_transport as tt
from traced_transport import report as _safety
from traced_transport.datapath.classify import conn_key
from traced_transport.datapath.extra import snapshot_extra


class RaisingObserver:
    def __init__(self):
        self.calls = 0

    def on_open(self, record, transport):
        self.calls += 1
        raise RuntimeError("observer broke")

    on_close = on_tls = lambda self, *a: (_ for _ in ()).throw(RuntimeError("observer broke"))

    def on_event(self, record, name, seconds):
        raise ValueError("event broke")


def test_raising_observer_does_not_reach_app(run, caplog):
    _safety.reset_rate_limit()
    registry = tt.Registry()
    observer = RaisingObserver()

    async def main():
        for _ in range(3):
            server, s_app, c_tr, c_app = await tcp_pair(
                lambda: Collect(echo=True),
                wrap_server=lambda f: tt.traced(f, name="s", registry=registry, observer=observer),
            )
            s_app.transport.pause_reading()
            s_app.transport.resume_reading()
            c_tr.write(b"ping")
            await c_app.wait_bytes(4)
            assert bytes(c_app.data) == b"ping"
            c_tr.close()
            assert await s_app.lost is None
            await closed(server)

    with caplog.at_level(logging.WARNING, logger="traced_transport"):
        run(main)
    assert observer.calls == 3
    t = registry.totals("s")
    assert (t.opened, t.closed, t.rx, t.tx, t.read_pauses) == (3, 3, 12, 12, 3)
    # logged once per failure site, not once per call
    sites = [r.getMessage() for r in caplog.records]
    assert len(sites) == len(set(sites)) == 3, sites


class OddTransport:
    """A transport from another library: get_extra_info raises or returns junk."""

    def __init__(self, mode):
        self.mode = mode

    def get_extra_info(self, name, default=None):
        if self.mode == "raise":
            raise OSError("no socket here")
        if self.mode == "junk":
            return {"socket": 42, "sockname": "weird", "ssl_object": object()}.get(name, 3.5)
        return default


def test_odd_get_extra_info():
    _safety.reset_rate_limit()
    group = tt.Group("odd", "server", tt.Registry())
    for mode in ("raise", "junk", "none"):
        extra = snapshot_extra(OddTransport(mode))
        assert isinstance(extra, dict)
        rec = tt.ConnectionRecord(group)
        rec.open(OddTransport(mode))  # classification failures are caught and logged
        assert rec.key.name == "odd"
        rec.close(None)
    assert conn_key(group, OddTransport("none")).network_transport == "pipe"


class _BrokenMeterProvider:
    """An SDK whose meters cannot make instruments."""

    def get_meter(self, *args, **kwargs):
        from opentelemetry.metrics import NoOpMeter

        class Broken(NoOpMeter):
            def create_histogram(self, *a, **k):
                raise RuntimeError("histograms unavailable")

        return Broken("broken")


class _BrokenTracerProvider:
    def get_tracer(self, *args, **kwargs):
        raise RuntimeError("no tracer for you")


def test_sdk_failing_at_set_up_does_not_reach_the_app(run, caplog):
    _safety.reset_rate_limit()
    with caplog.at_level(logging.WARNING, logger="traced_transport"):
        telemetry = tt.Telemetry(
            tt.Registry(), meter_provider=_BrokenMeterProvider(), tracer_provider=_BrokenTracerProvider()
        )

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            lambda: Collect(echo=True), wrap_server=lambda f: tt.traced(f, name="s", observer=telemetry)
        )
        c_tr.write(b"ping")
        await c_app.wait_bytes(4)
        c_tr.close()
        assert await s_app.lost is None
        await closed(server)

    run(main)
    assert telemetry.registry.totals("s").rx == 4
    sites = " ".join(r.getMessage() for r in caplog.records)
    assert "get_tracer" in sites and "creating instruments" in sites


def test_two_collections_close_together_do_not_share_counts(run):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    telemetry = tt.Telemetry(tt.Registry(), meter_provider=MeterProvider(metric_readers=[reader]), spans=False)

    def opened() -> int:
        data = reader.get_metrics_data()
        return sum(
            p.value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "transport.connection.opened"
            for p in m.data.data_points
        )

    async def connect():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=lambda f: tt.traced(f, name="s", observer=telemetry))
        c_tr.close()
        await s_app.lost
        await closed(server)

    run(connect)
    assert opened() == 1
    run(connect)  # well within 50 ms of the first collection
    assert opened() == 2
