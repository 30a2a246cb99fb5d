"""Fixtures of the Grafana/Prometheus-rules tests: the grafana/ tools on sys.path (promtool_bin and
prometheus_bin come from tests/conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
sys.path.insert(0, str(GRAFANA))


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
