"""aiohttp with ``traced_transport.aiohttp``: static files (``loop.sendfile`` on asyncio, ``write()`` on
uvloop) from real curl, byte counts equal to what curl carried; the traced client connector (side
``client``); a ``UnixSite`` on the traced runner; ``run_app`` in its own process, scraped through the
Prometheus endpoint."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("aiohttp")
import aiohttp
from _support import Otel, closed_connections, run_curl, run_tool, server_ssl
from aiohttp import web

import traced_transport.aiohttp as tt_aiohttp

SIZES = {"a.bin": 1, "b.bin": 70_000, "c.bin": 3 * 1024 * 1024 + 17}


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("static")
    for name, size in SIZES.items():
        (d / name).write_bytes(os.urandom(size))
    return d


async def start(otel: Otel, static_dir, ssl_context=None):
    app = web.Application()
    app.router.add_static("/static", static_dir)
    runner = tt_aiohttp.AppRunner(app, name="web", observer=otel.telemetry, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_static_files_bytes_equal_curl(run, loop_kind, curl, static_dir, certs, tls):
    otel = Otel()

    sendfile_calls = []

    async def main():
        loop = asyncio.get_running_loop()
        if loop_kind == "asyncio":  # uvloop has no sendfile (aiohttp writes), and no instance attributes
            original = loop.sendfile

            async def spy(transport, *args, **kwargs):
                sent = await original(transport, *args, **kwargs)
                sendfile_calls.append((type(transport).__name__, sent))
                return sent

            loop.sendfile = spy
        runner, port = await start(otel, static_dir, server_ssl(certs) if tls else None)
        try:
            got = {}
            for name in SIZES:
                if tls:
                    url = [
                        f"https://localhost:{port}/static/{name}",
                        "--cacert",
                        certs.ca,
                        "--resolve",
                        f"localhost:{port}:127.0.0.1",
                    ]
                else:
                    url = [f"http://127.0.0.1:{port}/static/{name}"]
                got[name], _ = await run_curl(curl, "--http1.1", *url)
            await closed_connections(otel.registry, "web", len(SIZES))
        finally:
            await runner.cleanup()
        return got

    got = run(main, timeout=40)
    assert {n: g["download"] for n, g in got.items()} == SIZES
    if loop_kind == "asyncio":  # the files went through loop.sendfile, with our proxy transport
        assert sorted(sent for _, sent in sendfile_calls) == sorted(SIZES.values())
        assert all(name.startswith("Traced") for name, _ in sendfile_calls)
    totals = otel.registry.totals("web")
    assert totals.rx == sum(g["request"] for g in got.values())
    assert totals.tx == sum(g["header"] + g["download"] for g in got.values())
    assert otel.value("transport.sent", transport_name="web") == totals.tx
    otel.shutdown()


def test_client_connector_traced_as_client(run, static_dir):
    otel = Otel()

    async def main():
        runner, port = await start(otel, static_dir)
        try:
            connector = tt_aiohttp.TCPConnector(name="upstream", observer=otel.telemetry)
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(3):  # one pooled connection
                    async with session.get(f"http://127.0.0.1:{port}/static/b.bin") as resp:
                        assert len(await resp.read()) == SIZES["b.bin"]
            await closed_connections(otel.registry, "upstream", 1)
            await closed_connections(otel.registry, "web", 1)
        finally:
            await runner.cleanup()

    run(main, timeout=30)
    client, server = otel.registry.totals("upstream"), otel.registry.totals("web")
    assert client.opened == 1 and client.tx == server.rx and client.rx == server.tx > 3 * SIZES["b.bin"]
    (span,) = otel.spans("upstream")
    assert span.kind.name == "CLIENT" and span.attributes["transport.side"] == "client"
    assert otel.value("transport.received", transport_name="upstream", transport_side="client") == client.rx
    otel.shutdown()


def test_run_app_in_its_own_process(tmp_path, curl, static_dir):
    """``traced_transport.aiohttp.run_app(app, ...)``, unchanged otherwise; scraped bytes equal curl's."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "exporters"))
    from _util import free_port, samples, total, wait_for

    port, metrics_port = free_port(), free_port()
    script = tmp_path / "serve.py"
    script.write_text(
        textwrap.dedent(f"""
        from aiohttp import web
        import traced_transport.aiohttp
        from traced_transport.exporters.sdk import setup

        setup(service_name="aiohttp-test", metrics_port={metrics_port})
        app = web.Application()
        app.router.add_static("/static", {str(static_dir)!r})
        traced_transport.aiohttp.run_app(app, host="127.0.0.1", port={port}, name="site")
    """)
    )
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        wait_for(
            lambda: ("Running on" in log_path.read_text() or proc.poll() is not None, log_path.read_text()),
            30,
            "run_app",
        )
        assert proc.poll() is None, log_path.read_text()

        async def fetch():
            return [(await run_curl(curl, "--http1.1", f"http://127.0.0.1:{port}/static/{n}"))[0] for n in SIZES]

        got = asyncio.run(fetch())
        rx = sum(g["request"] for g in got)
        tx = sum(g["header"] + g["download"] for g in got)
        import urllib.request

        def scraped():
            parsed = samples(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode())
            have = (
                total(parsed, "transport_received_bytes_total", transport_name="site"),
                total(parsed, "transport_sent_bytes_total", transport_name="site"),
            )
            return have == (rx, tx), have

        wait_for(scraped, 20, f"rx={rx} tx={tx}")
    finally:
        proc.terminate()
        proc.wait(30)


def test_unix_site_bytes_equal_curl(run, curl, static_dir, tmp_path):
    """``web.UnixSite`` on the traced ``AppRunner``: curl over the socket; the connections are keyed
    ``network.transport`` unix, and their bytes equal curl's."""
    otel = Otel()
    path = str(tmp_path / "web.sock")

    async def hello(request):
        return web.Response(text=f"hello over unix, {request.match_info['who']}")

    async def main():
        app = web.Application()
        app.router.add_get("/hello/{who}", hello)
        app.router.add_static("/static", static_dir)
        runner = tt_aiohttp.AppRunner(app, name="web", observer=otel.telemetry, access_log=None)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        try:
            # the body, and curl's account of its bytes, from one request
            code, out, err = await run_tool(
                curl,
                "-sS",
                "--http1.1",
                "--unix-socket",
                path,
                "-o",
                str(tmp_path / "body"),
                "-w",
                "%{size_request} %{size_header}",
                "http://localhost/hello/alice",
            )
            assert code == 0, err.decode()
            request, header = map(int, out.decode().split())
            body = (tmp_path / "body").read_bytes()
            got = [
                (await run_curl(curl, "--http1.1", "--unix-socket", path, f"http://localhost/static/{name}"))[0]
                for name in SIZES
            ]
            await closed_connections(otel.registry, "web", 1 + len(SIZES))
        finally:
            await runner.cleanup()
        return body, request, header + len(body), got

    body, rx, tx, got = run(main, timeout=40)
    assert body == b"hello over unix, alice"
    assert [g["download"] for g in got] == list(SIZES.values())
    (key,) = [k for k in otel.registry.snapshot().closed if k.name == "web"]
    assert (key.side, key.network_transport, key.network_type, key.server_port) == ("server", "unix", None, None)
    totals = otel.registry.totals("web")
    assert totals.opened == totals.closed == 1 + len(SIZES)
    assert totals.rx == rx + sum(g["request"] for g in got)
    assert totals.tx == tx + sum(g["header"] + g["download"] for g in got)
    assert otel.value("transport.received", transport_name="web", network_transport="unix") == totals.rx
    assert otel.value("transport.sent", transport_name="web", network_transport="unix") == totals.tx
    otel.shutdown()
