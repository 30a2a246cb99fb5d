"""uvloop's ``create_connection(ssl=...)`` / ``create_unix_connection(ssl=...)`` for traced factories.

uvloop runs the client's TLS handshake in Cython, where no hook reaches: a
failed handshake never reached our wrapper, and a successful one had no
duration. So, as for uvloop's TLS servers (``hooks._uvloop_tls_server``), we do
what uvloop does, step by step, with the same pieces: make the app's protocol
(our wrapper), put uvloop's own ``SSLProtocol`` in front of it with a waiter we
watch, open a plain connection to it with the original method, wait for the
handshake, and return ``(app transport, protocol)``, closing the app transport
if the handshake fails, as uvloop's own code does.
"""

from __future__ import annotations

import ssl
import sys
from typing import Any

from ..report import report


def applies(loop: Any, factory: Any, kwargs: dict[str, Any]) -> bool:
    sslarg = kwargs.get("ssl")
    return (
        (sslarg is True or isinstance(sslarg, ssl.SSLContext))
        and type(loop).__module__.startswith("uvloop")
        and getattr(sys.modules.get("uvloop.loop"), "SSLProtocol", None) is not None
    )


async def connect(
    original: Any, loop: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], watch: Any
) -> Any:
    """``original`` is the loop's own method; ``watch(rec, sock, waiter)`` times the handshake."""
    kwargs = dict(kwargs)
    sslarg = kwargs.pop("ssl")
    server_hostname = kwargs.pop("server_hostname", None)
    timeouts = {k: kwargs.pop(k) for k in ("ssl_handshake_timeout", "ssl_shutdown_timeout") if k in kwargs}
    if server_hostname is None and name == "create_connection":
        server_hostname = args[1] if len(args) > 1 else kwargs.get("host")
    if server_hostname is None:
        # uvloop raises ValueError here: let it say so in its own words.
        return await original(loop, *args, ssl=sslarg, **timeouts, **kwargs)
    factory = args[0]
    wrapper = factory()
    waiter = loop.create_future()
    ssl_protocol = sys.modules["uvloop.loop"].SSLProtocol(
        loop,
        wrapper,
        None if sslarg is True else sslarg,
        waiter,
        False,
        server_hostname,
        **timeouts,
    )
    transport, _ = await original(loop, lambda: ssl_protocol, *args[1:], **kwargs)
    try:
        watch(wrapper._rec, transport.get_extra_info("socket"), waiter)
    except Exception as exc:  # noqa: BLE001
        report("tls handshake watch", exc)
    app_transport = ssl_protocol._get_app_transport()
    try:
        await waiter
    except BaseException:
        app_transport.close()
        raise
    return app_transport, wrapper
