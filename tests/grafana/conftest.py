"""Fixtures of the Grafana/Prometheus-rules tests: the grafana/ tools on sys.path, external binaries."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
sys.path.insert(0, str(GRAFANA))


def require(name: str) -> str:
    """The path of ``name``; missing, it fails the test under CI=true and skips it otherwise."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install -y prometheus; scripts/system-deps.sh does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return require("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return require("prometheus")


@pytest.fixture(scope="session")
def generator():
    """grafana/generate.py (needs grafana-foundation-sdk, Python 3.11+; required under CI=true there)."""
    if sys.version_info < (3, 11):  # the extra installs it only there
        pytest.skip("grafana-foundation-sdk needs Python 3.11+")
    try:
        import generate
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"grafana-foundation-sdk missing ({exc}): pip install -e '.[dashboards]'")
        pytest.skip(f"grafana-foundation-sdk missing: {exc}")
    return generate
