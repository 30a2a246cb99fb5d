"""The CLI and zero-code paths, as a user runs them: real processes, real HTTP clients."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from _util import free_port, samples, total, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)


_open_logs: list = []


@pytest.fixture(autouse=True)
def _close_logs():
    yield
    while _open_logs:
        _open_logs.pop().close()


def _log(path):
    f = open(path, "w+")
    _open_logs.append(f)
    return f


def _interrupt(proc, log) -> tuple[int, str]:
    """Ctrl-C the process; its exit code and everything it logged."""
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=30)
    log.seek(0)
    return code, log.read()


def _url_in(log, pattern: str) -> tuple:
    """(found, URL): the URL a process printed to its log."""
    log.seek(0)
    m = re.search(pattern, log.read())
    return bool(m), m.group(1) if m else None


def scrape(url: str) -> dict:
    return samples(urllib.request.urlopen(url, timeout=5).read().decode())


def http_load(port: int, requests: int) -> tuple[int, int]:
    """Requests over raw sockets; returns the bytes written to and read from them."""
    sent = received = 0
    for i in range(requests):
        body = b"b" * (i * 100)
        req = (
            f"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(req)
            sent += len(req)
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
    return sent, received


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    def check():
        if proc.poll() is not None:
            pytest.fail(f"process exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True, None
        except OSError as exc:
            return False, exc

    wait_for(check, timeout, f"port {port}")


def test_help_explains_every_option():
    out = subprocess.run(
        [os.path.join(BIN, "traced-transport"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "demo" in out and "run" in out
    demo = subprocess.run(
        [os.path.join(BIN, "traced-transport"), "demo", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--host", "--metrics-port", "--concurrency", "--duration", "--loop"):
        assert option in demo
    run = subprocess.run(
        [os.path.join(BIN, "traced-transport"), "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--metrics-port", "--metrics-host", "--server-name", "--basic-auth"):
        assert option in run


def test_run_instruments_an_unmodified_uvicorn_app_with_workers(tmp_path):
    port = free_port()
    log = _log(tmp_path / "run.log")
    env = dict(os.environ, PYTHONPATH=HERE)
    proc = subprocess.Popen(
        [
            os.path.join(BIN, "traced-transport"),
            "run",
            "--metrics-port",
            "0",
            "--interval",
            "0.2",
            "--",
            sys.executable,
            "-m",
            "uvicorn",
            "_plain_app:app",
            "--port",
            str(port),
            "--workers",
            "2",
            "--no-access-log",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=HERE,
    )
    try:
        url = wait_for(lambda: _url_in(log, r"metrics at (http://\S+)"), 20, "the metrics URL")
        wait_listening(port, proc)
        sent, received = http_load(port, 30)

        def exact():
            parsed = scrape(url)
            got = (
                total(parsed, "transport_received_bytes_total", transport_name="server"),
                total(parsed, "transport_sent_bytes_total", transport_name="server"),
                total(parsed, "transport_connection_opened_total", transport_name="server"),
            )
            # 30 requests, plus the one connection that found the port open
            return got == (sent, received, 31), got

        wait_for(exact, 30, f"totals of {sent} bytes in, {received} out")
    finally:
        code, output = _interrupt(proc, log)
    assert code == 0, output


def test_opentelemetry_instrument_picks_up_the_instrumentor(tmp_path):
    from _otlp_receiver import OTLPReceiver

    port = free_port()
    with OTLPReceiver() as receiver:
        env = dict(
            os.environ,
            PYTHONPATH=HERE,
            OTEL_SERVICE_NAME="otel-instrument-test",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_METRIC_EXPORT_INTERVAL="200",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="asgi,asyncio,threading,urllib,logging",
            OTEL_LOGS_EXPORTER="none",
        )
        log = _log(tmp_path / "oi.log")
        proc = subprocess.Popen(
            [
                os.path.join(BIN, "opentelemetry-instrument"),
                sys.executable,
                "-m",
                "uvicorn",
                "_plain_app:app",
                "--port",
                str(port),
                "--no-access-log",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=HERE,
        )
        try:
            wait_listening(port, proc)
            sent, received = http_load(port, 5)

            def arrived(r):
                m = r.latest("transport.received", service="otel-instrument-test")
                if m is None:
                    return None
                values = [v.as_int for a, v in m.points() if a.get("transport.name") == "server"]
                return sum(values) == sent

            receiver.wait_for(arrived, 20, "transport.received == bytes sent")
            spans = receiver.wait_for(
                lambda r: [s for s in r.spans("otel-instrument-test") if s.name == "server connection"], 20, "spans"
            )
            assert spans[0].attributes["network.peer.address"] == "127.0.0.1"
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)


def test_demo_brings_up_the_endpoint_and_moves_every_metric(tmp_path):
    log = _log(tmp_path / "demo.log")
    proc = subprocess.Popen(
        [
            os.path.join(BIN, "traced-transport"),
            "demo",
            "--metrics-port",
            "0",
            "--duration",
            "60",
            "--interval",
            "1",
            "--concurrency",
            "8",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = wait_for(lambda: _url_in(log, r"metrics\s+(http://\S+)"), 30, "the demo's metrics URL")

        def everything_moved():
            p = scrape(url)
            checks = {
                "echo bytes": total(p, "transport_received_bytes_total", transport_name="echo") > 0,
                "tls bytes": total(
                    p, "transport_received_bytes_total", transport_name="tls-echo", tls_protocol_version="1.3"
                )
                > 0,
                "http bytes": total(p, "transport_sent_bytes_total", transport_name="http") > 0,
                "client side": total(p, "transport_sent_bytes_total", transport_side="client") > 0,
                "read pauses": total(p, "transport_reading_pause_duration_seconds_count", transport_name="echo") > 0,
                "write pauses": total(p, "transport_writing_pause_duration_seconds_count", transport_name="echo") > 0,
                "handshake failures": total(
                    p, "transport_connection_duration_seconds_count", error_type="tls_handshake_failed"
                )
                > 0,
                "handshakes": total(p, "transport_tls_handshake_duration_seconds_count") > 0,
                "aborted or reset": total(
                    p, "transport_connection_duration_seconds_count", transport_name="echo-client", error_type="aborted"
                )
                > 0,
            }
            return all(checks.values()), [k for k, ok in checks.items() if not ok]

        wait_for(everything_moved, 45, "every metric to move", interval=0.5)
    finally:
        code, output = _interrupt(proc, log)
    assert code == 0, output
    assert "final:" in output and "Traceback" not in output


@pytest.mark.parametrize(
    ("command", "module", "extra"), [("demo", "trustme", "demo"), ("run", "prometheus_client", "exporters")]
)
def test_missing_dependency_names_the_extra(monkeypatch, capsys, command, module, extra):
    """Without what a command imports: one line naming the extra to install, exit code 2, no traceback."""
    from traced_transport.exporters import cli

    real = cli._installed
    monkeypatch.setattr(cli, "_installed", lambda m: m != module and real(m))
    assert cli.main([command]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"traced-transport {command} needs {module} (not installed): pip install 'traced-transport[{extra}]'\n"
    )
