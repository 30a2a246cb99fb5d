"""Connection churn: a new connection per request, connections per second, unwrapped vs traced.

    python bench/churn.py [--quick] [--loop uvloop|asyncio|both] [--json PATH]

Server in a child process, load from this process's children, same run. Modes:
  plain      unwrapped server
  reference  (on request) bench/echo.py's minimal forwarding protocol + proxy, counting nothing
  minimal    (on request) bench/minimal.py: the least a recording wrapper does per connection, in Python
  minimal_count  (on request) the same without the attribute set and the fold
  minimal_record (on request) minimal in the core's shape: its record apart, closed into a Registry
  core       traced(registry=...) - recording only, no OpenTelemetry
  metrics    traced() with the SDK's MeterProvider + Prometheus reader, no tracer provider set
  default    metrics + TracerProvider() (default sampler: every span sampled), BatchSpanProcessor to an
             exporter that discards; the default span policy; clean, fast traffic (no span kept)
  all        as default, with TRACED_TRANSPORT_SPAN_POLICY=all: every connection's span is sampled
             and handed to the exporter that discards (the SDK's span cost)
  sampled    as all, the exporter OTLP-encodes every span before discarding it
  unsampled  (on request) as all, with the sampler ALWAYS_OFF
The client is a Python asyncio client, usually the bottleneck on this 2-core machine, so the
server's CPU time per connection is reported too: it is what a busier server would feel.
Rounds alternate the modes so drift on this shared machine hits them alike; medians are reported.
Targets: core >= 0.95x plain, default >= 0.90x plain, by CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

MODES = ("plain", "core", "metrics", "default", "all", "sampled")
# Modes with the OpenTelemetry SDK installed, and those with a tracer provider.
SDK_MODES = ("metrics", "default", "all", "sampled", "unsampled", "tcpinfo")
TRACER_MODES = ("default", "all", "sampled", "unsampled", "tcpinfo")
# Capacity targets by CPU time.
CAPACITY_TARGETS = {"core": 0.95, "default": 0.90}
PAYLOAD = b"x" * 64


class Echo(asyncio.Protocol):
    """The server's app (churn_callgrind.py's too): writes back what it receives."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def server_factory(mode: str, protocol):
    """The protocol factory the server of ``mode`` listens with (churn_callgrind.py's too): ``protocol``
    unwrapped, or traced; made on the running loop, after ``_setup_otel`` for the modes with the SDK."""
    import traced_transport as tt

    if mode == "plain":
        return protocol
    if mode == "reference":
        # echo.py's minimal forwarding protocol + transport proxy, counting nothing: the floor
        # of any wrapping design (a Python frame per callback, two objects per connection).
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from echo_server import RefProtocol

        return lambda: RefProtocol(protocol())
    if mode in ("minimal", "minimal_count"):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import minimal

        return minimal.factory(protocol, count_only=mode == "minimal_count")
    if mode == "minimal_record":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import minimal

        return minimal.apart_factory(protocol)
    if mode == "core":
        return tt.traced(protocol, name="churn", registry=tt.Registry())
    return tt.traced(protocol, name="churn")


def setup_mode(mode: str) -> None:
    """Install what ``mode`` needs before the server's factory is made (churn_callgrind.py's too)."""
    if mode in ("all", "sampled", "unsampled"):
        os.environ["TRACED_TRANSPORT_SPAN_POLICY"] = "all"
    if mode == "tcpinfo":  # the default policy, plus TCP_INFO read at each connection's end
        os.environ["TRACED_TRANSPORT_TCP_INFO"] = "1"
    if mode in SDK_MODES:
        _setup_otel(mode if mode in TRACER_MODES else None)


def _setup_otel(tracing: str | None) -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    reader = PrometheusMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    # As traced_transport.exporters.sdk.setup() does: the reader collects the loop-side histogram aggregates.
    from traced_transport.exporters import histograms

    histograms.attach(reader)
    if tracing is None:
        return
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    encode = tracing == "sampled"

    class EncodeAndDrop(SpanExporter):
        def export(self, spans):
            if encode:
                from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

                encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

        def shutdown(self):
            pass

    provider = TracerProvider(sampler=ALWAYS_OFF) if tracing == "unsampled" else TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(EncodeAndDrop()))
    trace.set_tracer_provider(provider)


def server_main(mode: str, loop_kind: str, port_q, stop_ev, stats_q) -> None:
    import resource

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    setup_mode(mode)
    import traced_transport  # noqa: F401 - loaded before the CPU baseline below

    made = [0]

    class CountingEcho(Echo):
        def connection_made(self, transport):
            made[0] += 1
            super().connection_made(transport)

    u0 = resource.getrusage(resource.RUSAGE_SELF)
    startup_cpu = [u0.ru_utime + u0.ru_stime]

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(server_factory(mode, CountingEcho), "127.0.0.1", 0, backlog=1024)
        port_q.put(server.sockets[0].getsockname()[1])
        await loop.run_in_executor(None, stop_ev.wait)
        server.close()

    _run(main(), loop_kind)
    if mode in TRACER_MODES:
        from opentelemetry import trace

        trace.get_tracer_provider().shutdown()  # export what is queued: its cost belongs to the run
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats_q.put(((usage.ru_utime + usage.ru_stime) - startup_cpu[0], made[0]))


def _run(coro, loop_kind):
    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def client_main(port: int, seconds: float, concurrency: int, out_q) -> None:
    async def worker(deadline, counts):
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(PAYLOAD)
            await reader.readexactly(len(PAYLOAD))
            writer.close()
            await writer.wait_closed()
            counts[0] += 1

    async def main():
        counts = [0]
        start = time.monotonic()
        deadline = start + seconds
        await asyncio.gather(*(worker(deadline, counts) for _ in range(concurrency)))
        out_q.put(counts[0] / (time.monotonic() - start))

    import uvloop

    uvloop.run(main())


def one_round(mode: str, loop_kind: str, seconds: float, clients: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    port_q, out_q, stop_ev, stats_q = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Queue()
    server = ctx.Process(target=server_main, args=(mode, loop_kind, port_q, stop_ev, stats_q))
    server.start()
    port = port_q.get(timeout=30)
    procs = [ctx.Process(target=client_main, args=(port, seconds, 8, out_q)) for _ in range(clients)]
    for p in procs:
        p.start()
    rate = sum(out_q.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join()
    stop_ev.set()
    cpu, made = stats_q.get(timeout=60)
    server.join(timeout=30)
    return rate, cpu / max(made, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (smoke test)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args()
    rounds, seconds = (1, 1.0) if args.quick else (args.rounds, args.seconds)
    loops = ("uvloop", "asyncio") if args.loop == "both" else (args.loop,)
    results = {}
    for loop_kind in loops:
        rates: dict[str, list[float]] = {m: [] for m in MODES}
        cpus: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                rate, cpu_us = one_round(mode, loop_kind, seconds, clients=1)
                rates[mode].append(rate)
                cpus[mode].append(cpu_us)
        med = {m: statistics.median(v) for m, v in rates.items()}
        cpu = {m: statistics.median(v) for m, v in cpus.items()}
        results[loop_kind] = {
            m: {
                "conn_per_s": med[m],
                "ratio": med[m] / med["plain"],
                "server_cpu_us_per_conn": cpu[m],
                "cpu_ratio": cpu[m] / cpu["plain"],
                "runs": rates[m],
            }
            for m in MODES
        }
    # Capacity: connections per second of a server CPU-bound on this work (plain's CPU over the mode's);
    # the connections/s column is bound by the Python client here and swings from run to run.
    print(
        "\n| loop | mode | connections/s | ratio to plain | capacity target | server CPU per connection | server capacity |"
    )
    print("|---|---|---|---|---|---|---|")
    for loop_kind, res in results.items():
        for m in MODES:
            r = res[m]
            print(
                f"| {loop_kind} | {m} | {r['conn_per_s']:,.0f} | {r['ratio']:.3f} | "
                f"{'>= ' + format(CAPACITY_TARGETS[m], '.2f') if m in CAPACITY_TARGETS else ''} | "
                f"{r['server_cpu_us_per_conn']:.1f} µs | {1 / r['cpu_ratio']:.2f}x |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
