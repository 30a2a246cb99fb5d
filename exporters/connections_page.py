"""``/connections`` on the scrape endpoint: JSON for programs, a self-refreshing HTML table for people.

The same URL answers both: a client whose ``Accept`` header prefers
``text/html`` (a browser) gets the page (``static/connections.html``, no
external assets), which fetches the JSON from the same URL; anything else, or
``?format=json``, gets the JSON document of :func:`connections.query`.

The view shows peer addresses and certificate subjects, which the metrics
never do: it is off unless asked for, and :func:`check_exposure` refuses it on
a non-loopback address without basic auth or client certificates.
"""

from __future__ import annotations

import ipaddress
import json
import time
from importlib import resources
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit, urlunsplit

from . import connections as view

PATH = "/connections"
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"
_page: Optional[bytes] = None


def url_of(metrics_url: str) -> str:
    """The ``/connections`` URL of the endpoint serving ``metrics_url``."""
    parts = urlsplit(metrics_url)
    return urlunsplit((parts.scheme, parts.netloc, PATH, "", ""))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class ExposureError(ValueError):
    """The connections view would be open to the network without authentication."""


def check_exposure(host: str, *, basic_auth: Any, client_cafile: Any) -> None:
    """Refuse the view on a non-loopback address unless basic auth or client certificates guard it."""
    if is_loopback(host) or basic_auth or client_cafile:
        return
    raise ExposureError(
        f"the connections view shows peer addresses and certificate subjects; on {host} (not loopback) it needs "
        "basic auth (--basic-auth USER:PASSWORD / basic_auth=) or client certificates (--client-cafile / "
        "client_cafile=): refusing to start"
    )


def source_for(connections: Any) -> Any:
    """``True`` -> this process's default registry; a Registry -> that one; anything with ``conns()`` as is."""
    if connections is True:
        return view.RegistryConnections()
    if hasattr(connections, "conns"):
        return connections
    if hasattr(connections, "live"):
        return view.RegistryConnections(connections)
    raise TypeError(f"connections must be True, a Registry or a connections source, not {connections!r}")


def page() -> bytes:
    global _page
    if _page is None:
        _page = resources.files(__package__).joinpath("static/connections.html").read_bytes()
    return _page


def wants_html(accept: Optional[str], params: dict) -> bool:
    fmt = (params.get("format") or [""])[-1]
    if fmt:
        return fmt == "html"
    best_html = best_json = -1.0
    for part in (accept or "").split(","):
        media, _, rest = part.strip().partition(";")
        media = media.strip().lower()
        q = 1.0
        for p in rest.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if media == "text/html":
            best_html = max(best_html, q)
        elif media in ("application/json", "*/*"):
            best_json = max(best_json, q if media == "application/json" else q - 0.001)
    return best_html > 0 and best_html >= best_json


def encode_row(row: dict) -> str:
    return json.dumps(row, separators=(",", ":"), allow_nan=False, default=str)


def encode(doc: dict) -> bytes:
    """The document as JSON; its rows are already JSON text (``query(encode_row=encode_row)``)."""
    head = {k: v for k, v in doc.items() if k != "connections"}
    head["connections"] = []  # last, so the rows can follow the head's text
    text = json.dumps(head, separators=(",", ":"), allow_nan=False, default=str)
    return "".join((text[: -len("]}")], ",".join(doc["connections"]), "]}")).encode()


def respond(source: Any, target: str, accept: Optional[str], method: str = "GET") -> tuple[int, list, bytes]:
    """``(status, headers, body)`` for a request of ``target`` (path and query) to ``/connections``."""
    if method not in ("GET", "HEAD"):
        return 405, [("Allow", "GET, HEAD")], b"405 Method Not Allowed\n"
    try:
        params = parse_qs(urlsplit(target).query, keep_blank_values=False, max_num_fields=32)
    except ValueError:
        return 400, [], b"400 Bad Request: malformed query\n"
    common = [("Cache-Control", "no-store"), ("Vary", "Accept"), ("X-Content-Type-Options", "nosniff")]
    if wants_html(accept, params):
        headers = [
            ("Content-Type", _HTML),
            # The page is self-contained: nothing may load from elsewhere.
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            *common,
        ]
        return 200, headers, page()
    try:
        q = view.parse(params)
    except view.QueryError as exc:
        return 400, [], f"400 Bad Request: {exc}\n".encode()
    conns = source.conns()
    info = source.info() if hasattr(source, "info") else {}
    doc = view.query(conns, q, now=time.time(), extra=info, encode_row=encode_row)
    body = encode(doc)
    return 200, [("Content-Type", _JSON), *common], body
