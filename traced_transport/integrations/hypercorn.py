"""hypercorn (asyncio worker): ``serve()`` with every connection traced.

    await traced_transport.hypercorn.serve(app, config, name="http")

Same arguments as ``hypercorn.asyncio.serve``; the listeners it creates (TCP and
TLS, HTTP/1.1, HTTP/2 by ALPN, WebSockets) are traced on the server side as
``name``. hypercorn creates its protocol factories inside ``asyncio.start_server``,
so this runs it inside :func:`traced_transport.tracing`; outgoing connections
the app makes are traced too when ``client_name`` is given.
"""

from __future__ import annotations

from typing import Any, Optional

from ..loops.instrument import tracing

__all__ = ["serve"]


async def serve(
    app: Any,
    config: Any,
    *,
    name: str = "http",
    client_name: Optional[str] = None,
    observer: Any = None,
    registry: Any = None,
    **kwargs: Any,
) -> None:
    """``hypercorn.asyncio.serve(app, config, **kwargs)``, traced."""
    from hypercorn.asyncio import serve as hypercorn_serve

    with tracing(server_name=name, client_name=client_name, observer=observer, registry=registry):
        await hypercorn_serve(app, config, **kwargs)
