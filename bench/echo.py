#!/usr/bin/env python3
"""Echo benchmark for traced-transport: what does wrapping a server cost?

An echo server (a raw ``asyncio.Protocol``: ``data_received`` ->
``transport.write``) runs in its own process; this process is the client
(always on uvloop when it is installed, so the client side stays constant).
Server modes:

* ``unwrapped``          the echo protocol factory as is;
* ``reference``          a minimal forwarding wrapper (in echo_server.py): a wrapping
  protocol plus a transport proxy with explicit forwarding methods, no
  counting (the floor for any protocol+proxy wrapper);
* ``reference_getattr``  the same proxy written the common way, ``write`` plus
  ``__getattr__`` for the rest (callgrind only by default): on CPython
  3.10/3.11 a ``__getattr__`` class loses all specialised attribute access,
  which is most of the difference between the two references;
* ``traced``             ``traced_transport.traced(Echo, name="echo", side="server")``.

Three measurements, one module each (``--only`` picks one):

throughput  ``echo_throughput.py``: ping-pong round trips/s, server CPU, latency;
memory      ``echo_memory.py``: heap and RSS per idle connection;
callgrind   ``echo_callgrind.py``: instructions per round trip (the repeatable figure).

The server runs ``echo_server.py`` in a child process; ``echo_common.py`` holds the
modes, the targets and the client side they share.

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
import json
import os
import platform
import sys
import time

import echo_callgrind
import echo_memory
import echo_throughput
from echo_common import CALLGRIND_MODES, DEFAULT_MODES, LOOPS, MODES, TARGETS, client_loop, loops_available, uvloop

# In the order they run and report (the instruction counts first: the precise figure).
BENCHMARKS = {"callgrind": echo_callgrind, "throughput": echo_throughput, "memory": echo_memory}


def _ok(flag) -> str:
    return "n/a" if flag is None else ("✅" if flag else "❌")


def report(res: dict) -> str:
    """The markdown: the targets met or not, then one table per benchmark that ran."""
    summary = []
    for name, bench in BENCHMARKS.items():
        if res.get(name):
            summary += bench.summary(res[name])
    lines = []
    if summary:
        lines += ["| Target | Limit | traced_transport | Met |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {_ok(d)} |" for a, b, c, d in summary]
        lines.append("")
    for name, bench in BENCHMARKS.items():
        if res.get(name):
            lines += bench.table(res[name], res["config"])
    return "\n".join(lines)


def details(res: dict) -> str:
    """Profiles, for when a target is missed: where the instructions and bytes go."""
    lines = []
    for name in ("callgrind", "memory"):
        if res.get(name):
            lines += BENCHMARKS[name].details(res[name])
    return "\n".join(lines)


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
        for name, bench in BENCHMARKS.items():
            if args.only in (None, name):
                print(f"{name} ...", file=sys.stderr)
                res[name] = bench.run(args, cl)
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
