#!/usr/bin/env python3
"""Echo benchmark for traced-transport: what does wrapping a server cost?

An echo server (a raw ``asyncio.Protocol``: ``data_received`` ->
``transport.write``) runs in its own process; this process is the client
(always on uvloop when it is installed, so the client side stays constant).
Server modes:

* ``unwrapped``          the echo protocol factory as is;
* ``reference``          a minimal forwarding wrapper defined here: a wrapping
  protocol plus a transport proxy with explicit forwarding methods, no
  counting (the floor for any protocol+proxy wrapper);
* ``reference_getattr``  the same proxy written the common way, ``write`` plus
  ``__getattr__`` for the rest (callgrind only by default): on CPython
  3.10/3.11 a ``__getattr__`` class loses all specialised attribute access,
  which is most of the difference between the two references;
* ``traced``             ``traced_transport.traced(Echo, name="echo", side="server")``.

Three measurements (``--only`` picks one):

throughput
    For each loop (asyncio, uvloop) and message size (64 B, 64 KiB): one
    server per mode, kept running; several rounds, each round running every
    mode once in a rotating order, so machine noise hits all modes alike.
    A round is ``--conns`` (16) client connections doing request/response
    ping-pong for a fixed short time (capped in count). 16 keeps the server
    saturated: with 1-4 connections every round trip is a wake-up, which on
    a VM costs more than the Python code and flips between two regimes from
    run to run (round trips/s varying 2x). Reported: round trips
    per second and its ratio to unwrapped (median of the per-round paired
    ratios), server CPU per round trip (server's on-CPU time from
    /proc/<pid>/task/*/schedstat, read just before and after the load), and
    client-side p50/p99 latency (medians over rounds).

memory
    10 000 idle connections to the server (RLIMIT_NOFILE raised within the
    hard limit). The server measures its heap with tracemalloc (exact Python
    heap bytes; uvloop's libuv handles come from PyMem_RawMalloc and are
    included) and, in a separate run without tracemalloc, its RSS, both
    after ``gc.collect()``, before and after the connections open.
    Reported per connection, and extra versus unwrapped.

callgrind
    The server runs under ``valgrind --tool=callgrind``; one client
    connection does N1, then (another server) N2 ping-pong round trips of
    64 B; the server exits when the connection closes.
    (Ir(N2) - Ir(N1)) / (N2 - N1) is the user-space instructions per round
    trip, startup and shutdown cancelled out. Repeatable to a few
    instructions per round trip for a given tree; editing any imported
    module can move a total by ~±100 (type version tags, hence method-cache
    collisions, change). With ``--profile`` (default in a full run) the per-function
    self cost per round trip of traced minus unwrapped is printed too, from
    ``callgrind_annotate``.

Targets: <= 2,500 added instructions per round trip (uvloop, 64 B; asyncio
shown against the same limit);
throughput >= 0.97x unwrapped (uvloop, 64 B) and >= 0.99x (uvloop, 64 KiB);
<= 400 extra bytes per idle connection.

Usage::

    python bench/echo.py                 # full run, < 10 minutes
    python bench/echo.py --quick         # smoke test, < 1 minute
    python bench/echo.py --only callgrind --json results.json

A markdown table goes to stdout (paste it into the README); ``--json PATH``
writes every number.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

try:
    import uvloop
except ImportError:  # pragma: no cover - the bench wants it, but degrades
    uvloop = None

HERE = os.path.abspath(__file__)
MODES = ("unwrapped", "reference", "reference_getattr", "traced", "traced_sdk")
DEFAULT_MODES = ("unwrapped", "reference", "traced", "traced_sdk")  # throughput and memory
CALLGRIND_MODES = MODES
LOOPS = ("asyncio", "uvloop")
HOST = "127.0.0.1"

TARGETS = {
    "added_instructions": 2500,  # per round trip, uvloop 64 B
    "throughput_64": 0.97,  # uvloop, 64 B
    "throughput_64k": 0.99,  # uvloop, 64 KiB
    "extra_bytes_per_conn": 400,
}


# =============================================================================
# Server side (runs in the child process)
# =============================================================================


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


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


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


# =============================================================================
# Client side (this process)
# =============================================================================


class ServerProc:
    """A server child process and its line-based control channel."""

    def __init__(
        self,
        loop_kind: str,
        mode: str,
        *,
        tracemalloc: bool = False,
        nofile: int = 1024,
        valgrind: list | None = None,
        exit_on_close: bool = False,
        env: dict | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        cmd = [sys.executable, HERE, "--_server", "--loop", loop_kind, "--mode", mode, "--nofile", str(nofile)]
        if tracemalloc:
            cmd.append("--tracemalloc")
        if exit_on_close:
            cmd.append("--exit-on-close")
        if valgrind:
            cmd = valgrind + cmd
        self.loop_kind, self.mode = loop_kind, mode
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
        self._buf = b""
        hello = self.read(start_timeout)
        self.port, self.pid = hello["port"], hello["pid"]

    def read(self, timeout: float) -> dict:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"server {self.loop_kind}/{self.mode} did not answer in {timeout}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"server {self.loop_kind}/{self.mode} exited (rc={self.proc.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, line: str, timeout: float = 60.0) -> dict:
        self.proc.stdin.write(line.encode() + b"\n")
        return self.read(timeout)

    def cpu_ns(self) -> int:
        """On-CPU time of every thread of the server, in ns (scheduler accounting)."""
        total = 0
        base = f"/proc/{self.pid}/task"
        for tid in os.listdir(base):
            try:
                with open(f"{base}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:
                pass
        return total

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"quit\n")
            except BrokenPipeError:
                pass
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout)
        self.proc.stdout.close()


class PingPong(asyncio.Protocol):
    """One client connection: send a message, wait for all of it to come back, repeat."""

    def __init__(self, msg: bytes) -> None:
        self.loop = asyncio.get_running_loop()
        self.msg = msg
        self.size = len(msg)
        self.got = 0
        self.n = 0
        self.limit = 0
        self.deadline = 0
        self.t0 = 0
        self.lat: list = []
        self.done = None
        self.lost = self.loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def go(self, limit: int, deadline_ns: int, lat: list) -> asyncio.Future:
        self.done = self.loop.create_future()
        self.n, self.limit, self.deadline, self.lat = 0, limit, deadline_ns, lat
        self.t0 = time.perf_counter_ns()
        self.transport.write(self.msg)
        return self.done

    def data_received(self, data):
        got = self.got + len(data)
        if got < self.size:
            self.got = got
            return
        self.got = got - self.size
        now = time.perf_counter_ns()
        self.lat.append(now - self.t0)
        self.n += 1
        if self.n >= self.limit or now >= self.deadline:
            self.done.set_result(self.n)
            return
        self.t0 = now
        self.transport.write(self.msg)

    def connection_lost(self, exc):
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"server closed the connection: {exc!r}"))
        if not self.lost.done():
            self.lost.set_result(None)


class Idle(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(None)


async def connect_pingpong(port: int, size: int, conns: int) -> list:
    loop = asyncio.get_running_loop()
    msg = b"x" * size
    protos = []
    for _ in range(conns):
        _, p = await loop.create_connection(lambda: PingPong(msg), HOST, port)
        protos.append(p)
    # One round trip each, so the server has accepted and set up every
    # connection before anything is measured.
    far = time.perf_counter_ns() + 10**12
    await asyncio.wait_for(asyncio.gather(*(p.go(1, far, []) for p in protos)), 60)
    return protos


async def close_all(protos: list) -> None:
    for p in protos:
        p.transport.close()
    await asyncio.wait_for(asyncio.gather(*(p.lost for p in protos)), 60)


async def load_run(server: ServerProc, size: int, conns: int, duration: float, max_rt: int) -> dict:
    """One measured ping-pong run against ``server``."""
    protos = await connect_pingpong(server.port, size, conns)
    lat: list = []
    per_conn = max(1, max_rt // conns)
    cpu0 = server.cpu_ns()
    t0 = time.perf_counter_ns()
    deadline = t0 + int(duration * 1e9)
    counts = await asyncio.wait_for(asyncio.gather(*(p.go(per_conn, deadline, lat) for p in protos)), duration + 60)
    t1 = time.perf_counter_ns()
    cpu1 = server.cpu_ns()
    await close_all(protos)
    n = sum(counts)
    lat.sort()
    return {
        "round_trips": n,
        "seconds": (t1 - t0) / 1e9,
        "rt_per_s": n / ((t1 - t0) / 1e9),
        "server_cpu_ns_per_rt": (cpu1 - cpu0) / n,
        "p50_us": lat[len(lat) // 2] / 1e3,
        "p99_us": lat[min(len(lat) - 1, (len(lat) * 99) // 100)] / 1e3,
    }


def client_loop() -> asyncio.AbstractEventLoop:
    loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def loops_available(wanted) -> list:
    return [k for k in wanted if k != "uvloop" or uvloop is not None]


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


# -- throughput --------------------------------------------------------------


def bench_throughput(cfg, cl) -> list:
    results = []
    for loop_kind in cfg.loops:
        for size in cfg.sizes:
            servers = {m: ServerProc(loop_kind, m) for m in cfg.modes}
            try:
                for m in cfg.modes:  # warm-up, discarded
                    cl.run_until_complete(load_run(servers[m], size, cfg.conns, cfg.warmup, cfg.max_rt))
                runs = {m: [] for m in cfg.modes}
                for r in range(cfg.rounds):
                    # Every mode goes first equally often, and each pair
                    # runs in both orders.
                    k = r % len(cfg.modes)
                    order = list(cfg.modes[k:] + cfg.modes[:k])
                    if (r // len(cfg.modes)) % 2:
                        order.reverse()
                    for m in order:
                        runs[m].append(
                            cl.run_until_complete(load_run(servers[m], size, cfg.conns, cfg.duration, cfg.max_rt))
                        )
            finally:
                for s in servers.values():
                    s.stop()
            base = runs["unwrapped"]
            for m in cfg.modes:
                rs = runs[m]
                row = {
                    "loop": loop_kind,
                    "size": size,
                    "mode": m,
                    "rt_per_s": _median([x["rt_per_s"] for x in rs]),
                    "ratio": _median([x["rt_per_s"] / b["rt_per_s"] for x, b in zip(rs, base)]),
                    "ratio_min": min(x["rt_per_s"] / b["rt_per_s"] for x, b in zip(rs, base)),
                    "ratio_max": max(x["rt_per_s"] / b["rt_per_s"] for x, b in zip(rs, base)),
                    "server_cpu_us_per_rt": _median([x["server_cpu_ns_per_rt"] for x in rs]) / 1e3,
                    "server_cpu_ratio": _median(
                        [x["server_cpu_ns_per_rt"] / b["server_cpu_ns_per_rt"] for x, b in zip(rs, base)]
                    ),
                    "p50_us": _median([x["p50_us"] for x in rs]),
                    "p99_us": _median([x["p99_us"] for x in rs]),
                    "rounds": len(rs),
                    "runs": rs,
                }
                results.append(row)
                print(
                    f"  throughput {loop_kind:7s} {size:6d} B {m:9s} {row['rt_per_s']:9.0f} rt/s "
                    f"x{row['ratio']:.3f} [{row['ratio_min']:.3f}..{row['ratio_max']:.3f}] "
                    f"cpu {row['server_cpu_us_per_rt']:.2f} us/rt  "
                    f"p50 {row['p50_us']:.0f} us p99 {row['p99_us']:.0f} us",
                    file=sys.stderr,
                )
    return results


# -- memory -------------------------------------------------------------------


async def open_idle(port: int, n: int, batch: int = 500) -> list:
    loop = asyncio.get_running_loop()
    protos = []
    for i in range(0, n, batch):
        pairs = await asyncio.gather(*(loop.create_connection(Idle, HOST, port) for _ in range(min(batch, n - i))))
        protos.extend(p for _, p in pairs)
    return protos


def memory_run(cl, loop_kind: str, mode: str, n: int, tracemalloc: bool) -> dict:
    warm = 10
    server = ServerProc(loop_kind, mode, tracemalloc=tracemalloc, nofile=n + warm + 64)
    protos = []
    try:
        protos += cl.run_until_complete(open_idle(server.port, warm))
        server.request(f"wait {warm}")
        before = server.request("mark", 120)
        protos += cl.run_until_complete(open_idle(server.port, n))
        after = server.request(f"wait {n + warm}", 300)
    finally:
        server.stop(120)
        if protos:
            cl.run_until_complete(asyncio.wait_for(asyncio.gather(*(p.lost for p in protos)), 120))
    out = {"rss_per_conn": (after["rss"] - before["rss"]) / n}
    if tracemalloc:
        out["heap_per_conn"] = (after["traced"] - before["traced"]) / n
        out["top"] = after.get("top", [])
    return out


def bench_memory(cfg, cl) -> list:
    n = cfg.idle
    raise_nofile(n + 256)
    results = []
    for loop_kind in cfg.loops:
        rows = {}
        for m in cfg.modes:
            tm = memory_run(cl, loop_kind, m, n, tracemalloc=True)
            rss = memory_run(cl, loop_kind, m, n, tracemalloc=False)
            rows[m] = {
                "loop": loop_kind,
                "mode": m,
                "conns": n,
                "heap_per_conn": tm["heap_per_conn"],
                "rss_per_conn": rss["rss_per_conn"],
                "top": tm["top"],
            }
        for m in cfg.modes:
            row = rows[m]
            row["extra_heap_per_conn"] = row["heap_per_conn"] - rows["unwrapped"]["heap_per_conn"]
            row["extra_rss_per_conn"] = row["rss_per_conn"] - rows["unwrapped"]["rss_per_conn"]
            results.append(row)
            print(
                f"  memory {loop_kind:7s} {m:9s} heap {row['heap_per_conn']:7.0f} B/conn "
                f"({row['extra_heap_per_conn']:+.0f})  "
                f"rss {row['rss_per_conn']:7.0f} B/conn (+{row['extra_rss_per_conn']:.0f})",
                file=sys.stderr,
            )
    return results


# -- callgrind ----------------------------------------------------------------


def _callgrind_total(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*$")


def _callgrind_functions(path: str) -> dict:
    """Self instruction counts per function, from callgrind_annotate."""
    exe = shutil.which("callgrind_annotate")
    if exe is None:
        return {}
    text = subprocess.run(
        [exe, "--inclusive=no", "--threshold=100", path], capture_output=True, text=True, check=True
    ).stdout
    out: dict = {}
    started = False
    for line in text.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started:
            continue
        m = _ANNOTATE_LINE.match(line)
        if m and not m.group(2).startswith(("PROGRAM TOTALS", "-")):
            # "file:function'2 [object]" -> "function": inlined headers and
            # recursion levels of one function are added together.
            name = re.sub(r"\s*\[.*\]$", "", m.group(2))
            name = re.sub(r"'\d+$", "", name.rsplit(":", 1)[-1])
            out[name] = out.get(name, 0) + int(m.group(1).replace(",", ""))
    return out


async def _pingpong_fixed(port: int, n: int) -> None:
    protos = await connect_pingpong(port, 64, 1)  # 1 round trip
    await asyncio.wait_for(protos[0].go(n - 1, 1 << 62, []), 600)
    await close_all(protos)


def callgrind_run(cl, loop_kind: str, mode: str, n: int, outdir: str) -> str:
    out = os.path.join(outdir, f"callgrind.out.{loop_kind}.{mode}.{n}")
    valgrind = [
        cfg_valgrind(),
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        f"--log-file={out}.log",
        "--dump-line=no",
    ]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    server = ServerProc(loop_kind, mode, valgrind=valgrind, exit_on_close=True, env=env)
    try:
        cl.run_until_complete(_pingpong_fixed(server.port, n))
        rc = server.proc.wait(300)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        server.proc.stdin.close()
        server.proc.stdout.close()
    if rc != 0:
        raise RuntimeError(f"callgrind server exited with {rc}; see {out}.log")
    return out


def cfg_valgrind() -> str:
    exe = shutil.which("valgrind") or "/usr/bin/valgrind"
    if not os.path.exists(exe):
        raise SystemExit("valgrind not found")
    return exe


def bench_callgrind(cfg, cl) -> list:
    outdir = cfg.keep or tempfile.mkdtemp(prefix="echo-callgrind-")
    os.makedirs(outdir, exist_ok=True)
    n1, n2 = cfg.n1, cfg.n2
    results = []
    try:
        for loop_kind in cfg.cg_loops:
            per = {}
            files = {}
            for m in cfg.cg_modes:
                f1 = callgrind_run(cl, loop_kind, m, n1, outdir)
                f2 = callgrind_run(cl, loop_kind, m, n2, outdir)
                files[m] = (f1, f2)
                per[m] = (_callgrind_total(f2) - _callgrind_total(f1)) / (n2 - n1)
            for m in cfg.cg_modes:
                row = {
                    "loop": loop_kind,
                    "mode": m,
                    "size": 64,
                    "n1": n1,
                    "n2": n2,
                    "instr_per_rt": per[m],
                    "added_per_rt": per[m] - per["unwrapped"],
                }
                if cfg.profile and m != "unwrapped":
                    row["functions_added_per_rt"] = _function_diff(files[m], files["unwrapped"], n2 - n1)
                results.append(row)
                print(
                    f"  callgrind {loop_kind:7s} {m:9s} {row['instr_per_rt']:9.0f} instr/rt "
                    f"(+{row['added_per_rt']:.0f})",
                    file=sys.stderr,
                )
    finally:
        if not cfg.keep:
            shutil.rmtree(outdir, ignore_errors=True)
    return results


def _function_diff(mode_files, base_files, dn: int, top: int = 15) -> list:
    def per_rt(files):
        a, b = (_callgrind_functions(f) for f in files)
        return {k: (b.get(k, 0) - a.get(k, 0)) / dn for k in set(a) | set(b)}

    m, u = per_rt(mode_files), per_rt(base_files)
    diff = {k: m.get(k, 0) - u.get(k, 0) for k in set(m) | set(u)}
    ranked = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:top]
    return [[k, round(v, 1)] for k, v in ranked if abs(v) >= 1]


# =============================================================================
# Report
# =============================================================================


def _fmt_size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def _ok(flag) -> str:
    return "n/a" if flag is None else ("✅" if flag else "❌")


def report(res: dict) -> str:
    lines = []
    tp, mem, cg = res.get("throughput"), res.get("memory"), res.get("callgrind")
    # --- summary against targets
    summary = []

    def find(rows, **kw):
        for r in rows or []:
            if all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    for loop_kind in ("uvloop", "asyncio"):
        r = find(cg, loop=loop_kind, mode="traced")
        if r:
            refs = [find(cg, loop=loop_kind, mode=m) for m in ("reference", "reference_getattr")]
            note = " / ".join(f"+{x['added_per_rt']:,.0f}" for x in refs if x)
            note = f" (reference wrappers: {note})" if note else ""
            summary.append(
                (
                    f"Added instructions / round trip, {loop_kind} 64 B",
                    f"≤ {TARGETS['added_instructions']:,}",
                    f"+{r['added_per_rt']:,.0f}{note}",
                    r["added_per_rt"] <= TARGETS["added_instructions"],
                )
            )
    for size, key in ((64, "throughput_64"), (65536, "throughput_64k")):
        r = find(tp, loop="uvloop", size=size, mode="traced")
        if r:
            summary.append(
                (
                    f"Throughput vs unwrapped, uvloop {_fmt_size(size)}",
                    f"≥ {TARGETS[key]:.2f}x",
                    f"{r['ratio']:.3f}x",
                    r["ratio"] >= TARGETS[key],
                )
            )
    for loop_kind in LOOPS:
        r = find(mem, loop=loop_kind, mode="traced")
        if r:
            summary.append(
                (
                    f"Extra heap per idle connection, {loop_kind}",
                    f"≤ {TARGETS['extra_bytes_per_conn']} B",
                    f"{r['extra_heap_per_conn']:.0f} B (RSS {r['extra_rss_per_conn']:+.0f} B)",
                    r["extra_heap_per_conn"] <= TARGETS["extra_bytes_per_conn"],
                )
            )
    if summary:
        lines += ["| Target | Limit | traced_transport | Met |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {_ok(d)} |" for a, b, c, d in summary]
        lines.append("")
    if cg:
        lines += [
            "Instructions per round trip (server, user space, callgrind, 64 B ping-pong, "
            f"N = {cg[0]['n2']} - {cg[0]['n1']}):",
            "",
            "| Loop | Mode | Instructions / round trip | Added vs unwrapped |",
            "|---|---|---|---|",
        ]
        for r in cg:
            added = "—" if r["mode"] == "unwrapped" else f"+{r['added_per_rt']:,.0f}"
            lines.append(f"| {r['loop']} | {r['mode']} | {r['instr_per_rt']:,.0f} | {added} |")
        lines.append("")
    if tp:
        lines += [
            f"Ping-pong throughput ({res['config']['conns']} connections, "
            f"median of {tp[0]['rounds']} interleaved rounds of {res['config']['duration']} s):",
            "",
            "| Loop | Size | Mode | Round trips/s | vs unwrapped | Server CPU / round trip | p50 | p99 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in tp:
            ratio = "1" if r["mode"] == "unwrapped" else f"{r['ratio']:.3f}x"
            lines.append(
                f"| {r['loop']} | {_fmt_size(r['size'])} | {r['mode']} | {r['rt_per_s']:,.0f} | "
                f"{ratio} | {r['server_cpu_us_per_rt']:.2f} µs ({r['server_cpu_ratio']:.3f}x) | "
                f"{r['p50_us']:.0f} µs | {r['p99_us']:.0f} µs |"
            )
        lines.append("")
    if mem:
        lines += [
            f"Memory per idle connection ({mem[0]['conns']:,} connections; heap = tracemalloc, "
            "RSS = separate run without tracemalloc):",
            "",
            "| Loop | Mode | Heap / conn | Extra heap | RSS / conn | Extra RSS |",
            "|---|---|---|---|---|---|",
        ]
        for r in mem:
            extra = r["mode"] != "unwrapped"
            lines.append(
                f"| {r['loop']} | {r['mode']} | {r['heap_per_conn']:,.0f} B | "
                f"{'%+.0f B' % r['extra_heap_per_conn'] if extra else '—'} | "
                f"{r['rss_per_conn']:,.0f} B | "
                f"{'%+.0f B' % r['extra_rss_per_conn'] if extra else '—'} |"
            )
        lines.append("")
    return "\n".join(lines)


def details(res: dict) -> str:
    """Profiles, for when a target is missed: where the instructions and bytes go."""
    lines = []
    for r in res.get("callgrind") or []:
        if r["mode"] == "traced" and r.get("functions_added_per_rt"):
            lines.append(
                f"callgrind {r['loop']} {r['mode']}: self instructions per round trip, minus unwrapped (top functions):"
            )
            lines += [f"  {v:+9.1f}  {k}" for k, v in r["functions_added_per_rt"]]
    for r in res.get("memory") or []:
        if r["mode"] == "traced" and r.get("top"):
            lines.append(
                f"tracemalloc {r['loop']} {r['mode']}: growth by line for "
                f"{r['conns']} connections (bytes/conn, blocks/conn):"
            )
            lines += [
                f"  {size / r['conns']:8.1f} {count / r['conns']:6.2f}  {where}"
                for where, size, count in r["top"]
                if abs(size) >= r["conns"]
            ]
    return "\n".join(lines)


# =============================================================================
# Main
# =============================================================================


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="short smoke-test run (< 1 minute)")
    p.add_argument("--only", choices=("throughput", "memory", "callgrind"))
    p.add_argument("--json", metavar="PATH", help="write all results as JSON to PATH")
    p.add_argument("--loops", default=",".join(LOOPS), help="comma-separated: asyncio,uvloop")
    p.add_argument(
        "--modes",
        help="comma-separated subset of "
        + ",".join(MODES)
        + " (default: all for callgrind; unwrapped,reference,traced otherwise)",
    )
    p.add_argument("--rounds", type=int, help="interleaved throughput rounds")
    p.add_argument("--duration", type=float, help="seconds per throughput run")
    p.add_argument("--conns", type=int, default=16, help="concurrent ping-pong connections")
    p.add_argument("--idle", type=int, help="idle connections for the memory test")
    p.add_argument("--n1", type=int, help="callgrind: round trips of the short run")
    p.add_argument("--n2", type=int, help="callgrind: round trips of the long run")
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="callgrind: per-function diff (default: on unless --quick)",
    )
    p.add_argument("--keep", metavar="DIR", help="callgrind: keep the output files in DIR")
    # Internal: run as the server process.
    p.add_argument("--_server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="unwrapped", help=argparse.SUPPRESS)
    p.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--exit-on-close", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nofile", type=int, default=1024, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.loops = loops_available(args.loops.split(","))
    if args.modes:
        wanted = args.modes.split(",")
        bad = set(wanted) - set(MODES)
        if bad or "unwrapped" not in wanted:
            p.error(f"--modes: choose from {MODES}, including unwrapped (all is relative to it)")
        args.modes = args.cg_modes = tuple(m for m in MODES if m in wanted)
    else:
        args.modes = DEFAULT_MODES
        args.cg_modes = DEFAULT_MODES if q else CALLGRIND_MODES
    args.sizes = (64, 65536)
    args.rounds = args.rounds or (2 if q else 15)
    args.duration = args.duration or (0.25 if q else 0.5)
    args.warmup = 0.1 if q else 0.3
    args.max_rt = 2_000_000
    args.idle = args.idle or (1000 if q else 10_000)
    # Startup varies by up to ~0.3 M instructions from run to run (imports,
    # directory scans): N2 - N1 of several thousand keeps that under ~75 per round trip.
    args.n1 = args.n1 or (500 if q else 1000)
    args.n2 = args.n2 or (4500 if q else 7000)
    args.cg_loops = ["uvloop"] if q and "uvloop" in args.loops else args.loops
    if args.profile is None:
        args.profile = not q
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._server:
        server_main(args)
        return 0
    started = time.monotonic()
    cl = client_loop()
    res: dict = {
        "config": {
            k: getattr(args, k)
            for k in ("quick", "loops", "modes", "rounds", "duration", "conns", "idle", "n1", "n2", "cg_modes")
        },
        "targets": TARGETS,
        "env": {
            "python": sys.version.split()[0],
            "uvloop": getattr(uvloop, "__version__", None),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "client_loop": "uvloop" if uvloop is not None else "asyncio",
        },
    }
    try:
        if args.only in (None, "callgrind"):
            print("callgrind ...", file=sys.stderr)
            res["callgrind"] = bench_callgrind(args, cl)
        if args.only in (None, "throughput"):
            print("throughput ...", file=sys.stderr)
            res["throughput"] = bench_throughput(args, cl)
        if args.only in (None, "memory"):
            print("memory ...", file=sys.stderr)
            res["memory"] = bench_memory(args, cl)
    finally:
        cl.close()
    res["elapsed_s"] = round(time.monotonic() - started, 1)
    print(report(res))
    extra = details(res)
    if extra:
        print(extra)
    print(f"(elapsed {res['elapsed_s']} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
