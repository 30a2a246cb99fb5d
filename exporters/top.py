"""``traced-transport top URL``: the live-connections view in a terminal, refreshing in place like top.

Reads ``/connections`` (JSON) from a scrape endpoint started with the view
enabled. Keys: ``s``/``S`` next/previous sort column, ``r`` reverse the order,
``p`` cycle the paused filter (any, paused, reading, writing, not paused),
``/`` filter (``name=echo side=server peer=10.0.`` or a bare peer prefix; empty
clears), ``q`` quit. Built on textual.

Example:
    traced-transport top http://127.0.0.1:9464/connections --basic-auth me:secret
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any, Optional
from urllib.parse import urlencode, urlsplit, urlunsplit

# (field, title, width, kind)
COLUMNS = (
    ("name", "name", 9, "text"),
    ("side", "side", 6, "text"),
    ("peer", "peer", 21, "text"),
    ("age_s", "age", 7, "secs"),
    ("rx_bytes", "rx", 7, "bytes"),
    ("tx_bytes", "tx", 7, "bytes"),
    ("rx_bytes_per_s", "rx/s", 7, "bytes"),
    ("tx_bytes_per_s", "tx/s", 7, "bytes"),
    ("reading_paused_for_s", "rd paused", 9, "secs"),
    ("writing_paused_for_s", "wr paused", 9, "secs"),
    ("write_buffer_bytes", "wbuf", 6, "bytes"),
    ("tls_version", "tls", 3, "text"),
    ("instance", "instance", 12, "text"),
)
SORTABLE = [c[0] for c in COLUMNS]
PAUSED = ("", "any", "reading", "writing", "none")


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return ""
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def fmt_secs(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return ""
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def cell(row: dict, field: str, kind: str) -> str:
    v = row.get(field)
    if kind == "bytes":
        return fmt_bytes(v)
    if kind == "secs":
        return fmt_secs(v)
    return "" if v is None else str(v)


def parse_filter(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key in ("name", "side", "peer", "paused", "instance"):
            out[key] = value
        elif not sep:
            out["peer"] = token
    return out


class Client:
    """GETs the JSON view (basic auth, TLS with a CA, a client certificate) with urllib."""

    def __init__(
        self,
        url: str,
        *,
        basic_auth: Optional[str] = None,
        cafile: Optional[str] = None,
        certfile: Optional[str] = None,
        keyfile: Optional[str] = None,
        insecure: bool = False,
        timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        path = parts.path if parts.path.endswith("/connections") else parts.path.rstrip("/") + "/connections"
        if parts.path.endswith("/metrics"):
            path = parts.path[: -len("/metrics")] + "/connections"
        self.base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self.headers = {"Accept": "application/json"}
        if basic_auth:
            self.headers["Authorization"] = "Basic " + base64.b64encode(basic_auth.encode()).decode()
        self.context: Optional[ssl.SSLContext] = None
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=cafile)
            if insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if certfile:
                ctx.load_cert_chain(certfile, keyfile)
            self.context = ctx
        self.timeout = timeout

    def get(self, params: dict[str, str]) -> dict:
        query = urlencode({k: v for k, v in params.items() if v})
        request = urllib.request.Request(self.base + ("?" + query if query else ""), headers=self.headers)
        with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
            return json.loads(response.read())


def build_app(client: Client, interval: float, limit: int) -> Any:
    from textual.app import App, ComposeResult
    from textual.binding import Binding
    from textual.widgets import DataTable, Footer, Input, Static

    class Top(App):
        TITLE = "traced-transport top"
        CSS = """
        #summary { height: auto; padding: 0 1; }
        #filter { dock: bottom; display: none; }
        #filter.shown { display: block; }
        DataTable { height: 1fr; }
        """
        BINDINGS = [
            Binding("q", "quit", "quit"),
            Binding("s", "sort(1)", "sort next"),
            Binding("S", "sort(-1)", "sort prev"),
            Binding("r", "reverse", "reverse"),
            Binding("p", "paused", "paused filter"),
            Binding("slash", "filter", "filter"),
        ]

        def __init__(self) -> None:
            super().__init__()
            self.sort_index = SORTABLE.index("age_s")
            self.order = "desc"
            self.paused = 0
            self.filters: dict[str, str] = {}
            self.error = ""

        def compose(self) -> ComposeResult:
            yield Static("connecting…", id="summary")
            yield DataTable(id="table", zebra_stripes=True, cursor_type="row")
            yield Input(placeholder="filter: name=echo side=server paused=any peer=10.0.  (Enter applies)", id="filter")
            yield Footer()

        def on_mount(self) -> None:
            table = self.query_one(DataTable)
            for field, title, width, _ in COLUMNS:
                table.add_column(title, key=field, width=width)
            self.refresh_data()
            self.set_interval(interval, self.refresh_data)

        def params(self) -> dict[str, str]:
            p = dict(self.filters)
            if PAUSED[self.paused]:
                p["paused"] = PAUSED[self.paused]
            p["sort"] = SORTABLE[self.sort_index]
            p["order"] = self.order
            p["limit"] = str(limit)
            return p

        def refresh_data(self) -> None:
            self.run_worker(self._fetch, thread=True, exclusive=True, group="fetch")

        def _fetch(self) -> None:
            try:
                doc = client.get(self.params())
            except urllib.error.HTTPError as exc:
                self.call_from_thread(self.show_error, f"HTTP {exc.code}: {exc.reason}")
                return
            except Exception as exc:  # noqa: BLE001 - shown on screen, tried again next tick
                self.call_from_thread(self.show_error, str(exc))
                return
            self.call_from_thread(self.show, doc)

        def show_error(self, message: str) -> None:
            self.query_one("#summary", Static).update(f"[b red]{client.base}: {message}[/]")

        def show(self, doc: dict) -> None:
            table = self.query_one(DataTable)
            table.clear()
            for row in doc.get("connections", ()):
                table.add_row(*(cell(row, f, kind) for f, _, _, kind in COLUMNS), key=str(row.get("id")))
            m, out = doc.get("matched", {}), doc.get("filtered_out", {})
            sort = f"{doc.get('sort')} {doc.get('order')}"
            flt = " ".join(f"{k}={v}" for k, v in self.params().items() if k not in ("sort", "order", "limit"))
            self.query_one("#summary", Static).update(
                f"{client.base}\n"
                f"live {doc.get('total', 0)}  match {m.get('connections', 0)} "
                f"(rd paused {m.get('reading_paused', 0)}, wr paused {m.get('writing_paused', 0)})  "
                f"shown {doc.get('shown', 0)}  filtered out {out.get('connections', 0)}"
                + (f"  not reported {doc['unreported']}" if doc.get("unreported") else "")
                + f"\nsort: {sort}   filter: {flt or '(none)'}"
            )

        def action_sort(self, step: int) -> None:
            self.sort_index = (self.sort_index + step) % len(SORTABLE)
            self.order = "asc" if COLUMNS[self.sort_index][3] == "text" else "desc"
            self.refresh_data()

        def action_reverse(self) -> None:
            self.order = "asc" if self.order == "desc" else "desc"
            self.refresh_data()

        def action_paused(self) -> None:
            self.paused = (self.paused + 1) % len(PAUSED)
            self.refresh_data()

        def action_filter(self) -> None:
            box = self.query_one("#filter", Input)
            box.add_class("shown")
            box.value = " ".join(f"{k}={v}" for k, v in self.filters.items())
            box.focus()

        def on_input_submitted(self, event: Input.Submitted) -> None:
            self.filters = parse_filter(event.value)
            event.input.remove_class("shown")
            self.query_one(DataTable).focus()
            self.refresh_data()

    return Top()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        nargs="?",
        default="http://127.0.0.1:9464/connections",
        help="the endpoint's /connections URL (or its /metrics URL) (default: %(default)s)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=100, help="rows asked for (default: %(default)s)")
    parser.add_argument(
        "--basic-auth", metavar="USER:PASSWORD", help="HTTP basic auth (or set TRACED_TRANSPORT_BASIC_AUTH)"
    )
    parser.add_argument("--cafile", help="trust this CA for an https URL (default: the system's)")
    parser.add_argument("--certfile", help="client certificate (PEM) for an endpoint that requires one")
    parser.add_argument("--keyfile", help="the client certificate's private key (PEM)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")


def main(args: argparse.Namespace) -> int:
    try:
        import textual  # noqa: F401
    except ImportError:
        print("traced-transport top needs textual: pip install 'traced-transport[top]'", file=sys.stderr)
        return 2
    client = Client(
        args.url,
        basic_auth=args.basic_auth or os.environ.get("TRACED_TRANSPORT_BASIC_AUTH"),
        cafile=args.cafile,
        certfile=args.certfile,
        keyfile=args.keyfile,
        insecure=args.insecure,
    )
    build_app(client, max(0.2, args.interval), max(1, args.limit)).run()
    return 0
