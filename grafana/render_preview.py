"""Plot every panel of the overview dashboard from a real Prometheus scraping the demo: grafana/preview.png.

    python grafana/render_preview.py [--seconds 120] [--out grafana/preview.png]

Starts ``traced-transport demo`` and Prometheus (1 s scrapes, rules loaded), lets the load run, then runs each
panel's queries (variables set to All) as Grafana would (range queries; the pie chart as an instant query) and
draws them in the dashboard's rows and columns with matplotlib. Needs the ``preview`` extra.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import live

EVERYTHING = {"job": ".*", "instance": ".*", "transport_name": ".*"}


def fmt(unit: str, v: float) -> str:
    if unit in ("Bps", "decbytes"):
        for p in ("", "k", "M", "G", "T"):
            if abs(v) < 1000:
                break
            v /= 1000
        return f"{v:.3g} {p}B" + ("/s" if unit == "Bps" else "")
    if unit == "s":
        if v == 0:
            return "0"
        return f"{v * 1000:.3g} ms" if abs(v) < 1 else f"{v:.3g} s"
    if unit == "percentunit":
        return f"{v * 100:.3g}%"
    if unit == "bool_yes_no":
        return "yes" if v >= 0.5 else "no"
    return f"{v:.3g}{unit[len('suffix:') :] if unit.startswith('suffix:') else ''}"


def legend(template: str, metric: dict) -> str:
    return live.re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), template) or "value"


def draw(ax, panel: dict, prom: live.Prometheus, start: float, end: float, step: float) -> None:
    from matplotlib.ticker import FuncFormatter

    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    ax.set_title(panel["title"], fontsize=10, loc="left")
    ax.tick_params(labelsize=7)
    if panel["type"] == "piechart":
        t = panel["targets"][0]
        res = prom.query(live.substitute(t["expr"], EVERYTHING))["data"]["result"]
        vals = [float(r["value"][1]) for r in res]
        labels = [legend(t["legendFormat"], r["metric"]) for r in res]
        ax.pie(
            vals,
            labels=[f"{lb} {v / sum(vals):.0%}" for lb, v in zip(labels, vals)],
            textprops={"fontsize": 8},
            wedgeprops={"width": 0.45},
        )
        return
    if panel["type"] == "heatmap":
        t = panel["targets"][0]
        res = prom.query_range(live.substitute(t["expr"], EVERYTHING), start, end, step)["data"]["result"]
        rows = sorted(res, key=lambda r: float(r["metric"]["le"]))
        # the bucket rates are cumulative (le): difference them into per-bucket rates
        cum = [[float(v) if math.isfinite(float(v)) else 0.0 for _, v in r["values"]] for r in rows]
        n = min(len(c) for c in cum)
        cells = [[cum[i][j] - (cum[i - 1][j] if i else 0.0) for j in range(n)] for i in range(len(cum))]
        ax.imshow(
            [[math.sqrt(max(c, 0)) for c in row] for row in cells],
            aspect="auto",
            origin="lower",
            cmap="Oranges",
            extent=(0, n * step, 0, len(rows)),
        )
        ax.set_yticks([i + 0.5 for i in range(len(rows))][::2])
        ax.set_yticklabels(
            [fmt("s", float(r["metric"]["le"])) if r["metric"]["le"] != "+Inf" else "+Inf" for r in rows][::2],
            fontsize=6,
        )
        ax.set_xlabel("seconds", fontsize=7)
        return
    for t in panel["targets"]:
        res = prom.query_range(live.substitute(t["expr"], EVERYTHING), start, end, step)["data"]["result"]
        for r in sorted(res, key=lambda r: legend(t["legendFormat"], r["metric"])):
            xs = [float(ts) - start for ts, _ in r["values"]]
            ys = [float(v) for _, v in r["values"]]
            ax.plot(xs, ys, linewidth=1, label=legend(t["legendFormat"], r["metric"]))
    if unit == "bool_yes_no":
        ax.set_ylim(-0.1, 1.1)
        ax.set_yticks([0, 1])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(unit, v)))
    ax.set_xlim(0, end - start)
    ax.set_xlabel("seconds", fontsize=7)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=6, ncol=2 if len(handles) > 4 else 1, loc="upper left", framealpha=0.7)


def render(prom: live.Prometheus, out: Path, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = live.load_dashboards()["traced-transport-overview.json"]
    end = time.time()
    start = end - seconds
    step = max(seconds / 120, 1.0)
    # the dashboard's grid (24 columns) at one plot unit per 8 columns, rows headed by the row titles
    layout: list[tuple[str, list[list[dict]]]] = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            layout.append((p["title"], []))
            continue
        lines = layout[-1][1]
        if not lines or sum(q["gridPos"]["w"] for q in lines[-1]) + p["gridPos"]["w"] > 24:
            lines.append([])
        lines[-1].append(p)
    n_lines = sum(len(lines) for _, lines in layout)
    fig = plt.figure(figsize=(18, 3.3 * n_lines))
    grid = fig.add_gridspec(n_lines, 24, hspace=0.8, wspace=2.5, top=1 - 0.6 / n_lines)
    i = 0
    for title, lines in layout:
        for k, line in enumerate(lines):
            x = 0
            for p in line:
                w = p["gridPos"]["w"]
                ax = fig.add_subplot(grid[i, x : x + w])
                draw(ax, p, prom, start, end, step)
                x += w
            if k == 0:  # the row's title above its first line of panels, as Grafana shows it
                fig.axes[-len(line)].annotate(
                    title,
                    xy=(0, 1),
                    xycoords="axes fraction",
                    xytext=(-30, 24),
                    textcoords="offset points",
                    fontsize=13,
                    weight="bold",
                )
            i += 1
    fig.suptitle(
        f"{dashboard['title']}: the demo's load, {seconds:.0f} s, real Prometheus (grafana/render_preview.py)",
        fontsize=14,
        y=0.999,
    )
    fig.savefig(out, dpi=80, bbox_inches="tight")
    print(f"wrote {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120, help="how long the demo's load runs before plotting")
    ap.add_argument("--out", type=Path, default=live.HERE / "preview.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = live.Demo(Path(tmp))
        try:
            prom = live.Prometheus(Path(tmp), [demo.target])
            try:
                print(f"demo and Prometheus up ({prom.base}); plotting after {args.seconds:.0f} s of load")
                time.sleep(args.seconds)  # the load is what we want to see: a fixed duration on purpose
                render(prom, args.out, args.seconds)
            finally:
                prom.stop()
        finally:
            demo.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
