#!/usr/bin/env python3
"""Run CPython's own test_asyncio modules over real transports, plain and with every
protocol factory wrapped by ``traced_transport.traced()``, and compare per test.

    python tests/conformance/run.py [--python PATH ... | --all-pythons] [--modules M ...]
        [--mode both|plain|wrapped] [--json out.json] [--jobs N] [--timeout S]
        [--wrapper traced|instrument] [--otel-sdk] [-v]

--all-pythons takes /work/main/.venv-3.{10,11,12,13} (tests/conformance/setup_venvs.sh).
Wrapped mode hooks the loop classes' factory-taking methods (_wrap_all.py) so
every factory goes through traced(); --wrapper instrument uses the library's
own instrument(pipes=True) instead.

Each (interpreter, module, mode) runs in its own child process (``_child.py``)
with a timeout; a child that hangs or crashes is restarted after the test it
was on, so one hang costs one test, not the module. Exit status is non-zero
when a test passes plain but not wrapped and is not listed in
``expected_failures.py``, or when a module that makes connections had none of
them traced in wrapped mode.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "_child.py")
ROOT = os.path.dirname(os.path.dirname(HERE))
ALL_VERSIONS = ("3.10", "3.11", "3.12", "3.13")
sys.path.insert(0, HERE)

import expected_failures  # noqa: E402

MODULES = (
    "test_streams",
    "test_ssl",
    "test_sslproto",
    "test_sendfile",
    "test_server",
    "test_buffered_proto",
    "test_events",
    "test_subprocess",
    "test_unix_events",
    "test_sock_lowlevel",
)
# Every default module opens connections through the hooked loop methods: a
# wrapped run of one of them with no traced connection means the hooks missed.
MAKES_CONNECTIONS = frozenset(MODULES)
# Rough plain-mode seconds (3.11, 2 cores); longest first keeps the pool busy.
WEIGHT = {
    "test_subprocess": 12,
    "test_ssl": 9,
    "test_events": 6,
    "test_sslproto": 4.5,
    "test_sock_lowlevel": 2,
    "test_sendfile": 1.1,
    "test_streams": 0.8,
}
PASSED, SKIPPED, FAILED, ERROR, TIMEOUT, CRASHED, MISSING = (
    "passed",
    "skipped",
    "failed",
    "error",
    "timeout",
    "crashed",
    "missing",
)
MAX_RESTARTS = 4


def probe(python: str, env: dict) -> dict:
    out = subprocess.run([python, CHILD, "--probe"], capture_output=True, text=True, env=env, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{python}: probe failed:\n{out.stderr}")
    return json.loads(out.stdout)


def _write_ids(path: str, ids) -> str:
    with open(path, "w") as f:
        f.write("".join(i + "\n" for i in sorted(ids)))
    return path


def run_child(python: str, module: str, mode: str, logbase: str, timeout: float, env: dict, only=None) -> dict:
    """Run ``module`` in ``mode``; restart after a hang or a crash. Returns results by test id."""
    results: dict[str, dict] = {}
    done = None
    incidents: list[str] = []
    jsonl, log = logbase + ".jsonl", logbase + ".log"
    for path in (jsonl, log):
        if os.path.exists(path):
            os.unlink(path)
    started = time.monotonic()
    absent = False
    for attempt in range(MAX_RESTARTS + 1):
        cmd = [
            python,
            "-X",
            "faulthandler",
            CHILD,
            "--module",
            module,
            "--mode",
            mode,
            "--out",
            jsonl,
            "--hang-dump",
            str(max(timeout - 5, 1)),
        ]
        if only is not None:
            cmd += ["--only", _write_ids(logbase + ".only", only)]
        if results:
            cmd += ["--exclude", _write_ids(logbase + ".exclude", results)]
        with open(log, "a") as logf:
            logf.write(f"\n=== attempt {attempt}: {' '.join(cmd)}\n")
            logf.flush()
            proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=tempfile.gettempdir(), start_new_session=True
            )
            try:
                rc = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: what it spawned
                except ProcessLookupError:
                    pass
                rc = proc.wait()
        if rc == 3 and not os.path.exists(jsonl):
            absent = True
            break
        current = None
        done = None
        if os.path.exists(jsonl):
            with open(jsonl) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a kill
                    if rec["event"] == "start":
                        current = rec["test"]
                    elif rec["event"] == "result":
                        results.setdefault(rec["test"], rec)
                        if rec["test"] == current:
                            current = None
                    elif rec["event"] == "done":
                        done = rec
        if done is not None and not timed_out:
            break
        what = TIMEOUT if timed_out else CRASHED
        if current is None:
            incidents.append(f"{what} (rc={rc}) outside any test")
            break
        results[current] = {
            "test": current,
            "outcome": what,
            "time": None,
            "conns": 0,
            "detail": f"child {what} (rc={rc}); see {log}",
        }
        incidents.append(f"{what} in {current}")
        with open(jsonl, "a") as f:  # so that the next attempt's reader sees it too
            f.write(json.dumps(dict(results[current], event="result")) + "\n")
    return {
        "results": results,
        "done": done,
        "incidents": incidents,
        "absent": absent,
        "time": round(time.monotonic() - started, 2),
        "log": log,
    }


def counts(results: dict) -> dict:
    c = {PASSED: 0, FAILED: 0, ERROR: 0, SKIPPED: 0}
    for r in results.values():
        o = r["outcome"]
        c[o if o in c else ERROR] += 1
    return c


def first_line(detail) -> str:
    if not detail:
        return ""
    lines = [ln for ln in detail.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:200] if lines else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", action="append", help="interpreter(s) to test (default: this one)")
    ap.add_argument(
        "--all-pythons",
        action="store_true",
        help="test every .venv-3.X of ALL_VERSIONS in the repo root (see setup_venvs.sh)",
    )
    ap.add_argument("--modules", nargs="+", default=list(MODULES))
    ap.add_argument("--mode", choices=("both", "plain", "wrapped"), default="both")
    ap.add_argument("--json", help="write the full report here")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per child attempt")
    ap.add_argument("--logdir", help="child logs and raw results (default: a new temp dir)")
    ap.add_argument(
        "--no-rerun", action="store_true", help="do not rerun wrapped-only failures to tell flakes from regressions"
    )
    ap.add_argument(
        "--wrapper",
        choices=("traced", "instrument"),
        default="traced",
        help="wrapped mode: this harness's hooks calling traced() on every factory (default), "
        "or the library's own instrument(pipes=True)",
    )
    ap.add_argument(
        "--otel-sdk",
        action="store_true",
        help="wrapped mode: install OpenTelemetry SDK providers (recording spans, in-memory "
        "metrics) when the SDK is importable, so the telemetry code runs in full",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="print each regression's traceback tail")
    args = ap.parse_args(argv)

    wanted = list(args.python or [])
    if args.all_pythons:
        for v in ALL_VERSIONS:
            venv_python = os.path.join(ROOT, f".venv-{v}", "bin", "python")
            if not os.path.exists(venv_python):
                ap.error(f"{venv_python} missing: run tests/conformance/setup_venvs.sh")
            wanted.append(venv_python)
    pythons = [os.path.abspath(shutil.which(p) or p) for p in (wanted or [sys.executable])]
    logdir = args.logdir or tempfile.mkdtemp(prefix="conformance-")
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["CONFORMANCE_WRAPPER"] = args.wrapper
    env["CONFORMANCE_OTEL_SDK"] = "1" if args.otel_sdk else "0"
    modes = ("plain", "wrapped") if args.mode == "both" else (args.mode,)
    wall0 = time.monotonic()

    infos = []
    for python in pythons:
        info = probe(python, env)
        info["python"] = python
        os.makedirs(os.path.join(logdir, info["version"]), exist_ok=True)
        infos.append(info)

    jobs = []
    for i, info in enumerate(infos):
        for module in args.modules:
            for mode in modes:
                jobs.append((i, module, mode))
    jobs.sort(key=lambda j: -WEIGHT.get(j[1], 0.5))
    runs: dict[tuple, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futs = {
            pool.submit(
                run_child,
                infos[i]["python"],
                module,
                mode,
                os.path.join(logdir, infos[i]["version"], f"{module}.{mode}"),
                args.timeout,
                env,
            ): (i, module, mode)
            for i, module, mode in jobs
        }
        for fut in concurrent.futures.as_completed(futs):
            runs[futs[fut]] = fut.result()

    ok = True
    report = {"logdir": logdir, "pythons": []}
    for i, info in enumerate(infos):
        version = info["version"]
        xfail = expected_failures.for_version(version, args.wrapper)
        used_xfail = set()
        pyrep = {
            "version": info["full_version"],
            "python": info["python"],
            "traced_transport": info["traced_transport"],
            "modules": {},
        }
        report["pythons"].append(pyrep)
        print(f"\n== Python {info['full_version']} ({info['python']})  traced_transport: {info['traced_transport']}")
        hdr = f"{'module':<20} {'mode':<8} {'pass':>5} {'fail':>5} {'err':>5} {'skip':>5} {'time':>7}  {'traced conns':>12}"
        print(hdr)
        print("-" * len(hdr))
        problems = []
        for module in args.modules:
            modrep = pyrep["modules"][module] = {}
            for mode in modes:
                run = runs[(i, module, mode)]
                if run["absent"]:
                    modrep["absent"] = True
                    continue
                c = counts(run["results"])
                d = run["done"] or {}
                modrep[mode] = dict(
                    c,
                    time=run["time"],
                    incidents=run["incidents"],
                    log=run["log"],
                    passed_tests=sorted(t for t, r in run["results"].items() if r["outcome"] == PASSED),
                )
                conns = ""
                if mode == "wrapped":
                    modrep[mode].update(
                        {k: d.get(k) for k in ("conns_opened", "conns_closed", "hook_calls", "wrapped_factories")}
                    )
                    # A restarted child starts a new registry: the last attempt's total can
                    # miss what earlier attempts traced, which the per-test counts still hold.
                    opened = max(sum(r.get("conns") or 0 for r in run["results"].values()), d.get("conns_opened") or 0)
                    modrep[mode]["conns_opened"] = opened
                    modrep[mode].update({k: d[k] for k in ("otel", "spans", "metrics", "otel_error") if k in d})
                    conns = f"{opened:>5} ({d.get('hook_calls', '?') if d.get('wrapper') != 'instrument' else 'instrument'} calls)"
                    if "spans" in d:
                        conns += f" {d['spans']} spans"
                    if "otel_error" in d:
                        conns += f" OTEL ERROR {d['otel_error']}"
                    if not opened and (module in MAKES_CONNECTIONS or d.get("hook_calls")):
                        problems.append(f"{module}: no traced connection in wrapped mode")
                print(
                    f"{module:<20} {mode:<8} {c[PASSED]:>5} {c[FAILED]:>5} {c[ERROR]:>5} {c[SKIPPED]:>5}"
                    f" {run['time']:>6.1f}s  {conns}"
                )
                for inc in run["incidents"]:
                    print(f"{'':<20} {mode:<8} !! {inc}")
            if modrep.get("absent"):
                print(f"{module:<20} (not in this Python's test_asyncio)")
                continue
            if len(modes) < 2:
                continue
            plain = runs[(i, module, "plain")]["results"]
            wrapped = runs[(i, module, "wrapped")]["results"]
            regress = sorted(
                t
                for t, r in plain.items()
                if r["outcome"] == PASSED and wrapped.get(t, {}).get("outcome", MISSING) != PASSED
            )
            improved = sorted(
                t
                for t, r in wrapped.items()
                if r["outcome"] == PASSED and plain.get(t, {}).get("outcome", MISSING) != PASSED
            )
            rerun = {}
            if regress and not args.no_rerun:
                rerun = run_child(
                    info["python"],
                    module,
                    "wrapped",
                    os.path.join(logdir, version, f"{module}.wrapped-rerun"),
                    args.timeout,
                    env,
                    only=regress,
                )["results"]
            entries = modrep["differences"] = []
            for t in regress:
                w = wrapped.get(t, {"outcome": MISSING, "detail": None})
                again = rerun.get(t, {}).get("outcome")
                if t in xfail:
                    status, why = "expected", xfail[t]
                    used_xfail.add(t)
                elif again == PASSED:
                    status, why = "flaky", "passed when rerun alone"
                else:
                    status, why = "REGRESSION", first_line(w.get("detail"))
                    problems.append(f"{t}: {w['outcome']} wrapped, passed plain")
                entries.append(
                    {
                        "test": t,
                        "plain": PASSED,
                        "wrapped": w["outcome"],
                        "rerun": again,
                        "status": status,
                        "why": why,
                        "detail": w.get("detail"),
                    }
                )
            plain_rerun = {}
            if improved and not args.no_rerun:
                plain_rerun = run_child(
                    info["python"],
                    module,
                    "plain",
                    os.path.join(logdir, version, f"{module}.plain-rerun"),
                    args.timeout,
                    env,
                    only=improved,
                )["results"]
            for t in improved:
                p = plain.get(t, {"outcome": MISSING})
                again = plain_rerun.get(t, {}).get("outcome")
                if again == PASSED:
                    status, why = "flaky", "failed plain, passed plain when rerun alone"
                else:
                    # Wrapping changed an outcome the other way: as suspicious as a regression.
                    status, why = "WRAPPED-ONLY PASS", first_line(p.get("detail"))
                    problems.append(f"{t}: passed wrapped, {p['outcome']} plain")
                entries.append(
                    {
                        "test": t,
                        "plain": p["outcome"],
                        "wrapped": PASSED,
                        "rerun": again,
                        "status": status,
                        "why": why,
                        "detail": p.get("detail"),
                    }
                )
            for e in entries:
                print(f"   {e['status']:<10} {e['test']} [{e['wrapped']}]: {e['why']}")
                if args.verbose and e["status"] not in ("expected", "flaky") and e["detail"]:
                    print("      | " + "\n      | ".join(e["detail"].strip().splitlines()[-25:]))
        ran_modules = {m for m in args.modules if not pyrep["modules"][m].get("absent")}
        stale = sorted(t for t in xfail if t not in used_xfail and t.split(".")[2] in ran_modules and len(modes) == 2)
        for t in stale:
            print(f"   stale expected failure (passed wrapped, or did not pass plain): {t}")
        pyrep["stale_expected_failures"] = stale
        pyrep["problems"] = problems
        if problems:
            ok = False
            print(f"FAIL Python {version}: {len(problems)} problem(s)")
            for p in problems:
                print(f"   - {p}")
        else:
            print(f"OK Python {version}")
    report["ok"] = ok
    report["wall_s"] = round(time.monotonic() - wall0, 1)
    print(f"\nwall time {report['wall_s']}s; logs in {logdir}")
    # The closing line CI reads: wrapped-mode passes, and regressions against plain.
    n_passed = sum(
        len(rep.get("wrapped", {}).get("passed_tests", ()))
        for py in report.get("pythons", [])
        for rep in py.get("modules", {}).values()
    )
    n_failed = sum(len(py.get("problems", ())) for py in report.get("pythons", []))
    print(f"conformance: {n_passed} passed, {n_failed} failed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
