"""What a scrape answers, independent of the HTTP server that carries it.

The built-in endpoint (:class:`~traced_transport.exporters.prometheus.ScrapeEndpoint`)
and the mountable apps (``traced_transport.exporters.mount``: WSGI, ASGI, aiohttp)
all answer through :func:`scrape`, so every one of them gives the same bytes for the
same registry, with the same basic auth, content negotiation (Prometheus text or
OpenMetrics, from ``Accept``) and gzip (from ``Accept-Encoding``). An adapter only
moves a :class:`Request` in and a :class:`Response` out.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from ._http import Response, rate_limited

__all__ = ["BasicAuth", "Request", "Response", "exposition", "gzip_accepted", "registry_of", "scrape", "wire_headers"]

PLAIN = "text/plain; version=0.0.4; charset=utf-8"
_ERROR_TYPE = "text/plain; charset=utf-8"
# Compression is cheap next to the collection, and a scrape of many series shrinks
# several-fold; above this level the gain is small and the CPU is not.
_GZIP_LEVEL = 6


@dataclass(frozen=True)
class Request:
    """One HTTP request as every adapter sees it: method, path (no query), query string, a header getter."""

    method: str
    path: str
    query: str
    header: Callable[[str], Optional[str]]


class BasicAuth:
    """HTTP basic auth for one user; both user and password compared in constant time."""

    def __init__(self, user: str, password: str) -> None:
        if ":" in user:
            raise ValueError("a basic-auth user name cannot contain ':'")
        self._user = user.encode("utf-8")
        self._password = password.encode("utf-8")

    @classmethod
    def of(cls, value: Optional[tuple[str, str] | BasicAuth]) -> Optional[BasicAuth]:
        if value is None or isinstance(value, BasicAuth):
            return value
        user, password = value
        return cls(user, password)

    def check(self, authorization: Optional[str]) -> bool:
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        # Both compared, always: no early exit telling which one was wrong.
        ok_user = hmac.compare_digest(user, self._user)
        ok_password = hmac.compare_digest(password, self._password)
        return bool(sep) & ok_user & ok_password

    @staticmethod
    def challenge() -> Response:
        return Response(401, [("WWW-Authenticate", 'Basic realm="metrics", charset="UTF-8"')], b"401 Unauthorized\n")

    def __repr__(self) -> str:
        return "BasicAuth(<hidden>)"


def registry_of(source: Any) -> Any:
    """The ``CollectorRegistry`` behind ``source``: a registry, a ``sdk.Setup`` or a ``multiworker.Aggregator``."""
    registry = getattr(source, "prometheus_registry", None)
    if registry is None and hasattr(source, "collector") and hasattr(source, "registry"):
        registry = source.registry
    if registry is None:
        registry = source
    if not hasattr(registry, "collect"):
        raise TypeError(f"not a prometheus_client CollectorRegistry (nor a Setup or Aggregator): {source!r}")
    return registry


def _choose_encoder(accept: str) -> tuple[Any, str]:
    from prometheus_client.exposition import choose_encoder, generate_latest

    try:
        return choose_encoder(accept)
    except Exception:  # noqa: BLE001 - a malformed Accept header gets the classic text format
        return generate_latest, PLAIN


def gzip_accepted(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``q=0`` refuses it)."""
    for part in (accept_encoding or "").split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() not in ("gzip", "x-gzip"):
            continue
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def exposition(
    registry: Any, accept: Optional[str] = None, accept_encoding: Optional[str] = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` of a scrape of ``registry``, content-negotiated as prometheus_client does.

    OpenMetrics when ``accept`` asks for ``application/openmetrics-text``, the
    Prometheus text format otherwise; gzip when ``accept_encoding`` allows it.
    A collector that raises gives ``500`` with a short body (and a rate-limited
    log record), never a traceback.
    """
    encoder, content_type = _choose_encoder(accept or "")
    try:
        body = encoder(registry)
    except Exception as exc:  # noqa: BLE001
        rate_limited("collect", "scrape endpoint: collection failed: %r", exc, exc_info=exc)
        return 500, [], b"500 Internal Server Error: collection failed\n"
    headers = [("Content-Type", content_type), ("Cache-Control", "no-store"), ("Vary", "Accept, Accept-Encoding")]
    if gzip_accepted(accept_encoding or ""):
        body = gzip.compress(body, compresslevel=_GZIP_LEVEL)
        headers.append(("Content-Encoding", "gzip"))
    return 200, headers, body


def scrape(registry: Any, request: Request, auth: Optional[BasicAuth] = None) -> Response:
    """The answer to ``request`` for the metrics of ``registry``: 401 without the credentials, 405 unless GET/HEAD."""
    if auth is not None and not auth.check(request.header("Authorization")):
        return auth.challenge()
    if request.method not in ("GET", "HEAD"):
        return Response(405, [("Allow", "GET, HEAD")], b"405 Method Not Allowed\n")
    status, headers, body = exposition(registry, request.header("Accept"), request.header("Accept-Encoding"))
    return Response(status, headers, body)


def wire_headers(response: Response) -> list[tuple[str, str]]:
    """The headers an adapter sends: the response's, a plain-text type on errors, and ``Content-Length``.

    The built-in server adds the same itself (its error path is shared with
    requests it cannot parse).
    """
    headers = list(response.headers)
    if response.status >= 400:
        headers += [("Content-Type", _ERROR_TYPE), ("X-Content-Type-Options", "nosniff")]
    headers.append(("Content-Length", str(len(response.body))))
    return headers
