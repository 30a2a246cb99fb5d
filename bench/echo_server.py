#!/usr/bin/env python3
"""The echo benchmarks' server, run in a child process by ``echo_common.ServerProc``.

One echo server in one mode (``unwrapped``, ``reference``, ``reference_getattr``,
``traced``, ``traced_sdk``; see ``echo.py``) on one loop, and a line-based control
channel on stdin/stdout: ``mark`` / ``wait N`` measure the heap and RSS once no
accept is half done, ``quit`` stops. With ``--exit-on-close`` (callgrind) it exits
when the connection closes instead.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys

from echo_common import HOST, MODES, raise_nofile, uvloop


class _Control:
    """Connection counting for the control channel (the same in every mode)."""

    def __init__(self) -> None:
        self.count = 0
        self.target = None
        self.on_target = None
        self.on_lost = None

    def opened(self) -> None:
        self.count += 1
        if self.target is not None and self.count >= self.target:
            self.target = None
            self.on_target()

    def lost(self) -> None:
        self.count -= 1
        if self.on_lost is not None:
            self.on_lost()


_ctl = _Control()


class Echo(asyncio.Protocol):
    """The application: a plain echo protocol."""

    def connection_made(self, transport):
        self.transport = transport
        _ctl.opened()

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.transport = None
        _ctl.lost()


# -- the reference forwarding wrapper: forward everything, count nothing -------


class RefTransport(asyncio.Transport):
    __slots__ = ("_t",)

    def __init__(self, transport):
        self._t = transport

    def write(self, data):
        self._t.write(data)

    def writelines(self, list_of_data):
        self._t.writelines(list_of_data)

    def write_eof(self):
        self._t.write_eof()

    def can_write_eof(self):
        return self._t.can_write_eof()

    def close(self):
        self._t.close()

    def abort(self):
        self._t.abort()

    def is_closing(self):
        return self._t.is_closing()

    def pause_reading(self):
        self._t.pause_reading()

    def resume_reading(self):
        self._t.resume_reading()

    def is_reading(self):
        return self._t.is_reading()

    def get_extra_info(self, name, default=None):
        return self._t.get_extra_info(name, default)

    def get_write_buffer_size(self):
        return self._t.get_write_buffer_size()

    def set_write_buffer_limits(self, high=None, low=None):
        self._t.set_write_buffer_limits(high, low)

    def get_protocol(self):
        return self._t.get_protocol()

    def set_protocol(self, protocol):
        self._t.set_protocol(protocol)


class RefProtocol(asyncio.Protocol):
    __slots__ = ("_app",)

    def __init__(self, app):
        self._app = app

    def connection_made(self, transport):
        self._app.connection_made(RefTransport(transport))

    def data_received(self, data):
        self._app.data_received(data)

    def eof_received(self):
        return self._app.eof_received()

    def connection_lost(self, exc):
        self._app.connection_lost(exc)

    def pause_writing(self):
        self._app.pause_writing()

    def resume_writing(self):
        self._app.resume_writing()


class RefGetattrTransport(asyncio.Transport):
    """The same minimal proxy written the common way: ``write`` plus ``__getattr__``."""

    __slots__ = ("_t",)

    def __init__(self, transport):
        self._t = transport

    def write(self, data):
        self._t.write(data)

    def __getattr__(self, name):
        return getattr(self._t, name)


class RefGetattrProtocol(RefProtocol):
    __slots__ = ()

    def connection_made(self, transport):
        self._app.connection_made(RefGetattrTransport(transport))


def make_factory(mode: str):
    if mode == "unwrapped":
        return Echo
    if mode == "reference":
        return lambda: RefProtocol(Echo())
    if mode == "reference_getattr":
        return lambda: RefGetattrProtocol(Echo())
    if mode == "traced":
        from traced_transport import traced

        return traced(Echo, name="echo", side="server")
    if mode == "traced_sdk":
        # Telemetry on: the OTel SDK installed, a Prometheus reader and a span
        # processor attached (every span sampled, exported by a BatchSpanProcessor).
        from opentelemetry import metrics, trace
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        from traced_transport import traced

        class Drop(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        trace.set_tracer_provider(provider)
        return traced(Echo, name="echo", side="server")
    raise ValueError(mode)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        if uvloop is None:
            raise SystemExit("uvloop is not installed")
        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def server_main(args) -> None:
    import tracemalloc

    raise_nofile(args.nofile)
    if args.tracemalloc:
        tracemalloc.start()
    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(make_factory(args.mode), HOST, 0, backlog=4096))
    port = server.sockets[0].getsockname()[1]
    state = {"mark": None, "buf": b""}

    def reply(obj) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def measure() -> dict:
        gc.collect()
        out = {"conns": _ctl.count, "rss": _rss_bytes()}
        if tracemalloc.is_tracing():
            out["traced"] = tracemalloc.get_traced_memory()[0]
        return out

    def on_target() -> None:
        out = measure()
        mark = state["mark"]
        if args.tracemalloc and mark is not None:
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            top = snap.compare_to(mark, "lineno")[:25]
            out["top"] = [[str(s.traceback[0]), s.size_diff, s.count_diff] for s in top]
        reply(out)

    def settle(then) -> None:
        # asyncio finishes each accept in a task of its own, after
        # connection_made: measure once no task is left, so that no
        # half-done accept is counted.
        def check() -> None:
            if asyncio.all_tasks(loop):
                loop.call_soon(check)
            else:
                loop.call_soon(then)

        loop.call_soon(check)

    def mark() -> None:
        out = measure()
        if args.tracemalloc:
            state["mark"] = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        reply(out)

    def command(line: str) -> None:
        cmd, _, arg = line.partition(" ")
        if cmd == "mark":
            settle(mark)
        elif cmd == "wait":
            _ctl.on_target = lambda: settle(on_target)
            if _ctl.count >= int(arg):
                _ctl.on_target()
            else:
                _ctl.target = int(arg)
        elif cmd == "quit":
            loop.stop()
        else:
            reply({"error": f"unknown command {line!r}"})

    def on_stdin() -> None:
        data = os.read(0, 65536)
        if not data:  # the parent went away
            loop.stop()
            return
        buf = state["buf"] + data
        *lines, state["buf"] = buf.split(b"\n")
        for line in lines:
            if line.strip():
                command(line.decode().strip())

    if args.exit_on_close:
        _ctl.on_lost = loop.stop
    else:
        loop.add_reader(0, on_stdin)
    reply({"port": port, "pid": os.getpid()})
    try:
        loop.run_forever()
    finally:
        server.close()
        # Exit without tearing down the remaining connections one by one.
        sys.stdout.flush()
        os._exit(0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--mode", choices=MODES, default="unwrapped")
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--exit-on-close", action="store_true")
    p.add_argument("--nofile", type=int, default=1024)
    server_main(p.parse_args(argv))


if __name__ == "__main__":
    main()
