"""OTLP export, configured only from the standard ``OTEL_*`` environment variables.

``otlp_components(resource)`` returns ``([metric readers], [span processors])`` to
hand to a ``MeterProvider`` and a ``TracerProvider``; ``otlp_enabled()`` says
whether the environment asks for OTLP at all. Needs the ``otlp`` extra
(``pip install 'traced-transport[otlp]'``); the exporter packages are imported
only when ``otlp_components`` runs, so ``otlp_enabled`` works without them.

What is read here and what is left to the exporters and the SDK:

- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: comma-separated; unset means
  ``otlp``, ``none`` means nothing for that signal. ``otlp`` (and the Python names
  ``otlp_proto_http`` / ``otlp_proto_grpc``) and ``console`` are built here;
  ``prometheus`` is the scrape endpoint's business (``traced_transport.exporters.sdk``); anything
  else is logged and skipped.
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` and ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL``:
  ``http/protobuf`` (the default, as the specification says) or ``grpc``.
- Endpoint, headers, compression, timeout, certificates, ``OTEL_EXPORTER_OTLP_INSECURE``
  (generic and per-signal), ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``
  (cumulative unless it says otherwise) and
  ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION``: the exporters,
  built with no arguments, read them.
- ``OTEL_METRIC_EXPORT_INTERVAL`` / ``_TIMEOUT``: ``PeriodicExportingMetricReader``;
  ``OTEL_BSP_*``: ``BatchSpanProcessor``; ``OTEL_TRACES_SAMPLER`` / ``_ARG``: the
  ``TracerProvider``'s default sampler; ``OTEL_SERVICE_NAME`` /
  ``OTEL_RESOURCE_ATTRIBUTES``: ``Resource.create()``.
- ``OTEL_SDK_DISABLED=true``: nothing is built.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from typing import Any, Optional

__all__ = ["otlp_components", "otlp_enabled", "exporter_names", "otlp_protocol"]

logger = logging.getLogger(__name__)

EXTRA = "otlp"
INSTALL_HINT = "pip install 'traced-transport[otlp]'"
DEFAULT_PROTOCOL = "http/protobuf"
PROTOCOLS = ("http/protobuf", "grpc")
SIGNALS = ("traces", "metrics")

ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
# Exporter names meaning OTLP; the two Python-specific ones also fix the protocol.
_OTLP_NAMES = {"otlp": None, "otlp_proto_http": "http/protobuf", "otlp_proto_grpc": "grpc"}
# Handled elsewhere (traced_transport.exporters.sdk), so not worth a warning here.
_ELSEWHERE = {"prometheus"}

_MODULES = {
    ("traces", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
    ("traces", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("metrics", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
    ("metrics", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ("traces", "console"): ("opentelemetry.sdk.trace.export", "ConsoleSpanExporter"),
    ("metrics", "console"): ("opentelemetry.sdk.metrics.export", "ConsoleMetricExporter"),
}


def _sdk_disabled(env: Mapping[str, str]) -> bool:
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def exporter_names(signal: str, env: Mapping[str, str] = os.environ) -> list[str]:
    """``OTEL_{TRACES,METRICS}_EXPORTER`` as a list: unset or empty means ``["otlp"]``, ``none`` is dropped."""
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {SIGNALS}, got {signal!r}")
    raw = env.get(f"OTEL_{signal.upper()}_EXPORTER", "")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if not names:
        return ["otlp"]
    return [n for n in names if n != "none"]


def otlp_protocol(signal: str, env: Mapping[str, str] = os.environ, exporter_name: str = "otlp") -> str:
    """The OTLP protocol for ``signal``: the per-signal variable, then the generic one, then ``http/protobuf``."""
    forced = _OTLP_NAMES.get(exporter_name)
    if forced is not None:
        return forced
    var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    value = env.get(var, "").strip() or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
    protocol = value.lower() or DEFAULT_PROTOCOL
    if protocol not in PROTOCOLS:
        where = var if env.get(var, "").strip() else "OTEL_EXPORTER_OTLP_PROTOCOL"
        raise ValueError(
            f"{where}={value!r} is not supported: the Python OTLP exporters speak {' or '.join(PROTOCOLS)}"
        )
    return protocol


def otlp_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """True when the environment asks for OTLP export of traces or metrics.

    That is: an OTLP endpoint variable is set, or ``OTEL_TRACES_EXPORTER`` /
    ``OTEL_METRICS_EXPORTER`` names ``otlp``; and at least one signal still
    exports OTLP (not both ``none``), and ``OTEL_SDK_DISABLED`` is not ``true``.
    """
    if _sdk_disabled(env):
        return False
    asked = any(env.get(var, "").strip() for var in ENDPOINT_VARS) or any(
        name in _OTLP_NAMES
        for signal in SIGNALS
        if env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip()
        for name in exporter_names(signal, env)
    )
    return asked and any(name in _OTLP_NAMES for signal in SIGNALS for name in exporter_names(signal, env))


def _import(module: str, attr: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        missing = exc.name or module
        raise ImportError(
            f"OTLP export needs the {EXTRA!r} extra ({missing} could not be imported): {INSTALL_HINT}",
            name=exc.name,
        ) from exc


def _plan(env: Mapping[str, str]) -> dict[str, list[str]]:
    """Which exporter kind (an OTLP protocol or 'console') each signal gets, validated before anything starts."""
    plan: dict[str, list[str]] = {}
    for signal in SIGNALS:
        kinds: list[str] = []
        for name in exporter_names(signal, env):
            if name in _OTLP_NAMES:
                kind = otlp_protocol(signal, env, name)
            elif name == "console":
                kind = "console"
            else:
                if name not in _ELSEWHERE:
                    logger.warning("OTEL_%s_EXPORTER: exporter %r is not supported here; skipped", signal.upper(), name)
                continue
            if kind not in kinds:
                kinds.append(kind)
        plan[signal] = kinds
    return plan


def otlp_components(resource: Optional[Any] = None, *, metrics: bool = True, traces: bool = True) -> tuple[list, list]:
    """``([metric readers], [span processors])`` configured from the ``OTEL_*`` environment.

    ``metrics=False`` / ``traces=False`` leave that signal out: nothing of it is
    built (a reader nobody attaches would still run its export thread).

    Metrics: one ``PeriodicExportingMetricReader`` per exporter (it starts its
    export thread now, so attach the readers to a ``MeterProvider`` and shut it
    down). Spans: one ``BatchSpanProcessor`` per exporter. ``resource`` (an
    ``opentelemetry.sdk.resources.Resource``) belongs to the providers built
    with these, ``MeterProvider(metric_readers=..., resource=resource)`` and
    ``TracerProvider(resource=resource)``; the exporters take it from there.

    Raises ImportError naming the ``otlp`` extra when the exporters are not
    installed, ValueError for a protocol the exporters do not speak.
    """
    env = os.environ
    if _sdk_disabled(env):
        return [], []
    plan = _plan(env)
    if not metrics:
        plan["metrics"] = []
    if not traces:
        plan["traces"] = []
    # Import everything first: a missing package must not leave a reader thread running.
    reader_cls = (
        _import("opentelemetry.sdk.metrics.export", "PeriodicExportingMetricReader") if plan["metrics"] else None
    )
    processor_cls = _import("opentelemetry.sdk.trace.export", "BatchSpanProcessor") if plan["traces"] else None
    classes = {(s, k): _import(*_MODULES[(s, k)]) for s in SIGNALS for k in plan[s]}
    # Exporters next (no threads yet), then the readers and processors that start theirs.
    metric_exporters = [classes[("metrics", kind)]() for kind in plan["metrics"]]
    span_exporters = [classes[("traces", kind)]() for kind in plan["traces"]]
    return [reader_cls(e) for e in metric_exporters], [processor_cls(e) for e in span_exporters]
