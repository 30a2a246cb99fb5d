"""asyncio streams in one line: the ``asyncio.start_server`` family, traced.

These mirror asyncio's own helpers (same arguments, same return values); the
only difference is that the protocol factory goes through ``traced()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Optional

from ..datapath.record import Observer
from ..datapath.registry import Registry
from .factory import traced

_LIMIT = 2**16  # asyncio.streams._DEFAULT_LIMIT


def _reader_protocol_factory(
    loop: asyncio.AbstractEventLoop, limit: int, client_connected_cb: Optional[Callable[..., Any]] = None
) -> Callable[[], asyncio.StreamReaderProtocol]:
    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return factory


async def start_server(
    client_connected_cb: Callable[..., Any],
    host: Any = None,
    port: Any = None,
    *,
    name: str = "streams",
    limit: int = _LIMIT,
    registry: Optional[Registry] = None,
    observer: Optional[Observer] = None,
    **kwds: Any,
) -> asyncio.AbstractServer:
    """Like ``asyncio.start_server``, with every connection traced (side ``server``)."""
    loop = asyncio.get_running_loop()
    factory = traced(
        _reader_protocol_factory(loop, limit, client_connected_cb),
        name=name,
        side="server",
        registry=registry,
        observer=observer,
    )
    return await loop.create_server(factory, host, port, **kwds)


async def start_unix_server(
    client_connected_cb: Callable[..., Any],
    path: Any = None,
    *,
    name: str = "streams",
    limit: int = _LIMIT,
    registry: Optional[Registry] = None,
    observer: Optional[Observer] = None,
    **kwds: Any,
) -> asyncio.AbstractServer:
    """Like ``asyncio.start_unix_server``, traced."""
    loop = asyncio.get_running_loop()
    factory = traced(
        _reader_protocol_factory(loop, limit, client_connected_cb),
        name=name,
        side="server",
        registry=registry,
        observer=observer,
    )
    return await loop.create_unix_server(factory, path, **kwds)


async def _open(
    connect: str,
    args: tuple[Any, ...],
    name: str,
    limit: int,
    registry: Optional[Registry],
    observer: Optional[Observer],
    kwds: dict[str, Any],
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    # asyncio.open_connection's own steps, with the factory traced.
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    factory = traced(lambda: protocol, name=name, side="client", registry=registry, observer=observer)
    transport, _ = await getattr(loop, connect)(factory, *args, **kwds)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def open_connection(
    host: Any = None,
    port: Any = None,
    *,
    name: str = "streams",
    limit: int = _LIMIT,
    registry: Optional[Registry] = None,
    observer: Optional[Observer] = None,
    **kwds: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_connection``, traced (side ``client``)."""
    return await _open("create_connection", (host, port), name, limit, registry, observer, kwds)


async def open_unix_connection(
    path: Any = None,
    *,
    name: str = "streams",
    limit: int = _LIMIT,
    registry: Optional[Registry] = None,
    observer: Optional[Observer] = None,
    **kwds: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_unix_connection``, traced (side ``client``)."""
    return await _open("create_unix_connection", (path,), name, limit, registry, observer, kwds)
