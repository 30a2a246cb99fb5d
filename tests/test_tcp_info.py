"""TCP_INFO at a connection's end and at collection: spans, transport.tcp.* metrics, both loops, TLS, and nothing elsewhere."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import subprocess
import sys
import tempfile

import pytest
from _helpers import Collect, closed, tcp_pair
from test_telemetry import Otel

import traced_transport as tt
from traced_transport import report as _safety
from traced_transport.telemetry import tcp_info as ti

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is Linux's")
TCP_SPAN_KEYS = {
    "transport.tcp.rtt",
    "transport.tcp.rtt_variance",
    "transport.tcp.min_rtt",
    "transport.tcp.retransmits",
    "transport.tcp.total_retrans",
    "transport.tcp.snd_cwnd",
    "transport.tcp.delivery_rate",
    "transport.tcp.pmtu",
}


def _raw_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    return listener, client, accepted


@linux_only
def test_parse_reads_only_the_fields_the_kernel_returned():
    listener, client, accepted = _raw_pair()
    try:
        client.sendall(b"x" * 10000)
        accepted.recv(10000)
        raw = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    finally:
        for s in (listener, client, accepted):
            s.close()
    full = ti.parse(raw)
    assert full.state == 1  # TCP_ESTABLISHED
    assert full.segs_out and full.rtt and full.snd_cwnd and full.pmtu
    assert full.bytes_acked is not None and full.bytes_acked >= 10000
    # Older kernels return a shorter struct: the fields past its end are left out, the rest are the same.
    for length in (0, 7, 8, 70, 104, 140, 148, 167, 168, 200, 216, len(raw)):
        short = ti.parse(raw[:length])
        assert short.length == length
        for name, offset, fmt in ti._FIELDS:
            expected = getattr(full, name) if offset + struct.calcsize("=" + fmt) <= length else None
            assert getattr(short, name) == expected, (length, name)
    assert ti.tcp_span_attributes(ti.parse(b"")) == {}
    assert ti.tcp_span_attributes(None) == {}


class _FakeTransport:
    def __init__(self, sock):
        self.sock = sock

    def get_extra_info(self, name, default=None):
        return self.sock if name == "socket" else default


def test_read_never_raises_and_skips_what_is_not_tcp():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    left, right = socket.socketpair()
    listener, client, accepted = _raw_pair()
    try:
        assert ti.read_tcp_info(_FakeTransport(udp)) is None
        assert ti.read_tcp_info(_FakeTransport(left)) is None
        assert ti.read_tcp_info(_FakeTransport(None)) is None
        assert ti.read_tcp_info(_FakeTransport(object())) is None
        assert ti.read_tcp_info(None) is None
        assert ti.read_tcp_info(object()) is None
        if sys.platform.startswith("linux"):
            assert ti.read_tcp_info(_FakeTransport(client)) is not None
        client.close()  # fileno -1 now: no read of a reused descriptor
        assert ti.read_tcp_info(_FakeTransport(client)) is None
        assert ti.tcp_info_row(_FakeTransport(udp)) == {}
    finally:
        for s in (udp, left, right, listener, client, accepted):
            s.close()


@linux_only
def test_off_unless_asked(monkeypatch):
    monkeypatch.delenv(ti.ENV, raising=False)
    assert tt.Telemetry(tt.Registry()).tcp_info is False
    monkeypatch.setenv(ti.ENV, "1")
    assert tt.Telemetry(tt.Registry()).tcp_info is True
    assert tt.Telemetry(tt.Registry(), tcp_info=False).tcp_info is False
    monkeypatch.delenv(ti.ENV)
    telemetry = Otel().telemetry
    assert telemetry._tcp is None and "transport.tcp.rtt" not in telemetry.histograms
    assert tt.traced(Collect, observer=telemetry).group.tcp_info is False


def _span(otel, name):
    (span,) = [s for s in otel.spans() if s.name == f"{name} connection"]
    return span


def _assert_tcp_span(span):
    attrs = span.attributes
    assert TCP_SPAN_KEYS <= set(attrs), sorted(set(TCP_SPAN_KEYS) - set(attrs))
    assert 0 < attrs["transport.tcp.rtt"] < 1
    assert 0 < attrs["transport.tcp.min_rtt"] <= attrs["transport.tcp.rtt"] + 1e-3
    assert attrs["transport.tcp.snd_cwnd"] > 0 and attrs["transport.tcp.pmtu"] > 0
    assert attrs["transport.tcp.segments.sent"] > 0


@linux_only
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("closer", ["client", "server"])
def test_spans_and_metrics_at_close(run, tls, closer, server_ctx, client_ctx):
    otel = Otel(tcp_info=True)

    async def main():
        server, s_proto, c_tr, c_proto = await tcp_pair(
            wrap_server=otel.server(),
            wrap_client=otel.client(),
            ssl_server=server_ctx if tls else None,
            ssl_client=client_ctx if tls else None,
        )
        c_tr.write(b"x" * 200_000)
        await s_proto.wait_bytes(200_000)
        s_proto.transport.write(b"y" * 50_000)
        await c_proto.wait_bytes(50_000)
        if closer == "client":
            c_tr.close()
        else:
            s_proto.transport.close()
        await asyncio.wait_for(asyncio.gather(s_proto.lost, c_proto.lost), 10)
        await closed(server)

    run(main)
    for name in ("s", "c"):
        _assert_tcp_span(_span(otel, name))
    metrics = otel.metrics()
    rtt = {a["transport.name"]: p for a, p, _ in metrics["transport.tcp.rtt"]}
    assert rtt["s"].count == 1 and rtt["c"].count == 1 and 0 < rtt["s"].sum < 1
    share = {a["transport.name"]: p for a, p, _ in metrics["transport.tcp.retransmitted.ratio"]}
    assert share["s"].count == 1 and share["s"].sum == 0  # loopback loses nothing
    sent = {a["transport.name"]: p.value for a, p, _ in metrics["transport.tcp.segments.sent"]}
    # 200 kB need several segments even with loopback's 64 kB MSS.
    assert sent["c"] >= 4 and sent["s"] >= 1
    assert {a["transport.name"] for a, _, _ in metrics["transport.tcp.segments.retransmitted"]} == {"s", "c"}
    assert all(u == "s" for _, _, u in metrics["transport.tcp.rtt"])
    # Nothing left waiting for a close that has happened.
    assert not otel.telemetry._tcp_infos and not otel.telemetry._tcp.early


@linux_only
def test_unsent_and_unacked_of_live_connections(run):
    otel = Otel(tcp_info=True)

    async def main():
        server, s_proto, c_tr, c_proto = await tcp_pair(wrap_server=otel.server(), wrap_client=otel.client())
        c_tr.pause_reading()  # the client reads nothing: the server's data piles up in its kernel
        s_tr = s_proto.transport
        while not s_proto.paused:
            s_tr.write(b"z" * 1_000_000)
            await asyncio.sleep(0)  # lets the loop send, as an app writing in a loop would
        await asyncio.wait_for(s_proto.paused_event.wait(), 10)
        metrics = await asyncio.to_thread(otel.metrics)  # collection runs on another thread, as a scrape does
        unsent = {a["transport.name"]: p.value for a, p, _ in metrics["transport.tcp.unsent"]}
        assert unsent["s"] > 0 and unsent.get("c", 0) == 0
        assert {a["transport.name"] for a, _, _ in metrics["transport.tcp.unacked"]} == {"s", "c"}
        row = ti.tcp_info_row(s_tr)
        assert row["rtt_s"] > 0 and row["retransmits"] == 0 and row["notsent_bytes"] > 0
        s_tr.abort()
        c_tr.close()
        await asyncio.wait_for(asyncio.gather(s_proto.lost, c_proto.lost), 10)
        await closed(server)

    run(main)
    metrics = otel.metrics()
    # No live connection left: nothing unsent, and each series seen stays, at 0 (a vanished gauge reads as
    # "no data" on a dashboard).
    for name in ("transport.tcp.unsent", "transport.tcp.unacked"):
        points = {a["transport.name"]: p.value for a, p, _ in metrics[name]}
        assert points == {"s": 0, "c": 0}, (name, points)


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self):
        self.got = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if not self.got.done():
            self.got.set_result(data)


def test_unix_and_udp_untouched(run, caplog):
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets here")
    _safety.reset_rate_limit()
    otel = Otel(tcp_info=True)

    async def main():
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory() as tmp:
            accepted: asyncio.Future = loop.create_future()

            def factory():
                proto = Collect()
                accepted.set_result(proto)
                return proto

            server = await loop.create_unix_server(otel.server("u")(factory), f"{tmp}/s")
            c_tr, c_proto = await loop.create_unix_connection(otel.client("uc")(Collect), f"{tmp}/s")
            s_proto = await accepted
            c_tr.write(b"hello")
            await s_proto.wait_bytes(5)
            assert ti.tcp_info_row(c_tr) == {}
            c_tr.close()
            await asyncio.wait_for(asyncio.gather(s_proto.lost, c_proto.lost), 10)
            await closed(server)
        receiver_tr, receiver = await loop.create_datagram_endpoint(
            otel.server("d")(_Datagram), local_addr=("127.0.0.1", 0)
        )
        port = receiver_tr.get_extra_info("sockname")[1]
        sender_tr, _ = await loop.create_datagram_endpoint(
            otel.client("dc")(_Datagram), remote_addr=("127.0.0.1", port)
        )
        sender_tr.sendto(b"ping")
        await asyncio.wait_for(receiver.got, 10)
        assert ti.tcp_info_row(sender_tr) == {}
        sender_tr.close()
        receiver_tr.close()

    with caplog.at_level(logging.WARNING, logger="traced_transport"):
        run(main)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    for span in otel.spans():
        assert not [k for k in span.attributes if k.startswith("transport.tcp.")], span.name
    metrics = otel.metrics()
    for name in ("transport.tcp.rtt", "transport.tcp.segments.sent", "transport.tcp.unsent"):
        assert not metrics.get(name), name


@linux_only
def test_prometheus_names_pass_promtool(run, promtool_bin):
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest
    from traced_transport.exporters import histograms
    from traced_transport.exporters.prometheus import prometheus_reader

    registry = CollectorRegistry(auto_describe=False)
    reader, _collector = prometheus_reader(registry)
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    telemetry = tt.Telemetry(tt.Registry(), meter_provider=provider, spans=False, tcp_info=True)
    histograms.attach(reader, telemetry)

    async def main():
        server, s_proto, c_tr, c_proto = await tcp_pair(
            wrap_server=lambda f: tt.traced(f, name="p", observer=telemetry),
            wrap_client=lambda f: tt.traced(f, name="pc", side="client", observer=telemetry),
        )
        c_tr.write(b"x" * 1000)
        await s_proto.wait_bytes(1000)
        text = await asyncio.to_thread(lambda: generate_latest(registry).decode())  # one connection still open
        c_tr.close()
        await asyncio.wait_for(asyncio.gather(s_proto.lost, c_proto.lost), 10)
        await closed(server)
        return text

    live_text = run(main)
    text = generate_latest(registry).decode()
    for name in (
        "transport_tcp_rtt_seconds_bucket{",
        "transport_tcp_retransmitted_ratio_bucket{",
        "transport_tcp_segments_sent_total{",
        "transport_tcp_segments_retransmitted_total{",
    ):
        assert name in text, name
    assert "transport_tcp_unsent_bytes{" in live_text and "transport_tcp_unacked{" in live_text
    for t in (text, live_text):
        proc = subprocess.run([promtool_bin, "check", "metrics"], input=t.encode(), capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@linux_only
def test_read_after_start_tls(run, server_ctx, client_ctx):
    """A connection upgraded with start_tls loses its TCP socket before connection_lost too: read at the EOF."""
    otel = Otel(tcp_info=True)

    async def main():
        loop = asyncio.get_running_loop()
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=otel.server("up"))
        s_new, c_new = await asyncio.gather(
            loop.start_tls(s_app.transport, s_app, server_ctx, server_side=True),
            loop.start_tls(c_tr, c_app, client_ctx, server_hostname="localhost"),
        )
        c_new.write(b"x" * 5000)
        await s_app.wait_bytes(5000)
        c_new.close()
        await s_app.lost
        await closed(server)

    run(main)
    _assert_tcp_span(_span(otel, "up"))


@linux_only
@pytest.mark.parametrize("live", [False, True], ids=["at-close", "live"])
def test_segment_counters_of_a_long_connection(run, live):
    """With live counters, an open connection's segments show at each collection; either way the total at the
    end is exactly what the kernel counted for the connection (the span's transport.tcp.segments.sent)."""
    otel = Otel(tcp_info=True, tcp_info_live_counters=live)

    def sent() -> int:
        return sum(
            p.value for a, p, _ in otel.metrics().get("transport.tcp.segments.sent", []) if a["transport.name"] == "c"
        )

    async def main():
        server, s_proto, c_tr, c_proto = await tcp_pair(wrap_server=otel.server(), wrap_client=otel.client())
        seen = []
        for i in range(1, 4):
            c_tr.write(b"x" * 100_000)
            await s_proto.wait_bytes(100_000 * i)
            seen.append(await asyncio.to_thread(sent))
        c_tr.close()
        await asyncio.wait_for(asyncio.gather(s_proto.lost, c_proto.lost), 10)
        await closed(server)
        return seen

    seen = run(main)
    if live:
        assert 0 < seen[0] < seen[1] < seen[2], seen
    else:
        assert seen == [0, 0, 0]
    total = sent()
    assert total == _span(otel, "c").attributes["transport.tcp.segments.sent"] >= seen[-1]
    assert not otel.telemetry._tcp._counted


def test_elsewhere_nothing_and_no_error(run, monkeypatch, caplog):
    """Where there is no Linux TCP_INFO (macOS, Windows, BSDs), TCP connections get no tcp attributes or points."""
    monkeypatch.setattr(ti, "_TCP_INFO", None)
    _safety.reset_rate_limit()
    otel = Otel(tcp_info=True)
    assert otel.telemetry.tcp_info is False

    async def main():
        server, s_proto, c_tr, c_proto = await tcp_pair(wrap_server=otel.server(), wrap_client=otel.client())
        c_tr.write(b"x" * 1000)
        await s_proto.wait_bytes(1000)
        assert ti.tcp_info_row(c_tr) == {}
        c_tr.close()
        await asyncio.wait_for(asyncio.gather(s_proto.lost, c_proto.lost), 10)
        await closed(server)

    with caplog.at_level(logging.WARNING, logger="traced_transport"):
        run(main)
    assert not caplog.records
    assert not [k for s in otel.spans() for k in s.attributes if k.startswith("transport.tcp.")]
    assert not [name for name in otel.metrics() if name.startswith("transport.tcp.")]
