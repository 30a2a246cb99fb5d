"""A real Prometheus, exemplar storage on, scrapes ``traced-transport demo``; its exemplars lead to the demo's spans.

The demo exports its connection spans over OTLP to the test's receiver. Prometheus scrapes the demo's endpoint
(asking for OpenMetrics first, so its own parser reads our exemplar lines) and stores the exemplars;
``/api/v1/query_exemplars`` must return some for each of the four histograms, every one with a trace id and span id
of a span the demo exported, in a bucket its value belongs to; so must the dashboard's exemplar queries.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from _otlp_receiver import OTLPReceiver

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "grafana"))
import live

HISTOGRAMS = (
    "transport_connection_duration_seconds_bucket",
    "transport_reading_pause_duration_seconds_bucket",
    "transport_writing_pause_duration_seconds_bucket",
    "transport_tls_handshake_duration_seconds_bucket",
)


@pytest.fixture
def demo_env(monkeypatch):
    """The demo sends its spans (only: metrics go to Prometheus) to a receiver in this process."""
    with OTLPReceiver() as receiver:
        for key in list(os.environ):
            if key.startswith("OTEL_"):
                monkeypatch.delenv(key)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint)
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        yield receiver


def test_prometheus_stores_exemplars_that_lead_to_the_demos_spans(prometheus_bin, tmp_path, demo_env):
    receiver = demo_env
    started = time.time()
    demo = live.Demo(tmp_path, concurrency=8)
    prom = None
    try:
        prom = live.Prometheus(
            tmp_path, [demo.target], binary=prometheus_bin, rules=None, flags=("--enable-feature=exemplar-storage",)
        )

        def alive():
            return demo.problem() or prom.problem()

        def exemplars(metric: str) -> list:
            answer = prom.api(
                "query_exemplars", query=metric, start=f"{started - 60:.3f}", end=f"{time.time() + 60:.3f}"
            )
            assert answer["status"] == "success", answer
            return [(r["seriesLabels"], e) for r in answer["data"] for e in r["exemplars"]]

        found = {
            metric: live.poll(lambda m=metric: exemplars(m), 60, f"exemplars of {metric}", alive=alive)
            for metric in HISTOGRAMS
        }
        # Prometheus parsed the OpenMetrics scrape, exemplars and all, without complaint.
        (target,) = prom.api("targets")["data"]["activeTargets"]
        assert target["health"] == "up" and target["lastError"] == "", target

        def exported() -> set:
            return {(s.span.trace_id.hex(), s.span.span_id.hex()) for s in receiver.spans()}

        wanted = {(e["labels"]["trace_id"], e["labels"]["span_id"]) for ex in found.values() for _, e in ex}
        # A span reaches the receiver shortly after its connection ends (batched export).
        live.poll(lambda: wanted <= exported(), 30, "the exemplars' spans at the receiver", alive=alive)
        names = {(s.span.trace_id.hex(), s.span.span_id.hex()): s.name for s in receiver.spans()}
        for metric, ex in found.items():
            for series, e in ex:
                assert set(e["labels"]) == {"trace_id", "span_id"}
                assert (
                    names[(e["labels"]["trace_id"], e["labels"]["span_id"])] == f"{series['transport_name']} connection"
                )
                le = float(series["le"])
                assert float(e["value"]) <= le, (metric, series, e)
        # What the dashboard's panels ask for returns exemplars too (every variable on "All").
        dashboard = live.load_dashboards()["traced-transport-overview.json"]
        everything = {"job": ".*", "instance": ".*", "transport_name": ".*"}
        targets = [t for p in live.panels(dashboard) for t in p["targets"] if t.get("exemplar")]
        assert len(targets) == 5
        for t in targets:
            assert exemplars(live.substitute(t["expr"], everything)), t["expr"]
    finally:
        if prom is not None:
            prom.stop()
        demo.stop()
