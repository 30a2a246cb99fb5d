"""uvicorn: a traced HTTP protocol class, for ``Config(http=...)`` and ``--http``.

    uvicorn.run(app, http=traced_transport.uvicorn.http("h11", name="api"))
    uvicorn app:app --http traced_transport.uvicorn:httptools        # CLI, name "http"

``http(kind)`` returns a callable that uvicorn uses where it would use its own
protocol class (``kind``: ``"auto"``, ``"h11"``, ``"httptools"`` or an import
string): every connection is traced on the server side as ``name``; WebSocket
upgrades stay on the same traced connection. It is picklable, so it crosses
into the worker processes of ``--workers``/``workers=`` (with ``observer`` and
``registry`` left at their defaults, each worker exports through its own
OpenTelemetry set-up; under ``traced-transport run`` that is the multi-worker
exporter). uvicorn is imported only when the first connection comes in.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

from ..loops.factory import traced

__all__ = ["TracedHTTP", "http", "auto", "h11", "httptools"]

# uvicorn's own names (uvicorn.config.HTTP_PROTOCOLS) for its protocol classes.
_KINDS = {
    "auto": "uvicorn.protocols.http.auto:AutoHTTPProtocol",
    "h11": "uvicorn.protocols.http.h11_impl:H11Protocol",
    "httptools": "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol",
}


def _load(spec: str) -> Any:
    module, _, attr = _KINDS.get(spec, spec).partition(":")
    return getattr(importlib.import_module(module), attr)


class TracedHTTP:
    """Stands in for a uvicorn HTTP protocol class; calling it makes a traced connection."""

    def __init__(self, kind: str = "auto", *, name: str = "http", observer: Any = None, registry: Any = None) -> None:
        if not isinstance(kind, str):
            raise TypeError("kind must be 'auto', 'h11', 'httptools' or an import string 'module:Class'")
        self.kind = kind
        self.name = name
        self.observer = observer
        self.registry = registry
        self._factory: Optional[Any] = None

    @property
    def protocol_class(self) -> Any:
        return _load(self.kind)

    @property
    def alpn_protocols(self) -> Any:  # uvicorn reads this off the class it is given
        return getattr(self.protocol_class, "alpn_protocols", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        factory = self._factory
        if factory is None:  # first connection in this process: the default telemetry is this process's
            factory = self._factory = traced(
                self.protocol_class, name=self.name, side="server", observer=self.observer, registry=self.registry
            )
        return factory(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "observer": self.observer,
            "registry": self.registry,
            "_factory": None,
        }

    def __repr__(self) -> str:
        return f"<traced uvicorn http {self.kind!r} name={self.name!r}>"


def http(kind: str = "auto", *, name: str = "http", observer: Any = None, registry: Any = None) -> TracedHTTP:
    """What to pass as uvicorn's ``http=``: its ``kind`` protocol, traced as ``name``."""
    return TracedHTTP(kind, name=name, observer=observer, registry=registry)


# For the command line: --http traced_transport.uvicorn:h11 (transport.name "http").
auto = TracedHTTP("auto")
h11 = TracedHTTP("h11")
httptools = TracedHTTP("httptools")
