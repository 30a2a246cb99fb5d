"""End to end with a real Prometheus server scraping the endpoint every second.

A traced echo server (with setup() providers and a Telemetry over a fresh registry) takes a stepped load of
known sizes; after each step we wait until Prometheus has scraped the new exact total. Then the samples
Prometheus stored are checked against the load, and ``increase()``/``rate()`` against what Prometheus's own
extrapolation gives for exactly those samples.
"""

from __future__ import annotations

import asyncio
import math
import pathlib
import sys
import threading
import time

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.prometheus")

from traced_transport.exporters import sdk

import traced_transport as tt

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "grafana"))
import live

JOB = "traced"
WINDOW_S = 30


class Prometheus(live.Prometheus):
    """grafana/live.py's Prometheus (scraping every second), no rules; queries that fail the test with its log."""

    def __init__(self, binary: str, tmp_path, target: str) -> None:
        super().__init__(tmp_path, [target], binary=binary, rules=None, job=JOB)

    def query(self, q: str, at: float | None = None) -> list:
        params = {"query": q}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        assert data["status"] == "success", data
        return data["data"]["result"]

    def wait(self, what: str, check, deadline_s: float = 20.0, interval: float = 0.1):
        """Poll ``check()`` until it returns something truthy; fail with Prometheus's log after the deadline."""
        deadline = time.monotonic() + deadline_s
        last_exc = None
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                result = check()
                if result:
                    return result
            except (OSError, ValueError, KeyError) as exc:  # not up yet / no data yet
                last_exc = exc
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what} (last error {last_exc!r});\nprometheus log:\n{self.log()}")
            threading.Event().wait(interval)


class LoopThread:
    """An event loop (uvloop when installed) on its own thread: the app the endpoint runs beside."""

    def __init__(self) -> None:
        try:
            import uvloop

            self.loop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="app-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def extrapolated_increase(samples: list[tuple[float, float]], range_start: float, range_end: float) -> float:
    """Prometheus's extrapolatedRate(isCounter=True, isRate=False) for these samples (promql/functions.go)."""
    (t0, v0), (t1, v1) = samples[0], samples[-1]
    result = v1 - v0
    prev = v0
    for _, v in samples[1:]:  # counter resets
        if v < prev:
            result += prev
        prev = v
    sampled = t1 - t0
    avg = sampled / (len(samples) - 1)
    to_start = t0 - range_start
    to_end = range_end - t1
    if result > 0 and v0 >= 0:
        to_zero = sampled * (v0 / result)
        if to_zero < to_start:
            to_start = to_zero
    threshold = avg * 1.1
    extrapolate = sampled
    extrapolate += to_start if to_start < threshold else avg / 2
    extrapolate += to_end if to_end < threshold else avg / 2
    return result * (extrapolate / sampled)


@pytest.fixture
def app():
    s = sdk.setup(service_name="prometheus-e2e", metrics_port=0, set_global=False, otlp=False)
    registry = tt.Registry()
    telemetry = tt.Telemetry(registry, meter_provider=s.meter_provider, tracer_provider=s.tracer_provider)
    loop = LoopThread()
    try:
        yield s, telemetry, loop
    finally:
        loop.close()
        s.shutdown()


def test_prometheus_scrapes_exact_counts_and_rate(prometheus_bin, tmp_path, app):
    started = time.monotonic()
    s, telemetry, loop = app

    async def start_server():
        server = await asyncio.get_running_loop().create_server(
            tt.traced(Echo, name="echo", observer=telemetry), "127.0.0.1", 0
        )
        return server, server.sockets[0].getsockname()[1]

    server, echo_port = loop.run(start_server())

    async def open_client():
        return await asyncio.open_connection("127.0.0.1", echo_port)

    async def send(conn, n: int, fill: int):
        reader, writer = conn
        writer.write(bytes([fill]) * n)
        await writer.drain()
        await reader.readexactly(n)  # echoed back: the server has counted all of it

    async def one_shot(n: int, fill: int):
        conn = await open_client()
        await send(conn, n, fill)
        conn[1].close()
        await conn[1].wait_closed()

    prom = Prometheus(prometheus_bin, tmp_path, f"127.0.0.1:{s.endpoint.port}")  # returns once ready
    try:
        selector = f'transport_received_bytes_total{{job="{JOB}",transport_name="echo"}}'

        def scraped_total(expected: int):
            def check():
                result = prom.query(selector)
                return result if result and float(result[0]["value"][1]) == expected else None

            return check

        # A stepped load: after each step, wait until Prometheus has scraped the new exact total.
        persistent = loop.run(open_client())
        sizes = [1000, 250_000, 1, 77_777, 1_048_576, 4096, 333_333, 12]
        total = 0
        totals = {0}
        for i, n in enumerate(sizes):
            if i % 2:
                loop.run(send(persistent, n, i))
            else:
                loop.run(one_shot(n, i))
            total += n
            totals.add(total)
            result = prom.wait(f"total {total} scraped", scraped_total(total))

        # The series, with the attributes as labels.
        labels = result[0]["metric"]
        assert labels["transport_name"] == "echo"
        assert labels["transport_side"] == "server"
        assert labels["network_transport"] == "tcp"
        assert labels["network_type"] == "ipv4"
        assert labels["server_port"] == str(echo_port)
        assert labels["instance"] == f"127.0.0.1:{s.endpoint.port}"
        assert not [k for k in labels if k.startswith("otel_scope")]
        sent = prom.query(f'transport_sent_bytes_total{{job="{JOB}",transport_name="echo"}}')
        assert float(sent[0]["value"][1]) == total
        opened = prom.query(f'transport_connection_opened_total{{job="{JOB}",transport_name="echo"}}')
        assert float(opened[0]["value"][1]) == 1 + len(sizes[::2])
        active = prom.query(f'transport_connection_active{{job="{JOB}",transport_name="echo"}}')
        assert float(active[0]["value"][1]) == 1
        duration_count = prom.query(f'transport_connection_duration_seconds_count{{job="{JOB}"}}')
        assert sum(float(r["value"][1]) for r in duration_count) == len(sizes[::2])
        info = prom.query(f'target_info{{job="{JOB}"}}')
        assert info[0]["metric"]["service_name"] == "prometheus-e2e"
        assert prom.query(f'up{{job="{JOB}"}}')[0]["value"][1] == "1"
        targets = prom.api("targets")["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"] and targets[0]["lastError"] == "", targets

        # The raw samples Prometheus stored are exactly the totals the load produced, never anything else.
        raw = prom.query(f"{selector}[{WINDOW_S}s]")
        points = [(float(t), float(v)) for t, v in raw[0]["values"]]
        assert len(points) >= len(sizes)
        assert {v for _, v in points} <= totals
        assert [v for _, v in points] == sorted(v for _, v in points)
        assert points[-1][1] == total

        # increase() and rate() over a window ending at the last sample, against the same samples.
        at = points[-1][0]
        raw = prom.query(f"{selector}[{WINDOW_S}s]", at)
        window = [(float(t), float(v)) for t, v in raw[0]["values"]]
        first, last = window[0], window[-1]
        exact_bytes = last[1] - first[1]  # the bytes the load sent between the window's first and last scrape
        assert exact_bytes > 0
        increase = float(prom.query(f"increase({selector}[{WINDOW_S}s])", at)[0]["value"][1])
        rate = float(prom.query(f"rate({selector}[{WINDOW_S}s])", at)[0]["value"][1])
        expected = extrapolated_increase(window, at - WINDOW_S, at)
        assert math.isclose(increase, expected, rel_tol=1e-6), (increase, expected, window)
        assert math.isclose(rate * WINDOW_S, increase, rel_tol=1e-6)
        # Extrapolation only stretches the exact increase to the window: never less, at most window/sampled.
        assert exact_bytes <= increase * (1 + 1e-9)
        assert increase <= exact_bytes * WINDOW_S / (last[0] - first[0]) * (1 + 1e-9)
    finally:
        prom.stop()

        async def close_all(conn):
            if conn is not None:
                conn[1].close()
                await conn[1].wait_closed()
            server.close()
            await server.wait_closed()

        try:
            loop.run(close_all(locals().get("persistent")))
        except Exception:  # noqa: BLE001 - teardown after a failure
            pass
    assert time.monotonic() - started < 90
