"""Grafana dashboards, provisioning and Prometheus rules: generated, linted, unit-tested, and every panel query
and recording rule run against a real Prometheus scraping the demo."""

from __future__ import annotations

import re
import subprocess
import time

import live  # grafana/live.py (conftest puts grafana/ on sys.path)
import pytest

GRAFANA = live.HERE

yaml = pytest.importorskip("yaml")

# The demo's server-side transport names.
SERVER_NAMES = ["echo", "http", "tls-echo"]
UNITS = {"s", "Bps", "decbytes", "percentunit", "bool_yes_no"}


def all_targets(dashboard: dict):
    for panel in live.panels(dashboard):
        for target in panel["targets"]:
            yield panel, target


# --- generated, and well formed ---------------------------------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_makes(generator):
    files = generator.files()
    assert {p.name for p in files} == {p.name for p in live.DASHBOARDS.glob("*.json")}
    for path, text in files.items():
        assert path.read_text() == text, f"{path.name} is out of date: run make dashboards"
    assert generator.main(["--check"]) == 0


def test_every_panel_has_a_description_a_unit_and_readable_legends():
    dashboards = live.load_dashboards()
    assert set(dashboards) == {"traced-transport-overview.json", "traced-transport-overview-recorded.json"}
    for name, d in dashboards.items():
        assert set(live.variables(d)) == {"datasource", "job", "instance", "transport_name"}
        titles = [p["title"] for p in live.panels(d)]
        assert len(titles) == len(set(titles)) >= 20, name
        rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
        assert rows == ["Connections", "Bytes", "Flow control", "TLS", "TCP", "Per instance"]
        for panel in live.panels(d):
            where = f"{name}: {panel['title']}"
            assert len(panel.get("description", "")) > 30, where
            unit = panel["fieldConfig"]["defaults"].get("unit", "")
            assert unit in UNITS or unit.startswith("suffix: "), where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["targets"], where
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", where
                assert "{{" in t["legendFormat"] or t["legendFormat"].startswith(("p", "reading", "writing")), where
                assert re.search(r'job=~"\$job"', t["expr"]) and re.search(r'instance=~"\$instance"', t["expr"]), where
                if not t["expr"].startswith("up{"):
                    assert 'transport_name=~"$transport_name"' in t["expr"], where
    # the recorded variant reads the recording rules for every expensive query, the raw one never does
    raw = [t["expr"] for _, t in all_targets(dashboards["traced-transport-overview.json"])]
    rec = [t["expr"] for _, t in all_targets(dashboards["traced-transport-overview-recorded.json"])]
    assert not [e for e in raw if ":rate5m" in e or ":avg5m" in e]
    assert (
        sum("histogram_quantile" in e for e in rec)
        == sum("instance_transport_name_le:" in e for e in rec if "histogram_quantile" in e)
        > 0
    )
    assert sum(":rate5m" in e for e in rec) >= 15


def test_provisioning_points_at_the_dashboards():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    assert [(d["type"], d["uid"]) for d in ds["datasources"]] == [("prometheus", "prometheus")]
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/traced-transport.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/traced-transport"
    readme = (GRAFANA.parent / "docs" / "grafana.md").read_text()
    # the documented docker run mounts exactly these paths
    assert "grafana/dashboards:/var/lib/grafana/dashboards/traced-transport" in readme
    assert "grafana/provisioning:/etc/grafana/provisioning" in readme


# --- rules ------------------------------------------------------------------------------------------------------


def rules() -> list[dict]:
    doc = yaml.safe_load(live.RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_promtool_checks_and_unit_tests_the_rules(promtool_bin):
    check = subprocess.run(
        [promtool_bin, "check", "rules", str(live.RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules())} rules found" in check.stdout
    unit = subprocess.run(
        [promtool_bin, "test", "rules", "rules_test.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=live.RULES.parent,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout
    # every alert has a unit test that expects it to fire
    tests = yaml.safe_load((live.RULES.parent / "rules_test.yml").read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    assert fired == {r["alert"] for r in rules() if "alert" in r}


# --- every panel and rule against a real Prometheus -------------------------------------------------------------


@pytest.fixture
def stack(prometheus_bin, tmp_path):
    demo = live.Demo(tmp_path, concurrency=8)
    try:
        prom = live.Prometheus(tmp_path, [demo.target], binary=prometheus_bin)
    except BaseException:
        demo.stop()
        raise
    try:
        yield demo, prom
    finally:
        prom.stop()
        demo.stop()


def test_every_panel_query_and_recording_rule_returns_data_from_real_prometheus(stack):
    started = time.monotonic()
    demo, prom = stack
    dashboards = live.load_dashboards()

    def alive():
        return demo.problem() or prom.problem()

    # The variables' own queries give the values a user would pick from.
    def variable_values(name: str, dashboard: dict, chosen: dict) -> list[str]:
        q = live.variables(dashboard)[name]["query"]["query"]
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", q)
        assert m, q
        series = prom.api("series", **{"match[]": live.substitute(m.group(1), chosen)})
        assert series["status"] == "success", series
        return sorted({s[m.group(2)] for s in series["data"] if m.group(2) in s})

    overview = dashboards["traced-transport-overview.json"]
    everything = {"job": ".*", "instance": ".*", "transport_name": ".*"}
    values = live.poll(
        lambda: variable_values("transport_name", overview, everything),
        30,
        "transport names in Prometheus",
        alive=alive,
    )
    jobs = variable_values("job", overview, everything)
    instances = variable_values("instance", overview, {**everything, "job": live.JOB})
    assert jobs == [live.JOB] and instances == [demo.target]
    assert set(SERVER_NAMES) < set(values)
    # All selected, and a multi-value selection of a job, an instance and the three server names
    selections = {
        "all": everything,
        "picked": {
            "job": live.multi_value([live.JOB]),
            "instance": live.multi_value([demo.target]),
            "transport_name": live.multi_value(SERVER_NAMES),
        },
    }
    queries = {}
    for dname, d in dashboards.items():
        for sname, chosen in selections.items():
            for panel, target in all_targets(d):
                expr = live.substitute(target["expr"], chosen)
                assert "$" not in expr, expr
                queries[(dname, sname, panel["title"], target["refId"])] = expr
    for r in rules():
        if "record" in r:
            queries[("rules", "record", r["record"], "")] = r["record"]
    n_targets = sum(len(list(all_targets(d))) for d in dashboards.values())
    assert len(queries) == len(selections) * n_targets + sum("record" in r for r in rules()) > 150

    # Poll until every query has returned at least one series with a finite value; an error fails at once.
    pending = dict(queries)

    def all_have_data():
        for key, expr in list(pending.items()):
            answer = prom.query(expr)
            assert answer["status"] == "success", (key, expr, answer)
            if live.finite_series(answer):
                del pending[key]
        return not pending

    try:
        live.poll(all_have_data, 75, "data for every panel query and recording rule", interval=1.0, alive=alive)
    except TimeoutError:
        pytest.fail(
            "no data for:\n"
            + "\n".join(f"{k}: {queries[k]}" for k in pending)
            + f"\nprometheus log:\n{prom.log()}\ndemo log:\n{demo.log()}"
        )

    # What Grafana runs for time series panels: range queries, none may error.
    end = time.time()
    for key, expr in queries.items():
        answer = prom.query_range(expr, end - 20, end, 2)
        assert answer["status"] == "success", (key, answer)
        assert answer["data"]["result"], (key, expr)

    # Rules loaded and evaluating cleanly, alerts included; the scrape target up.
    groups = prom.api("rules")["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert len(loaded) == len(rules())
    assert [(r["name"], r["lastError"]) for r in loaded if r["health"] != "ok"] == []
    assert live.finite_series(prom.query(f'up{{job="{live.JOB}"}} == 1')) == 1
    # The demo's load makes what the test relies on: two TLS versions, handshake failures, aborts.
    versions = prom.query('sum by (tls_protocol_version) (transport_connection_opened_total{tls_protocol_version!=""})')
    assert {r["metric"]["tls_protocol_version"] for r in versions["data"]["result"]} == {"1.2", "1.3"}
    errors = prom.query('sum by (error_type) (transport_connection_duration_seconds_count{error_type!=""})')
    assert {"aborted", "tls_handshake_failed"} <= {r["metric"]["error_type"] for r in errors["data"]["result"]}
    assert time.monotonic() - started < 100
