"""The Prometheus scrape endpoint (traced_transport.exporters.prometheus) and traced_transport.exporters.sdk.setup(), over real sockets.

HTTP clients are http.client and raw sockets; TLS is real (trustme certificates); the traced servers run on
asyncio and uvloop. Waiting is on data (a response, EOF, an event), never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import gzip
import http.client
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.prometheus")
pytest.importorskip("prometheus_client")

from _helpers import Collect
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families
from traced_transport.exporters import _http, sdk
from traced_transport.exporters.prometheus import ReaderCollector, ScrapeEndpoint, exposition

import traced_transport as tt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAIN = "text/plain; version=0.0.4; charset=utf-8"


# -- clients -----------------------------------------------------------------------------------------
def get(url_or_endpoint, path=None, *, method="GET", headers=None, context=None, timeout=10.0):
    """(status, headers, body) from one request on a fresh connection."""
    ep = url_or_endpoint
    host, port = "127.0.0.1", ep.port
    path = path if path is not None else ep.path
    if ep.certfile:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes (a reset ends it too)."""
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def raw(port, data: bytes, *, timeout=10.0, host="127.0.0.1") -> bytes:
    """Send ``data`` on a plain socket and read until the server closes."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def samples(text: str) -> dict:
    """{(sample name, frozenset of labels): value} from the text format."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(parsed: dict, name: str, **labels) -> float:
    found = [v for (n, ls), v in parsed.items() if n == name and all((k, str(x)) in ls for k, x in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def client_ctx(certs, cert=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca)
    if cert is not None:
        ctx.load_cert_chain(cert)
    return ctx


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture
def static_registry():
    reg = CollectorRegistry()
    c = Counter("demo_requests", "Requests handled", ["code"], registry=reg)
    c.labels("200").inc(3)
    Gauge("demo_temperature_celsius", "A gauge", registry=reg).set(21.5)
    return reg


@pytest.fixture
def endpoints():
    started = []

    def start(registry, **kwargs):
        kwargs.setdefault("port", 0)
        ep = ScrapeEndpoint(registry, **kwargs).start()
        started.append(ep)
        return ep

    yield start
    for ep in started:
        ep.stop()


@pytest.fixture
def stack():
    """setup() with its own providers (not global), a fresh Registry and a Telemetry over both."""
    s = sdk.setup(service_name="scrape-test", metrics_port=0, set_global=False, otlp=False)
    registry = tt.Registry()
    telemetry = tt.Telemetry(registry, meter_provider=s.meter_provider, tracer_provider=s.tracer_provider)
    yield s, registry, telemetry
    s.shutdown()


@pytest.fixture(autouse=True)
def _fresh_rate_limit():
    _http.rate_limited.reset()
    yield


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


# -- formats ---------------------------------------------------------------------------------------------
def test_text_format_by_default(endpoints, static_registry):
    ep = endpoints(static_registry)
    status, headers, body = get(ep)
    assert status == 200
    assert headers["content-type"] == PLAIN
    assert int(headers["content-length"]) == len(body)
    assert "content-encoding" not in headers
    parsed = samples(body.decode())
    assert value(parsed, "demo_requests_total", code="200") == 3
    assert value(parsed, "demo_temperature_celsius") == 21.5


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",  # what Prometheus sends
    ],
)
def test_openmetrics_by_negotiation(endpoints, static_registry, accept):
    ep = endpoints(static_registry)
    status, headers, body = get(ep, headers={"Accept": accept})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0; charset=utf-8")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in om_families(text)}
    assert families["demo_requests"].samples[0].value == 3


@pytest.mark.parametrize(
    "accept",
    [
        "text/plain",
        "*/*",
        "application/json",
        "application/openmetrics-text; version=x.y",
        "application/openmetrics-text; version=0.0.1",
        ";;;,,,=",
        "",
    ],
)
def test_other_accept_headers_get_text(endpoints, static_registry, accept):
    ep = endpoints(static_registry)
    status, headers, body = get(ep, headers={"Accept": accept})
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert value(samples(body.decode()), "demo_requests_total", code="200") == 3


@pytest.mark.parametrize(
    "accept_encoding,compressed",
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("GZIP", True),
        ("gzip;q=0", False),
        ("identity", False),
        ("br", False),
    ],
)
def test_gzip(endpoints, static_registry, accept_encoding, compressed):
    ep = endpoints(static_registry)
    _, _, plain = get(ep)
    status, headers, body = get(ep, headers={"Accept-Encoding": accept_encoding})
    assert status == 200
    assert int(headers["content-length"]) == len(body)
    if compressed:
        assert headers["content-encoding"] == "gzip"
        assert gzip.decompress(body) == plain
    else:
        assert "content-encoding" not in headers
        assert body == plain


def test_head_has_headers_and_no_body(endpoints, static_registry):
    ep = endpoints(static_registry)
    _, _, body = get(ep)
    response = raw(ep.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = response.partition(b"\r\n\r\n")
    assert status_of(response) == 200
    assert f"Content-Length: {len(body)}".encode() in head
    assert rest == b""


def test_keep_alive_serves_several_requests_on_one_connection(endpoints, static_registry):
    ep = endpoints(static_registry)
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=10)
    try:
        socks = set()
        for _ in range(3):
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
            socks.add(id(conn.sock))
        assert len(socks) == 1 and conn.sock is not None
    finally:
        conn.close()


def test_query_string_is_ignored(endpoints, static_registry):
    ep = endpoints(static_registry)
    assert get(ep, "/metrics?name[]=demo_requests_total&x=%ff")[0] == 200


# -- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/metrics/", "/metricsx", "/other", "/METRICS", "*", "/metrics/../metrics"])
def test_other_paths_404(endpoints, static_registry, path):
    ep = endpoints(static_registry)
    status, headers, body = get(ep, path)
    assert status == 404
    assert headers["content-type"].startswith("text/plain")
    assert b"demo_requests" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "FOO"])
def test_wrong_methods_405(endpoints, static_registry, method):
    ep = endpoints(static_registry)
    request = f"{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".encode()
    response = raw(ep.port, request)
    assert status_of(response) == 405
    assert b"\r\nAllow: GET, HEAD\r\n" in response
    assert b"demo_requests" not in response


@pytest.mark.parametrize(
    "request_bytes,expected",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.x\r\nHost: x\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET /metrics FTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/9.9\r\n\r\n", 505),
        (b"GET /metrics HTTP/0.9\r\n\r\n", 505),  # was served as a bare body, no status line (found by fuzzing)
        (b"GET /metrics HTTP/0.9\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + b"\r\n", 431),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n", 400),  # a TLS hello
        (b"\xff\xfe\xfd\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\n continuation\r\nConnection: close\r\n\r\n", 200),  # lenient, as http.server is
    ],
)
def test_malformed_requests(endpoints, static_registry, request_bytes, expected):
    ep = endpoints(static_registry)
    response = raw(ep.port, request_bytes)
    assert status_of(response) == expected
    assert b"Traceback" not in response and b'File "' not in response
    assert get(ep)[0] == 200  # still serving


@pytest.mark.parametrize(
    "request_bytes,expected",
    [
        (b"GET /metrics?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (
            b"GET /metrics HTTP/1.1\r\n"
            + b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 2000) for i in range(20))
            + b"\r\n",
            431,
        ),
        (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + b"\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\nX-Huge: " + b"v" * 70000 + b"\r\n\r\n", 431),
    ],
)
def test_oversized_requests(endpoints, static_registry, request_bytes, expected):
    ep = endpoints(static_registry)
    with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as s:
        try:
            s.sendall(request_bytes)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading all of it
        response = read_all(s)
    assert status_of(response) == expected
    assert get(ep)[0] == 200


def test_collector_failure_is_500_short_and_logged_rate_limited(endpoints, caplog):
    class Broken:
        def collect(self):
            raise RuntimeError("secret internal detail")

    reg = CollectorRegistry()
    reg.register(Broken())
    ep = endpoints(reg)
    with caplog.at_level(logging.WARNING, logger="traced_transport.exporters.http"):
        for _ in range(3):
            status, headers, body = get(ep)
            assert status == 500
            assert len(body) < 100 and b"secret" not in body and b"Traceback" not in body
    records = [r for r in caplog.records if "collection failed" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is not None


def test_app_failure_is_500(endpoints, static_registry, monkeypatch):
    ep = endpoints(static_registry)

    def broken(handler):
        raise ValueError("boom")

    monkeypatch.setattr(ep._server, "app", broken)
    status, _, body = get(ep)
    assert status == 500 and b"boom" not in body


# -- authentication ---------------------------------------------------------------------------------------------
def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("prom", "wrong"),
        basic("other", "s3cret pass"),
        basic("prom", "s3cret pass!"),
        basic("prom", ""),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"prom").decode()},  # no colon
        {"Authorization": "Bearer s3cret pass"},
        {"Authorization": "Basic"},
    ],
)
def test_basic_auth_rejects(endpoints, static_registry, headers):
    ep = endpoints(static_registry, basic_auth=("prom", "s3cret pass"))
    for path in ("/metrics", "/other"):
        status, resp_headers, body = get(ep, path, headers=headers)
        assert status == 401
        assert resp_headers["www-authenticate"].startswith('Basic realm="metrics"')
        assert b"demo_requests" not in body


def test_basic_auth_accepts(endpoints, static_registry):
    ep = endpoints(static_registry, basic_auth=("prom", "s3cret pass"))
    status, _, body = get(ep, headers=basic("prom", "s3cret pass"))
    assert status == 200 and b"demo_requests_total" in body
    assert get(ep, "/other", headers=basic("prom", "s3cret pass"))[0] == 404


def test_basic_auth_user_with_colon_refused(static_registry):
    with pytest.raises(ValueError):
        ScrapeEndpoint(static_registry, basic_auth=("a:b", "c"))


# -- TLS ---------------------------------------------------------------------------------------------------
def test_tls(endpoints, static_registry, scrape_certs):
    ep = endpoints(static_registry, certfile=scrape_certs.server_cert, keyfile=scrape_certs.server_key)
    assert ep.url.startswith("https://127.0.0.1:")
    status, _, body = get(ep, context=client_ctx(scrape_certs))
    assert status == 200 and b"demo_requests_total" in body
    # Plain HTTP on the TLS port: no answer in clear, and the endpoint carries on.
    response = raw(ep.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"demo_requests" not in response
    # A client that does not trust the server's CA fails its handshake.
    with pytest.raises(ssl.SSLCertVerificationError):
        get(ep, context=ssl.create_default_context())
    assert get(ep, context=client_ctx(scrape_certs))[0] == 200


def _rejected(ep, ctx):
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        get(ep, context=ctx)


def test_client_certificates(endpoints, static_registry, scrape_certs):
    ep = endpoints(
        static_registry,
        certfile=scrape_certs.server_cert,
        keyfile=scrape_certs.server_key,
        client_cafile=scrape_certs.ca,
    )
    status, _, body = get(ep, context=client_ctx(scrape_certs, scrape_certs.client))
    assert status == 200 and b"demo_requests_total" in body
    _rejected(ep, client_ctx(scrape_certs))  # no certificate
    _rejected(ep, client_ctx(scrape_certs, scrape_certs.stranger))  # signed by another CA
    assert get(ep, context=client_ctx(scrape_certs, scrape_certs.client))[0] == 200


def test_tls_client_cert_and_basic_auth_together(endpoints, static_registry, scrape_certs):
    ep = endpoints(
        static_registry,
        certfile=scrape_certs.server_cert,
        keyfile=scrape_certs.server_key,
        client_cafile=scrape_certs.ca,
        basic_auth=("prom", "pw"),
    )
    ctx = client_ctx(scrape_certs, scrape_certs.client)
    assert get(ep, context=ctx)[0] == 401
    assert get(ep, context=ctx, headers=basic("prom", "pw"))[0] == 200


def test_tls_misconfiguration_is_an_error(static_registry, scrape_certs):
    with pytest.raises(ValueError):
        ScrapeEndpoint(static_registry, client_cafile=scrape_certs.ca)
    with pytest.raises(ValueError):
        ScrapeEndpoint(static_registry, keyfile=scrape_certs.server_key)


def test_slow_tls_handshake_does_not_block_accept(endpoints, static_registry, scrape_certs):
    ep = endpoints(static_registry, certfile=scrape_certs.server_cert, keyfile=scrape_certs.server_key, timeout=1.0)
    with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as idle:
        idle.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        assert get(ep, context=client_ctx(scrape_certs))[0] == 200
        started = time.monotonic()
        try:  # closed (perhaps after an alert) once the handshake's 1 s budget is spent
            while idle.recv(1024):
                pass
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 5


# -- slow and too many clients --------------------------------------------------------------------------------
def test_half_requests_do_not_stop_others(endpoints, static_registry):
    ep = endpoints(static_registry, timeout=2.5, max_connections=8)
    slow = [socket.create_connection(("127.0.0.1", ep.port), timeout=10) for _ in range(5)]
    try:
        started = time.monotonic()
        for s in slow:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: half a request
        for _ in range(3):
            assert get(ep)[0] == 200
        assert time.monotonic() - started < 2.0  # served without waiting for the slow ones' timeout
        for s in slow:  # each gets a 408 once its budget is spent, then EOF
            response = read_all(s)
            assert status_of(response) == 408 and response.endswith(b"408 Request Timeout\n")
    finally:
        for s in slow:
            s.close()


def test_trickling_client_cut_off_at_the_deadline(endpoints, static_registry):
    """One byte every 50 ms never trips a per-recv timeout; the head's total budget (0.5 s) still ends it."""
    ep = endpoints(static_registry, timeout=0.5)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 1000
    started = time.monotonic()
    cut = None
    with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as s:
        s.settimeout(0.05)  # paces the trickle: wait for the server's answer 50 ms per byte
        for byte in request:
            try:
                s.sendall(bytes([byte]))
                reply = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                cut = b""
                break
            cut = reply
            break
    elapsed = time.monotonic() - started
    assert cut is not None, "the server kept reading a trickling request head"
    assert cut == b"" or status_of(cut) == 408
    assert 0.4 < elapsed < 3.0


def test_idle_keep_alive_connection_closed_after_timeout(endpoints, static_registry):
    ep = endpoints(static_registry, timeout=0.5)
    with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while b"# TYPE demo_temperature_celsius" not in buf or not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk
            buf += chunk
        started = time.monotonic()
        assert s.recv(65536) == b""  # closed silently (no 408: no request was started)
        assert time.monotonic() - started < 3


def test_beyond_max_connections_503_then_recovers(endpoints, static_registry):
    ep = endpoints(static_registry, timeout=5.0, max_connections=2)
    held = []
    try:
        for _ in range(2):  # two keep-alive connections, each with a thread waiting for its next request
            conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=10)
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
            held.append(conn)
        status, headers, body = get(ep)
        assert status == 503 and headers.get("retry-after") == "1"
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + 5
    while get(ep)[0] != 200:  # the held threads see EOF and give their slots back
        assert time.monotonic() < deadline


# -- binding and life cycle ---------------------------------------------------------------------------------
def _non_loopback_ipv4():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def test_binds_loopback_by_default(endpoints, static_registry):
    ep = endpoints(static_registry)
    assert ep._server.server_address[0] == "127.0.0.1"
    assert ep.url == f"http://127.0.0.1:{ep.port}/metrics"
    other = _non_loopback_ipv4()
    if other is not None:
        with pytest.raises(OSError):
            socket.create_connection((other, ep.port), timeout=5).close()


def test_binds_other_addresses_only_when_asked(endpoints, static_registry):
    ep = endpoints(static_registry, host="0.0.0.0")
    assert ep._server.server_address[0] == "0.0.0.0"
    assert get(ep)[0] == 200


def test_ipv6_loopback(endpoints, static_registry):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        ep = endpoints(static_registry, host="::1")
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    assert ep.url == f"http://[::1]:{ep.port}/metrics"
    conn = http.client.HTTPConnection("::1", ep.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_port_taken_is_a_clear_oserror(static_registry):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            ScrapeEndpoint(static_registry, port=port).start()
        assert info.value.errno == errno.EADDRINUSE
        assert f"127.0.0.1:{port}" in str(info.value)
        with pytest.raises(OSError):
            sdk.setup(metrics_port=port, set_global=False, otlp=False)
        assert time.monotonic() - started < 5
    assert not [t for t in threading.enumerate() if t.name.startswith("traced-transport-scrape")]


def test_stop_ends_open_connections_and_frees_the_port(static_registry):
    ep = ScrapeEndpoint(static_registry, port=0, timeout=30).start()
    port = ep.port
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    half = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        half.sendall(b"GET /metrics HTTP/1.1\r\n")
        assert get(ep)[0] == 200
        started = time.monotonic()
        ep.stop()
        assert time.monotonic() - started < 3
        assert half.recv(1024) == b""
        ep.stop()  # idempotent
        assert not ep.running
        assert not [t for t in threading.enumerate() if t.name.startswith("traced-transport-scrape")]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        idle.close()
        half.close()
    ScrapeEndpoint(static_registry, port=port).start().stop()  # the port can be bound again at once


# -- the OpenTelemetry pipeline -----------------------------------------------------------------------------------
def test_traced_server_metrics_exact(run, stack, promtool_check):
    """A traced echo server and client (asyncio and uvloop); the scrape, over HTTP while the loop runs, has the bytes."""
    s, registry, telemetry = stack
    sizes = [1, 1000, 3 * 65536 + 7, 12345]
    result = {}

    async def main():
        loop = asyncio.get_running_loop()
        echoes = []

        def factory():
            echoes.append(Echo())
            return echoes[-1]

        server = await loop.create_server(tt.traced(factory, name="echo", observer=telemetry), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        keep = None
        for i, n in enumerate(sizes):
            transport, proto = await loop.create_connection(
                tt.traced(Collect, name="echo-client", side="client", observer=telemetry), "127.0.0.1", port
            )
            await proto.made
            transport.write(bytes([i % 256]) * n)
            await proto.wait_bytes(n)
            if i == len(sizes) - 1:
                keep = (transport, proto)
                # a pause on the server side of the open connection, for the pause histogram
                echoes[-1].transport.pause_reading()
                echoes[-1].transport.resume_reading()
            else:
                transport.close()
                await proto.lost
        result["text"] = (await asyncio.to_thread(get, s.endpoint))[2].decode()
        keep[0].close()
        await keep[1].lost
        server.close()
        await server.wait_closed()
        result["port"] = port

    run(main)
    text = result["text"]
    parsed = samples(text)
    total = sum(sizes)
    server_labels = dict(
        transport_name="echo",
        transport_side="server",
        network_transport="tcp",
        network_type="ipv4",
        server_port=result["port"],
    )
    client_labels = dict(transport_name="echo-client", transport_side="client", network_transport="tcp")
    assert value(parsed, "transport_received_bytes_total", **server_labels) == total
    assert value(parsed, "transport_sent_bytes_total", **server_labels) == total
    assert value(parsed, "transport_received_bytes_total", **client_labels) == total
    assert value(parsed, "transport_sent_bytes_total", **client_labels) == total
    assert value(parsed, "transport_connection_opened_total", **client_labels) == len(sizes)
    assert value(parsed, "transport_connection_active", **client_labels) == 1
    assert value(parsed, "transport_connection_duration_seconds_count", **client_labels) == len(sizes) - 1
    assert value(parsed, "transport_reading_pause_duration_seconds_count", **server_labels) == 1
    # names once, no doubled suffixes
    names = {n for n, _ in parsed}
    assert "transport_connection_duration_seconds_bucket" in names
    assert not [n for n in names if "_total_total" in n or "bytes_bytes" in n or "seconds_seconds" in n]
    # no scope labels; target_info carries the resource
    assert "otel_scope" not in text
    target = [dict(ls) for n, ls in parsed if n == "target_info"]
    assert len(target) == 1
    assert target[0]["service_name"] == "scrape-test" and target[0]["service_instance_id"]
    assert promtool_check(text) == ""


def test_promtool_clean_on_openmetrics_converted_and_gzip_paths(stack, promtool_check, run):
    s, registry, telemetry = stack

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(tt.traced(Echo, name="echo", observer=telemetry), "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        w.write(b"abc")
        await r.readexactly(3)
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(main)
    status, headers, body = get(s.endpoint, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert promtool_check(gzip.decompress(body).decode()) == ""


def test_scrape_does_not_block_the_event_loop(run, stack):
    """While a scrape is stuck inside a collector, the traced server on the loop keeps echoing."""
    s, registry, telemetry = stack

    class Stuck:
        entered = threading.Event()
        release = threading.Event()

        def collect(self):
            self.entered.set()
            self.release.wait(10)
            return []

    stuck = Stuck()
    s.prometheus_registry.register(stuck)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(tt.traced(Echo, name="echo", observer=telemetry), "127.0.0.1", 0)
        scrape = asyncio.ensure_future(asyncio.to_thread(get, s.endpoint))
        await loop.run_in_executor(None, stuck.entered.wait, 10)
        assert not scrape.done()
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        for _ in range(20):
            w.write(b"x" * 100)
            await r.readexactly(100)
        assert not scrape.done()
        stuck.release.set()
        status, _, body = await scrape
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return status

    assert run(main) == 200


def test_concurrent_scrapes_each_see_one_collection(stack, run):
    s, registry, telemetry = stack

    async def traffic():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(tt.traced(Echo, name="echo", observer=telemetry), "127.0.0.1", 0)
        for _ in range(3):
            r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
            w.write(b"y" * 10)
            await r.readexactly(10)
            w.close()
            await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(traffic)
    barrier = threading.Barrier(8)
    results = []

    def scrape():
        barrier.wait(10)
        results.append(get(s.endpoint))

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8
    for status, _, body in results:
        assert status == 200
        parsed = samples(body.decode())  # asserts no duplicate series
        assert value(parsed, "transport_received_bytes_total", transport_name="echo") == 30


def test_force_flush_between_scrapes_does_not_duplicate(stack, run):
    s, registry, telemetry = stack

    async def main():
        server = await asyncio.get_running_loop().create_server(
            tt.traced(Echo, name="echo", observer=telemetry), "127.0.0.1", 0
        )
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        w.write(b"q")
        await r.readexactly(1)
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(main)
    assert b"transport_received_bytes_total" in get(s.endpoint)[2]
    assert s.meter_provider.force_flush()  # makes the reader collect outside a scrape
    status, _, body = get(s.endpoint)
    assert status == 200
    samples(body.decode())  # no duplicate series
    assert body.decode().count("# TYPE target_info") == 1


def test_scope_labels_only_when_asked(run):
    s = sdk.setup(metrics_port=0, set_global=False, otlp=False, scope_labels=True)
    try:
        telemetry = tt.Telemetry(tt.Registry(), meter_provider=s.meter_provider, tracer_provider=s.tracer_provider)

        async def main():
            loop = asyncio.get_running_loop()
            server = await loop.create_server(tt.traced(Echo, name="echo", observer=telemetry), "127.0.0.1", 0)
            r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
            w.close()
            await w.wait_closed()
            server.close()
            await server.wait_closed()

        run(main)
        parsed = samples(get(s.endpoint)[2].decode())
        assert (
            value(
                parsed, "transport_connection_opened_total", transport_name="echo", otel_scope_name="traced_transport"
            )
            == 1
        )
    finally:
        s.shutdown()


def test_reader_collector_strips_scope_labels_from_exporters_that_always_add_them():
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    reader = PrometheusMetricReader(registry=CollectorRegistry())  # scope labels on
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        provider.get_meter("one", "1.0").create_counter("things").add(2, {"k": "v"})
        served = CollectorRegistry()
        served.register(ReaderCollector(reader, scope_labels=False))
        _, _, body = exposition(served)
        text = body.decode()
        assert "otel_scope" not in text
        assert value(samples(text), "things_total", k="v") == 2
        # two scopes with one metric name: the scope labels stay, or the series would collide
        provider.get_meter("two", "1.0").create_counter("things").add(5, {"k": "v"})
        text = exposition(served)[2].decode()
        parsed = samples(text)
        assert value(parsed, "things_total", otel_scope_name="two") == 5
    finally:
        provider.shutdown()


# -- setup() ------------------------------------------------------------------------------------------------
@pytest.fixture
def clean_otel_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    return monkeypatch


def _target_info(s):
    # target_info comes with the first data point: give the provider one
    s.meter_provider.get_meter("test").create_counter("test.things").add(1)
    parsed = samples(get(s.endpoint)[2].decode())
    return next(dict(ls) for n, ls in parsed if n == "target_info")


def test_setup_resource_and_environment(clean_otel_env):
    s = sdk.setup(service_name="from-code", metrics_port=0, set_global=False)
    try:
        info = _target_info(s)
        assert info["service_name"] == "from-code" and info["service_instance_id"]
        assert s.otlp is False and s.tracer_provider is not None
    finally:
        s.shutdown()
    clean_otel_env.setenv("OTEL_SERVICE_NAME", "from-env")
    clean_otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=net ops,service.instance.id=i-1")
    s = sdk.setup(
        service_name="from-code",
        metrics_port=0,
        set_global=False,
        resource_attributes={"deployment.environment.name": "test"},
    )
    try:
        info = _target_info(s)
        assert info["service_name"] == "from-env"
        assert info["service_instance_id"] == "i-1"
        assert info["team"] == "net ops"
        assert info["deployment_environment_name"] == "test"
    finally:
        s.shutdown()


def test_setup_without_metrics_or_endpoint(clean_otel_env):
    s = sdk.setup(metrics=False, set_global=False)
    try:
        assert s.meter_provider is None and s.endpoint is None and s.prometheus_registry is None
    finally:
        s.shutdown()
    s = sdk.setup(endpoint=False, traces=False, set_global=False)
    try:
        assert s.endpoint is None and s.tracer_provider is None
        status, _, body = exposition(s.prometheus_registry)  # the registry can be served by the app itself
        assert status == 200
    finally:
        s.shutdown()
        s.shutdown()


def test_setup_tls_and_auth(clean_otel_env, scrape_certs):
    s = sdk.setup(
        metrics_port=0,
        set_global=False,
        certfile=scrape_certs.server_cert,
        keyfile=scrape_certs.server_key,
        client_cafile=scrape_certs.ca,
        basic_auth=("u", "p"),
    )
    try:
        assert s.url.startswith("https://")
        ctx = client_ctx(scrape_certs, scrape_certs.client)
        assert get(s.endpoint, context=ctx)[0] == 401
        assert get(s.endpoint, context=ctx, headers=basic("u", "p"))[0] == 200
        _rejected(s.endpoint, client_ctx(scrape_certs))
    finally:
        s.shutdown()


CHILD = textwrap.dedent("""
    import asyncio, json, logging, sys, urllib.request
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import traced_transport as tt
    from traced_transport.exporters import sdk

    if sys.argv[1] == "app-first":
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        metrics.set_meter_provider(MeterProvider())
        trace.set_tracer_provider(TracerProvider())

    s = sdk.setup(service_name="child", metrics_port=0, otlp=False)

    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
        def data_received(self, d):
            self.t.write(d)

    async def main():
        server = await asyncio.get_running_loop().create_server(tt.traced(Echo, name="child-echo"), "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        w.write(b"z" * 777)
        await r.readexactly(777)
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(s.url, timeout=10).read().decode())
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return body

    body = asyncio.run(main())
    print(json.dumps({"global_meter": s.global_meter_provider, "global_tracer": s.global_tracer_provider,
                      "body": body}))
    s.shutdown()
""")


@pytest.mark.parametrize("mode", ["setup-first", "app-first"])
def test_setup_global_providers(mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    if mode == "setup-first":
        # default traced() (global providers) feeds the endpoint
        assert out["global_meter"] and out["global_tracer"]
        parsed = samples(out["body"])
        assert value(parsed, "transport_received_bytes_total", transport_name="child-echo") == 777
        assert "already set" not in proc.stderr
    else:
        # the app's providers stay; setup() says so and serves its own (empty of traced() data) registry
        assert not out["global_meter"] and not out["global_tracer"]
        assert "child-echo" not in out["body"]
        assert "global metrics provider" in proc.stderr and "already set" in proc.stderr
