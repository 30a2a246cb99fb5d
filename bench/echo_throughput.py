"""Echo benchmark, throughput and latency: ping-pong round trips per second per mode, interleaved rounds.

For each loop and message size: one server per mode, kept running; several rounds,
each running every mode once in a rotating order, so machine noise hits all modes
alike. A round is ``--conns`` client connections doing request/response ping-pong for
a fixed short time (capped in count): enough connections keep the server saturated,
where with very few every round trip is a wake-up that costs more than the Python code.
Reported: round trips per second and its ratio to unwrapped (median of the per-round
paired ratios), server CPU per round trip (``/proc/<pid>/task/*/schedstat`` around the
load) and client-side p50/p99 latency (medians over rounds).
"""

from __future__ import annotations

import sys

from echo_common import TARGETS, ServerProc, find, fmt_size, load_run, median


def run(cfg, cl) -> list:
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
                    "rt_per_s": median([x["rt_per_s"] for x in rs]),
                    "ratio": median([x["rt_per_s"] / b["rt_per_s"] for x, b in zip(rs, base)]),
                    "ratio_min": min(x["rt_per_s"] / b["rt_per_s"] for x, b in zip(rs, base)),
                    "ratio_max": max(x["rt_per_s"] / b["rt_per_s"] for x, b in zip(rs, base)),
                    "server_cpu_us_per_rt": median([x["server_cpu_ns_per_rt"] for x in rs]) / 1e3,
                    "server_cpu_ratio": median(
                        [x["server_cpu_ns_per_rt"] / b["server_cpu_ns_per_rt"] for x, b in zip(rs, base)]
                    ),
                    "p50_us": median([x["p50_us"] for x in rs]),
                    "p99_us": median([x["p99_us"] for x in rs]),
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


def summary(rows: list) -> list:
    out = []
    for size, key in ((64, "throughput_64"), (65536, "throughput_64k")):
        r = find(rows, loop="uvloop", size=size, mode="traced")
        if r:
            out.append(
                (
                    f"Throughput vs unwrapped, uvloop {fmt_size(size)}",
                    f"≥ {TARGETS[key]:.2f}x",
                    f"{r['ratio']:.3f}x",
                    r["ratio"] >= TARGETS[key],
                )
            )
    return out


def table(rows: list, config: dict) -> list:
    lines = [
        f"Ping-pong throughput ({config['conns']} connections, "
        f"median of {rows[0]['rounds']} interleaved rounds of {config['duration']} s):",
        "",
        "| Loop | Size | Mode | Round trips/s | vs unwrapped | Server CPU / round trip | p50 | p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "1" if r["mode"] == "unwrapped" else f"{r['ratio']:.3f}x"
        lines.append(
            f"| {r['loop']} | {fmt_size(r['size'])} | {r['mode']} | {r['rt_per_s']:,.0f} | "
            f"{ratio} | {r['server_cpu_us_per_rt']:.2f} µs ({r['server_cpu_ratio']:.3f}x) | "
            f"{r['p50_us']:.0f} µs | {r['p99_us']:.0f} µs |"
        )
    return lines + [""]
