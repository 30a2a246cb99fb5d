"""Chaos at full size: the randomized sessions of tests/reliability/test_chaos.py, >= 100,000 of them.

    python bench/chaos.py [--sessions N] [--loop asyncio|uvloop|both] [--json PATH]

Each loop runs in its own process (in parallel with --loop both) and drives hypothesis-generated
batches of 1-8 concurrent sessions (see tests/reliability/_chaos.py: writes, writelines, pause storms,
set_protocol, start_tls, write_eof, abort, peer resets) against one traced server, with the
OpenTelemetry SDK on (in-memory metric reader, every span sampled), until N sessions have run. Every
session is checked by the oracle (bytes, order, records, close reasons); at the end the registry,
the exported metrics and the span counts must agree with the sum of the sessions, and nothing may
be left: no live record, no proxy, protocol or record object after gc. Memory is RSS and
tracemalloc-free (tracemalloc would halve the speed); the soak (bench/soak.py) measures the heap.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import ssl
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "reliability"), os.path.join(ROOT, "tests")]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_loop(kind: str, target: int) -> dict:
    import _chaos
    import trustme
    from hypothesis import HealthCheck, given, settings

    import traced_transport as tt
    from traced_transport.datapath.proxy import TracedTransport

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    telemetry, registry, reader, processor = _chaos.telemetry_stack()
    harness = _chaos.Harness(observer=telemetry, server_ctx=server_ctx, client_ctx=client_ctx)
    if kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    done: list = []
    loop.run_until_complete(harness.start())

    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(batch=_chaos.batches)
    def chunk(batch):
        outcomes = loop.run_until_complete(asyncio.wait_for(harness.run_batch(batch), 120))
        _chaos.check(outcomes, batch)
        done.extend(outcomes)  # noqa: F821 (deleted after the last call, on purpose)

    chunk()  # warm-up: classes, caches, the SDK's attribute sets
    gc.collect()
    rss_before = rss_kib()
    warm = len(done)
    started = time.monotonic()
    try:
        while len(done) - warm < target:
            chunk()
            sys.stderr.write(f"\r{kind}: {len(done) - warm}/{target} sessions")
    finally:
        loop.run_until_complete(harness.abort_all())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    elapsed = time.monotonic() - started
    sys.stderr.write("\n")
    _chaos.verify_totals(done, registry, reader, processor)
    measured = done[warm:]
    del done
    gc.collect()
    leaked = {
        "live records": len(registry.live()),
        "proxies": sum(1 for o in gc.get_objects() if isinstance(o, TracedTransport)),
        "records": sum(1 for o in gc.get_objects() if isinstance(o, tt.ConnectionRecord)),
        "protocols": sum(1 for o in gc.get_objects() if isinstance(o, (_chaos.Plain, _chaos.Buffered))),
    }
    return {
        "loop": kind,
        "sessions": len(measured),
        "tls_sessions": sum(o.tls for o in measured),
        "ends": {e: sum(o.end == e for o in measured) for e in _chaos.ENDS},
        "bytes": sum(o.app_tx + o.peer_tx for o in measured),
        "seconds": round(elapsed, 1),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_kib(),
        "leaked": leaked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50_000, help="per loop (default 50,000: 100,000 in all)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_loop(args.loop, args.sessions)))
        return
    kinds = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", "--loop", k, "--sessions", str(args.sessions)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in kinds
    ]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            sys.exit(f"chaos run failed (exit {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(
        "| loop | sessions | with TLS | ends (close/write_eof/peer_close/abort/peer_reset) | bytes | time | "
        "RSS before → after | leaks found |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ends = "/".join(f"{r['ends'][e]:,}" for e in ("close", "write_eof", "peer_close", "abort", "peer_reset"))
        leaks = sum(r["leaked"].values())
        print(
            f"| {r['loop']} | {r['sessions']:,} | {r['tls_sessions']:,} | {ends} | {r['bytes'] / 1e9:.2f} GB | "
            f"{r['seconds']:.0f} s | {r['rss_before_kib'] / 1024:.1f} → {r['rss_after_kib'] / 1024:.1f} MiB | "
            f"{leaks} |"
        )
    print(f"total sessions: {sum(r['sessions'] for r in results):,}; every session checked, 0 failures")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
