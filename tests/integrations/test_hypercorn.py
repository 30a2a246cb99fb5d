"""hypercorn (asyncio worker) with ``traced_transport.hypercorn.serve``: HTTP/1.1 and HTTP/2 over TLS with
ALPN from real curl and nghttp, and TLS failures (plain HTTP to the TLS port, an untrusted client
certificate, a reset mid-handshake) counted while the server goes on serving."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct

import pytest

pytest.importorskip("hypercorn")
from _support import Otel, closed_connections, make_app, run_curl, run_tool
from hypercorn.config import Config

import traced_transport.hypercorn as tt_hypercorn

# The request body's length; /big: 20,000 bytes.
app = make_app(lambda scope, size: b"h" * 20_000 if scope["path"] == "/big" else str(size).encode())


@contextlib.asynccontextmanager
async def serving(otel: Otel, certs, *, client_certs: bool = False):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn takes the listening socket over: no port race, no polling
    config.certfile, config.keyfile = certs.cert, certs.key
    if client_certs:
        config.ca_certs, config.verify_mode = certs.ca, ssl.CERT_REQUIRED
    config.accesslog = config.errorlog = None
    config.graceful_timeout = 1
    stop = asyncio.Event()
    task = asyncio.ensure_future(
        tt_hypercorn.serve(app, config, name="hyper", observer=otel.telemetry, shutdown_trigger=stop.wait)
    )
    try:
        yield port
    finally:
        stop.set()
        await task


def test_curl_http2_and_http11_over_tls(run, curl, certs):
    otel = Otel()

    async def main():
        async with serving(otel, certs) as port:
            common = ["--cacert", certs.ca, "--resolve", f"localhost:{port}:127.0.0.1"]
            h2, _ = await run_curl(curl, "--http2", *common, f"https://localhost:{port}/big")
            h1, _ = await run_curl(
                curl, "--http1.1", *common, f"https://localhost:{port}/echo", "--data-binary", "p" * 3000
            )
            await closed_connections(otel.registry, "hyper", 2)

        return h2, h1

    h2, h1 = run(main, timeout=40)
    assert (h2["version"], h2["download"]) == ("2", 20_000) and (h1["version"], h1["status"]) == ("1.1", 200)
    spans = {s.attributes["tls.next_protocol"]: s for s in otel.spans("hyper")}
    assert set(spans) == {"h2", "http/1.1"}
    # HTTP/1.1: exactly what curl wrote and read; HTTP/2 (frames, HPACK): more than the body each way
    assert spans["http/1.1"].attributes["transport.received"] == h1["request"]
    assert spans["http/1.1"].attributes["transport.sent"] == h1["header"] + h1["download"]
    assert spans["h2"].attributes["transport.sent"] > 20_000
    assert all(s.attributes["tls.protocol.version"] == "1.3" for s in spans.values())
    otel.shutdown()


def _nghttp_frames(log: str) -> tuple[int, int]:
    """Bytes nghttp sent and received at the HTTP/2 layer: 24-byte preface + (9 + length) per frame."""
    sent = 24 + sum(9 + int(n) for n in re.findall(r"send \w+ frame <length=(\d+)", log))
    received = sum(9 + int(n) for n in re.findall(r"recv \w+ frame <length=(\d+)", log))
    return sent, received


def test_nghttp_http2_frame_bytes_equal_counted(run, nghttp, certs):
    otel = Otel()

    async def main():
        async with serving(otel, certs) as port:
            code, out, err = await run_tool(
                nghttp, "-v", "-n", "-y", f"https://127.0.0.1:{port}/big", f"https://127.0.0.1:{port}/small"
            )
            assert code == 0, err.decode() + out.decode()
            await closed_connections(otel.registry, "hyper", 1)
        return out.decode()

    log = run(main, timeout=40)
    sent, received = _nghttp_frames(log)
    (span,) = otel.spans("hyper")
    assert span.attributes["tls.next_protocol"] == "h2"
    assert span.attributes["transport.received"] == sent
    assert span.attributes["transport.sent"] == received
    otel.shutdown()


async def _reset_mid_handshake(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # the first bytes of a TLS ClientHello record, then RST (SO_LINGER 0)
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 16)
    await writer.drain()
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def test_tls_failures_counted_and_server_keeps_serving(run, curl, openssl, certs):
    otel = Otel()

    async def main():
        async with serving(otel, certs, client_certs=True) as port:
            # plain HTTP to the TLS port
            code, _, _ = await run_tool(curl, "-sS", "--http1.1", f"http://127.0.0.1:{port}/")
            assert code != 0
            # a client certificate from a CA the server does not trust
            code, _, _ = await run_tool(
                openssl,
                "s_client",
                "-quiet",
                "-connect",
                f"127.0.0.1:{port}",
                "-CAfile",
                certs.ca,
                "-cert",
                certs.stranger,
                "-tls1_2",
                stdin=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            # reset in the middle of the handshake
            await _reset_mid_handshake(port)
            await closed_connections(otel.registry, "hyper", 3)
            # still serving: a trusted client certificate gets its answer
            ok, _ = await run_curl(
                curl,
                "--http1.1",
                "--cacert",
                certs.ca,
                "--cert",
                certs.client,
                "--resolve",
                f"localhost:{port}:127.0.0.1",
                f"https://localhost:{port}/x",
            )
            await closed_connections(otel.registry, "hyper", 4)
        return ok

    ok = run(main, timeout=40)
    assert ok["status"] == 200
    failed = [
        p
        for p in otel.points("transport.connection.duration")
        if p.attributes.get("error.type") == "tls_handshake_failed"
    ]
    assert sum(p.count for p in failed) == 3
    assert otel.registry.totals("hyper").close_reasons.get("tls_handshake_failed") == 3
    good = [s for s in otel.spans("hyper") if s.attributes.get("tls.established")]
    assert len(good) == 1 and "tls.client.subject" in good[0].attributes
    otel.shutdown()
