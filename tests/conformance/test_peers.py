"""Peer projects' own test suites (websockets, aiohttp), plain and with instrument(pipes=True):
the CI subset must pass wrapped test for test as plain, and be traced. Selected like the
CPython run (``-m conformance`` or CONFORMANCE=1); needs .venv-peers (setup_peers.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(os.path.dirname(os.path.dirname(HERE)), ".venv-peers")

pytestmark = pytest.mark.conformance


def test_peer_suites_pass_wrapped_as_plain(tmp_path):
    if not os.path.exists(os.path.join(VENV, "bin", "python")):
        if os.environ.get("CI") == "true":
            pytest.fail("no .venv-peers: run tests/conformance/setup_peers.sh")
        pytest.skip("no .venv-peers: run tests/conformance/setup_peers.sh")
    report = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "peers.py"), "--ci", "--json", str(report), "--logdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert report.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    runs = json.loads(report.read_text())["runs"]
    assert {r["name"] for r in runs} == {"websockets/asyncio", "websockets/uvloop", "aiohttp"}
    for r in runs:
        assert r["unexpected"] == [], (r["name"], r["unexpected"])
        assert r["traced"] and r["traced"]["opened"] > 0, r["name"]
        assert r["wrapped"]["passed"] >= r["plain"]["passed"] - len(r["by_design"]) - len(r["flaky"])
    assert proc.returncode == 0, proc.stdout[-4000:]
