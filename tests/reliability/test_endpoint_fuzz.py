"""Bad input at the scrape endpoint: hypothesis-made raw requests (methods, paths, versions, header bombs,
oversized and binary junk, half-sent) and a crowd of slowloris clients, over real sockets to a real
``ScrapeEndpoint``. Every answer is a 4xx (or 505 for an HTTP version it does not speak), a 200 for a
real GET/HEAD of /metrics, or a close; never a traceback; a good scrape works after each; threads and
memory come back.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import tracemalloc
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, Counter
from traced_transport.exporters import _http
from traced_transport.exporters.prometheus import ScrapeEndpoint

ALLOWED = {200, 400, 404, 405, 408, 414, 431, 505}
EXAMPLES = int(__import__("os").environ.get("TT_FUZZ_EXAMPLES", "300"))

token = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
methods = st.one_of(
    st.sampled_from(
        ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH", "get", "GE T", "", "\x00GET"]
    ),
    token,
)
paths = st.one_of(
    st.sampled_from(
        [
            "/metrics",
            "/metrics/",
            "/",
            "*",
            "/metrics?x=1",
            "//metrics",
            "/metrics#f",
            "http://127.0.0.1/metrics",
            "/%00",
            "/metrics%2f..",
            "/../../etc/passwd",
            "",
        ]
    ),
    st.text(max_size=60).map(lambda t: "/" + t),
    st.integers(100, 12_000).map(lambda n: "/" + "a" * n),
)
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1.1", "HTTP/11", "JUNK", ""])
header_name = st.one_of(
    st.sampled_from(
        [
            "Host",
            "Accept",
            "Accept-Encoding",
            "Authorization",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Expect",
        ]
    ),
    token,
)
header_value = st.one_of(
    st.text(max_size=40),
    st.integers(0, 40_000).map(lambda n: "v" * n),
    st.sampled_from(["gzip", "chunked", "100-continue", "-1", "99999999999", "close"]),
)
headers = st.one_of(
    st.lists(st.tuples(header_name, header_value), max_size=8),
    st.integers(90, 400).map(lambda n: [(f"X-Bomb-{i}", "b") for i in range(n)]),
)
endings = st.sampled_from(
    [
        b"\r\n\r\n",
        b"\n\n",
        b"\r\n",
        b"",
        b"\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
        b"\r\n\r\nbody-bytes-that-nobody-asked-for",
    ]
)


@st.composite
def raw_requests(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=3000)), None, None
    method, path, version = draw(methods), draw(paths), draw(versions)
    line = " ".join(x for x in (method, path, version) if x)
    head = line + "".join(f"\r\n{k}: {v}" for k, v in draw(headers))
    return head.encode("utf-8", "surrogatepass") + draw(endings), method, path


@pytest.fixture(scope="module")
def endpoint():
    registry = CollectorRegistry()
    Counter("fuzz_ok", "Scrapes that worked", registry=registry).inc()
    ep = ScrapeEndpoint(registry, port=0, timeout=1.0, max_connections=16).start()
    yield ep
    ep.stop()


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def good_scrape(ep) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        assert b"fuzz_ok_total" in body
        return resp.status
    finally:
        conn.close()


def heap() -> int:
    """Traced heap outside hypothesis, pytest and this file (which keep the generated examples)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, "*/hypothesis/*"),
            tracemalloc.Filter(False, "*/_pytest/*"),
            tracemalloc.Filter(False, __file__),
            tracemalloc.Filter(False, tracemalloc.__file__),
        ]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


def scrape_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "traced-transport-scrape-conn")


def wait_threads(at_most: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while scrape_threads() > at_most:  # connection threads end on their own; poll, bounded
        assert time.monotonic() < deadline, f"{scrape_threads()} connection threads still running"
        time.sleep(0.02)


def test_fuzzed_requests_get_4xx_or_close_and_the_endpoint_keeps_serving(endpoint):
    _http.rate_limited.reset()
    seen: dict = {}
    tracemalloc.start()
    try:
        assert good_scrape(endpoint) == 200
        heap_before = None

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(request=raw_requests())
        def one(request):
            nonlocal heap_before
            data, method, path = request
            with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as s:
                try:
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)  # half-sent requests end here: the server sees EOF
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server answered (431, 414...) and closed before we finished sending
                response = read_all(s)
            if response:
                assert response.startswith(b"HTTP/1.1 "), response[:100]
                status = int(response.split(b" ", 2)[1])
                assert status in ALLOWED, (status, data[:200])
                if status == 200:
                    assert method in ("GET", "HEAD") and urlsplit(path).path == "/metrics", data[:200]
                assert b"Traceback" not in response and b'File "' not in response
                seen[status] = seen.get(status, 0) + 1
            else:
                seen["closed"] = seen.get("closed", 0) + 1
            assert good_scrape(endpoint) == 200
            if heap_before is None:
                wait_threads(0)
                heap_before = heap()

        one()
        wait_threads(0)
        heap_after = heap()
    finally:
        tracemalloc.stop()
    # a spread of answers, not one path taken 300 times
    assert {400, 404, 405, 431}.issubset(seen) and seen.get(200), seen
    # bounded: per-request state is freed (300 requests, some of 40 KB heads, leave < 512 KiB)
    assert heap_after - heap_before < 512 * 1024, (heap_before, heap_after)
    assert endpoint.running and good_scrape(endpoint) == 200


def test_slowloris_crowd_is_cut_and_the_endpoint_recovers(endpoint):
    """48 clients (3x max_connections) trickle a request head a byte at a time; each is cut at the 1 s
    head deadline (408 or a close, 503 beyond the limit), and then the endpoint serves again."""
    base_threads = scrape_threads()
    slow = []
    started = time.monotonic()
    try:
        for _ in range(48):
            s = socket.create_connection(("127.0.0.1", endpoint.port), timeout=10)
            s.setblocking(False)
            slow.append(s)
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400
        done: dict = {}
        i = 0
        while len(done) < len(slow):
            assert time.monotonic() - started < 15, f"{len(slow) - len(done)} slow clients never cut"
            for n, s in enumerate(slow):
                if n in done:
                    continue
                try:
                    s.send(head[i : i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    done[n] = b""
                    continue
                except BlockingIOError:
                    pass
                try:
                    chunk = s.recv(65536)
                    done[n] = chunk
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    done[n] = b""
            i = min(i + 1, len(head) - 1)
            time.sleep(0.05)  # the trickle's pace (one byte per client per 50 ms), not a synchronisation
        statuses = {int(r.split(b" ", 2)[1]) if r.startswith(b"HTTP/1.1 ") else "closed" for r in done.values()}
        assert statuses <= {408, 503, "closed"}, statuses
    finally:
        for s in slow:
            s.close()
    assert time.monotonic() - started < 15
    wait_threads(base_threads)
    assert good_scrape(endpoint) == 200
