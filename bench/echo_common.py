"""What the echo benchmarks share: modes, targets, the server child process's handle, the ping-pong client.

The server runs ``echo_server.py`` in a child process; this module is the client
side (always on uvloop when it is installed, so the client stays constant).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import time

try:
    import uvloop
except ImportError:  # pragma: no cover - the bench wants it, but degrades
    uvloop = None

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo_server.py")
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


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


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
        cmd = [sys.executable, SERVER, "--loop", loop_kind, "--mode", mode, "--nofile", str(nofile)]
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


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def find(rows, **kw):
    """The first row whose fields match ``kw``, or None."""
    for r in rows or []:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None
