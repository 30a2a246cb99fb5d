"""traced_transport.exporters.multiworker: one scrape with the exact totals of every worker process.

- the aggregated exposition is, for one worker, exactly what the OpenTelemetry
  Prometheus exporter gives for the same instruments;
- dead workers: counters and histograms kept, gauges dropped; mark_dead; compaction;
- a process ended by SIGTERM with the default handler leaves its exact final totals;
- a real ``uvicorn --workers 2`` under real HTTP load from raw sockets: the aggregated
  bytes equal what the clients wrote and read, before and after a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.prometheus")
pytest.importorskip("prometheus_client")

from _util import free_port, samples, total, wait_for
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families  # noqa: F401
from traced_transport.exporters import multiworker as mw
from traced_transport.exporters.prometheus import prometheus_reader

import traced_transport as tt

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROMTOOL = shutil.which("promtool")


# -- helpers ------------------------------------------------------------------------------------
def check_promtool(text: str) -> None:
    if PROMTOOL is None:
        return
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def render(collector: mw.AggregatingCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def _in_process_traffic(telemetry, held: list) -> None:
    """Echo traffic on a fresh loop: 3 connections, 2 closed, 1 left open (in ``held``)."""

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(tt.traced(_Echo, name="echo", observer=telemetry), "127.0.0.1", 0)
        for i in range(3):
            reader = asyncio.StreamReader()
            proto = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.create_connection(
                tt.traced(lambda proto=proto: proto, name="cli", side="client", observer=telemetry),
                *server.sockets[0].getsockname(),
            )
            writer = asyncio.StreamWriter(transport, proto, reader, loop)
            writer.write(b"x" * (100 * (i + 1)))
            await reader.readexactly(100 * (i + 1))
            transport.pause_reading()
            transport.resume_reading()
            if i < 2:
                writer.close()
                await writer.wait_closed()
            else:
                held.append((writer, server))
        # the server sides of the closed connections see EOF
        while len(telemetry.registry.live()) > 2:
            await asyncio.sleep(0.005)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        held.append(loop)
    except BaseException:
        loop.close()
        raise


def _close_held(held: list) -> None:
    writer, server = held[0]
    loop = held[1]

    async def close():
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(close())
    loop.close()


# -- the exposition is the OpenTelemetry Prometheus exporter's ------------------------------------
@pytest.mark.parametrize("scope_labels", [False, True])
def test_same_exposition_as_otel_prometheus_exporter(tmp_path, scope_labels):
    """One worker, aggregated: byte for byte what the OTel exporter renders (target_info aside)."""
    prom_registry = CollectorRegistry()
    prom_reader, _ = prometheus_reader(prom_registry, scope_labels=scope_labels)
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory, prom_reader], shutdown_on_exit=False)
    telemetry = tt.Telemetry(tt.Registry(), meter_provider=provider, spans=False)
    worker = mw.WorkerExporter(
        str(tmp_path), reader=memory, meter_provider=provider, telemetry=telemetry, interval=3600
    )
    held: list = []
    _in_process_traffic(telemetry, held)
    try:
        assert worker.flush()
        ours = render(mw.AggregatingCollector(str(tmp_path), scope_labels=scope_labels))
        theirs = generate_latest(prom_registry).decode()
    finally:
        _close_held(held)
        provider.shutdown()

    def lines(text):
        return sorted(line for line in text.splitlines() if "target_info" not in line)

    assert lines(ours) == lines(theirs)
    parsed = samples(ours)
    assert total(parsed, "transport_received_bytes_total", transport_name="echo") == 600
    assert total(parsed, "transport_sent_bytes_total", transport_name="cli") == 600
    assert total(parsed, "transport_connection_active", transport_name="echo") == 1
    assert total(parsed, "transport_connection_duration_seconds_count", transport_name="echo") == 2
    assert total(parsed, "transport_reading_pause_duration_seconds_count", transport_name="cli") == 3
    assert ("transport_connection_duration_seconds_bucket" in ours) and 'le="+Inf"' in ours
    assert ("otel_scope_name" in ours) is scope_labels
    # a single worker's resource is the target's
    assert "target_info{" in ours and "service_name=" in ours
    check_promtool(ours)


# -- dead workers, mark_dead, compaction ------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _worker_doc(metrics, pid, start=None, final=False, resource=None):
    return {
        "format": 1,
        "pid": pid,
        "token": "ab",
        "start": start,
        "time": time.time(),
        "interval": 1.0,
        "final": final,
        "resource": resource or {"service.name": "svc", "host.name": f"h{pid}"},
        "metrics": metrics,
    }


def _load(path):
    with open(path) as f:
        return json.load(f)


def _write(directory, pid, token, doc):
    path = os.path.join(directory, f"{pid}-{token}.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def test_dead_workers_keep_counters_and_lose_gauges(tmp_path):
    directory = str(tmp_path)
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory], shutdown_on_exit=False)
    telemetry = tt.Telemetry(tt.Registry(), meter_provider=provider, spans=False)
    held: list = []
    _in_process_traffic(telemetry, held)
    try:
        telemetry.flush()
        metrics, _ = mw.serialize(memory.get_metrics_data())
    finally:
        _close_held(held)
        provider.shutdown()
    me, start = os.getpid(), mw._own_start()
    dead1, dead2 = _dead_pid(), _dead_pid()
    assert mw.pid_alive(me, start) and not mw.pid_alive(dead1)
    if start is not None:
        assert not mw.pid_alive(me, start + 1)  # the pid, reused by a process started at another time
    _write(directory, me, "a1", _worker_doc(metrics, me, start))
    _write(directory, dead1, "b2", _worker_doc(metrics, dead1))  # killed: not final, pid gone
    _write(directory, dead2, "c3", _worker_doc(metrics, dead2))
    collector = mw.AggregatingCollector(directory, compact=False)

    def check(active_workers):
        agg = collector.read()
        parsed = samples(render(collector))
        assert agg.value("transport.received", **{"transport.name": "echo"}) == 3 * 600
        assert total(parsed, "transport_received_bytes_total", transport_name="echo") == 3 * 600
        assert total(parsed, "transport_connection_opened_total", transport_name="cli") == 3 * 3
        assert total(parsed, "transport_connection_duration_seconds_count", transport_name="echo") == 3 * 2
        assert total(parsed, "transport_connection_active", transport_name="echo") == active_workers
        assert total(parsed, "transport_connection_active", transport_name="cli") == active_workers
        # the resource attributes all workers share
        assert 'service_name="svc"' in render(collector) and "host_name" not in render(collector)
        return agg

    agg = check(active_workers=1)
    assert sorted((w["pid"], w["alive"]) for w in agg.workers) == sorted([(me, True), (dead1, False), (dead2, False)])
    # gunicorn's child_exit: mark_dead makes the files final and drops their gauges
    assert mw.mark_dead(directory, dead1) == 1
    assert mw.mark_dead(directory, dead1) == 0
    doc = _load(os.path.join(directory, f"{dead1}-b2.json"))
    assert doc["final"]
    assert all(v == 0 for m in doc["metrics"] if m["kind"] in ("gauge", "updowncounter") for _, v in m["points"])
    check(active_workers=1)
    # compaction folds final files of dead workers (and old files of dead ones) into retired.json
    collector = mw.AggregatingCollector(directory, compact=True)
    check(active_workers=1)
    assert not os.path.exists(os.path.join(directory, f"{dead1}-b2.json"))
    assert os.path.exists(os.path.join(directory, f"{dead2}-c3.json"))  # not final, not old yet
    collector.retire_after = 0
    check(active_workers=1)
    assert sorted(n for n in os.listdir(directory) if n.endswith(".json")) == [f"{me}-a1.json", "retired.json"]
    # a second pass changes nothing; a worker starting up again does not bring the counters down
    assert collector.compact() == 0
    _write(directory, dead1, "d4", _worker_doc([], dead1))
    check(active_workers=1)
    check_promtool(render(collector))
    # prepare_directory empties it
    mw.prepare_directory(directory)
    assert [n for n in os.listdir(directory)] == []
    assert render(collector) == ""


# -- SIGTERM with the default handler ------------------------------------------------------------
_SIGTERM_CHILD = textwrap.dedent("""
    import asyncio, sys
    import traced_transport
    from traced_transport.exporters import multiworker
    # a long interval: only the final write (from the SIGTERM handler) can carry the counts
    worker = multiworker.start_worker(sys.argv[1], interval=3600)
    worker.instrument(server_name="echo")

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)

    async def main():
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def test_sigterm_with_default_handler_writes_final_totals(tmp_path):
    directory = str(tmp_path / "mw")
    proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_CHILD, directory], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        port = int(proc.stdout.readline())
        payload = bytes(range(256)) * 41  # 10496 bytes
        with socket.create_connection(("127.0.0.1", port)) as a, socket.create_connection(("127.0.0.1", port)) as b:
            for s in (a, b):
                s.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    got += s.recv(65536)
            a.shutdown(socket.SHUT_WR)
            assert a.recv(1) == b""
            assert os.listdir(directory) == []  # nothing written yet
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == -signal.SIGTERM  # still dies by the signal, as without us
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    collector = mw.AggregatingCollector(directory, compact=False)
    agg = collector.read()
    assert [w["final"] for w in agg.workers] == [True]
    parsed = samples(render(collector))
    assert total(parsed, "transport_received_bytes_total", transport_name="echo") == 2 * len(payload)
    assert total(parsed, "transport_sent_bytes_total", transport_name="echo") == 2 * len(payload)
    assert total(parsed, "transport_connection_opened_total", transport_name="echo") == 2
    assert total(parsed, "transport_connection_duration_seconds_count", transport_name="echo") == 1
    # a dead worker's gauges: still there, at 0 (as in one process once its connections closed)
    active = [v for (n, _), v in parsed.items() if n == "transport_connection_active"]
    assert active == [0]


# -- a real uvicorn with two workers -----------------------------------------------------------------
class Load:
    """HTTP/1.1 over raw sockets, counting every byte written to and read from them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.sent = 0
        self.received = 0
        self.connections = 0
        self.requests = 0
        self.pids: dict[int, int] = {}

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        with self.lock:
            self.connections += 1
        return s

    def request(self, s: socket.socket, body: bytes, keep_alive: bool) -> None:
        head = (
            f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUser-Agent: tt-test\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
            + ("" if keep_alive else "Connection: close\r\n")
            + "\r\n"
        ).encode()
        data = head + body
        s.sendall(data)
        received = 0
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, "connection closed before the response head"
            received += len(chunk)
            buf += chunk
        head_bytes, _, rest = buf.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 200"), lines[0]
        length = next(
            int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.strip().lower() == "content-length"
        )
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk, "connection closed in the response body"
            received += len(chunk)
            rest += chunk
        assert len(rest) == length
        pid, size = map(int, rest.split())
        assert size == len(body)
        if not keep_alive:
            while True:  # the server closes: read to EOF (no byte left uncounted)
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
        with self.lock:
            self.sent += len(data)
            self.received += received
            self.requests += 1
            self.pids[pid] = self.pids.get(pid, 0) + 1


def _body(i: int) -> bytes:
    return bytes((i * 7 + k) % 251 for k in range((i * 3571) % 70001))


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@pytest.fixture(params=["app", "sitecustomize"])
def uvicorn_two_workers(tmp_path, request):
    """``uvicorn --workers 2``; exporting set up by the app module at import, or by a sitecustomize
    in every process (what ``traced-transport run`` does)."""
    directory = str(tmp_path / "mw")
    mw.prepare_directory(directory)
    port = free_port()
    log_path = tmp_path / "uvicorn.log"
    env = dict(os.environ, TT_MW_DIR=directory, TT_MW_INTERVAL="0.2", PYTHONUNBUFFERED="1", TT_MW_MODE=request.param)
    if request.param == "sitecustomize":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(HERE, "_mw_site"), env.get("PYTHONPATH")]))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "_mw_app:app",
                "--app-dir",
                HERE,
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "info",
                "--no-access-log",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    try:

        def ready():
            text = log_path.read_text(errors="replace")
            if proc.poll() is not None:
                pytest.fail(f"uvicorn exited with {proc.returncode}:\n{text}")
            return text.count("Application startup complete.") >= 2, text

        wait_for(ready, 30, "two uvicorn workers")
        yield proc, port, directory, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_uvicorn_two_workers_exact_totals(uvicorn_two_workers):
    proc, port, directory, log_path = uvicorn_two_workers
    aggregator = mw.serve(directory, port=0)
    try:
        _run_uvicorn_load_and_check(proc, port, directory, log_path, aggregator)
    finally:
        aggregator.close()


def _http_totals(text: str) -> dict:
    """The scraped totals of transport_name="http", summed over workers."""
    parsed = samples(text)
    return {
        "rx": total(parsed, "transport_received_bytes_total", transport_name="http"),
        "tx": total(parsed, "transport_sent_bytes_total", transport_name="http"),
        "opened": total(parsed, "transport_connection_opened_total", transport_name="http"),
        "active": total(parsed, "transport_connection_active", transport_name="http"),
        "closed": total(parsed, "transport_connection_duration_seconds_count", transport_name="http"),
    }


def _run_uvicorn_load_and_check(proc, port, directory, log_path, aggregator):
    load = Load(port)
    errors: list = []

    def client(n: int) -> None:
        try:
            for j in range(4):  # new connections, closed by the server after one request
                s = load.connect()
                with s:
                    load.request(s, _body(n * 10 + j), keep_alive=False)
            s = load.connect()  # one keep-alive connection, several requests, closed by us
            with s:
                for j in range(6):
                    load.request(s, _body(n * 100 + j), keep_alive=True)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # more new connections until both workers have answered (the kernel picks the acceptor)
    extra = 0
    while len(load.pids) < 2 and extra < 400:
        batch = [load.connect() for _ in range(8)]
        for i, s in enumerate(batch):
            with s:
                load.request(s, _body(extra + i), keep_alive=False)
        extra += len(batch)
    assert len(load.pids) == 2, f"only one worker answered: {load.pids}"
    # connections still open when the server shuts down
    held = []
    for i in range(4):
        s = load.connect()
        load.request(s, _body(7000 + i), keep_alive=True)
        held.append(s)
    try:
        expected = {"sent": load.sent, "received": load.received, "connections": load.connections}

        def live_totals():
            text = _scrape(aggregator.url)
            got = _http_totals(text)
            want = {
                "rx": expected["sent"],
                "tx": expected["received"],
                "opened": expected["connections"],
                "active": len(held),
                "closed": expected["connections"] - len(held),
            }
            return got == want, (got, want, text)

        _, (_, _, text) = True, wait_for(live_totals, 20, "the aggregated totals of both workers")
        check_promtool(text)
        agg = aggregator.collector.read()
        live_pids = {w["pid"] for w in agg.workers if w["alive"]}
        assert live_pids == set(load.pids), (live_pids, load.pids)
        assert "transport_connection_duration_seconds_bucket{" in text and 'le="+Inf"' in text
        assert 'server_port="%d"' % port in text and 'transport_side="server"' in text

        # a graceful shutdown, as systemd or Kubernetes does it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text(errors="replace")
    finally:
        for s in held:
            s.close()

    def final_totals():
        # the held connections were closed by the shutdown: they are in the final writes
        got = _http_totals(_scrape(aggregator.url))
        want = {
            "rx": expected["sent"],
            "tx": expected["received"],
            "opened": expected["connections"],
            "active": 0,
            "closed": expected["connections"],
        }
        return got == want, (got, want)

    wait_for(final_totals, 10, "the final totals")
    # both workers ended cleanly: final files, folded into retired.json by the aggregator
    agg = aggregator.collector.read()
    assert not any(w["alive"] for w in agg.workers)
    names = os.listdir(directory)
    assert "retired.json" in names and not [n for n in names if n.endswith(".json") and n != "retired.json"]
    retired = _load(os.path.join(directory, "retired.json"))
    assert {int(n.split("-")[0]) for n in retired["merged"]} <= set(load.pids)
    check_promtool(_scrape(aggregator.url))
