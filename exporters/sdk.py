"""One call to set up the OpenTelemetry SDK for traced_transport: Prometheus scrape endpoint, OTLP, spans.

    from traced_transport.exporters import sdk
    setup = sdk.setup(service_name="my-service")   # http://127.0.0.1:9464/metrics
    ...
    setup.shutdown()

What ``setup()`` builds:

- a ``Resource`` from ``Resource.create()``, so ``OTEL_SERVICE_NAME`` and
  ``OTEL_RESOURCE_ATTRIBUTES`` apply. ``service_name`` is a default: the
  environment's ``service.name`` wins over it. ``resource_attributes`` win over the
  environment (as in ``Resource.create``). ``service.instance.id`` is always set
  (a UUID unless the environment names one);
- with ``metrics``: a ``MeterProvider`` whose ``PrometheusMetricReader`` renders
  into a dedicated ``CollectorRegistry`` (``Setup.prometheus_registry``, never
  prometheus_client's global one), without ``otel_scope_*`` labels unless
  ``scope_labels=True``; ``target_info`` carries the resource. With ``endpoint``
  a :class:`~traced_transport.exporters.prometheus.ScrapeEndpoint` serves it (loopback and port
  9464 unless told otherwise; TLS, client certificates and basic auth optional);
- with ``traces``: a ``TracerProvider`` (its sampler from ``OTEL_TRACES_SAMPLER`` /
  ``OTEL_TRACES_SAMPLER_ARG``, as the SDK does by default);
- OTLP readers and span processors from ``traced_transport.exporters.otlp.otlp_components()``
  when ``otlp`` is True, or when it is None and the environment asks for OTLP
  (``OTEL_EXPORTER_OTLP_ENDPOINT`` or a per-signal endpoint, or
  ``OTEL_{TRACES,METRICS}_EXPORTER`` naming ``otlp``).

**Global providers.** The providers become OpenTelemetry's global ones, so
``traced()`` with no ``observer``/``registry`` (and every other instrumentation)
exports through them, *unless the application already set its own*: the
OpenTelemetry API allows a global provider to be set once, and an app's choice
is never overridden. Then a warning is logged, ``Setup.global_meter_provider`` /
``Setup.global_tracer_provider`` are False and the providers built here are
still returned, e.g. for ``traced_transport.Telemetry(meter_provider=setup.meter_provider)``.
``set_global=False`` never touches the globals.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Optional

from .options import EndpointOptions
from .prometheus import ScrapeEndpoint, prometheus_reader

__all__ = ["Setup", "setup"]

logger = logging.getLogger("traced_transport.exporters.sdk")

SERVICE_NAME = "service.name"
SERVICE_INSTANCE_ID = "service.instance.id"
_OTLP_ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


class Setup:
    """What ``setup()`` built. ``shutdown()`` stops the endpoint and flushes and shuts down the providers."""

    def __init__(
        self,
        *,
        resource: Any,
        meter_provider: Any,
        tracer_provider: Any,
        endpoint: Optional[ScrapeEndpoint],
        prometheus_registry: Any,
        collector: Any,
        global_meter_provider: bool,
        global_tracer_provider: bool,
        otlp: bool,
        metric_readers: Optional[list] = None,
    ) -> None:
        self.resource = resource
        self.meter_provider = meter_provider
        self.tracer_provider = tracer_provider
        self.endpoint = endpoint
        self.prometheus_registry = prometheus_registry
        self.global_meter_provider = global_meter_provider
        self.global_tracer_provider = global_tracer_provider
        self.otlp = otlp
        self._collector = collector
        self.metric_readers: list = list(metric_readers or [])
        self._attached: list = []
        self._lock = threading.Lock()
        self._shut = False
        atexit.register(self.shutdown)

    @property
    def url(self) -> Optional[str]:
        return self.endpoint.url if self.endpoint is not None else None

    def attach(self, telemetry: Any = None) -> None:
        """Let every reader built here collect ``telemetry``'s histograms directly (see ``traced_transport.exporters.histograms``).

        ``setup()`` does it for the default Telemetry when its provider became the
        global one; call it for a ``Telemetry(meter_provider=setup.meter_provider)`` of your own.
        """
        from . import histograms

        if telemetry is None:
            from traced_transport import default_telemetry

            telemetry = default_telemetry()
        for reader in self.metric_readers:
            histograms.attach(reader, telemetry)
        self._attached.append(telemetry)

    def shutdown(self) -> None:
        """Idempotent. Global providers stay registered (the API cannot unset them), shut down."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
        atexit.unregister(self.shutdown)
        if self._attached:
            from . import histograms

            for telemetry in self._attached:
                for reader in self.metric_readers:
                    _quietly("detach histograms", histograms.detach, reader, telemetry)
        if self.endpoint is not None:
            _quietly("scrape endpoint stop", self.endpoint.stop)
        if self.prometheus_registry is not None and self._collector is not None:
            _quietly("unregister collector", self.prometheus_registry.unregister, self._collector)
        if self.tracer_provider is not None:
            _quietly("tracer provider shutdown", self.tracer_provider.shutdown)
        if self.meter_provider is not None:
            _quietly("meter provider shutdown", self.meter_provider.shutdown)

    def __enter__(self) -> Setup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return (
            f"Setup(endpoint={self.url!r}, metrics={self.meter_provider is not None}, "
            f"traces={self.tracer_provider is not None}, otlp={self.otlp})"
        )


def _quietly(what: str, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        logger.warning("traced_transport.exporters.sdk: %s failed", what, exc_info=True)


def make_resource(service_name: Optional[str] = None, resource_attributes: Optional[Mapping[str, Any]] = None) -> Any:
    """The ``Resource`` ``setup()`` uses (see the module docstring for precedence)."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    resource = Resource.create(dict(resource_attributes or {}))
    extra: dict[str, Any] = {}
    if service_name and not (resource_attributes and SERVICE_NAME in resource_attributes):
        try:
            env_has_name = SERVICE_NAME in OTELResourceDetector().detect().attributes
        except Exception:  # noqa: BLE001
            env_has_name = False
        if not env_has_name:
            extra[SERVICE_NAME] = service_name
    if not resource.attributes.get(SERVICE_INSTANCE_ID):  # older SDKs do not set it
        extra[SERVICE_INSTANCE_ID] = str(uuid.uuid4())
    if extra:
        resource = resource.merge(Resource(extra))
    return resource


def _otlp_wanted(otlp: Optional[bool], env: Mapping[str, str]) -> bool:
    if otlp is not None:
        return bool(otlp)
    try:
        from .otlp import otlp_enabled
    except ImportError:
        return any(env.get(v, "").strip() for v in _OTLP_ENDPOINT_VARS)
    return otlp_enabled(env)


def _otlp_parts(
    otlp: Optional[bool], resource: Any, *, metrics: bool = True, traces: bool = True
) -> tuple[list, list, bool]:
    if not _otlp_wanted(otlp, os.environ):
        return [], [], False
    try:
        module = importlib.import_module("traced_transport.exporters.otlp")
    except ModuleNotFoundError as exc:
        if exc.name not in ("traced_transport.exporters.otlp",):
            raise
        logger.warning(
            "traced_transport.exporters.sdk: OTLP export asked for, but traced_transport.exporters.otlp is not available; skipped"
        )
        return [], [], False
    try:
        readers, processors = module.otlp_components(resource, metrics=metrics, traces=traces)
    except ImportError as exc:
        if otlp:  # asked for in code: say so loudly
            raise
        logger.warning(
            "traced_transport.exporters.sdk: the environment asks for OTLP export, which is skipped: %s", exc
        )
        return [], [], False
    return list(readers), list(processors), True


def _provider_already_set(kind: str) -> Optional[bool]:
    """Whether the app set a global provider (None when this API version hides it)."""
    try:
        if kind == "metrics":
            # No public way to ask: the proxy the API hands out before one is set is a private class.
            from opentelemetry.metrics import _internal as api

            return api._METER_PROVIDER is not None
        from opentelemetry import trace

        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    except (ImportError, AttributeError):  # pragma: no cover - API internals moved
        return None


def _set_global(kind: str, provider: Any) -> bool:
    from opentelemetry import metrics, trace

    already = _provider_already_set(kind)
    if already:
        current = metrics.get_meter_provider() if kind == "metrics" else trace.get_tracer_provider()
        logger.warning(
            "traced_transport.exporters.sdk: a global %s provider (%s) is already set by the application; it is left alone, and "
            "setup()'s own provider is returned in Setup but not global",
            kind,
            type(current).__name__,
        )
        return False
    if kind == "metrics":
        metrics.set_meter_provider(provider)
        return metrics.get_meter_provider() is provider
    trace.set_tracer_provider(provider)
    return trace.get_tracer_provider() is provider


def setup(
    *,
    service_name: Optional[str] = None,
    metrics: bool = True,
    traces: bool = True,
    endpoint: bool | EndpointOptions = True,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 9464,
    certfile: Optional[str] = None,
    keyfile: Optional[str] = None,
    client_cafile: Optional[str] = None,
    basic_auth: Optional[tuple[str, str]] = None,
    scope_labels: bool = False,
    otlp: Optional[bool] = None,
    resource_attributes: Optional[Mapping[str, Any]] = None,
    set_global: bool = True,
    connections: Any = False,
) -> Setup:
    """Build the providers, start the scrape endpoint, make them global; see the module docstring.

    ``endpoint`` is True (serve with ``metrics_host``, ``metrics_port``, ``certfile``,
    ``keyfile``, ``client_cafile`` and ``basic_auth``, shorthands for the fields of
    :class:`~traced_transport.exporters.options.EndpointOptions`), an ``EndpointOptions``
    (every option; the shorthands are then ignored), or False (no endpoint: serve
    ``Setup.prometheus_registry`` yourself, e.g. with ``traced_transport.exporters.mount``).

    Raises ``OSError`` when the endpoint cannot listen (port taken): then
    nothing is left running and no global provider is set. ``connections=True``
    also serves ``/connections``, the live-connections view (docs/live-view.md).
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    resource = make_resource(service_name, resource_attributes)
    otlp_readers, otlp_processors, otlp_on = _otlp_parts(otlp, resource, metrics=metrics, traces=traces)

    meter_provider = tracer_provider = prom_registry = collector = scrape = None
    try:
        if metrics:
            from prometheus_client import CollectorRegistry

            prom_registry = CollectorRegistry(auto_describe=False)
            reader, collector = prometheus_reader(prom_registry, scope_labels=scope_labels)
            meter_provider = MeterProvider(
                metric_readers=[reader, *otlp_readers], resource=resource, shutdown_on_exit=False
            )  # Setup's own atexit hook does it
        if traces:
            tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            for p in otlp_processors:
                tracer_provider.add_span_processor(p)
        if endpoint and prom_registry is not None:
            if isinstance(endpoint, EndpointOptions):
                options = endpoint
            else:
                options = EndpointOptions(
                    host=metrics_host,
                    port=metrics_port,
                    certfile=certfile,
                    keyfile=keyfile,
                    client_cafile=client_cafile,
                    basic_auth=basic_auth,
                )
            scrape = ScrapeEndpoint(prom_registry, options, connections=connections).start()
    except BaseException:
        if tracer_provider is not None:
            _quietly("tracer provider shutdown", tracer_provider.shutdown)
        if meter_provider is not None:
            _quietly("meter provider shutdown", meter_provider.shutdown)
        raise

    global_meter = global_tracer = False
    if set_global:
        if meter_provider is not None:
            global_meter = _set_global("metrics", meter_provider)
        if tracer_provider is not None:
            global_tracer = _set_global("traces", tracer_provider)
    built = Setup(
        resource=resource,
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
        endpoint=scrape,
        prometheus_registry=prom_registry,
        collector=collector,
        global_meter_provider=global_meter,
        global_tracer_provider=global_tracer,
        otlp=otlp_on,
        metric_readers=[reader, *otlp_readers] if meter_provider is not None else None,
    )
    if global_meter:
        # traced() with no observer records into the default Telemetry, over the
        # global provider, which is now ours: its histograms go to our readers directly.
        built.attach()
    return built
