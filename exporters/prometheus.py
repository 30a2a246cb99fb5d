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

import inspect
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any, Optional
from urllib.parse import urlsplit

from ._http import Handler, Response, Server, rate_limited
from .exposition import BasicAuth, Request, exposition, gzip_accepted, scrape
from .options import EndpointOptions

__all__ = ["EndpointOptions", "ScrapeEndpoint", "ReaderCollector", "prometheus_reader", "exposition", "gzip_accepted"]

logger = logging.getLogger("traced_transport.exporters.prometheus")

SCOPE_LABEL_PREFIX = "otel_scope_"

# A route answers one path of the endpoint: Request in, Response out (after basic auth).
Route = Callable[[Request], Response]


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

    Serves ``GET``/``HEAD`` of ``path`` from its own daemon threads. The options are
    the fields of :class:`~traced_transport.exporters.options.EndpointOptions`, given as
    ``options=`` or as keywords (``ScrapeEndpoint(registry, port=0, basic_auth=("u", "p"))``):
    loopback unless ``host`` says otherwise; ``port=0`` picks a free port (``.port``
    and ``.url`` after ``start()``).

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

    The answer is the one of :func:`traced_transport.exporters.exposition.scrape`,
    which the mountable apps (``traced_transport.exporters.mount``) give too: gzip
    when the scraper accepts it, OpenMetrics when it asks for it.

    ``routes`` maps a path to a :data:`Route` (``Request -> Response``); basic auth
    applies to every route. Another path is added with ``endpoint.routes["/x"] = fn``
    (before or after ``start()``).

    ``connections=True`` (or a ``traced_transport.Registry``) also serves
    ``/connections``, the live-connections view (``connections_page``); off by
    default, and refused (``ValueError``) off loopback without basic auth or
    client certificates.

    ``start()`` raises ``OSError`` at once when the address cannot be bound.
    """

    def __init__(
        self, registry: Any, options: Optional[EndpointOptions] = None, *, connections: Any = None, **changes: Any
    ) -> None:
        opts = (options or EndpointOptions()).with_(**changes)
        self.options = opts
        self._auth = BasicAuth.of(opts.basic_auth)
        self.registry = registry
        self.host = opts.host
        self.path = opts.path
        self.certfile = opts.certfile
        self.keyfile = opts.keyfile
        self.client_cafile = opts.client_cafile
        self.max_connections = opts.max_connections
        self.timeout = opts.timeout
        self._requested_port = opts.port
        # /connections (exporters/connections_page.py): off unless asked for, and guarded off loopback.
        self.connections: Any = None
        if connections:
            from . import connections_page

            connections_page.check_exposure(opts.host, basic_auth=opts.basic_auth, client_cafile=opts.client_cafile)
            self.connections = connections_page.source_for(connections)
        self.port: Optional[int] = None
        self.routes: dict[str, Route] = {opts.path: self._metrics}
        if self.connections is not None and opts.path != "/connections":
            self.routes["/connections"] = self._connections
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
    def _app(self, handler: Handler) -> Response:
        if self._auth is not None and not self._auth.check(handler.headers.get("Authorization")):
            return self._auth.challenge()
        try:
            parts = urlsplit(handler.path)
        except ValueError:
            return Response(400, [], b"400 Bad Request\n")
        request = Request(handler.command, parts.path, parts.query, handler.headers.get)
        route = self.routes.get(request.path)
        if route is None:
            return Response(404, [], b"404 Not Found\n")
        return route(request)

    def _metrics(self, request: Request) -> Response:
        return scrape(self.registry, request)

    def _connections(self, request: Request) -> Response:
        from .connections_page import respond

        target = f"{request.path}?{request.query}" if request.query else request.path
        return Response(*respond(self.connections, target, request.header("Accept"), request.method))

    def render(self, accept: Optional[str] = None, accept_encoding: Optional[str] = None) -> tuple[int, list, bytes]:
        """What a ``GET`` would answer, without HTTP (benchmarks, tests)."""
        return exposition(self.registry, accept, accept_encoding)
