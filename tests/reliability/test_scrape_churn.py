"""Scrapes during churn: a thread scraping the real endpoint in a tight loop while connections open and
close never gets an error, a negative gauge or a counter that went down; the last scrape is exact."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("prometheus_client")

from _echo import Echo
from prometheus_client.parser import text_string_to_metric_families
from traced_transport.exporters import sdk

import traced_transport as tt

CONNECTIONS = 3000
WAVE = 100
MONOTONIC_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
GAUGES = (
    "transport_connection_active",
    "transport_reading_paused",
    "transport_writing_paused",
    "transport_write_buffer_size_bytes",
)


class Scraper(threading.Thread):
    """GET /metrics on one keep-alive connection, as fast as it answers; checks every answer."""

    def __init__(self, endpoint):
        super().__init__(name="churn-scraper", daemon=True)
        self.endpoint = endpoint
        self.stop = threading.Event()
        self.scrapes = 0
        self.problems: list[str] = []
        self.last: dict = {}
        self.series_seen = 0

    def scrape(self, conn) -> dict:
        conn.request("GET", self.endpoint.path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise AssertionError(f"status {resp.status}: {body[:200]!r}")
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                # As Prometheus stores them: an empty label is no label. (The exporter gives every
                # series of a family the union of the label names, so a series gains server_port=""
                # once a server-side series exists; for Prometheus it is the same series.)
                key = (s.name, frozenset((k, v) for k, v in s.labels.items() if v != ""))
                if key in out:
                    raise AssertionError(f"duplicate series {key}")
                out[key] = s.value
        return out

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.endpoint.port, timeout=10)
        try:
            while not self.stop.is_set():
                try:
                    now = self.scrape(conn)
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    self.problems.append(f"scrape {self.scrapes}: {exc!r}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.endpoint.port, timeout=10)
                    continue
                self.check(now)
                self.last = now
                self.scrapes += 1
        finally:
            conn.close()

    def check(self, now: dict) -> None:
        self.series_seen = max(self.series_seen, len(now))
        for key, value in now.items():
            name = key[0]
            if name.startswith(GAUGES) and value < 0:
                self.problems.append(f"negative gauge {key}: {value}")
            if name.endswith(MONOTONIC_SUFFIXES):
                before = self.last.get(key)
                if before is not None and value < before:
                    self.problems.append(f"counter went down {key}: {before} -> {value}")
        for key in self.last:  # a counter series never disappears
            if key[0].endswith(MONOTONIC_SUFFIXES) and key not in now:
                self.problems.append(f"series vanished {key}")


def test_scrapes_during_churn_never_error_or_go_backwards(run, loop_kind):
    s = sdk.setup(service_name="churn", metrics_port=0, set_global=False, otlp=False)
    registry = tt.Registry()
    telemetry = tt.Telemetry(registry, meter_provider=s.meter_provider, tracer_provider=s.tracer_provider)
    scraper = Scraper(s.endpoint)
    sent = [0]

    async def main():
        loop = asyncio.get_running_loop()
        # some pauses open and close during the churn: a read pause after each chunk with a "!"
        server = await loop.create_server(
            tt.traced(lambda: Echo(pause_on=b"!"), name="churn", observer=telemetry), "127.0.0.1", 0, backlog=1024
        )
        port = server.sockets[0].getsockname()[1]

        async def one(i):
            reader, writer = await tt.open_connection("127.0.0.1", port, name="churn-client", observer=telemetry)
            payload = (b"x" * (i % 300)) + (b"!" if i % 7 == 0 else b".")
            writer.write(payload)
            sent[0] += len(payload)
            await reader.readexactly(len(payload))
            if i % 5 == 0:
                writer.transport.abort()
            else:
                writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

        scraper.start()
        for base in range(0, CONNECTIONS, WAVE):
            await asyncio.gather(*(one(i) for i in range(base, base + WAVE)))
        server.close()
        await server.wait_closed()

    try:
        run(main, timeout=120)
        # the server side of the last connections may end a moment after the clients (no event
        # crosses from the finished loop; poll the registry, bounded)
        deadline = time.monotonic() + 10
        while registry.live() and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert not registry.live()
    finally:
        scraper.stop.set()
        scraper.join(30)
    try:
        # Telemetry reuses a registry pass younger than 50 ms (so one collection's callbacks share
        # it); a scrape right after the scraper's last one may still see that pass. Scrape until
        # the counts settle, bounded.
        conn = http.client.HTTPConnection("127.0.0.1", s.endpoint.port, timeout=10)
        deadline = time.monotonic() + 2
        while True:
            final = scraper.scrape(conn)
            opened = sum(v for (n, ls), v in final.items() if n == "transport_connection_opened_total")
            active = sum(v for (n, ls), v in final.items() if n == "transport_connection_active")
            if (opened, active) == (2 * CONNECTIONS, 0) or time.monotonic() > deadline:
                break
        conn.close()
    finally:
        s.shutdown()
    assert not scraper.problems, scraper.problems[:20]
    assert scraper.scrapes >= 10, scraper.scrapes
    scraper.check(final)
    assert not scraper.problems, scraper.problems[:20]

    def value(name, **labels):
        return sum(v for (n, ls), v in final.items() if n == name and all((k, x) in ls for k, x in labels.items()))

    for side_name in ("churn", "churn-client"):
        assert value("transport_connection_opened_total", transport_name=side_name) == CONNECTIONS
        assert value("transport_connection_active", transport_name=side_name) == 0
        assert value("transport_connection_duration_seconds_count", transport_name=side_name) == CONNECTIONS
        assert value("transport_received_bytes_total", transport_name=side_name) == sent[0]
        assert value("transport_sent_bytes_total", transport_name=side_name) == sent[0]
