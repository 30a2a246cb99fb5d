"""The mountable endpoint (traced_transport.exporters.mount): WSGI under wsgiref, ASGI under uvicorn, the aiohttp
handler in a real aiohttp app, each inside an "app the user already runs" (another route beside /metrics), scraped
over real sockets by http.client, and compared with the built-in endpoint serving the same reader.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import http.client
import socket
import threading
import wsgiref.simple_server
from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("prometheus_client")

from _helpers import Collect
from prometheus_client.parser import text_string_to_metric_families
from traced_transport.exporters import sdk
from traced_transport.exporters.mount import make_aiohttp_handler, make_asgi_app, make_wsgi_app
from traced_transport.exporters.options import EndpointOptions

import traced_transport as tt

AUTH = ("prom", "s3cret pass")
GOOD = "Basic " + base64.b64encode(b"prom:s3cret pass").decode()
BAD = "Basic " + base64.b64encode(b"prom:wrong").decode()
OPENMETRICS = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


def request(port: int, path: str = "/metrics", *, method: str = "GET", headers=None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


# -- the apps the user already runs, with our metrics mounted ----------------------------------------------------
@contextlib.contextmanager
def wsgi_server(source) -> Iterator[int]:
    metrics = make_wsgi_app(source, basic_auth=AUTH)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/metrics":
            return metrics(environ, start_response)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the user's app\n"]

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def asgi_server(source) -> Iterator[int]:
    import uvicorn

    metrics = make_asgi_app(source, basic_auth=AUTH)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan" or scope.get("path") == "/metrics":
            return await metrics(scope, receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"the user's app\n"})

    sock = listening_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", loop="asyncio"))
    # The socket listens already: requests wait in its backlog until uvicorn serves them.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
    assert not thread.is_alive()


@contextlib.contextmanager
def aiohttp_server(source) -> Iterator[int]:
    from aiohttp import web

    sock = listening_socket()
    ready = threading.Event()
    state: dict = {}

    async def users_route(request):
        return web.Response(text="the user's app\n")

    async def main():
        app = web.Application()
        app.router.add_get("/", users_route)
        app.router.add_route("*", "/metrics", make_aiohttp_handler(source, basic_auth=AUTH))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        state["stop"] = asyncio.Event()
        state["loop"] = asyncio.get_running_loop()
        ready.set()
        await state["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(20)
    try:
        yield sock.getsockname()[1]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(20)
        sock.close()
    assert not thread.is_alive()


SERVERS = {"wsgi": wsgi_server, "asgi": asgi_server, "aiohttp": aiohttp_server}


# -- a reader with real connections in it -------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup_with_traffic():
    """sdk.setup() with its built-in endpoint (basic auth) and a traced echo exchange recorded, then idle."""
    s = sdk.setup(
        service_name="mount-test",
        endpoint=EndpointOptions(port=0, basic_auth=AUTH),
        set_global=False,
        otlp=False,
    )
    telemetry = tt.Telemetry(tt.Registry(), meter_provider=s.meter_provider, tracer_provider=s.tracer_provider)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(tt.traced(Echo, name="echo", observer=telemetry), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, proto = await loop.create_connection(
            tt.traced(Collect, name="echo-client", side="client", observer=telemetry), "127.0.0.1", port
        )
        await proto.made
        transport.write(b"x" * 100_000)
        await proto.wait_bytes(100_000)
        transport.close()
        await proto.lost
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def builtin(setup_with_traffic):
    """What the built-in endpoint answers: plain text and OpenMetrics."""
    port = setup_with_traffic.endpoint.port
    plain = request(port, headers={"Authorization": GOOD})
    om = request(port, headers={"Authorization": GOOD, "Accept": OPENMETRICS})
    assert plain[0] == om[0] == 200
    return plain, om


@pytest.mark.parametrize("kind", list(SERVERS))
def test_same_output_as_the_builtin_endpoint(kind, setup_with_traffic, builtin, promtool_check):
    (_, plain_headers, plain_body), (_, om_headers, om_body) = builtin
    with SERVERS[kind](setup_with_traffic) as port:
        status, headers, body = request(port, headers={"Authorization": GOOD})
        assert status == 200
        assert body == plain_body
        assert headers["content-type"] == plain_headers["content-type"]
        assert int(headers["content-length"]) == len(body)
        assert "content-encoding" not in headers
        text = body.decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert "transport_received_bytes" in names  # the recorded exchange is there
        assert promtool_check(text) == ""

        status, headers, body = request(port, headers={"Authorization": GOOD, "Accept": OPENMETRICS})
        assert status == 200
        assert headers["content-type"] == om_headers["content-type"]
        assert body == om_body and body.endswith(b"# EOF\n")

        # the user's own route is untouched
        assert request(port, "/")[2] == b"the user's app\n"


@pytest.mark.parametrize("kind", list(SERVERS))
def test_gzip_when_accepted(kind, setup_with_traffic, builtin, promtool_check):
    plain_body = builtin[0][2]
    with SERVERS[kind](setup_with_traffic) as port:
        status, headers, body = request(port, headers={"Authorization": GOOD, "Accept-Encoding": "gzip"})
        assert status == 200
        assert headers["content-encoding"] == "gzip"
        assert "Accept-Encoding" in headers["vary"]
        assert int(headers["content-length"]) == len(body) < len(plain_body)
        assert gzip.decompress(body) == plain_body
        assert promtool_check(gzip.decompress(body).decode()) == ""
        # q=0 refuses gzip
        status, headers, body = request(port, headers={"Authorization": GOOD, "Accept-Encoding": "gzip;q=0"})
        assert "content-encoding" not in headers and body == plain_body


def test_builtin_endpoint_gzips_too(setup_with_traffic, builtin):
    port = setup_with_traffic.endpoint.port
    status, headers, body = request(port, headers={"Authorization": GOOD, "Accept-Encoding": "gzip, deflate"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == builtin[0][2]


@pytest.mark.parametrize("kind", list(SERVERS))
def test_basic_auth(kind, setup_with_traffic):
    with SERVERS[kind](setup_with_traffic) as port:
        for headers in ({}, {"Authorization": BAD}, {"Authorization": "Bearer x"}):
            status, got, body = request(port, headers=headers)
            assert status == 401
            assert got["www-authenticate"].startswith("Basic realm=")
            assert got["content-type"].startswith("text/plain")
            assert b"transport_" not in body
        assert request(port, headers={"Authorization": GOOD})[0] == 200


@pytest.mark.parametrize("kind", list(SERVERS))
def test_head_and_methods(kind, setup_with_traffic, builtin):
    with SERVERS[kind](setup_with_traffic) as port:
        status, headers, body = request(port, method="HEAD", headers={"Authorization": GOOD})
        assert status == 200 and body == b""
        assert int(headers["content-length"]) == len(builtin[0][2])
        status, headers, _ = request(port, method="POST", headers={"Authorization": GOOD, "Content-Length": "0"})
        assert status == 405 and headers["allow"] == "GET, HEAD"


def test_a_registry_or_an_aggregator_is_a_source_too(tmp_path):
    from prometheus_client import CollectorRegistry, Counter
    from traced_transport.exporters import multiworker
    from traced_transport.exporters.exposition import registry_of

    reg = CollectorRegistry()
    Counter("mounted_things", "Things", registry=reg).inc(2)
    assert registry_of(reg) is reg
    with multiworker.serve(str(tmp_path), port=0) as agg:
        assert registry_of(agg) is agg.registry
    with pytest.raises(TypeError):
        registry_of(object())
    with wsgi_server(reg) as port:
        status, _, body = request(port, headers={"Authorization": GOOD})
    assert status == 200 and b"mounted_things_total 2.0" in body
