"""Echo benchmark, instructions per round trip: the server under ``valgrind --tool=callgrind``.

One client connection does N1, then (another server) N2 ping-pong round trips of
64 B; the server exits when the connection closes. (Ir(N2) - Ir(N1)) / (N2 - N1) is
the user-space instructions per round trip, start-up and shutdown cancelled out:
the repeatable figure (editing any imported module can still move a total a little,
as type version tags, hence method-cache collisions, change). With ``--profile`` the
per-function self cost per round trip of traced minus unwrapped comes from
``callgrind_annotate``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile

from echo_common import TARGETS, ServerProc, close_all, connect_pingpong, find


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


def run(cfg, cl) -> list:
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


def summary(rows: list) -> list:
    out = []
    for loop_kind in ("uvloop", "asyncio"):
        r = find(rows, loop=loop_kind, mode="traced")
        if r:
            refs = [find(rows, loop=loop_kind, mode=m) for m in ("reference", "reference_getattr")]
            note = " / ".join(f"+{x['added_per_rt']:,.0f}" for x in refs if x)
            note = f" (reference wrappers: {note})" if note else ""
            out.append(
                (
                    f"Added instructions / round trip, {loop_kind} 64 B",
                    f"≤ {TARGETS['added_instructions']:,}",
                    f"+{r['added_per_rt']:,.0f}{note}",
                    r["added_per_rt"] <= TARGETS["added_instructions"],
                )
            )
    return out


def table(rows: list, config: dict) -> list:
    lines = [
        "Instructions per round trip (server, user space, callgrind, 64 B ping-pong, "
        f"N = {rows[0]['n2']} - {rows[0]['n1']}):",
        "",
        "| Loop | Mode | Instructions / round trip | Added vs unwrapped |",
        "|---|---|---|---|",
    ]
    for r in rows:
        added = "—" if r["mode"] == "unwrapped" else f"+{r['added_per_rt']:,.0f}"
        lines.append(f"| {r['loop']} | {r['mode']} | {r['instr_per_rt']:,.0f} | {added} |")
    return lines + [""]


def details(rows: list) -> list:
    """Where the instructions go: per-function self cost that traced adds."""
    lines = []
    for r in rows:
        if r["mode"] == "traced" and r.get("functions_added_per_rt"):
            lines.append(
                f"callgrind {r['loop']} {r['mode']}: self instructions per round trip, minus unwrapped (top functions):"
            )
            lines += [f"  {v:+9.1f}  {k}" for k, v in r["functions_added_per_rt"]]
    return lines
