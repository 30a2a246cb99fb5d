"""CPython's own test_asyncio over real transports: with every protocol factory
wrapped by traced(), the same tests must pass as without (modulo
expected_failures.py), on the interpreter running pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import expected_failures  # noqa: E402
import run  # noqa: E402

pytestmark = pytest.mark.conformance


def test_wrapped_passes_what_plain_passes(tmp_path):
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "run.py"),
            "--python",
            sys.executable,
            "--json",
            str(report_path),
            "--logdir",
            str(tmp_path / "logs"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert report_path.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(report_path.read_text())
    (py,) = report["pythons"]
    version = "%d.%d" % sys.version_info[:2]
    xfail = set(expected_failures.for_version(version))
    ran = 0
    for module, rep in py["modules"].items():
        if rep.get("absent"):
            continue
        ran += 1
        plain = set(rep["plain"]["passed_tests"])
        wrapped = set(rep["wrapped"]["passed_tests"])
        # Outcomes that differed once but agreed when rerun alone are flakes, not wrapping.
        flaky = {d["test"] for d in rep["differences"] if d["status"] == "flaky"}
        assert plain - xfail - flaky == wrapped - xfail - flaky, (module, proc.stdout[-6000:])
        if module in run.MAKES_CONNECTIONS:
            assert rep["wrapped"]["conns_opened"] > 0, f"{module}: no connection was traced"
    assert ran, "no module ran"
    assert proc.returncode == 0, proc.stdout[-6000:]
