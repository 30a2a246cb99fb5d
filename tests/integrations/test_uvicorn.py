"""uvicorn with ``traced_transport.uvicorn.http(...)``: h11 and httptools, plain and TLS, real curl and
openssl s_client clients, a WebSocket upgrade, and ``--workers 2`` under ``traced-transport run``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import subprocess
import sys
import urllib.request

import pytest

uvicorn = pytest.importorskip("uvicorn")

from _support import Otel, cert_sha256, closed_connections, make_app, run_curl, run_tool  # noqa: E402

import traced_transport.uvicorn as tt_uvicorn  # noqa: E402

KINDS = ["h11", "httptools"]


def _reply(scope, size):
    query = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
    return b"x" * int(query.get("n", 0)) if "n" in query else str(size).encode()


_http_app = make_app(_reply)


async def app(scope, receive, send):
    """Echo the request body's length, or a body of ?n bytes; echo WebSocket messages."""
    if scope["type"] != "websocket":
        return await _http_app(scope, receive, send)
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "bytes": message.get("bytes") or message["text"].encode()})


@contextlib.asynccontextmanager
async def serving(kind: str, otel: Otel, **config):
    http = tt_uvicorn.http(kind, name="api", observer=otel.telemetry)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, http=http, loop="none", lifespan="off", log_level="warning", **config
        )
    )
    task = asyncio.ensure_future(server.serve())
    while not server.started:  # uvicorn sets no event
        assert not task.done(), task
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("kind", KINDS)
def test_curl_http11_bytes_equal_what_curl_carried(run, kind, curl):
    otel = Otel()

    async def main():
        async with serving(kind, otel) as port:
            up, _ = await run_curl(
                curl, "--http1.1", "-H", "Expect:", f"http://127.0.0.1:{port}/upload", "--data-binary", "y" * 50_000
            )
            down, _ = await run_curl(curl, "--http1.1", f"http://127.0.0.1:{port}/?n=300000")
            totals = await closed_connections(otel.registry, "api", 2)
        return up, down, totals

    up, down, totals = run(main, timeout=30)
    assert up["status"] == down["status"] == 200 and up["upload"] == 50_000 and down["download"] == 300_000
    # curl's size_request is everything it wrote, the uploaded body included
    assert up["request"] > up["upload"] and totals.rx == up["request"] + down["request"]
    assert totals.tx == up["header"] + up["download"] + down["header"] + down["download"]
    assert otel.value("transport.received", transport_name="api", transport_side="server") == totals.rx
    assert otel.value("transport.sent", transport_name="api") == totals.tx
    spans = otel.spans("api")
    assert len(spans) == 2 and all(s.attributes["network.peer.address"] == "127.0.0.1" for s in spans)
    otel.shutdown()


@pytest.mark.parametrize("kind", KINDS)
def test_tls_curl_and_openssl_versions_and_mtls(run, kind, curl, openssl, certs):
    otel = Otel()
    ctx_args = dict(
        ssl_certfile=certs.cert, ssl_keyfile=certs.key, ssl_ca_certs=certs.ca, ssl_cert_reqs=1
    )  # ssl.CERT_OPTIONAL: a client certificate is asked for, not required
    request = b"GET /?n=1000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

    async def main():
        async with serving(kind, otel, **ctx_args) as port:
            got, _ = await run_curl(
                curl,
                "--http1.1",
                "--cacert",
                certs.ca,
                f"https://localhost:{port}/?n=5000",
                "--resolve",
                f"localhost:{port}:127.0.0.1",
            )
            replies = {}
            for version, extra in (("1.2", ["-tls1_2"]), ("1.3", ["-tls1_3", "-cert", certs.client])):
                code, out, err = await run_tool(
                    openssl,
                    "s_client",
                    "-quiet",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-servername",
                    "localhost",
                    "-CAfile",
                    certs.ca,
                    "-verify_return_error",
                    *extra,
                    stdin=request,
                )
                assert code == 0, err.decode()
                replies[version] = out
            await closed_connections(otel.registry, "api", 3)
        return got, replies

    got, replies = run(main, timeout=30)
    assert got["status"] == 200 and got["download"] == 5000
    spans = otel.spans("api")
    by_version = {s.attributes["tls.protocol.version"]: s for s in spans}
    assert set(by_version) == {"1.2", "1.3"}
    for version, out in replies.items():
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"x" * 1000)
    openssl_spans = [s for s in spans if s.attributes["transport.received"] == len(request)]
    assert sorted(s.attributes["transport.sent"] for s in openssl_spans) == sorted(map(len, replies.values()))
    mtls = [s for s in spans if "tls.client.subject" in s.attributes]
    assert len(mtls) == 1, [dict(s.attributes) for s in spans]
    assert mtls[0].attributes["tls.client.hash.sha256"] == cert_sha256(certs.client)
    assert mtls[0].attributes["tls.protocol.version"] == "1.3"
    assert otel.value("transport.connection.opened", transport_name="api", tls_protocol_version="1.3") == 2
    otel.shutdown()


@pytest.mark.parametrize("kind", KINDS)
def test_websocket_upgrade_stays_traced(run, kind):
    websockets = pytest.importorskip("websockets.asyncio.client")
    otel = Otel()

    async def main():
        async with serving(kind, otel, ws="websockets-sansio") as port:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
                for size in (10, 70_000):
                    await ws.send(b"z" * size)
                    assert await ws.recv() == b"z" * size
            return await closed_connections(otel.registry, "api", 1)

    totals = run(main, timeout=30)
    # the upgrade request, two frames in and their echoes out (at least the payloads), closing handshake
    assert totals.rx > 70_010 and totals.tx > 70_010 and totals.opened == 1
    otel.shutdown()


def test_http_helper_is_picklable_and_forwards_class_facts():
    h = pickle.loads(pickle.dumps(tt_uvicorn.http("h11", name="x")))
    assert h.name == "x" and h.protocol_class.__name__ == "H11Protocol"
    assert tt_uvicorn.httptools.protocol_class.__name__ == "HttpToolsProtocol"


def test_workers_under_traced_transport_run(tmp_path):
    """``traced-transport run -- uvicorn app:app --workers 2 --http traced_transport.uvicorn:h11``: the
    bytes summed over all names equal what raw-socket clients wrote and read, all counted as
    ``transport.name="http"`` (once: not again under run's "server")."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "exporters"))
    from _util import free_port, samples, total, wait_for  # tests/exporters/_util.py

    port, metrics_port = free_port(), free_port()
    (tmp_path / "wapp.py").write_text(
        "import os\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'lifespan':\n"
        "        while (await receive())['type'] != 'lifespan.shutdown':\n"
        "            await send({'type': 'lifespan.startup.complete'})\n"
        "        return await send({'type': 'lifespan.shutdown.complete'})\n"
        "    body = str(os.getpid()).encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200,\n"
        "                'headers': [(b'content-length', str(len(body)).encode())]})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n"
    )
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "traced-transport"),
                "run",
                "--metrics-port",
                str(metrics_port),
                "--interval",
                "0.2",
                "--",
                sys.executable,
                "-m",
                "uvicorn",
                "wapp:app",
                "--app-dir",
                str(tmp_path),
                "--workers",
                "2",
                "--port",
                str(port),
                "--http",
                "traced_transport.uvicorn:h11",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        wait_for(
            lambda: (
                log_path.read_text().count("Application startup complete.") >= 2 or proc.poll() is not None,
                log_path.read_text(),
            ),
            30,
            "two workers",
        )
        assert proc.poll() is None, log_path.read_text()
        import socket

        sent = received = 0
        pids = set()
        for i in range(60):
            if len(pids) == 2 and i >= 10:
                break
            with socket.create_connection(("127.0.0.1", port)) as s:
                req = f"GET /{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                s.sendall(req)
                sent += len(req)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                received += len(data)
                pids.add(data.rsplit(b"\r\n\r\n", 1)[1])
        url = f"http://127.0.0.1:{metrics_port}/metrics"

        def scraped():
            parsed = samples(urllib.request.urlopen(url, timeout=10).read().decode())
            # Summed over every transport.name: run's instrument() must not count the helper's connections
            # again as "server" (it did, doubling every sum over names).
            got = tuple(
                total(parsed, metric, **labels)
                for labels in ({}, {"transport_name": "http"})
                for metric in (
                    "transport_received_bytes_total",
                    "transport_sent_bytes_total",
                    "transport_connection_duration_seconds_count",
                )
            )
            return got == (sent, received, i) * 2, got

        wait_for(scraped, 20, f"rx={sent} tx={received} from both workers")
        assert len(pids) == 2
    finally:
        proc.terminate()
        proc.wait(30)
