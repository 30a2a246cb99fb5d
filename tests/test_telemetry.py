"""Metrics and spans through a real OpenTelemetry SDK (in-memory reader and exporter)."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl

import pytest
from _helpers import Collect, closed, tcp_pair
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

import traced_transport as tt
from traced_transport.telemetry.attributes import iana_cipher


class Otel:
    """A real SDK pipeline, kept in memory."""

    def __init__(self, sampler=None, **telemetry_kw):
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.exporter = InMemorySpanExporter()
        kw = {"sampler": sampler} if sampler is not None else {}
        self.tracer_provider = TracerProvider(**kw)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.registry = tt.Registry()
        self.telemetry = tt.Telemetry(
            self.registry, meter_provider=self.meter_provider, tracer_provider=self.tracer_provider, **telemetry_kw
        )

    def server(self, name="s"):
        return lambda f: tt.traced(f, name=name, observer=self.telemetry)

    def client(self, name="c"):
        return lambda f: tt.traced(f, name=name, side="client", observer=self.telemetry)

    def metrics(self) -> dict:
        """{metric name: [(attributes, point)]}"""
        self.telemetry._cached = None
        out: dict = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                assert sm.scope.name == "traced_transport"
                for m in sm.metrics:
                    out.setdefault(m.name, []).extend((dict(p.attributes), p, m.unit) for p in m.data.data_points)
        return out

    def value(self, name, **attrs):
        total = 0
        for a, p, _ in self.metrics().get(name, []):
            if all(a.get(k.replace("_", ".")) == v for k, v in attrs.items()):
                total += p.value if hasattr(p, "value") else p.count
        return total

    def spans(self):
        return self.exporter.get_finished_spans()


EXPECTED_UNITS = {
    "transport.connection.opened": "{connection}",
    "transport.connection.active": "{connection}",
    "transport.connection.duration": "s",
    "transport.received": "By",
    "transport.sent": "By",
    "transport.reading.paused": "{connection}",
    "transport.writing.paused": "{connection}",
    "transport.write_buffer.size": "By",
    "transport.reading.pause.duration": "s",
}


def test_tcp_metrics_and_spans(run):
    otel = Otel()

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            lambda: Collect(echo=True), wrap_server=otel.server(), wrap_client=otel.client()
        )
        port = server.sockets[0].getsockname()[1]
        c_tr.write(b"x" * 1000)
        await c_app.wait_bytes(1000)
        # live counts, before any connection closed
        m = otel.metrics()
        assert {a["transport.name"] for a, _, _ in m["transport.received"]} == {"s", "c"}
        assert otel.value("transport.received", transport_name="s") == 1000
        assert otel.value("transport.connection.active", transport_name="s") == 1
        s_app.transport.pause_reading()
        assert otel.value("transport.reading.paused", transport_name="s") == 1
        s_app.transport.resume_reading()
        c_tr.close()
        await s_app.lost
        await c_app.lost
        await closed(server)
        m = otel.metrics()
        for name, unit in EXPECTED_UNITS.items():
            assert name in m, name
            assert {u for _, _, u in m[name]} == {unit}, name
        assert otel.value("transport.received", transport_name="s") == 1000
        assert otel.value("transport.sent", transport_name="s") == 1000
        assert otel.value("transport.sent", transport_name="c") == 1000
        assert otel.value("transport.connection.opened", transport_name="s") == 1
        assert otel.value("transport.connection.active", transport_name="s") == 0
        assert otel.value("transport.reading.pause.duration", transport_name="s") == 1
        (s_attrs,) = [a for a, _, _ in m["transport.connection.opened"] if a["transport.name"] == "s"]
        assert s_attrs == {
            "transport.name": "s",
            "transport.side": "server",
            "network.transport": "tcp",
            "network.type": "ipv4",
            "server.port": port,
        }
        (c_attrs,) = [a for a, _, _ in m["transport.connection.opened"] if a["transport.name"] == "c"]
        assert "server.port" not in c_attrs and c_attrs["transport.side"] == "client"
        # no peer address or port in any metric attribute
        for points in m.values():
            for a, _, _ in points:
                assert not any(k.startswith("network.peer") or k.startswith("network.local") for k in a)
        (dur,) = [p for a, p, _ in m["transport.connection.duration"] if a["transport.name"] == "s"]
        assert dur.count == 1 and list(dur.explicit_bounds) == [
            0.01,
            0.02,
            0.05,
            0.1,
            0.2,
            0.5,
            1,
            2,
            5,
            10,
            30,
            60,
            120,
            300,
        ]
        spans = {s.attributes["transport.name"]: s for s in otel.spans()}
        s_span, c_span = spans["s"], spans["c"]
        assert s_span.name == "s connection" and s_span.kind == SpanKind.SERVER
        assert c_span.kind == SpanKind.CLIENT
        a = s_span.attributes
        assert a["network.peer.address"] == "127.0.0.1" and a["network.peer.port"] == c_tr.get_extra_info("sockname")[1]
        assert a["network.local.port"] == port and a["network.transport"] == "tcp" and a["network.type"] == "ipv4"
        assert a["transport.received"] == 1000 and a["transport.sent"] == 1000
        assert a["transport.reading.pauses"] == 1 and a["transport.close_reason"] == "eof"
        assert "error.type" not in a
        assert [e.name for e in s_span.events] == [
            "transport.reading.paused",
            "transport.reading.resumed",
            "transport.eof",
        ]
        assert s_span.status.status_code == StatusCode.UNSET
        assert s_span.end_time - s_span.start_time > 0

    run(main)


def test_tls_with_client_certificates(run, ca):
    otel = Otel()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    ca.issue_cert("client@example.org", common_name="client.example").configure_cert(client_ctx)
    client_ctx.set_alpn_protocols(["h2"])

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            lambda: Collect(echo=True),
            wrap_server=otel.server(),
            wrap_client=otel.client(),
            ssl_server=server_ctx,
            ssl_client=client_ctx,
        )
        version = c_tr.get_extra_info("ssl_object").version()[len("TLSv") :]
        c_tr.write(b"y" * 5000)
        await c_app.wait_bytes(5000)
        c_tr.close()
        await s_app.lost
        await c_app.lost
        await closed(server)
        assert otel.value("transport.received", transport_name="s", tls_protocol_version=version) == 5000
        spans = {s.attributes["transport.name"]: s for s in otel.spans()}
        sa, ca_ = spans["s"].attributes, spans["c"].attributes
        assert sa["tls.protocol.name"] == "tls" and sa["tls.protocol.version"] == version
        assert sa["tls.established"] is True and sa["tls.next_protocol"] == "h2"
        assert sa["tls.cipher"].startswith("TLS_")
        assert sa["tls.client.subject"].startswith("CN=client.example,")
        assert sa["tls.client.issuer"] and sa["tls.client.not_after"].endswith("Z")
        assert len(sa["tls.client.hash.sha256"]) == 64
        assert ca_["tls.server.subject"] and len(ca_["tls.server.hash.sha256"]) == 64
        assert "tls.resumed" in sa

    run(main)


def test_certificate_subjects_can_be_turned_off(run, server_ctx, client_ctx):
    otel = Otel(certificate_subjects=False)

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            wrap_server=otel.server(), wrap_client=otel.client(), ssl_server=server_ctx, ssl_client=client_ctx
        )
        c_tr.close()
        await s_app.lost
        await c_app.lost
        await closed(server)
        (c_span,) = [s for s in otel.spans() if s.attributes["transport.name"] == "c"]
        assert "tls.server.subject" not in c_span.attributes
        assert "tls.server.hash.sha256" in c_span.attributes

    run(main)


def test_unix_udp_pipes_metrics(run, tmp_path):
    otel = Otel()

    async def main():
        loop = asyncio.get_running_loop()
        apps = []

        def factory():
            apps.append(Collect(echo=True))
            return apps[-1]

        path = str(tmp_path / "u.sock")
        server = await loop.create_unix_server(otel.server("unix")(factory), path)
        c_tr, c_app = await loop.create_unix_connection(Collect, path)
        c_tr.write(b"u" * 123)
        await c_app.wait_bytes(123)
        c_tr.close()
        await apps[0].lost
        await closed(server)

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(data, addr)

        got = asyncio.Queue()

        class UdpClient(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.put_nowait(data)

        s_tr, _ = await loop.create_datagram_endpoint(otel.server("udp")(Udp), local_addr=("127.0.0.1", 0))
        u_tr, _ = await loop.create_datagram_endpoint(
            UdpClient, remote_addr=("127.0.0.1", s_tr.get_extra_info("sockname")[1])
        )
        u_tr.sendto(b"d" * 77)
        assert await got.get() == b"d" * 77
        u_tr.close()

        rfd, wfd = os.pipe()
        reader = Collect()
        r_tr, _ = await loop.connect_read_pipe(otel.server("pipe")(lambda: reader), os.fdopen(rfd, "rb", 0))
        with os.fdopen(wfd, "wb", 0) as w:
            w.write(b"p" * 55)
        await reader.lost
        assert otel.value("transport.received", transport_name="unix", network_transport="unix") == 123
        assert otel.value("transport.received", transport_name="udp", network_transport="udp") == 77
        assert otel.value("transport.sent", transport_name="udp") == 77
        assert otel.value("transport.received", transport_name="pipe", network_transport="pipe") == 55
        assert otel.value("transport.connection.active", transport_name="udp") == 1
        s_tr.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert otel.value("transport.connection.active", transport_name="udp") == 0

    run(main)


def test_error_type_on_abnormal_close(run):
    otel = Otel()

    class Boom(Exception):
        pass

    class Raiser(Collect):
        def data_received(self, data):
            raise Boom("app failure")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, ctx: None)
        for app, action in ((Raiser, "write"), (Collect, "abort")):
            server, s_app, c_tr, c_app = await tcp_pair(app, wrap_server=otel.server())
            if action == "write":
                c_tr.write(b"!")
            else:
                s_app.transport.abort()
            await s_app.lost
            c_tr.close()
            await closed(server)
        m = otel.metrics()
        types = sorted(a.get("error.type") for a, _, _ in m["transport.connection.duration"])
        assert types == ["Boom", "aborted"]
        spans = sorted(otel.spans(), key=lambda s: s.attributes["transport.close_reason"])
        aborted, boom = spans
        assert aborted.attributes["error.type"] == "aborted"
        assert aborted.status.status_code == StatusCode.UNSET
        assert boom.status.status_code == StatusCode.ERROR
        assert boom.events[-1].name == "exception"
        assert boom.events[-1].attributes["exception.type"].endswith("Boom")

    run(main)


def test_span_events_are_capped(run):
    otel = Otel(max_span_events=4)

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=otel.server())
        for _ in range(10):
            s_app.transport.pause_reading()
            s_app.transport.resume_reading()
        c_tr.close()
        await s_app.lost
        await closed(server)
        (span,) = otel.spans()
        assert len(span.events) == 4
        assert span.attributes["transport.events.dropped"] == 17  # 20 transitions + eof - 4
        assert otel.value("transport.reading.pause.duration") == 10

    run(main)


def test_unsampled_connections_compute_no_attributes(run, monkeypatch):
    otel = Otel(sampler=ALWAYS_OFF)
    calls = []
    import traced_transport.telemetry.telemetry as tel

    monkeypatch.setattr(tel, "snapshot_extra", lambda t: calls.append(t) or {})

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=otel.server(), wrap_client=otel.client())
        c_tr.write(b"abc")
        await s_app.wait_bytes(3)
        c_tr.close()
        await s_app.lost
        await closed(server)

    run(main)
    assert calls == [] and otel.spans() == ()
    assert otel.value("transport.received", transport_name="s") == 3


def test_access_log(run, caplog):
    otel = Otel(access_log=True)

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=otel.server())
        c_tr.write(b"12345")
        await s_app.wait_bytes(5)
        c_tr.close()
        await s_app.lost
        await closed(server)

    with caplog.at_level(logging.INFO, logger="traced_transport.access"):
        run(main)
    (record,) = [r for r in caplog.records if r.name == "traced_transport.access"]
    fields = record.transport
    assert fields["bytes_received"] == 5 and fields["close_reason"] == "eof" and fields["peer"][0] == "127.0.0.1"


def _raising_tracer():
    class Provider:
        def get_tracer(self, *a, **k):
            return self

        def start_span(self, *a, **k):
            raise RuntimeError("tracer broke")

    return Provider()


class RaisingMeterProvider:
    """An SDK whose instruments raise on every call."""

    def get_meter(self, *a, **k):
        return self

    def __getattr__(self, name):
        if name.startswith("create_"):
            return lambda *a, **k: self
        raise AttributeError(name)

    def record(self, *a, **k):
        raise RuntimeError("instrument broke")


def test_raising_sdk_does_not_reach_app(run):
    registry = tt.Registry()
    telemetry = tt.Telemetry(registry, meter_provider=RaisingMeterProvider(), tracer_provider=_raising_tracer())

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            lambda: Collect(echo=True), wrap_server=lambda f: tt.traced(f, name="s", observer=telemetry)
        )
        s_app.transport.pause_reading()
        s_app.transport.resume_reading()
        c_tr.write(b"ok")
        await c_app.wait_bytes(2)
        c_tr.close()
        assert await s_app.lost is None
        await closed(server)

    run(main)
    assert registry.totals("s").rx == 2


def test_prometheus_names_come_out_once(run):
    pytest.importorskip("opentelemetry.exporter.prometheus")
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import REGISTRY, generate_latest

    reader = PrometheusMetricReader(disable_target_info=True)  # registers on prometheus_client's REGISTRY
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    registry = tt.Registry()
    telemetry = tt.Telemetry(registry, meter_provider=provider)

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=lambda f: tt.traced(f, name="s", observer=telemetry))
        c_tr.write(b"z" * 10)
        await s_app.wait_bytes(10)
        s_app.transport.pause_reading()
        s_app.transport.resume_reading()
        c_tr.close()
        await s_app.lost
        await closed(server)

    try:
        run(main)
        text = generate_latest(REGISTRY).decode()
    finally:
        provider.shutdown()  # unregisters the collector
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for expected in (
        "transport_received_bytes_total",
        "transport_sent_bytes_total",
        "transport_connection_opened_total",
        "transport_connection_active",
        "transport_connection_duration_seconds_bucket",
        "transport_reading_pause_duration_seconds_count",
        "transport_write_buffer_size_bytes",
    ):
        assert expected in names, (expected, sorted(names))
    assert not any("bytes_bytes" in n or "total_total" in n or "seconds_seconds" in n for n in names)
    assert "transport_received_bytes_total{" in text and 'transport_name="s"' in text


def _request_span_in_callback(run, otel, check_while_open) -> dict:
    """One connection whose app starts a "request" span in data_received; the finished spans by name."""
    tracer = otel.tracer_provider.get_tracer("app")

    class App(Collect):
        def data_received(self, data):
            super().data_received(data)
            with tracer.start_as_current_span("request"):
                pass

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(App, wrap_server=otel.server())
        c_tr.write(b"req")
        await s_app.wait_bytes(3)
        check_while_open(s_app.transport)
        c_tr.close()
        await s_app.lost
        await closed(server)

    run(main)
    return {s.name: s for s in otel.spans()}


def test_parent_context_opt_in(run):
    from opentelemetry import trace

    def check(transport):
        assert tt.connection_span_context(transport).is_valid
        # outside the callbacks, the connection span is not current
        assert not trace.get_current_span().get_span_context().is_valid

    spans = _request_span_in_callback(run, Otel(parent_context=True), check)
    request, conn = spans["request"], spans["s connection"]
    assert request.parent is not None and request.parent.span_id == conn.context.span_id


def test_no_parent_context_by_default(run):
    def check(transport):
        assert type(tt.unwrap(transport).get_protocol()).__name__ == "PlainWrapper"

    spans = _request_span_in_callback(run, Otel(), check)
    assert spans["request"].parent is None


def test_tls_server_handshakes_measured_and_failures_counted(run, server_ctx, client_ctx):
    """create_server(ssl=): the handshake is timed, and failed handshakes are counted."""
    otel = Otel()
    closes: list = []
    on_close = otel.telemetry.on_close

    def counting_on_close(rec, exc):
        on_close(rec, exc)
        closes.append(rec.close_reason)
        for n, fut in list(waiters):
            if len(closes) >= n and not fut.done():
                fut.set_result(None)

    otel.telemetry.on_close = counting_on_close
    waiters: list = []

    async def closes_reached(n):
        fut = asyncio.get_running_loop().create_future()
        waiters.append((n, fut))
        if len(closes) >= n:
            fut.set_result(None)
        await asyncio.wait_for(fut, 10)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, ctx: None)  # failed handshakes are reported there too
        server, s_app, c_tr, c_app = await tcp_pair(
            wrap_server=otel.server(), ssl_server=server_ctx, ssl_client=client_ctx
        )
        c_tr.close()
        await s_app.lost
        port = server.sockets[0].getsockname()[1]
        # plain text to the TLS port
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.0\r\n\r\n")
        await r.read()
        w.close()
        # a client that does not trust the server's certificate
        with pytest.raises(ssl.SSLError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=ssl.create_default_context(), server_hostname="localhost"
            )
        await closes_reached(3)
        await closed(server)
        t = otel.registry.totals("s")
        assert t.close_reasons.get("tls_handshake_failed") == 2
        assert (t.opened, t.closed) == (3, 3)

    run(main)
    m = otel.metrics()
    failed = [p for a, p, _ in m["transport.connection.duration"] if a.get("error.type") == "tls_handshake_failed"]
    assert sum(p.count for p in failed) == 2
    handshakes = {a.get("error.type"): p.count for a, p, _ in m["transport.tls.handshake.duration"]}
    assert handshakes == {None: 1, "tls_handshake_failed": 2}
    # The successful handshake carries its cipher (IANA name) and version: "TLS connections by cipher".
    (ok,) = [a for a, p, _ in m["transport.tls.handshake.duration"] if "error.type" not in a]
    assert ok["tls.cipher"].startswith("TLS_") and ok["tls.protocol.version"] in ("1.2", "1.3")
    spans = [s for s in otel.spans() if s.attributes.get("transport.close_reason") == "tls_handshake_failed"]
    assert len(spans) == 2 and all(s.status.status_code == StatusCode.ERROR for s in spans)


def test_start_tls_handshake_metric_has_version_and_cipher(run, server_ctx, client_ctx):
    """After start_tls the connection keeps its plain-TCP attributes; its handshake point names version and cipher."""
    otel = Otel()

    async def main():
        loop = asyncio.get_running_loop()
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=otel.server("up"))
        s_new, c_new = await asyncio.gather(
            loop.start_tls(s_app.transport, s_app, server_ctx, server_side=True),
            loop.start_tls(c_tr, c_app, client_ctx, server_hostname="localhost"),
        )
        cipher = s_new.get_extra_info("cipher")[0]
        c_new.close()
        await s_app.lost
        await closed(server)
        return cipher

    openssl_cipher = run(main)
    m = otel.metrics()
    ((attrs, point, _),) = m["transport.tls.handshake.duration"]
    assert point.count == 1
    assert attrs["tls.protocol.version"] in ("1.2", "1.3")
    assert attrs["tls.cipher"] == iana_cipher(openssl_cipher)
    # The connection's own series stay as they opened: no TLS attributes.
    assert all("tls.protocol.version" not in a for a, _, _ in m["transport.connection.duration"])


def test_cipher_label_is_an_iana_name_or_other():
    from traced_transport.telemetry.attributes import safe_cipher_name

    assert safe_cipher_name("ECDHE-RSA-AES128-GCM-SHA256") == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    assert safe_cipher_name("TLS_AES_256_GCM_SHA384") == "TLS_AES_256_GCM_SHA384"
    for junk in ("", "x" * 65, "a b", "TLS_\u00e9", "x{y}"):
        assert safe_cipher_name(junk) == "other"
