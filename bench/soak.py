"""Soak at full size: the soak of tests/reliability/test_soak.py with more connections.

    python bench/soak.py [--connections N] [--concurrency C] [--loop asyncio|uvloop|both] [--json PATH]

One traced echo server and traced clients on one loop, the OpenTelemetry SDK on (in-memory metric
reader, every span sampled); N connections (default 100,000 per loop) in waves of C (default 200),
each writing 1-256 bytes, reading the echo and ending by client close, client abort or server close
(see tests/reliability/_soak.py). Checked afterwards: sampled weak references dead and no protocol,
proxy or record instance left after gc, no live record, totals and SDK counters exact, active gauge 0,
spans started == ended, heap growth (tracemalloc, after two warm-up waves) under the limit, and no
ResourceWarning or unraisable exception. Each loop runs in its own process, one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tracemalloc
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "reliability"), os.path.join(ROOT, "tests")]


def child(kind: str, connections: int, concurrency: int) -> dict:
    import _soak

    unraisable: list = []
    sys.unraisablehook = lambda u: unraisable.append(repr(u.exc_value))
    tracemalloc.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        if kind == "uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        try:
            result = loop.run_until_complete(_soak.soak(connections, concurrency))
        finally:
            loop.close()
    resource_warnings = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    return {
        "loop": kind,
        "connections": result.connections,
        "concurrency": concurrency,
        "bytes_each_way": result.bytes_each_way,
        "seconds": round(result.seconds, 1),
        "heap_before": result.heap_before,
        "heap_after": result.heap_after,
        "heap_growth": result.heap_growth,
        "heap_limit": _soak.HEAP_SLACK,
        "sampled_objects": result.objects_tracked,
        "leaked_objects": result.leaked_objects,
        "resource_warnings": len(resource_warnings),
        "unraisable": len(unraisable),
        "problems": result.problems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100_000, help="per loop")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.loop, args.connections, args.concurrency)))
        return
    results = []
    for kind in ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--loop",
                kind,
                "--connections",
                str(args.connections),
                "--concurrency",
                str(args.concurrency),
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(
        "| loop | connections (concurrent) | time | heap before → after (tracemalloc) | growth (limit) | "
        "leaked objects | ResourceWarnings | problems |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['loop']} | {r['connections']:,} ({r['concurrency']}) | {r['seconds']:.0f} s | "
            f"{r['heap_before'] / 1024:.0f} → {r['heap_after'] / 1024:.0f} KiB | "
            f"{r['heap_growth'] / 1024:+.1f} KiB ({r['heap_limit'] // 1024} KiB) | {r['leaked_objects']} | "
            f"{r['resource_warnings'] + r['unraisable']} | {len(r['problems'])} |"
        )
    for r in results:
        for p in r["problems"]:
            print(f"{r['loop']}: {p}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if any(r["problems"] or r["resource_warnings"] or r["unraisable"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
