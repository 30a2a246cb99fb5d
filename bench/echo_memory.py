"""Echo benchmark, memory: heap and RSS per idle connection, per mode.

Many idle connections to the server (RLIMIT_NOFILE raised within the hard limit).
The server measures its heap with tracemalloc (exact Python heap bytes; uvloop's
libuv handles come from PyMem_RawMalloc and are included) and, in a separate run
without tracemalloc, its RSS, both after ``gc.collect()``, before and after the
connections open. Reported per connection, and extra versus unwrapped; for
``traced`` the growth by source line too.
"""

from __future__ import annotations

import asyncio
import sys

from echo_common import HOST, LOOPS, TARGETS, Idle, ServerProc, find, raise_nofile


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


def run(cfg, cl) -> list:
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


def summary(rows: list) -> list:
    out = []
    for loop_kind in LOOPS:
        r = find(rows, loop=loop_kind, mode="traced")
        if r:
            out.append(
                (
                    f"Extra heap per idle connection, {loop_kind}",
                    f"≤ {TARGETS['extra_bytes_per_conn']} B",
                    f"{r['extra_heap_per_conn']:.0f} B (RSS {r['extra_rss_per_conn']:+.0f} B)",
                    r["extra_heap_per_conn"] <= TARGETS["extra_bytes_per_conn"],
                )
            )
    return out


def table(rows: list, config: dict) -> list:
    lines = [
        f"Memory per idle connection ({rows[0]['conns']:,} connections; heap = tracemalloc, "
        "RSS = separate run without tracemalloc):",
        "",
        "| Loop | Mode | Heap / conn | Extra heap | RSS / conn | Extra RSS |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = r["mode"] != "unwrapped"
        lines.append(
            f"| {r['loop']} | {r['mode']} | {r['heap_per_conn']:,.0f} B | "
            f"{'%+.0f B' % r['extra_heap_per_conn'] if extra else '—'} | "
            f"{r['rss_per_conn']:,.0f} B | "
            f"{'%+.0f B' % r['extra_rss_per_conn'] if extra else '—'} |"
        )
    return lines + [""]


def details(rows: list) -> list:
    """Where the bytes go: tracemalloc growth by line for traced."""
    lines = []
    for r in rows:
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
    return lines
