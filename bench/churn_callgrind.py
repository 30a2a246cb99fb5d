"""Instructions per connection on the server, by mode, counted by callgrind (repeatable, unlike timings).

    python bench/churn_callgrind.py [--loop uvloop|asyncio] [--modes plain,core,unsampled,...]

For each mode the server runs under ``valgrind --tool=callgrind`` twice, serving
SMALL and then LARGE connections (a new connection per 64-byte echo, from a
uvloop client process outside valgrind); (LARGE - SMALL) / (LARGE - SMALL
connections) is the cost of one connection, start-up excluded. Modes as in
churn.py; each ends with one metric collection, as a scrape would make.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL, LARGE = 300, 1300


def serve(mode: str, loop_kind: str, n: int) -> None:
    sys.path.insert(0, os.path.dirname(HERE))
    sys.path.insert(0, HERE)
    from churn import Echo, _setup_otel, server_factory

    if mode == "tcpinfo":  # unsampled, plus TCP_INFO read at each connection's end
        os.environ["TRACED_TRANSPORT_TCP_INFO"] = "1"
    if mode in ("unsampled", "sampled", "sampled-drop", "tcpinfo"):
        _setup_otel(mode not in ("unsampled", "tcpinfo"), encode=mode == "sampled")
    import traced_transport  # noqa: F401 - loaded before the loop runs, as it was in every mode

    count = [0]

    class CountingEcho(Echo):
        def connection_lost(self, exc):
            count[0] += 1
            if count[0] == n:
                done.set_result(None)

    async def main():
        global done
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        server = await loop.create_server(server_factory(mode, CountingEcho), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = await asyncio.create_subprocess_exec(sys.executable, __file__, "--client", str(port), str(n))
        await done
        await client.wait()
        server.close()

    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    if mode not in ("plain", "core"):
        from opentelemetry import metrics, trace

        # One collection, as a scrape would make: histogram values still queued are counted.
        metrics.get_meter_provider().force_flush()
        trace.get_tracer_provider().shutdown()


def client(port: int, n: int) -> None:
    import uvloop

    async def main():
        left = [n]

        async def worker():
            while left[0] > 0:
                left[0] -= 1
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"x" * 64)
                await reader.readexactly(64)
                writer.close()
                await writer.wait_closed()

        await asyncio.gather(*(worker() for _ in range(4)))

    uvloop.run(main())


def instructions(mode: str, loop_kind: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                __file__,
                "--serve",
                mode,
                loop_kind,
                str(n),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"callgrind run failed ({mode}, {loop_kind}, {n}):\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        return serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    if sys.argv[1:2] == ["--client"]:
        return client(int(sys.argv[2]), int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--modes", default="plain,core,unsampled,sampled-drop,sampled")
    args = parser.parse_args()
    rows = []
    for mode in args.modes.split(","):
        per_conn = (instructions(mode, args.loop, LARGE) - instructions(mode, args.loop, SMALL)) / (LARGE - SMALL)
        rows.append((mode, per_conn))
        print(f"{mode}: {per_conn:,.0f} instructions per connection", file=sys.stderr, flush=True)
    plain = dict(rows).get("plain")
    print("\n| loop | mode | instructions per connection | added vs plain |")
    print("|---|---|---|---|")
    for mode, per_conn in rows:
        added = f"+{per_conn - plain:,.0f}" if plain is not None and mode != "plain" else ""
        print(f"| {args.loop} | {mode} | {per_conn:,.0f} | {added} |")


if __name__ == "__main__":
    main()
