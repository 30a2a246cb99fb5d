"""Generate traced-transport's Grafana dashboards from code (grafana-foundation-sdk).

    python grafana/generate.py           # (re)writes grafana/dashboards/*.json
    python grafana/generate.py --check   # exits 1 when the committed JSON differs from what this generates

Two dashboards with the same rows and panels:

- ``traced-transport-overview.json`` queries the raw metrics: it works the moment it is installed (no rules
  needed) and its rates follow the dashboard's zoom (``$__rate_interval``);
- ``traced-transport-overview-recorded.json`` reads the recording rules of ``grafana/prometheus/rules.yml``
  wherever one exists (fixed 5-minute windows, pre-summed to job/instance/transport_name): for fleets where
  the raw histogram and rate queries over many instances get slow.

Every panel is described here once (``ROWS``); a query with ``recorded=`` has its recording-rule form.
The output is deterministic (sorted keys, ids in layout order), so a test can compare it with the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import heatmap as heatmap_b
from grafana_foundation_sdk.builders import piechart as piechart_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash_m
from grafana_foundation_sdk.models import heatmap as heatmap_m
from grafana_foundation_sdk.models import piechart as piechart_m
from grafana_foundation_sdk.models import prometheus as prom_m

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")

# The variables every query filters by. Multi-value variables expand to a regex (a|b), "All" to ".*".
S = 'job=~"$job", instance=~"$instance", transport_name=~"$transport_name"'
RI = "$__rate_interval"

# Units (Grafana unit ids; "suffix:" ones are Grafana custom units).
CONN_RATE = "suffix: conn/s"
CONN = "suffix: conn"
PAUSE_RATE = "suffix: pauses/s"
BYTES_RATE = "Bps"
BYTES = "decbytes"
SECONDS = "s"
PERCENT = "percentunit"
UP = "bool_yes_no"


@dataclass
class Q:
    expr: str
    legend: str
    recorded: Optional[str] = None  # the same series read from the recording rules
    instant: bool = False
    # Ask for the histogram's exemplars (dots linking to the connection's trace). Once per metric and panel: every
    # target asking for them draws them again. Raw queries only: recording rules carry no exemplars.
    exemplar: bool = False


@dataclass
class P:
    title: str
    description: str
    unit: str
    queries: list[Q]
    kind: str = "timeseries"  # timeseries | heatmap | piechart
    width: int = 8
    stack: bool = False
    min: Optional[float] = 0
    max: Optional[float] = None


@dataclass
class Row:
    title: str
    panels: list[P]
    collapsed: bool = False
    repeat: Optional[str] = None


# The histograms whose buckets keep the trace of a connection with a sampled span.
EXEMPLAR_HISTOGRAMS = frozenset(
    {
        "transport_connection_duration_seconds",
        "transport_reading_pause_duration_seconds",
        "transport_writing_pause_duration_seconds",
        "transport_tls_handshake_duration_seconds",
    }
)


def quantiles(
    metric: str, record: str, by: str, extra: str = "", label: str = "", qs: tuple = (0.5, 0.9, 0.99)
) -> list[Q]:
    """histogram_quantile over a bucket metric (raw) or its recorded per-le rate."""
    sel = f"{S}{', ' + extra if extra else ''}"
    out = []
    for q in qs:
        name = f"p{int(q * 100)}"
        out.append(
            Q(
                expr=f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{sel}}}[{RI}])))",
                recorded=f"histogram_quantile({q}, sum by ({by}) ({record}{{{S}}}))",
                legend=f"{name}{' ' + label if label else ''}"
                + (" {{transport_name}}" if "transport_name" in by else ""),
                # Only the histograms whose buckets keep exemplars (connection spans) ask for them.
                exemplar=q == qs[0] and metric in EXEMPLAR_HISTOGRAMS,
            )
        )
    return out


def per_name(
    fn: str,
    metric: str,
    record: Optional[str],
    extra: str = "",
    by: str = "transport_name",
    legend: str = "{{transport_name}}",
) -> Q:
    """sum by (transport_name) (rate(metric{...}[$__rate_interval])), or the recorded rate."""
    sel = f"{S}{', ' + extra if extra else ''}"
    return Q(
        expr=f"sum by ({by}) ({fn}({metric}{{{sel}}}[{RI}]))",
        recorded=f"sum by ({by}) ({record}{{{S}}})" if record else None,
        legend=legend,
    )


def gauge(metric: str, by: str = "transport_name", legend: str = "{{transport_name}}") -> Q:
    return Q(expr=f"sum by ({by}) ({metric}{{{S}}})", legend=legend)


def abnormal_ratio(by: str, legend: str) -> Q:
    count = "transport_connection_duration_seconds_count"
    rec = "instance_transport_name_error_type:transport_connection_closes:rate5m"
    return Q(
        expr=(
            f'(sum by ({by}) (rate({count}{{{S}, error_type!=""}}[{RI}]))'
            f" or 0 * sum by ({by}) (rate({count}{{{S}}}[{RI}])))"
            f" / (sum by ({by}) (rate({count}{{{S}}}[{RI}])) > 0)"
        ),
        recorded=(
            f'(sum by ({by}) ({rec}{{{S}, error_type!=""}}) or 0 * sum by ({by}) ({rec}{{{S}}}))'
            f" / (sum by ({by}) ({rec}{{{S}}}) > 0)"
        ),
        legend=legend,
    )


def paused_fraction(direction: str) -> Q:
    return Q(
        expr=(
            f"sum by (transport_name) (rate(transport_{direction}_pause_duration_seconds_sum{{{S}}}[{RI}]))"
            f" / (sum by (transport_name) (avg_over_time(transport_connection_active{{{S}}}[{RI}])) > 0)"
        ),
        recorded=f"sum by (transport_name) (instance_transport_name:transport_{direction}_paused_time:ratio_rate5m{{{S}}})",
        legend=f"{direction} {{{{transport_name}}}}",
    )


R = "instance_transport_name"
ROWS = [
    Row(
        "Connections",
        [
            P(
                "Connections opened",
                "New connections per second (accepted by servers, made by clients), per transport name.",
                CONN_RATE,
                [per_name("rate", "transport_connection_opened_total", f"{R}:transport_connection_opened:rate5m")],
            ),
            P(
                "Active connections",
                "Connections open now (transport.connection.active), per transport name.",
                CONN,
                [gauge("transport_connection_active")],
            ),
            P(
                "Abnormal closes by error type",
                "Connections per second that ended abnormally, by error_type: aborted (abort() called), "
                "tls_handshake_failed, or the exception's class (ConnectionResetError, ...). Normal closes and EOFs "
                "carry no error_type and are not shown.",
                CONN_RATE,
                [
                    per_name(
                        "rate",
                        "transport_connection_duration_seconds_count",
                        "instance_transport_name_error_type:transport_connection_closes:rate5m",
                        extra='error_type!=""',
                        by="transport_name, error_type",
                        legend="{{error_type}} ({{transport_name}})",
                    )
                ],
            ),
            P(
                "Connection duration percentiles",
                "p50/p90/p99 of how long connections lasted, from the transport.connection.duration histogram "
                "(recorded at close; buckets 10 ms to 300 s).",
                SECONDS,
                quantiles(
                    "transport_connection_duration_seconds",
                    f"{R}_le:transport_connection_duration_seconds_bucket:rate5m",
                    "le, transport_name",
                ),
                width=12,
                min=None,
            ),
            P(
                "Connection duration heatmap",
                "Connections closed per second, by duration bucket (upper bound `le`, seconds): where the bulk of "
                "connection lifetimes sit and how that moves over time.",
                SECONDS,
                [
                    Q(
                        expr=f"sum by (le) (rate(transport_connection_duration_seconds_bucket{{{S}}}[{RI}]))",
                        recorded=f"sum by (le) ({R}_le:transport_connection_duration_seconds_bucket:rate5m{{{S}}})",
                        legend="{{le}}",
                        exemplar=True,
                    )
                ],
                kind="heatmap",
                width=12,
            ),
            P(
                "Abnormal-close ratio",
                "Share of the connections that closed in the interval which closed abnormally (error_type set), "
                "per transport name. The alert TracedTransportAbnormalCloseRatioHigh fires above 5%.",
                PERCENT,
                [abnormal_ratio("transport_name", "{{transport_name}}")],
                width=24,
                max=1,
            ),
        ],
    ),
    Row(
        "Bytes",
        [
            P(
                "Received",
                "Bytes received per second (plaintext over TLS), per transport name.",
                BYTES_RATE,
                [per_name("rate", "transport_received_bytes_total", f"{R}:transport_received_bytes:rate5m")],
                width=12,
            ),
            P(
                "Sent",
                "Bytes sent per second (accepted by write/writelines/sendto, plus sendfile), per transport name.",
                BYTES_RATE,
                [per_name("rate", "transport_sent_bytes_total", f"{R}:transport_sent_bytes:rate5m")],
                width=12,
            ),
        ],
    ),
    Row(
        "Flow control",
        [
            P(
                "Reading pauses",
                "Completed reading pauses per second (pause_reading() to resume_reading(): the app stopped taking "
                "data, usually backpressure from its own writes or a slow consumer).",
                PAUSE_RATE,
                [
                    per_name(
                        "rate", "transport_reading_pause_duration_seconds_count", f"{R}:transport_reading_pauses:rate5m"
                    )
                ],
            ),
            P(
                "Writing pauses",
                "Completed writing pauses per second (pause_writing() to resume_writing(): the transport's write "
                "buffer passed its high-water mark because the peer reads slower than the app writes).",
                PAUSE_RATE,
                [
                    per_name(
                        "rate", "transport_writing_pause_duration_seconds_count", f"{R}:transport_writing_pauses:rate5m"
                    )
                ],
            ),
            P(
                "Connections paused now",
                "Connections with reading paused and with writing paused right now. A line that stays up while the "
                "pause rates above stay at zero is a stuck connection (alerts TracedTransport*StuckPaused).",
                CONN,
                [
                    gauge("transport_reading_paused", legend="reading {{transport_name}}"),
                    gauge("transport_writing_paused", legend="writing {{transport_name}}"),
                ],
            ),
            P(
                "Share of connection-time paused",
                "Seconds spent paused per second, divided by the connections open on average: 50% means a typical "
                "connection spent half its time with reading (or writing) paused. Counted when a pause ends, so a "
                "long pause lands in one interval and the value can briefly pass 100%.",
                PERCENT,
                [paused_fraction("reading"), paused_fraction("writing")],
                width=8,
            ),
            P(
                "Pause duration percentiles",
                "p50/p99 of how long reading and writing pauses lasted (transport.reading/writing.pause.duration), "
                "over the selected transport names.",
                SECONDS,
                quantiles(
                    "transport_reading_pause_duration_seconds",
                    f"{R}_le:transport_reading_pause_duration_seconds_bucket:rate5m",
                    "le",
                    label="reading",
                    qs=(0.5, 0.99),
                )
                + quantiles(
                    "transport_writing_pause_duration_seconds",
                    f"{R}_le:transport_writing_pause_duration_seconds_bucket:rate5m",
                    "le",
                    label="writing",
                    qs=(0.5, 0.99),
                ),
                min=None,
            ),
            P(
                "Buffered bytes",
                "Bytes waiting in the transports' write buffers now (get_write_buffer_size(), summed): what the "
                "peers have not taken yet.",
                BYTES,
                [gauge("transport_write_buffer_size_bytes")],
            ),
        ],
    ),
    Row(
        "TLS",
        [
            P(
                "TLS connections by version",
                "TLS connections opened per second by negotiated protocol version (connections upgraded with "
                "start_tls keep their plain attributes: see the handshakes by cipher and version panel).",
                CONN_RATE,
                [
                    per_name(
                        "rate",
                        "transport_connection_opened_total",
                        f"{R}_tls_protocol_version:transport_connection_opened:rate5m",
                        extra='tls_protocol_version!=""',
                        by="tls_protocol_version",
                        legend="TLS {{tls_protocol_version}}",
                    )
                ],
                stack=True,
            ),
            P(
                "TLS version share",
                "Share of TLS connections per protocol version over the dashboard's time range.",
                PERCENT,
                [
                    Q(
                        expr=f"sum by (tls_protocol_version) (increase(transport_connection_opened_total"
                        f'{{{S}, tls_protocol_version!=""}}[$__range]))',
                        legend="TLS {{tls_protocol_version}}",
                        instant=True,
                    )
                ],
                kind="piechart",
            ),
            P(
                "TLS handshake failures",
                "Failed TLS handshakes per second (bad certificate, plaintext to a TLS port, no shared version or "
                "cipher). The alert TracedTransportTLSHandshakeFailuresRising fires when they double.",
                "suffix: failures/s",
                [
                    per_name(
                        "rate",
                        "transport_tls_handshake_duration_seconds_count",
                        f"{R}:transport_tls_handshake_failures:rate5m",
                        extra='error_type!=""',
                    )
                ],
            ),
            P(
                "TLS handshakes by cipher and version",
                "Successful TLS handshakes per second by negotiated cipher suite (IANA name) and protocol version, "
                "from the tls.cipher and tls.protocol.version attributes of transport.tls.handshake.duration: "
                "every TLS connection the library sees the handshake of, start_tls upgrades included.",
                CONN_RATE,
                [
                    per_name(
                        "rate",
                        "transport_tls_handshake_duration_seconds_count",
                        None,
                        extra='error_type="", tls_cipher!=""',
                        by="tls_cipher, tls_protocol_version",
                        legend="{{tls_cipher}} (TLS {{tls_protocol_version}})",
                    )
                ],
                width=12,
                stack=True,
            ),
            P(
                "TLS handshake duration percentiles",
                "p50/p90/p99 of successful handshakes, from accept (or start_tls) to handshake done.",
                SECONDS,
                quantiles(
                    "transport_tls_handshake_duration_seconds",
                    f"{R}_le:transport_tls_handshake_duration_seconds_bucket:rate5m",
                    "le, transport_name",
                    extra='error_type=""',
                ),
                width=12,
                min=None,
            ),
        ],
    ),
    Row(
        "TCP",
        [
            P(
                "TCP round-trip time percentiles",
                "p50/p90/p99 of each TCP connection's smoothed RTT as the kernel had it when the connection ended "
                "(transport.tcp.rtt from TCP_INFO; Envoy's cx_rtt_us). Needs Telemetry(tcp_info=True) or "
                "TRACED_TRANSPORT_TCP_INFO=1 on Linux.",
                SECONDS,
                quantiles(
                    "transport_tcp_rtt_seconds",
                    f"{R}_le:transport_tcp_rtt_seconds_bucket:rate5m",
                    "le, transport_name",
                ),
                width=12,
                min=None,
            ),
            P(
                "Retransmitted share of segments",
                "Retransmitted TCP segments over segments sent, by connections that ended in the interval (Envoy's "
                "cx_tx_percent_retransmitted_segments), and the p99 of the per-connection share: a lossy path "
                "shows here while a slow reader shows as writing pauses with no retransmissions.",
                PERCENT,
                [
                    Q(
                        expr=f"sum by (transport_name) (rate(transport_tcp_segments_retransmitted_total{{{S}}}[{RI}]))"
                        f" / (sum by (transport_name) (rate(transport_tcp_segments_sent_total{{{S}}}[{RI}])) > 0)",
                        recorded=f"sum by (transport_name) ({R}:transport_tcp_segments_retransmitted:rate5m{{{S}}})"
                        f" / (sum by (transport_name) ({R}:transport_tcp_segments_sent:rate5m{{{S}}}) > 0)",
                        legend="all segments {{transport_name}}",
                    ),
                    *quantiles(
                        "transport_tcp_retransmitted_ratio",
                        f"{R}_le:transport_tcp_retransmitted_ratio_bucket:rate5m",
                        "le, transport_name",
                        label="per connection",
                        qs=(0.99,),
                    ),
                ],
                width=12,
            ),
            P(
                "TCP segments",
                "TCP segments sent and retransmitted per second by connections that ended (transport.tcp.segments.*; "
                "Envoy's cx_tx_segments and cx_tx_retransmitted_segments).",
                "suffix: segments/s",
                [
                    per_name(
                        "rate",
                        "transport_tcp_segments_sent_total",
                        f"{R}:transport_tcp_segments_sent:rate5m",
                        legend="sent {{transport_name}}",
                    ),
                    per_name(
                        "rate",
                        "transport_tcp_segments_retransmitted_total",
                        f"{R}:transport_tcp_segments_retransmitted:rate5m",
                        legend="retransmitted {{transport_name}}",
                    ),
                ],
            ),
            P(
                "Unsent bytes in the kernel",
                "Bytes in the kernels' send queues not yet sent, summed over open TCP connections, read at scrape "
                "(transport.tcp.unsent; Envoy's cx_tx_unsent_bytes). Beside the transports' own buffered bytes: "
                "what the app has handed over but the network has not taken.",
                BYTES,
                [gauge("transport_tcp_unsent_bytes")],
            ),
            P(
                "Unacknowledged segments",
                "Segments sent and not yet acknowledged by the peers, summed over open TCP connections, read at "
                "scrape (transport.tcp.unacked; Envoy's cx_tx_unacked_segments).",
                "suffix: segments",
                [gauge("transport_tcp_unacked")],
            ),
        ],
    ),
    Row(
        "Per instance",
        [
            P(
                "Active connections per instance",
                "Connections open now per scrape target (each worker process or host): an uneven spread shows a "
                "balancing problem.",
                CONN,
                [gauge("transport_connection_active", by="instance", legend="{{instance}}")],
            ),
            P(
                "Bytes per second per instance",
                "Received and sent bytes per second per scrape target.",
                BYTES_RATE,
                [
                    per_name(
                        "rate",
                        "transport_received_bytes_total",
                        f"{R}:transport_received_bytes:rate5m",
                        by="instance",
                        legend="received {{instance}}",
                    ),
                    per_name(
                        "rate",
                        "transport_sent_bytes_total",
                        f"{R}:transport_sent_bytes:rate5m",
                        by="instance",
                        legend="sent {{instance}}",
                    ),
                ],
            ),
            P(
                "Paused connections per instance",
                "Connections with reading or writing paused now, per scrape target.",
                CONN,
                [
                    gauge("transport_reading_paused", by="instance", legend="reading {{instance}}"),
                    gauge("transport_writing_paused", by="instance", legend="writing {{instance}}"),
                ],
            ),
            P(
                "Abnormal-close ratio per instance",
                "Share of closes that were abnormal, per scrape target.",
                PERCENT,
                [abnormal_ratio("instance", "{{instance}}")],
                width=12,
                max=1,
            ),
            P(
                "Scrape target up",
                "Whether Prometheus could scrape each target (the up metric); alert TracedTransportTargetDown.",
                UP,
                [Q(expr='up{job=~"$job", instance=~"$instance"}', legend="{{instance}}")],
                width=12,
                max=1,
            ),
        ],
        collapsed=False,
    ),
]


def _target(q: Q, ref: str, recorded: bool, heatmap: bool) -> prom_b.Dataquery:
    t = (
        prom_b.Dataquery()
        .expr(q.recorded if recorded and q.recorded else q.expr)
        .legend_format(q.legend)
        .ref_id(ref)
        .datasource(DATASOURCE)
    )
    if heatmap:
        t = t.format(prom_m.PromQueryFormat.HEATMAP)
    if q.exemplar and not (recorded and q.recorded):
        t = t.exemplar(True)
    return t.instant() if q.instant else t.range()


def _panel(p: P, recorded: bool):
    refs = "ABCDEFGHIJ"
    if p.kind == "heatmap":
        b = (
            heatmap_b.Panel()
            .calculate(False)
            .color(
                heatmap_b.HeatmapColorOptions()
                .mode(heatmap_m.HeatmapColorMode.SCHEME)
                .scheme("Oranges")
                .scale(heatmap_m.HeatmapColorScale.EXPONENTIAL)
                .exponent(0.5)
                .steps(64)
            )
            .y_axis(heatmap_b.YAxisConfig().unit(p.unit))
            .rows_frame(heatmap_b.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
            .cell_values(heatmap_b.CellValues().unit(CONN_RATE))
            .show_legend()
        )
    elif p.kind == "piechart":
        b = (
            piechart_b.Panel()
            .pie_type(piechart_m.PieChartType.DONUT)
            .legend(
                piechart_b.PieChartLegendOptions()
                .display_mode(common.LegendDisplayMode.TABLE)
                .placement(common.LegendPlacement.RIGHT)
                .show_legend(True)
                .values(["percent"])
            )
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
    else:
        b = (
            ts_b.Panel()
            .line_width(1)
            .fill_opacity(25 if p.stack else 10)
            .show_points(common.VisibilityMode.NEVER)
            .legend(
                common_b.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.TABLE)
                .placement(common.LegendPlacement.BOTTOM)
                .show_legend(True)
                .calcs(["mean", "max", "lastNotNull"])
                .sort_by("Mean")
                .sort_desc(True)
            )
            .tooltip(
                common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
            )
        )
        if p.stack:
            b = b.stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL))
        if p.min is not None:
            b = b.min(p.min)
        if p.max is not None:
            b = b.max(p.max)
    b = b.title(p.title).description(p.description).unit(p.unit).datasource(DATASOURCE).height(9).span(p.width)
    for i, q in enumerate(p.queries):
        b = b.with_target(_target(q, refs[i], recorded, p.kind == "heatmap"))
    return b


def _variables() -> list:
    def query_var(name: str, label: str, query: str, description: str):
        return (
            dash_b.QueryVariable(name)
            .label(label)
            .description(description)
            .datasource(DATASOURCE)
            .query({"query": query, "refId": f"{name}-var", "qryType": 1})
            .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dash_m.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )

    return [
        dash_b.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .description("The Prometheus that scrapes the traced-transport endpoints."),
        query_var(
            "job",
            "Job",
            "label_values(transport_connection_opened_total, job)",
            "Prometheus job(s) of the scrape endpoints.",
        ),
        query_var(
            "instance",
            "Instance",
            'label_values(transport_connection_opened_total{job=~"$job"}, instance)',
            "Scrape targets: one per process, or per host with traced-transport run.",
        ),
        query_var(
            "transport_name",
            "Transport name",
            'label_values(transport_connection_opened_total{job=~"$job", instance=~"$instance"}, transport_name)',
            "The name= given to traced()/start_server()/instrument().",
        ),
    ]


def build(recorded: bool = False) -> dict:
    uid = "traced-transport-overview" + ("-recorded" if recorded else "")
    title = "traced-transport overview" + (" (recording rules)" if recorded else "")
    b = (
        dash_b.Dashboard(title)
        .uid(uid)
        .description(
            "Connections, bytes, flow control and TLS of asyncio transports traced by traced-transport"
            + (", read from the recording rules of grafana/prometheus/rules.yml." if recorded else ".")
        )
        .tags(["traced-transport", "asyncio", "transport"])
        .editable()
        .timezone("browser")
        .time("now-30m", "now")
        .refresh("30s")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .variables(_variables())
    )
    for row in ROWS:
        b = b.with_row(dash_b.Row(row.title).collapsed(row.collapsed))
        for p in row.panels:
            b = b.with_panel(_panel(p, recorded))
    model = json.loads(json.dumps(b.build(), cls=JSONEncoder))
    # Stable ids in layout order (the builder's are already sequential; make that explicit).
    for i, panel in enumerate(model["panels"], start=1):
        panel["id"] = i
    return model


def render(model: dict) -> str:
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def files() -> dict[Path, str]:
    return {
        OUT / "traced-transport-overview.json": render(build(False)),
        OUT / "traced-transport-overview-recorded.json": render(build(True)),
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed files differ")
    args = ap.parse_args(argv)
    stale = []
    for path, text in files().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print("out of date (run: make dashboards): " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
