"""The Prometheus side: a scrape endpoint for a ``CollectorRegistry``, and the OTel reader wired to it.

``ScrapeEndpoint(registry, ...).start()`` serves ``registry`` over HTTP(S) from
its own threads, so a scrape never runs on (or waits for) the application's
event loop: the OpenTelemetry collection it triggers reads traced_transport's
registry through a copy taken under its lock.

``prometheus_reader(registry)`` makes an OpenTelemetry ``PrometheusMetricReader``
whose output reaches ``registry`` through :class:`ReaderCollector`, which runs
one collection at a time and keeps the ``otel_scope_*`` labels off every series
unless asked. ``traced_transport.exporters.sdk.setup()`` puts the two together.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import inspect
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterable
from typing import Any, Optional
from urllib.parse import urlsplit

from ._http import Handler, Response, Server, rate_limited

__all__ = ["ScrapeEndpoint", "ReaderCollector", "prometheus_reader", "exposition"]

logger = logging.getLogger("traced_transport.exporters.prometheus")

SCOPE_LABEL_PREFIX = "otel_scope_"
_PLAIN = "text/plain; version=0.0.4; charset=utf-8"


# -- the collector between the OTel reader and the registry ---------------------------------
class ReaderCollector:
    """What goes into the served ``CollectorRegistry`` in place of the reader's own collector.

    - **One collection at a time.** The exporter's collector queues the
      ``MetricsData`` each reader collection produces and renders whatever is
      queued, so two overlapping scrapes (or a ``force_flush`` between two
      scrapes) would render one collection twice: duplicate series, which
      Prometheus rejects. Here collections are serialised and a stale queue
      is dropped first.
    - **No ``otel_scope_*`` labels** unless ``scope_labels=True``: the reader is
      built with ``scope_info_enabled=False`` where the installed exporter has
      that option; for versions without it they are stripped here (unless
      that would make two series of a family identical).
    - **Exemplars** of histogram data points go on their bucket samples
      (:mod:`traced_transport.exporters.exemplars`), which the exporter's own
      collector drops; only the OpenMetrics format renders them.
    """

    def __init__(self, reader: Any, *, scope_labels: bool = False, lock_timeout: float = 30.0) -> None:
        self.reader = reader
        self.inner = reader._collector
        self.scope_labels = scope_labels
        self.lock_timeout = lock_timeout
        self._lock = threading.Lock()
        self._collected: Any = None
        self._capture_collections()

    def _capture_collections(self) -> None:
        # The reader hands each collection's MetricsData to its collector's
        # add_metrics_data: keep a reference to read the exemplars from.
        add = getattr(self.inner, "add_metrics_data", None)
        if add is None:  # pragma: no cover - an exporter without it: no exemplars
            return

        def add_metrics_data(metrics_data: Any) -> None:
            self._collected = metrics_data
            add(metrics_data)

        self.inner.add_metrics_data = add_metrics_data

    def collect(self) -> Iterable[Any]:
        if not self._lock.acquire(timeout=self.lock_timeout):
            raise TimeoutError("another collection has been running for too long")
        try:
            queued = getattr(self.inner, "_metrics_datas", None)
            if queued is not None:
                queued.clear()
            self._collected = None
            families = list(self.inner.collect())
            collected, self._collected = self._collected, None
        finally:
            self._lock.release()
        if not self.scope_labels:
            families = [_strip_scope(f) for f in families]
        return _with_exemplars(families, collected)


def _with_exemplars(families: list, metrics_data: Any) -> list:
    if metrics_data is None:
        return families
    try:
        from . import exemplars

        return exemplars.attach(families, exemplars.index(metrics_data))
    except Exception as exc:  # noqa: BLE001 - a scrape without exemplars rather than none
        rate_limited("exemplars", "scrape endpoint: exemplars left out: %r", exc, exc_info=exc)
        return families


def _strip_scope(family: Any) -> Any:
    samples = family.samples
    if not any(k.startswith(SCOPE_LABEL_PREFIX) for s in samples[:1] for k in s.labels):
        return family
    stripped = []
    seen = set()
    for s in samples:
        labels = {k: v for k, v in s.labels.items() if not k.startswith(SCOPE_LABEL_PREFIX)}
        key = (s.name, tuple(sorted(labels.items())))
        if key in seen:  # two scopes with one metric name: keep the labels that tell them apart
            return family
        seen.add(key)
        stripped.append(s._replace(labels=labels))
    family.samples = stripped
    return family


def prometheus_reader(registry: Any, *, scope_labels: bool = False) -> tuple[Any, ReaderCollector]:
    """``(PrometheusMetricReader, ReaderCollector)``: the reader for a ``MeterProvider``; its output in ``registry``.

    The reader's own collector goes into a private registry (so the reader's
    ``shutdown`` unregisters it from there), and a :class:`ReaderCollector`
    over it into ``registry``; unregister that one when done
    (``registry.unregister(collector)``). Never touches prometheus_client's
    global ``REGISTRY``.
    """
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    params = inspect.signature(PrometheusMetricReader.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "scope_info_enabled" in params:
        kwargs["scope_info_enabled"] = scope_labels
    if "registry" in params:
        reader = PrometheusMetricReader(registry=CollectorRegistry(), **kwargs)
    else:  # older exporters register on the global REGISTRY: take it back out
        from prometheus_client import REGISTRY

        reader = PrometheusMetricReader(**kwargs)
        try:
            REGISTRY.unregister(reader._collector)
        except KeyError:  # pragma: no cover
            pass
        reader._registry = CollectorRegistry()
        reader._registry.register(reader._collector)
    collector = ReaderCollector(reader, scope_labels=scope_labels)
    registry.register(collector)
    return reader, collector


# -- exposition ------------------------------------------------------------------------------
def _choose_encoder(accept: str) -> tuple[Any, str]:
    from prometheus_client.exposition import choose_encoder, generate_latest

    try:
        return choose_encoder(accept)
    except Exception:  # noqa: BLE001 - a malformed Accept header gets the classic text format
        return generate_latest, _PLAIN


def gzip_accepted(accept_encoding: str) -> bool:
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
        body = gzip.compress(body, compresslevel=6)
        headers.append(("Content-Encoding", "gzip"))
    return 200, headers, body


# -- the endpoint --------------------------------------------------------------------------------
def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host.strip("[]")).version == 6 else socket.AF_INET
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    if not infos:  # pragma: no cover
        raise OSError(f"cannot resolve {host!r}")
    return infos[0][0]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class ScrapeEndpoint:
    """A Prometheus scrape endpoint for ``registry`` (a ``prometheus_client`` ``CollectorRegistry``).

    Serves ``GET``/``HEAD`` of ``path`` from its own daemon threads. Binds
    loopback unless ``host`` says otherwise; ``port=0`` picks a free port
    (``.port`` and ``.url`` after ``start()``).

    - ``certfile``/``keyfile``: serve HTTPS (TLS 1.2+). ``client_cafile``: require
      a client certificate signed by one of these CAs.
    - ``basic_auth=(user, password)``: HTTP basic auth, compared in constant
      time; anything else gets ``401`` with ``WWW-Authenticate``. Without TLS
      the password crosses the network in clear: a warning is logged when
      that is off loopback.
    - ``max_connections`` connections are served at once (each on a thread; a
      plaintext client beyond that gets ``503``); ``timeout`` bounds the TLS
      handshake, the whole request head, an idle keep-alive connection and
      the sending of a response.

    ``start()`` raises ``OSError`` at once when the address cannot be bound.
    """

    def __init__(
        self,
        registry: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        path: str = "/metrics",
        certfile: Optional[str] = None,
        keyfile: Optional[str] = None,
        client_cafile: Optional[str] = None,
        basic_auth: Optional[tuple[str, str]] = None,
        max_connections: int = 16,
        timeout: float = 10.0,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        if keyfile is not None and certfile is None:
            raise ValueError("keyfile without certfile")
        if client_cafile is not None and certfile is None:
            raise ValueError("client_cafile (client certificates) needs TLS: pass certfile too")
        if basic_auth is not None:
            user, password = basic_auth
            if ":" in user:
                raise ValueError("a basic-auth user name cannot contain ':'")
            self._auth: Optional[tuple[bytes, bytes]] = (user.encode("utf-8"), password.encode("utf-8"))
        else:
            self._auth = None
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.registry = registry
        self.host = host
        self.path = path
        self.certfile = certfile
        self.keyfile = keyfile
        self.client_cafile = client_cafile
        self.max_connections = max_connections
        self.timeout = timeout
        self._requested_port = port
        self.port: Optional[int] = None
        self._server: Optional[Server] = None
        self._thread: Optional[threading.Thread] = None
        self._state_lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------
    def _ssl_context(self) -> Optional[ssl.SSLContext]:
        if self.certfile is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.certfile, self.keyfile)
        if self.client_cafile is not None:
            ctx.load_verify_locations(cafile=self.client_cafile)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def start(self) -> ScrapeEndpoint:
        with self._state_lock:
            if self._server is not None:
                return self
            ctx = self._ssl_context()
            if self._auth is not None and ctx is None and not _is_loopback(self.host):
                logger.warning(
                    "scrape endpoint on %s uses basic auth without TLS: the password is sent in clear", self.host
                )
            family = _family(self.host)
            try:
                server = Server(
                    (self.host.strip("[]"), self._requested_port),
                    family,
                    self._app,
                    ssl_context=ctx,
                    max_connections=self.max_connections,
                    timeout=self.timeout,
                )
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"scrape endpoint cannot listen on {self.host}:{self._requested_port}: {exc.strerror or exc}",
                ) from exc
            self.port = server.server_address[1]
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"traced-transport-scrape:{self.port}",
                daemon=True,
            )
            self._server = server
            self._thread = thread
            thread.start()
        logger.info("Prometheus scrape endpoint on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end open connections, wait (at most ``timeout``) for their threads. Idempotent."""
        with self._state_lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.stopping = True
        server._stopped.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)
        server.stop_connections(timeout)

    close = stop

    def __enter__(self) -> ScrapeEndpoint:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the endpoint has not been started")
        host = self.host.strip("[]")
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://{host}:{self.port}{self.path}"

    # -- requests ---------------------------------------------------------------
    def _authorized(self, header: Optional[str]) -> bool:
        assert self._auth is not None
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        want_user, want_password = self._auth
        # Both compared, always, in constant time: no early exit telling which one was wrong.
        ok_user = hmac.compare_digest(user, want_user)
        ok_password = hmac.compare_digest(password, want_password)
        return bool(sep) & ok_user & ok_password

    def _app(self, handler: Handler) -> Response:
        if self._auth is not None and not self._authorized(handler.headers.get("Authorization")):
            return Response(
                401, [("WWW-Authenticate", 'Basic realm="metrics", charset="UTF-8"')], b"401 Unauthorized\n"
            )
        try:
            path = urlsplit(handler.path).path
        except ValueError:
            return Response(400, [], b"400 Bad Request\n")
        if path != self.path:
            return Response(404, [], b"404 Not Found\n")
        if handler.command not in ("GET", "HEAD"):
            return Response(405, [("Allow", "GET, HEAD")], b"405 Method Not Allowed\n")
        status, headers, body = exposition(
            self.registry, handler.headers.get("Accept"), handler.headers.get("Accept-Encoding")
        )
        return Response(status, headers, body)

    def render(self, accept: Optional[str] = None, accept_encoding: Optional[str] = None) -> tuple[int, list, bytes]:
        """What a ``GET`` would answer, without HTTP (benchmarks, tests)."""
        return exposition(self.registry, accept, accept_encoding)
