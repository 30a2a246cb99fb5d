"""Serving the sum: a fresh registry with the :class:`AggregatingCollector`, on a scrape endpoint."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Optional

from ..options import EndpointOptions
from ..prometheus import ScrapeEndpoint
from .collector import AggregatingCollector


class Aggregator:
    """What :func:`serve` started: ``collector``, ``registry``, ``endpoint`` (``.url``, ``.port``); ``close()``."""

    def __init__(self, collector: AggregatingCollector, registry: Any, endpoint: Any) -> None:
        self.collector = collector
        self.registry = registry
        self.endpoint = endpoint

    @property
    def port(self) -> Optional[int]:
        return getattr(self.endpoint, "port", None)

    @property
    def url(self) -> Optional[str]:
        return getattr(self.endpoint, "url", None)

    def close(self) -> None:
        stop = getattr(self.endpoint, "stop", None) or getattr(self.endpoint, "close", None)
        if stop is not None:
            stop()
        with contextlib.suppress(KeyError):
            self.registry.unregister(self.collector)

    def __enter__(self) -> Aggregator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(
    directory: str,
    host: Optional[str] = None,
    port: Optional[int] = None,
    *,
    scope_labels: bool = False,
    target_info: bool = True,
    compact: bool = True,
    connections: bool = False,
    options: Optional[EndpointOptions] = None,
    **endpoint_kwargs: Any,
) -> Aggregator:
    """Serve the sum of the workers writing to ``directory`` on a scrape endpoint.

    A fresh ``CollectorRegistry`` holds only the :class:`AggregatingCollector`.
    The endpoint's options are ``options`` (an
    :class:`~traced_transport.exporters.options.EndpointOptions`; loopback, port 9464
    by default) with ``host``, ``port`` and ``endpoint_kwargs`` (its other fields:
    ``path``, ``certfile``, ``basic_auth``, ...) applied over it when given.
    ``port=0`` picks a free port (``.port``). ``connections=True`` serves
    ``/connections`` over the rows the workers write (start them with ``connections=True``).
    """
    from prometheus_client import CollectorRegistry

    os.makedirs(directory, exist_ok=True)
    collector = AggregatingCollector(directory, scope_labels=scope_labels, target_info=target_info, compact=compact)
    registry = CollectorRegistry()
    registry.register(collector)
    changes = dict(endpoint_kwargs)
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    if connections:
        from ..connections import WorkerFilesConnections

        changes["connections"] = WorkerFilesConnections(collector)
    endpoint = ScrapeEndpoint(registry, options, **changes).start()
    return Aggregator(collector, registry, endpoint)
