"""A traced echo server with a small built-in load, printing what was recorded.

    python examples/echo_server.py [--duration 10] [--loop uvloop|asyncio]

This is the README's "main job" until the full demo (scrape endpoint, TLS,
HTTP) exists. It serves on loopback only and stops by itself after --duration
seconds (0: run until Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time

import traced_transport as tt


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
        # Some app-level flow control, so the pause counters move too.
        if len(data) > 32768:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self.transport.resume_reading)


async def client(port: int, stop: asyncio.Event, rng: random.Random) -> None:
    while not stop.is_set():
        reader, writer = await tt.open_connection("127.0.0.1", port, name="echo-client")
        for _ in range(rng.randint(1, 20)):
            size = rng.choice((64, 1024, 65536))
            writer.write(b"x" * size)
            await reader.readexactly(size)
        writer.close()
        await writer.wait_closed()


def summary(registry: tt.Registry) -> str:
    parts = []
    for name in ("echo", "echo-client"):
        t = registry.totals(name)
        parts.append(
            f"{name}: opened={t.opened} active={t.active} rx={t.rx:,}B tx={t.tx:,}B "
            f"read_pauses={t.read_pauses} write_pauses={t.write_pauses}"
        )
    return " | ".join(parts)


async def main(duration: float, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(tt.traced(Echo, name="echo"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"traced echo server on 127.0.0.1:{port} ({type(loop).__module__})", flush=True)
    stop = asyncio.Event()
    rng = random.Random(1)
    clients = [asyncio.create_task(client(port, stop, rng)) for _ in range(concurrency)]
    started = time.monotonic()
    try:
        while duration <= 0 or time.monotonic() - started < duration:
            await asyncio.sleep(1)
            print(summary(tt.default_registry), flush=True)
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        server.close()
        await server.wait_closed()
        print("final:", summary(tt.default_registry), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (0: until Ctrl-C)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent client connections")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(main(args.duration, args.concurrency))
        else:
            asyncio.run(main(args.duration, args.concurrency))
