"""websockets (the asyncio implementation, ``websockets.asyncio.server``): ``serve()``, traced.

    async with traced_transport.websockets.serve(handler, "127.0.0.1", 8765, name="ws") as server:
        await server.serve_forever()

Same arguments as ``websockets.asyncio.server.serve`` (and the same ``Server``
back, usable with ``await`` or ``async with``); each connection is traced on the
server side as ``name`` from its TCP accept, so the HTTP upgrade, every frame and
the closing handshake are counted, and flow control (``write_limit``, a client
that stops reading) shows up as writing pauses. ``connect()`` does the same for
clients (side ``client``).
"""

from __future__ import annotations

from typing import Any, Optional

from ..loops.instrument import tracing

__all__ = ["serve", "unix_serve", "connect"]


def _scoped(server: Any, kwargs: dict[str, Any]) -> Any:
    create_server = server.create_server
    if callable(create_server):  # websockets >= 17: called when the server starts

        async def traced_create_server() -> Any:
            with tracing(**kwargs):
                return await create_server()

        server.create_server = traced_create_server
    else:
        # Older releases make the loop call's coroutine in serve() and await it when the server starts; the
        # loop hook reads the tracing scope only then, so await it inside one.
        async def traced_await() -> Any:
            with tracing(**kwargs):
                return await create_server

        server.create_server = traced_await()
    return server


def serve(
    handler: Any,
    host: Any = None,
    port: Any = None,
    *,
    name: str = "websocket",
    client_name: Optional[str] = None,
    observer: Any = None,
    registry: Any = None,
    **kwargs: Any,
) -> Any:
    """``websockets.asyncio.server.serve(handler, host, port, **kwargs)``, traced as ``name``."""
    from websockets.asyncio.server import serve as ws_serve

    return _scoped(
        ws_serve(handler, host, port, **kwargs),
        dict(server_name=name, client_name=client_name, observer=observer, registry=registry),
    )


def unix_serve(
    handler: Any,
    path: Any = None,
    *,
    name: str = "websocket",
    observer: Any = None,
    registry: Any = None,
    **kwargs: Any,
) -> Any:
    """``websockets.asyncio.server.unix_serve``, traced."""
    from websockets.asyncio.server import unix_serve as ws_unix_serve

    return _scoped(ws_unix_serve(handler, path, **kwargs), dict(server_name=name, observer=observer, registry=registry))


async def connect(
    uri: str, *, name: str = "websocket-client", observer: Any = None, registry: Any = None, **kwargs: Any
) -> Any:
    """``await websockets.asyncio.client.connect(uri, **kwargs)``, the connection traced (side ``client``)."""
    from websockets.asyncio.client import connect as ws_connect

    with tracing(client_name=name, observer=observer, registry=registry):
        return await ws_connect(uri, **kwargs)
