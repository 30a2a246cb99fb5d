"""The dashboards ask for exemplars where a bucket can point at a connection's trace; the provisioned data source
links them to a trace URL taken from Grafana's environment."""

from __future__ import annotations

import re

import live  # grafana/live.py (conftest puts grafana/ on sys.path)
import pytest

yaml = pytest.importorskip("yaml")

HISTOGRAMS = {
    "transport_connection_duration_seconds",
    "transport_reading_pause_duration_seconds",
    "transport_writing_pause_duration_seconds",
    "transport_tls_handshake_duration_seconds",
}


def exemplar_targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in live.panels(dashboard) for t in p["targets"] if t.get("exemplar")]


def test_duration_and_pause_panels_ask_for_exemplars_once_per_histogram():
    dashboards = live.load_dashboards()
    raw = exemplar_targets(dashboards["traced-transport-overview.json"])
    by_panel: dict[str, list[str]] = {}
    for title, target in raw:
        (metric,) = re.findall(r"(\w+)_bucket\{", target["expr"])
        assert metric in HISTOGRAMS, target["expr"]
        by_panel.setdefault(title, []).append(metric)
    for title, metrics in by_panel.items():
        assert len(metrics) == len(set(metrics)), title  # a second target would draw every dot twice
    assert by_panel == {
        "Connection duration percentiles": ["transport_connection_duration_seconds"],
        "Connection duration heatmap": ["transport_connection_duration_seconds"],
        "Pause duration percentiles": [
            "transport_reading_pause_duration_seconds",
            "transport_writing_pause_duration_seconds",
        ],
        "TLS handshake duration percentiles": ["transport_tls_handshake_duration_seconds"],
    }
    # Recording rules keep no exemplars: the recorded dashboard does not ask for any.
    assert exemplar_targets(dashboards["traced-transport-overview-recorded.json"]) == []


def test_provisioned_data_source_links_exemplars_to_a_configurable_trace_url():
    ds = yaml.safe_load((live.HERE / "provisioning/datasources/prometheus.yml").read_text())
    (prometheus,) = ds["datasources"]
    (destination,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == "trace_id"
    # Grafana expands ${VAR} from its environment in provisioning files and turns $$ into a literal $.
    env = {"TRACE_URL": "http://jaeger:16686/trace/"}
    expanded = re.sub(r"\$\$|\$\{(\w+)\}", lambda m: "$" if m.group(0) == "$$" else env[m.group(1)], destination["url"])
    assert expanded == "http://jaeger:16686/trace/${__value.raw}"
