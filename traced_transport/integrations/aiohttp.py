"""aiohttp: servers (``run_app``, ``AppRunner``) and the client (``TCPConnector``), traced.

    traced_transport.aiohttp.run_app(app, port=8080, name="http")       # instead of web.run_app
    runner = traced_transport.aiohttp.AppRunner(app, name="http")       # instead of web.AppRunner
    session = aiohttp.ClientSession(connector=traced_transport.aiohttp.TCPConnector(name="upstream"))

Each takes the same arguments as aiohttp's own, plus ``name`` (and ``observer``,
``registry``). Static files are served with ``loop.sendfile``; their bytes are
counted (on uvloop, which has no sendfile, aiohttp falls back to ``write()``).
"""

from __future__ import annotations

from typing import Any, Optional

from aiohttp import TCPConnector as _TCPConnector
from aiohttp import web

from ..loops.factory import traced
from ..loops.instrument import tracing

__all__ = ["AppRunner", "TCPConnector", "run_app"]


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose sites (``TCPSite``, ``UnixSite``, ``SockSite``) serve traced connections."""

    def __init__(
        self, app: web.Application, *, name: str = "http", observer: Any = None, registry: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._traced = (name, observer, registry)
        self._traced_server: Optional[Any] = None

    @property
    def server(self) -> Any:
        # What the sites hand to loop.create_server; the runner itself keeps
        # using aiohttp's Server (self._server) for shutdown and connections.
        real = self._server
        if real is None:
            return None
        factory = self._traced_server
        if factory is None or factory.protocol_factory is not real:
            name, observer, registry = self._traced
            factory = self._traced_server = traced(real, name=name, side="server", observer=observer, registry=registry)
        return factory


def run_app(
    app: Any,
    *,
    name: str = "http",
    client_name: Optional[str] = None,
    observer: Any = None,
    registry: Any = None,
    **kwargs: Any,
) -> None:
    """``web.run_app(app, **kwargs)`` with its listeners traced as ``name``.

    ``client_name`` also traces the outgoing connections the app makes (side ``client``)."""
    with tracing(server_name=name, client_name=client_name, observer=observer, registry=registry):
        web.run_app(app, **kwargs)


class TCPConnector(_TCPConnector):
    """``aiohttp.TCPConnector`` whose new connections are traced (side ``client``) as ``name``."""

    def __init__(
        self, *args: Any, name: str = "http-client", observer: Any = None, registry: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._traced = dict(client_name=name, observer=observer, registry=registry)

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        with tracing(**self._traced):
            return await super().connect(req, traces, timeout)
