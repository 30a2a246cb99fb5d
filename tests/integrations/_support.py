"""What the integration tests share: an in-memory OTel SDK pipeline, client tools run as processes, waits."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import traced_transport as tt

# tests/exporters/_plain_app.py: the ASGI app the hypercorn and uvicorn tests build theirs from (it stays in
# tests/exporters, where uvicorn subprocesses import it with only that directory on the path)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "exporters"))
from _plain_app import make_app  # noqa: F401


class Otel:
    """A real SDK pipeline, kept in memory; ``telemetry`` is what the integrations get as ``observer=``."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.registry = tt.Registry()
        self.telemetry = tt.Telemetry(
            self.registry, meter_provider=self.meter_provider, tracer_provider=self.tracer_provider
        )

    def points(self, metric: str) -> list:
        out = []
        for rm in self.reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        out.extend(m.data.data_points)
        return out

    def value(self, metric: str, **attrs) -> float:
        """Sum of a metric's points whose attributes match (``transport_name=`` for ``transport.name``)."""
        total = 0
        for p in self.points(metric):
            if all(p.attributes.get(k.replace("_", ".")) == v for k, v in attrs.items()):
                total += p.value if hasattr(p, "value") else p.count
        return total

    def spans(self, name: str) -> list:
        return [s for s in self.exporter.get_finished_spans() if s.name == f"{name} connection"]

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


async def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    """Poll state that has no event to await (another process's effect, a connection closing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def closed_connections(registry: tt.Registry, name: str, n: int) -> tt.Totals:
    """Wait until ``n`` connections of ``name`` have closed; their totals."""
    await wait_until(lambda: registry.totals(name).closed >= n, f"{n} closed {name} connections")
    return registry.totals(name)


async def run_tool(*argv: str, stdin: bytes = b"", timeout: float = 30.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    return proc.returncode, out, err


async def run_curl(curl_bin: str, *args: str) -> tuple[dict, bytes]:
    """Run curl; its own account of the bytes: request head, upload, response heads, body."""
    fmt = "%{size_request} %{size_upload} %{size_header} %{size_download} %{http_version} %{http_code}"
    code, out, err = await run_tool(curl_bin, "-sS", "-o", "/dev/null", "-w", fmt, *args)
    assert code == 0, err.decode()
    request, upload, header, download, version, status = out.decode().split()
    return (
        {
            "request": int(request),
            "upload": int(upload),
            "header": int(header),
            "download": int(download),
            "version": version,
            "status": int(status),
        },
        err,
    )


def cert_sha256(pem_path: str) -> str:
    """The SHA-256 of the first certificate in a PEM file, as spans carry it (upper-case hex)."""
    import hashlib
    import re

    with open(pem_path) as f:
        first = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", f.read(), re.S).group(0)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest().upper()


def server_ssl(certs, *, client_certs: bool = False, alpn=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.cert, certs.key)
    if client_certs:
        ctx.load_verify_locations(certs.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
