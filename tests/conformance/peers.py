#!/usr/bin/env python3
"""Run peer projects' own test suites, plain and with ``traced_transport.instrument(pipes=True)``
active in the test process, and compare test by test.

    python tests/conformance/peers.py [--ci | --full] [--runs NAME ...] [--json out.json]
        [--markdown out.md] [--venv .venv-peers] [--jobs N] [-v]

The peers (built from source at pinned versions by setup_peers.sh into .venv-peers):
websockets (its asyncio implementation's tests open real connections) and aiohttp
(client and server functional tests). ``--ci`` (the default) runs the subset chosen
for transports; ``--full`` runs the projects' whole suites.

Each run is one pytest process per mode; the two modes run side by side. A test
that passes plain but not wrapped is run again in both modes (once): it counts as a
regression only if it fails wrapped again while passing plain. Exit status is
non-zero on a regression not listed in BY_DESIGN, or when a wrapped run traced no
connection at all (the hooks missed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

WEBSOCKETS = "websockets-15.0.1"
AIOHTTP = "aiohttp-3.14.5"
_AIOHTTP_ARGS = ["-o", "addopts=", "-m", "not dev_mode and not autobahn and not internal"]


@dataclass
class Run:
    name: str
    src: str  # directory under the venv's src/
    ci: list[str]
    full: list[str]
    args: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)


RUNS = [
    Run(
        "websockets/asyncio",
        WEBSOCKETS,
        ci=["tests/asyncio/test_client.py", "tests/asyncio/test_server.py", "tests/asyncio/test_connection.py"],
        full=["tests"],
    ),
    Run(
        "websockets/uvloop",
        WEBSOCKETS,
        ci=["tests/asyncio/test_client.py", "tests/asyncio/test_server.py", "tests/asyncio/test_connection.py"],
        full=["tests/asyncio"],
        env={"PEERS_LOOP": "uvloop"},
    ),
    Run(
        "aiohttp",
        AIOHTTP,
        ci=[
            "tests/test_web_functional.py",
            "tests/test_client_functional.py",
            "tests/test_web_sendfile_functional.py",
        ],
        full=["tests", "--ignore-glob=tests/test_benchmarks_*", "--ignore=tests/autobahn"],
        # Both of aiohttp's loops: asyncio's and uvloop.
        args=_AIOHTTP_ARGS + ["--aiohttp-loop=pyloop,uvloop"],
    ),
]

# Tests that pass plain and fail wrapped on purpose, or by chance that wrapping does not change, with the
# reason. Keys are "run name" -> {node id: reason}.
_UVLOOP_MS_CLOCK = (
    "asserts a keepalive latency > 0 measured with loop.time(), which on uvloop has millisecond resolution: "
    "a pong answered within the same millisecond measures 0.0, plain or wrapped, by chance"
)
BY_DESIGN: dict[str, dict[str, str]] = {
    "websockets/uvloop": {
        "tests/asyncio/test_connection.py::ServerConnectionTests::test_keepalive": _UVLOOP_MS_CLOCK,
        "tests/asyncio/test_connection.py::ClientConnectionTests::test_keepalive": _UVLOOP_MS_CLOCK,
    },
}

PASSED, FAILED, ERROR, SKIPPED, MISSING = "passed", "failed", "error", "skipped", "missing"
_RANK = {PASSED: 0, SKIPPED: 1, FAILED: 2, ERROR: 3}


def parse_junit(path: str, src_dir: str) -> dict[str, str]:
    """node id -> outcome (the worst of call/setup/teardown)."""
    out: dict[str, str] = {}
    if not os.path.exists(path):
        return out
    for tc in ET.parse(path).getroot().iter("testcase"):
        nodeid = _nodeid(tc.get("classname") or "", tc.get("name") or "", src_dir)
        if tc.find("error") is not None:
            status = ERROR
        elif tc.find("failure") is not None:
            status = FAILED
        elif tc.find("skipped") is not None:
            status = SKIPPED
        else:
            status = PASSED
        if _RANK[status] >= _RANK.get(out.get(nodeid, PASSED), 0) or nodeid not in out:
            out[nodeid] = status
    return out


def _nodeid(classname: str, name: str, src_dir: str) -> str:
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        path = "/".join(parts[:i]) + ".py"
        if os.path.exists(os.path.join(src_dir, path)):
            return "::".join([path, *parts[i:], name])
    return f"{classname}::{name}"


def run_pytest(venv: str, run: Run, wrapped: bool, targets: list[str], logdir: str, tag: str) -> dict:
    src_dir = os.path.join(venv, "src", run.src)
    safe = run.name.replace("/", "-")
    junit = os.path.join(logdir, f"{safe}-{tag}-{'wrapped' if wrapped else 'plain'}.xml")
    report = junit[:-4] + ".json"
    log = junit[:-4] + ".log"
    env = dict(os.environ)
    env.update(run.env)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    env["PEERS_WRAPPED"] = "1" if wrapped else "0"
    env["PEERS_REPORT"] = report
    env.pop("CI", None)  # some suites change behaviour under CI=true; keep both modes alike
    # The project's own pytest configuration, and nothing above its directory
    # (pytest would otherwise climb up to ours).
    config = next(
        os.path.join(src_dir, n) for n in ("pytest.ini", "pyproject.toml") if os.path.exists(os.path.join(src_dir, n))
    )
    cmd = [
        os.path.join(venv, "bin", "python"),
        "-m",
        "pytest",
        "-c",
        config,
        "--rootdir",
        src_dir,
        "-p",
        "_peer_plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "--timeout=120",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
        *run.args,
        *targets,
    ]
    started = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=src_dir, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=3600)
    traced = None
    if wrapped and os.path.exists(report):
        with open(report) as f:
            traced = json.load(f)
    return {
        "outcomes": parse_junit(junit, src_dir),
        "seconds": time.monotonic() - started,
        "returncode": proc.returncode,
        "traced": traced,
        "log": log,
    }


def compare(plain: dict[str, str], wrapped: dict[str, str]) -> dict:
    regressions, improved = [], []
    for test, status in plain.items():
        if status == PASSED and wrapped.get(test, MISSING) != PASSED:
            regressions.append(test)
    for test, status in wrapped.items():
        if status == PASSED and plain.get(test, MISSING) not in (PASSED,):
            improved.append(test)
    return {"regressions": sorted(regressions), "improved": sorted(improved)}


def run_one(venv: str, run: Run, full: bool, logdir: str, jobs: int, main: tuple = ()) -> dict:
    """Compare one run; ``main`` is its (plain, wrapped) results if already run."""
    targets = run.full if full else run.ci
    if main:
        plain, wrapped = main
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            fp = pool.submit(run_pytest, venv, run, False, targets, logdir, "main")
            fw = pool.submit(run_pytest, venv, run, True, targets, logdir, "main")
            plain, wrapped = fp.result(), fw.result()
    cmp = compare(plain["outcomes"], wrapped["outcomes"])
    flaky: list[str] = []
    if cmp["regressions"]:
        # Once more, those tests only, in both modes: timing-sensitive tests
        # fail now and then plain too.
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            fp = pool.submit(run_pytest, venv, run, False, cmp["regressions"], logdir, "rerun")
            fw = pool.submit(run_pytest, venv, run, True, cmp["regressions"], logdir, "rerun")
            rp, rw = fp.result(), fw.result()
        still = []
        for test in cmp["regressions"]:
            # Flaky: passes wrapped this time, or fails plain this time (a test
            # the rerun did not find at all is no evidence either way: it stays).
            if rw["outcomes"].get(test) == PASSED or rp["outcomes"].get(test) in (FAILED, ERROR):
                flaky.append(test)
            else:
                still.append(test)
        cmp["regressions"] = still
    by_design = BY_DESIGN.get(run.name, {})
    unexpected = [t for t in cmp["regressions"] if t not in by_design]
    count = lambda res, s: sum(1 for v in res["outcomes"].values() if v == s)  # noqa: E731
    return {
        "name": run.name,
        "targets": targets,
        "tests": len(plain["outcomes"]),
        "plain": {s: count(plain, s) for s in (PASSED, FAILED, ERROR, SKIPPED)},
        "wrapped": {s: count(wrapped, s) for s in (PASSED, FAILED, ERROR, SKIPPED)},
        "plain_seconds": round(plain["seconds"], 1),
        "wrapped_seconds": round(wrapped["seconds"], 1),
        "regressions": cmp["regressions"],
        "unexpected": unexpected,
        "by_design": [t for t in cmp["regressions"] if t in by_design],
        "flaky": flaky,
        "improved": cmp["improved"],
        "fail_plain": sorted(t for t, s in plain["outcomes"].items() if s in (FAILED, ERROR)),
        "traced": wrapped["traced"],
        "returncodes": [plain["returncode"], wrapped["returncode"]],
        "logs": [plain["log"], wrapped["log"]],
    }


def markdown(results: list[dict], full: bool) -> str:
    lines = [
        f"| run ({'full suites' if full else 'CI subset'}) | tests | passed plain | passed wrapped | "
        "regressions | flaky (passed on rerun) | fail plain too | traced connections (live at end) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        t = r["traced"] or {}
        lines.append(
            f"| {r['name']} | {r['tests']} | {r['plain'][PASSED]} | {r['wrapped'][PASSED]} | "
            f"{len(r['regressions'])} | {len(r['flaky'])} | {len(r['fail_plain'])} | "
            f"{t.get('opened', 0)} ({t.get('live', '?')}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--ci", action="store_true", help="the transport subset (default)")
    mode.add_argument("--full", action="store_true", help="the projects' whole suites")
    ap.add_argument("--runs", nargs="*", help="run names (default: all): " + ", ".join(r.name for r in RUNS))
    ap.add_argument("--venv", default=os.path.join(ROOT, ".venv-peers"))
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--logdir")
    ap.add_argument("--jobs", type=int, default=6, help="pytest processes at once")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.venv, "bin", "python")):
        print(f"peers: no venv at {args.venv}: run tests/conformance/setup_peers.sh", file=sys.stderr)
        return 2
    logdir = args.logdir or tempfile.mkdtemp(prefix="peers-")
    os.makedirs(logdir, exist_ok=True)
    runs = [r for r in RUNS if not args.runs or r.name in args.runs]
    # Every run's two modes at once: websockets' runs mostly wait, aiohttp's
    # mostly compute, so they overlap well on two cores.
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            (run.name, wrapped): pool.submit(
                run_pytest, args.venv, run, wrapped, run.full if args.full else run.ci, logdir, "main"
            )
            for run in runs
            for wrapped in (False, True)
        }
        mains = {key: f.result() for key, f in futures.items()}
    results = []
    failed = False
    for run in runs:
        res = run_one(args.venv, run, args.full, logdir, 2, (mains[run.name, False], mains[run.name, True]))
        results.append(res)
        t = res["traced"] or {}
        print(
            f"== {run.name}: {res['tests']} tests, passed plain {res['plain'][PASSED]}, wrapped "
            f"{res['wrapped'][PASSED]}; regressions {len(res['regressions'])} "
            f"(unexpected {len(res['unexpected'])}), flaky {len(res['flaky'])}, fail plain too "
            f"{len(res['fail_plain'])}; traced connections {t.get('opened', 0)}, live at end "
            f"{t.get('live', '?')}, close reasons {t.get('close_reasons', {})}; "
            f"{res['plain_seconds']}s plain, {res['wrapped_seconds']}s wrapped",
            flush=True,
        )
        for test in res["unexpected"]:
            print(f"   REGRESSION {test}")
        for test in res["by_design"]:
            print(f"   by design  {test}: {BY_DESIGN[run.name][test]}")
        if args.verbose:
            for test in res["flaky"]:
                print(f"   flaky      {test}")
            for test in res["improved"]:
                print(f"   improved   {test}")
            print(f"   logs: {' '.join(res['logs'])}")
        if res["unexpected"]:
            failed = True
        if any(code in (2, 3, 4) for code in res["returncodes"]):
            # pytest was interrupted (a collection error), hit an internal error or a usage error.
            print(f"   BROKEN RUN: pytest exit codes {res['returncodes']} (see the logs)")
            failed = True
        if not t.get("opened"):
            print(f"   NOT TRACED: the wrapped run of {run.name} traced no connection (see {res['logs'][1]})")
            failed = True
    print(markdown(results, args.full))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"full": args.full, "runs": results}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results, args.full))
    print(f"logs in {logdir}")
    # The closing line CI reads: tests passing wrapped as plain, and regressions.
    same = sum(r["plain"][PASSED] - len(r["regressions"]) for r in results)
    print(f"peers: {same} passed, {sum(len(r['unexpected']) for r in results)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
