"""Run one CPython test_asyncio module (or some of its tests) and record each outcome.

Usage (spawned by run.py with the interpreter under test)::

    python _child.py --module test_streams --mode wrapped --out results.jsonl
        [--only IDS_FILE] [--exclude IDS_FILE] [--hang-dump SECONDS]
    python _child.py --probe

Results are written as JSON lines, flushed after every test, so that what ran
before a hang or a crash survives it: a ``start`` line when a test starts, a
``result`` line when it ends, a ``done`` line with the module's totals.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import json
import os
import sys
import time
import unittest
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))


def probe() -> None:
    import test.test_asyncio as pkg

    here = os.path.dirname(pkg.__file__)
    try:
        import traced_transport

        tt = os.path.dirname(traced_transport.__file__)
    except Exception as exc:  # noqa: BLE001
        tt = f"IMPORT ERROR: {exc!r}"
    json.dump(
        {
            "version": "%d.%d" % sys.version_info[:2],
            "full_version": sys.version.split()[0],
            "executable": sys.executable,
            "modules": sorted(n[:-3] for n in os.listdir(here) if n.startswith("test_") and n.endswith(".py")),
            "traced_transport": tt,
        },
        sys.stdout,
    )


def _iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _iter_tests(item)
        else:
            yield item


class Collector(unittest.TestResult):
    """Writes one JSON line per test; subtests fold into their test's outcome."""

    _RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}

    def __init__(self, out, conns, closed) -> None:
        super().__init__()
        self._out = out
        self._conns = conns
        self._closed = closed
        self._current = None

    def _emit(self, **rec) -> None:
        self._out.write(json.dumps(rec) + "\n")
        self._out.flush()

    def _set(self, outcome: str, detail: str | None = None) -> None:
        cur = self._current
        if cur is None:
            return
        if self._RANK[outcome] >= self._RANK[cur["outcome"]]:
            cur["outcome"] = outcome
            if detail is not None:
                cur["detail"] = detail[-6000:]

    def startTest(self, test) -> None:
        super().startTest(test)
        self._current = {
            "test": test.id(),
            "outcome": "passed",
            "detail": None,
            "t0": time.monotonic(),
            "c0": self._conns(),
            "k0": self._closed(),
        }
        self._emit(event="start", test=test.id())

    def stopTest(self, test) -> None:
        super().stopTest(test)
        cur, self._current = self._current, None
        if cur is None:
            return
        self._emit(
            event="result",
            test=cur["test"],
            outcome=cur["outcome"],
            detail=cur["detail"],
            time=round(time.monotonic() - cur["t0"], 3),
            conns=self._conns() - cur["c0"],
            closed=self._closed() - cur["k0"],
        )

    def _fixture_error(self, test, err, outcome: str) -> None:
        # setUpClass / setUpModule / tearDown* failures arrive without startTest.
        self._emit(
            event="result",
            test=test.id(),
            outcome=outcome,
            detail=self._exc_info_to_string(err, test)[-6000:],
            time=0.0,
            conns=0,
        )

    def addSuccess(self, test) -> None:
        super().addSuccess(test)

    def addError(self, test, err) -> None:
        super().addError(test, err)
        if self._current is None or self._current["test"] != test.id():
            self._fixture_error(test, err, "error")
        else:
            self._set("error", self._exc_info_to_string(err, test))

    def addFailure(self, test, err) -> None:
        super().addFailure(test, err)
        if self._current is None or self._current["test"] != test.id():
            self._fixture_error(test, err, "failed")
        else:
            self._set("failed", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason) -> None:
        super().addSkip(test, reason)
        if self._current is None or self._current["test"] != test.id():
            self._emit(event="result", test=test.id(), outcome="skipped", detail=reason, time=0.0, conns=0)
        else:
            self._set("skipped", reason)

    def addExpectedFailure(self, test, err) -> None:
        super().addExpectedFailure(test, err)

    def addUnexpectedSuccess(self, test) -> None:
        super().addUnexpectedSuccess(test)
        self._set("failed", "unexpected success")

    def addSubTest(self, test, subtest, err) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failure = issubclass(err[0], test.failureException)
            self._set("failed" if failure else "error", f"{subtest.id()}\n" + self._exc_info_to_string(err, test))


def _read_ids(path):
    if not path:
        return None
    with open(path) as f:
        return {line.strip() for line in f if line.strip()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--module")
    ap.add_argument("--mode", choices=("plain", "wrapped"))
    ap.add_argument("--out")
    ap.add_argument("--only", help="file of test ids to run (all if omitted)")
    ap.add_argument("--exclude", help="file of test ids not to run")
    ap.add_argument(
        "--hang-dump", type=float, default=0.0, help="dump every thread's stack to stderr after this many seconds"
    )
    args = ap.parse_args()
    if args.probe:
        probe()
        return 0

    if not sys.warnoptions:
        warnings.simplefilter("default")  # as unittest.main() does
    if args.hang_dump > 0:
        faulthandler.dump_traceback_later(args.hang_dump, exit=False)

    conns = closed = lambda: 0
    wrap_all = None
    if args.mode == "wrapped":
        sys.path.insert(0, HERE)
        import _wrap_all as wrap_all

        otel = wrap_all.install_otel_sdk() if os.environ.get("CONFORMANCE_OTEL_SDK") == "1" else "api"
        wrapper = os.environ.get("CONFORMANCE_WRAPPER", "traced")
        if wrapper == "instrument":
            wrap_all.install_instrument()
        else:
            wrap_all.install()
        conns, closed = wrap_all.connections_opened, wrap_all.connections_closed

    name = f"test.test_asyncio.{args.module}"
    if importlib.util.find_spec(name) is None:
        print(f"no module {name}", file=sys.stderr)
        return 3
    suite = unittest.defaultTestLoader.loadTestsFromName(name)
    only, exclude = _read_ids(args.only), _read_ids(args.exclude)
    tests = [
        t for t in _iter_tests(suite) if (only is None or t.id() in only) and (exclude is None or t.id() not in exclude)
    ]

    t0 = time.monotonic()
    with open(args.out, "a") as out:
        result = Collector(out, conns, closed)
        unittest.TestSuite(tests).run(result)
        done = {"event": "done", "ran": result.testsRun, "time": round(time.monotonic() - t0, 3)}
        if wrap_all is not None:
            done.update(
                conns_opened=wrap_all.connections_opened(),
                conns_closed=wrap_all.connections_closed(),
                hook_calls=wrap_all.stats["hook_calls"],
                wrapped_factories=wrap_all.stats["wrapped_factories"],
                patched=[".".join(p) for p in wrap_all.patched],
                wrapper=wrapper,
                otel=otel,
            )
            try:
                done.update(wrap_all.otel_summary())
            except Exception as exc:  # noqa: BLE001
                done["otel_error"] = repr(exc)
        out.write(json.dumps(done) + "\n")
        out.flush()
    faulthandler.cancel_dump_traceback_later()
    return 0


if __name__ == "__main__":
    sys.exit(main())
