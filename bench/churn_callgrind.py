"""Instructions per connection on the server, by mode, counted by callgrind (repeatable, unlike timings).

    python bench/churn_callgrind.py [--loop uvloop|asyncio|both] [--modes plain,core,metrics,...] [--repeat 3]
    python bench/churn_callgrind.py --profile core [--loop uvloop] [--top 30]

For each mode the server runs under ``valgrind --tool=callgrind`` twice, serving
SMALL and then LARGE connections (a new connection per 64-byte echo, from a
uvloop client process outside valgrind); (LARGE - SMALL) / (LARGE - SMALL
connections) is the cost of one connection, start-up excluded. Modes as in
churn.py; each ends with one metric collection, as a scrape would make.

``--profile MODE`` prints, per C function, the instructions per connection that
MODE adds over plain (``callgrind_annotate``, inclusive and self), from the same
two-run difference: the functions the interpreter calls for us (allocation, dict
building, clock reads, locks, get_extra_info) show by name.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL, LARGE = 300, 1300
DEFAULT_MODES = "plain,core,metrics,default,all"
# Targets: instructions per connection added over plain, on uvloop.
TARGETS = {"core": 8_000, "metrics": 12_000, "default": 15_000}


def serve(mode: str, loop_kind: str, n: int) -> None:
    sys.path.insert(0, os.path.dirname(HERE))
    sys.path.insert(0, HERE)
    from churn import SDK_MODES, TRACER_MODES, Echo, server_factory, setup_mode

    setup_mode(mode)
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
    if mode in SDK_MODES:
        from opentelemetry import metrics, trace

        # One collection, as a scrape would make: histogram values still queued are counted.
        metrics.get_meter_provider().force_flush()
        if mode in TRACER_MODES:
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


def run(mode: str, loop_kind: str, n: int, out: str) -> int:
    """Serve ``n`` connections under callgrind, writing its profile to ``out``; the instructions counted."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--dump-line=no",
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
        env=env,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"callgrind run failed ({mode}, {loop_kind}, {n}):\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def instructions(mode: str, loop_kind: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return run(mode, loop_kind, n, f"{tmp}/out")


_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*$")


def functions(path: str, inclusive: bool) -> dict[str, int]:
    """Instructions per C function from callgrind_annotate (recursion levels and files merged)."""
    exe = shutil.which("callgrind_annotate")
    if exe is None:
        raise SystemExit("--profile needs callgrind_annotate (valgrind)")
    text = subprocess.run(
        [exe, f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out: dict[str, int] = {}
    started = False
    for line in text.splitlines():
        if "file:function" in line:
            started = True
            continue
        m = _ANNOTATE_LINE.match(line) if started else None
        if m and not m.group(2).startswith(("PROGRAM TOTALS", "-")):
            name = re.sub(r"\s*\[.*\]$", "", m.group(2))
            name = re.sub(r"'\d+$", "", name.rsplit(":", 1)[-1])
            out[name] = out.get(name, 0) + int(m.group(1).replace(",", ""))
    return out


def profile(mode: str, loop_kind: str, top: int, base: str = "plain") -> None:
    """Per function: instructions per connection in ``mode`` minus those in ``base``."""
    per_conn: dict[str, dict[str, dict[str, float]]] = {}
    totals = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in (base, mode):
            ir = {}
            files = {}
            for n in (SMALL, LARGE):
                files[n] = f"{tmp}/{m}.{n}"
                ir[n] = run(m, loop_kind, n, files[n])
            totals[m] = (ir[LARGE] - ir[SMALL]) / (LARGE - SMALL)
            per_conn[m] = {}
            for kind in ("inclusive", "self"):
                small = functions(files[SMALL], kind == "inclusive")
                large = functions(files[LARGE], kind == "inclusive")
                per_conn[m][kind] = {
                    f: (large.get(f, 0) - small.get(f, 0)) / (LARGE - SMALL) for f in set(small) | set(large)
                }
    added = totals[mode] - totals[base]
    print(f"\n{loop_kind} {mode}: {totals[mode]:,.0f} instructions per connection, +{added:,.0f} over {base}")
    for kind in ("inclusive", "self"):
        ours, theirs = per_conn[mode][kind], per_conn[base][kind]
        diff = sorted(((ours.get(f, 0) - theirs.get(f, 0), f) for f in set(ours) | set(theirs)), reverse=True)
        print(f"\n| {kind} instructions added per connection | function |")
        print("|---:|---|")
        for value, f in diff[:top]:
            print(f"| {value:,.0f} | `{f}` |")


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        return serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    if sys.argv[1:2] == ["--client"]:
        return client(int(sys.argv[2]), int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", choices=("uvloop", "asyncio", "both"), default="both")
    parser.add_argument("--modes", default=DEFAULT_MODES)
    parser.add_argument("--profile", metavar="MODE", help="per-function profile of MODE against plain")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--base", default="plain", help="the mode --profile compares with")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each mode this many times and report the median (plain swings by a few hundred)",
    )
    args = parser.parse_args()
    loops = ("uvloop", "asyncio") if args.loop == "both" else (args.loop,)
    if args.profile:
        for loop_kind in loops:
            profile(args.profile, loop_kind, args.top, args.base)
        return
    rows = []
    for loop_kind in loops:
        for mode in args.modes.split(","):
            samples = [
                (instructions(mode, loop_kind, LARGE) - instructions(mode, loop_kind, SMALL)) / (LARGE - SMALL)
                for _ in range(max(1, args.repeat))
            ]
            per_conn = statistics.median(samples)
            rows.append((loop_kind, mode, per_conn))
            each = f" (median of {', '.join(f'{x:,.0f}' for x in samples)})" if len(samples) > 1 else ""
            print(f"{loop_kind} {mode}: {per_conn:,.0f} instructions per connection{each}", file=sys.stderr, flush=True)
    plain = {loop: n for loop, mode, n in rows if mode == "plain"}
    print("\n| loop | mode | instructions per connection | added vs plain | target (added) |")
    print("|---|---|---|---|---|")
    for loop_kind, mode, per_conn in rows:
        base = plain.get(loop_kind)
        added = f"+{per_conn - base:,.0f}" if base is not None and mode != "plain" else ""
        target = ""
        if mode in TARGETS:
            target = f"<= +{TARGETS[mode]:,}"
            if base is not None:
                target += " (met)" if per_conn - base <= TARGETS[mode] else " (missed)"
        print(f"| {loop_kind} | {mode} | {per_conn:,.0f} | {added} | {target} |")


if __name__ == "__main__":
    main()
