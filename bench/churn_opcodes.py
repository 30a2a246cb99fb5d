"""Bytecodes per connection, per function of ours: where the per-connection cost of a mode is, by name.

    python bench/churn_opcodes.py [--mode core] [--loop uvloop|asyncio]

Runs churn_callgrind.py's server (same modes, same client) under opcode
tracing, twice (SMALL and LARGE connections), and prints per traced_transport
function (or, in the ``reference`` and ``minimal`` modes, per function of the
wrapper in bench/) the bytecodes and frames one connection executes: (LARGE - SMALL) /
(LARGE - SMALL connections), start-up excluded. Each bytecode of the 3.11
interpreter costs a few dozen instructions under callgrind, so this is the
by-function view of what ``churn_callgrind.py --profile`` shows by C function.
Deterministic: it counts, it does not time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE = os.path.join(ROOT, "traced_transport") + os.sep
# Whose code is counted: the package, and the bench wrappers the other modes are compared with.
OURS = (PACKAGE, os.path.join(HERE, "minimal.py"), os.path.join(HERE, "echo_server.py"))
SMALL, LARGE = 300, 1300


def count(mode: str, loop_kind: str, n: int) -> dict[str, list[int]]:
    """In a child: serve ``n`` connections, return {function: [bytecodes, frames]}."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, loop_kind, str(n)], capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.splitlines()[-1])


def child(mode: str, loop_kind: str, n: int) -> None:
    sys.path.insert(0, HERE)
    import churn_callgrind

    ops: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()

    def tracer(frame, event, arg):
        code = frame.f_code
        if not code.co_filename.startswith(OURS):
            return None
        name = f"{os.path.relpath(code.co_filename, ROOT)}:{code.co_qualname if hasattr(code, 'co_qualname') else code.co_name}"
        frames[name] += 1
        frame.f_trace_opcodes = True

        def local(frame, event, arg):
            if event == "opcode":
                ops[name] += 1
            return local

        return local

    sys.settrace(tracer)
    churn_callgrind.serve(mode, loop_kind, n)
    sys.settrace(None)
    print(json.dumps({k: [ops[k], frames[k]] for k in set(ops) | set(frames)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="core")
    parser.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    small, large = count(args.mode, args.loop, SMALL), count(args.mode, args.loop, LARGE)
    rows = []
    for name in set(small) | set(large):
        ops = (large.get(name, [0, 0])[0] - small.get(name, [0, 0])[0]) / (LARGE - SMALL)
        frames = (large.get(name, [0, 0])[1] - small.get(name, [0, 0])[1]) / (LARGE - SMALL)
        if ops >= 0.5:
            rows.append((ops, frames, name))
    rows.sort(reverse=True)
    print(
        f"{args.loop} {args.mode}: {sum(r[0] for r in rows):.0f} bytecodes and {sum(r[1] for r in rows):.0f} frames of ours per connection\n"
    )
    print("| bytecodes per connection | frames | function |\n|---:|---:|---|")
    for ops, frames, name in rows:
        print(f"| {ops:.0f} | {frames:.1f} | `{name}` |")


if __name__ == "__main__":
    main()
