"""The OpenTelemetry instrumentor, so ``opentelemetry-instrument python app.py`` traces transports.

Registered under the ``opentelemetry_instrumentor`` entry point. The SDK is
whatever ``opentelemetry-instrument`` configured (from the OTEL_* variables);
this only installs the loop hooks.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

import traced_transport

_OPTIONS = ("server_name", "client_name", "pipes", "observer", "registry")


class TracedTransportInstrumentor(BaseInstrumentor):
    """``TracedTransportInstrumentor().instrument(server_name=..., client_name=..., pipes=...)``."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()  # asyncio is always there; uvloop is hooked when installed

    def _instrument(self, **kwargs: Any) -> None:
        traced_transport.instrument(**{k: v for k, v in kwargs.items() if k in _OPTIONS})

    def _uninstrument(self, **kwargs: Any) -> None:
        traced_transport.uninstrument()
