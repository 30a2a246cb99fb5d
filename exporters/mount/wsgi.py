"""The scrape as a WSGI app (Flask, Django, wsgiref, gunicorn...): ``make_wsgi_app(source)``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, Optional

from ..exposition import BasicAuth, Request, registry_of, scrape, wire_headers


def make_wsgi_app(source: Any, *, basic_auth: Optional[tuple[str, str]] = None) -> Callable[..., Iterable[bytes]]:
    registry = registry_of(source)
    auth = BasicAuth.of(basic_auth)

    def metrics_app(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        def header(name: str) -> Optional[str]:
            return environ.get("HTTP_" + name.upper().replace("-", "_"))

        method = environ.get("REQUEST_METHOD", "GET")
        request = Request(method, environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", ""), header)
        response = scrape(registry, request, auth)
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", wire_headers(response))
        return [b"" if method == "HEAD" else response.body]

    return metrics_app
