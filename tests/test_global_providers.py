"""traced() with no arguments follows OpenTelemetry's global providers, whenever the app sets them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import asyncio
    from opentelemetry import trace
    import traced_transport as tt

    starts = []
    original = trace.ProxyTracer.start_span
    trace.ProxyTracer.start_span = lambda self, *a, **k: starts.append(a) or original(self, *a, **k)

    async def one_connection():
        lost = asyncio.get_running_loop().create_future()

        class Server(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)

        server = await asyncio.get_running_loop().create_server(tt.traced(Server, name="g"), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.close()
        await writer.wait_closed()
        await lost  # the server side's span ends in connection_lost, before this
        server.close()
        await server.wait_closed()

    asyncio.run(one_connection())
    assert starts == [], "no SDK: no span was started at all"
    assert tt.default_registry.totals("g").opened == 1

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the app sets up its SDK later

    asyncio.run(one_connection())
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["g connection"], names
    print("ok")
""")


def test_spans_follow_the_global_provider():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
