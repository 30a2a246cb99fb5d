"""What a user installs: the wheel, in a fresh venv, with no repository on the path.

``make test-wheel`` builds the wheel, installs it (not editable) into .venv-wheel with the demo and framework
extras and into .venv-core with no extra, copies this file to a temporary directory and runs it there with
.venv-wheel's python, so only the installed package can be imported. Standalone on purpose: it imports
nothing from the repository's tests.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

BIN = Path(sys.executable).parent
WHEEL = os.environ.get("TRACED_TRANSPORT_WHEEL")
CORE_PYTHON = os.environ.get("TRACED_TRANSPORT_CORE_PYTHON")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str):
    """Poll another process's observable state (no event crosses a process boundary)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = predicate()
        if ok:
            return last
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}; last: {last}")


def _totals(url: str, **labels: str) -> dict:
    """{sample name: value summed over every series matching labels} of one scrape."""
    out: dict = {}
    for family in text_string_to_metric_families(urllib.request.urlopen(url, timeout=10).read().decode()):
        for s in family.samples:
            if all(s.labels.get(k) == v for k, v in labels.items()):
                out[s.name] = out.get(s.name, 0) + s.value
    return out


class Process:
    """A command run in the background, its output in a file; interrupted and reaped on exit."""

    def __init__(self, argv: list, tmp: Path, **kwargs) -> None:
        self.log_path = tmp / f"{Path(argv[0]).name}-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, pattern: str) -> str:
        def found():
            if self.proc.poll() is not None:
                pytest.fail(f"exited with {self.proc.returncode}:\n{self.log()}")
            m = re.search(pattern, self.log())
            return bool(m), m.group(1) if m else None

        return _wait_for(found, 30, pattern)

    def listening(self, port: int) -> None:
        def up():
            if self.proc.poll() is not None:
                pytest.fail(f"exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True, None
            except OSError as exc:
                return False, exc

        _wait_for(up, 30, f"port {port}")

    def interrupt(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc) -> None:
        self.interrupt()


def _http_request(port: int, i: int) -> tuple[int, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        request = f"GET /{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        s.sendall(request)
        received = 0
        while chunk := s.recv(65536):
            received += len(chunk)
    return len(request), received


def _ws_session(port: int, i: int) -> tuple[int, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        data = (
            f"GET /{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        data += b"\x82\x85\x00\x00\x00\x00hello" + b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # a message, close 1000
        s.sendall(data)
        received = 0
        while chunk := s.recv(65536):
            received += len(chunk)
    return len(data), received


def _echo(port: int, payload: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    assert received == payload
    return len(payload)


# -- what is installed -----------------------------------------------------------------------------
def test_the_package_comes_from_the_wheel():
    import traced_transport

    assert Path(traced_transport.__file__).resolve().is_relative_to(Path(sys.prefix).resolve())
    assert importlib.util.find_spec("exporters") is None  # no top-level package of another project's name
    here = Path(traced_transport.__file__).parent
    assert (here / "py.typed").is_file()
    assert (here / "exporters" / "_site" / "sitecustomize.py").is_file()


@pytest.mark.skipif(not WHEEL, reason="TRACED_TRANSPORT_WHEEL not given")
def test_the_wheel_holds_one_top_level_package():
    names = zipfile.ZipFile(WHEEL).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"traced_transport"}, tops
    assert "traced_transport/py.typed" in names
    assert "traced_transport/exporters/_site/sitecustomize.py" in names


@pytest.mark.skipif(not CORE_PYTHON, reason="TRACED_TRANSPORT_CORE_PYTHON not given")
def test_core_with_opentelemetry_api_only(tmp_path):
    """The wheel without extras: the core works on opentelemetry-api alone and never imports the SDK."""
    code = (
        "import asyncio, importlib.util, sys\n"
        "assert importlib.util.find_spec('opentelemetry.sdk') is None, 'the SDK is installed'\n"
        "import traced_transport as tt\n"
        "registry = tt.Registry()\n"
        "async def main():\n"
        "    server = await tt.start_server(lambda r, w: w.close(), '127.0.0.1', 0, registry=registry)\n"
        "    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())\n"
        "    await reader.read()\n"
        "    writer.close()\n"
        "    server.close()\n"
        "    await server.wait_closed()\n"
        "asyncio.run(main())\n"
        "assert registry.totals().opened == 1\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry.sdk')]\n"
        "print('ok')\n"
    )
    out = subprocess.run([CORE_PYTHON, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr


@pytest.mark.skipif(not CORE_PYTHON, reason="TRACED_TRANSPORT_CORE_PYTHON not given")
@pytest.mark.parametrize(("command", "extra"), [(["demo"], "demo"), (["run", "--", "true"], "exporters")])
def test_commands_without_their_extra_say_which_to_install(tmp_path, command, extra):
    cli = Path(CORE_PYTHON).parent / "traced-transport"
    out = subprocess.run([str(cli), *command], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out
    assert f"pip install 'traced-transport[{extra}]'" in out.stderr and "Traceback" not in out.stderr


def test_sdk_not_imported_by_the_core():
    code = "import sys, traced_transport; print([m for m in sys.modules if m.startswith('opentelemetry.sdk')])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "[]\n"


def test_help():
    for args in ([], ["demo"], ["run"]):
        out = subprocess.run([str(BIN / "traced-transport"), *args, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: traced-transport" in out.stdout, out


# -- the commands ----------------------------------------------------------------------------------
def test_demo_serves_a_scrape(tmp_path):
    argv = [str(BIN / "traced-transport"), "demo", "--metrics-port", "0", "--duration", "60", "--concurrency", "4"]
    with Process(argv, tmp_path) as demo:
        url = demo.url(r"metrics\s+(http://\S+/metrics)")
        _wait_for(
            lambda: ((t := _totals(url)).get("transport_received_bytes_total", 0) > 0, t), 30, "bytes on the scrape"
        )
        assert demo.interrupt() == 0, demo.log()
    assert "Traceback" not in demo.log()


ECHO_APP = """
import asyncio, sys

async def handle(reader, writer):
    writer.write(await reader.read())
    await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

try:
    asyncio.run(main())
except KeyboardInterrupt:
    pass
"""


def test_run_traces_a_child(tmp_path):
    """``traced-transport run -- python app.py``: the child is instrumented by the sitecustomize in the wheel."""
    (tmp_path / "app.py").write_text(ECHO_APP)
    port = _free_port()
    argv = [str(BIN / "traced-transport"), "run", "--metrics-port", "0", "--interval", "0.2", "--"]
    with Process(argv + [sys.executable, "app.py", str(port)], tmp_path) as run:
        url = run.url(r"metrics at (http://\S+/metrics)")
        run.listening(port)  # one connection that carries nothing
        sent = sum(_echo(port, b"x" * (1000 * i + 1)) for i in range(3))
        _wait_for(lambda: ((t := _totals(url)).get("transport_received_bytes_total") == sent, t), 20, f"{sent} bytes")
        assert _totals(url)["transport_sent_bytes_total"] == sent


def test_opentelemetry_instrument_entry_point(tmp_path):
    """``opentelemetry-instrument python app.py`` finds the instrumentor through its entry point."""
    app = (
        "import asyncio, traced_transport as tt\n"
        "async def main():\n"
        "    server = await asyncio.start_server(lambda r, w: w.close(), '127.0.0.1', 0)\n"
        "    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())\n"
        "    await reader.read()\n"
        "    writer.close()\n"
        "    server.close()\n"
        "    await server.wait_closed()\n"
        "asyncio.run(main())\n"
        "print(tt.is_instrumented(), tt.default_registry.totals('server').opened)\n"
    )
    (tmp_path / "app.py").write_text(app)
    env = dict(os.environ, OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    out = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "app.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert out.stdout == "True 1\n", out


# -- the framework one-liners, under run: each connection counted once, under the helper's name ----------
ASGI_APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        return await send({"type": "lifespan.shutdown.complete"})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})
"""
FRAMEWORKS = {
    "uvicorn": (
        None,
        ["-m", "uvicorn", "app:app", "--port", "{port}", "--http", "traced_transport.uvicorn:h11"],
        _http_request,
        "http",
    ),
    "aiohttp": (
        "from aiohttp import web\n"
        "import sys, traced_transport.aiohttp\n"
        "async def hello(request):\n"
        "    return web.Response(text='hello')\n"
        "app = web.Application()\n"
        "app.router.add_get('/{tail:.*}', hello)\n"
        "traced_transport.aiohttp.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), print=None)\n",
        ["main.py", "{port}"],
        _http_request,
        "http",
    ),
    "hypercorn": (
        "import asyncio, signal, sys\n"
        "from hypercorn.config import Config\n"
        "import traced_transport.hypercorn\n"
        "from app import app\n"
        "config = Config()\n"
        "config.bind = [f'127.0.0.1:{sys.argv[1]}']\n"
        "async def main():\n"
        "    stop = asyncio.Event()\n"
        "    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)\n"
        "    await traced_transport.hypercorn.serve(app, config, shutdown_trigger=stop.wait)\n"
        "asyncio.run(main())\n",
        ["main.py", "{port}"],
        _http_request,
        "http",
    ),
    "websockets": (
        "import asyncio, signal, sys\n"
        "import traced_transport.websockets\n"
        "async def echo(ws):\n"
        "    async for message in ws:\n"
        "        await ws.send(message)\n"
        "async def main():\n"
        "    stop = asyncio.Event()\n"
        "    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)\n"
        "    async with traced_transport.websockets.serve(echo, '127.0.0.1', int(sys.argv[1]), compression=None):\n"
        "        await stop.wait()\n"
        "asyncio.run(main())\n",
        ["main.py", "{port}"],
        _ws_session,
        "websocket",
    ),
}


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_framework_one_liner_under_run(tmp_path, framework):
    script, args, client, name = FRAMEWORKS[framework]
    (tmp_path / "app.py").write_text(ASGI_APP)
    if script:
        (tmp_path / "main.py").write_text(script)
    port = _free_port()
    argv = [str(BIN / "traced-transport"), "run", "--metrics-port", "0", "--interval", "0.2", "--", sys.executable]
    with Process(argv + [a.format(port=port) for a in args], tmp_path) as run:
        url = run.url(r"metrics at (http://\S+/metrics)")
        run.listening(port)  # a first connection that carries nothing
        sent = received = 0
        for i in range(3):
            s, r = client(port, i)
            sent, received = sent + s, received + r
        connections = 4

        def scraped():
            everything, helpers = _totals(url), _totals(url, transport_name=name)
            got = [
                t.get(m, 0)
                for t in (everything, helpers)
                for m in (
                    "transport_received_bytes_total",
                    "transport_sent_bytes_total",
                    "transport_connection_duration_seconds_count",
                )
            ]
            return got == [sent, received, connections] * 2, got

        # Summed over every name: run's instrument() must not count the helper's connections a second time.
        _wait_for(scraped, 20, f"rx={sent} tx={received} over {connections} connections, once")
