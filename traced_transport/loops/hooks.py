"""Loop hooks: the loop methods that hand a transport to the app or take one back.

``loop.create_connection(traced(f), ...)`` and its siblings return
``(transport, protocol)`` themselves, not through the protocol: left alone
they would return the real transport and our wrapper. The hooks map that pair
to ``(proxy, app protocol)`` so the app sees what ``connection_made`` saw.

``loop.start_tls(proxy, ...)`` and ``loop.sendfile(proxy, ...)`` hand our
proxy back to the loop. Left alone, asyncio would handle the proxy through its
forwarded private attributes, but (1) uvloop's ``start_tls`` accepts only its
own transport classes, (2) after ``start_tls`` the connection would be counted
as ciphertext and (3) native sendfile bypasses ``write()`` so its bytes would
not be counted. For a proxy these hooks do the work on the real transport and
wrap again. ``_make_ssl_transport`` (asyncio) and ``create_server(ssl=)``
(uvloop) let us time TLS handshakes and see the failed ones.

The hooks are installed when the package is imported (and for any other loop
class the first time a traced factory runs on it), on the class that defines
each method; for calls that involve nothing of ours they call the original
straight away.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ssl
import sys
from collections.abc import Callable
from typing import Any, Optional

from ..datapath import protocols as _protocols
from ..datapath import proxy as _proxy
from ..datapath.record import TLS_FAILED, ConnectionRecord, monotonic
from ..report import report
from . import factory as _factory_mod
from . import patches
from . import uvloop_tls_client as _uvloop_tls_client

# Loop methods that take a protocol factory, and the side a connection made
# through them is on (None: decided per call). Used by instrument().
_FACTORY_TAKING = {
    "create_server": "server",
    "create_unix_server": "server",
    "connect_accepted_socket": "server",
    "create_connection": "client",
    "create_unix_connection": "client",
    "create_datagram_endpoint": None,
    "connect_read_pipe": "client",
    "connect_write_pipe": "client",
    "subprocess_exec": "client",
    "subprocess_shell": "client",
}
# Of those, the ones that return (transport, protocol).
_PAIR_RETURNING = frozenset(_FACTORY_TAKING) - {"create_server", "create_unix_server"}

# Set by instrument(): wraps the factories of loop calls that the app did not
# wrap itself. None when not instrumenting.
auto: Any = None
# Set by tracing(): the same, for the loop calls made in one context (task)
# only; consulted before ``auto``. (Both hold an instrument._Auto.)
scope: contextvars.ContextVar[Any] = contextvars.ContextVar("traced_transport_scope", default=None)


def _hooks_for() -> list[tuple[str, Callable[[Any, str], Any]]]:
    hooks: list[tuple[str, Callable[[Any, str], Any]]] = [
        ("start_tls", _make_start_tls),
        ("sendfile", _make_sendfile),
        ("_make_ssl_transport", _make_make_ssl_transport),
    ]
    hooks += [(name, _make_factory_taking) for name in _FACTORY_TAKING]
    return hooks


def _map_pair(pair: Any) -> Any:
    transport, protocol = pair
    if isinstance(protocol, _protocols._Wrapper):
        proxy = protocol._proxy
        if proxy is None:  # connection_made not called (yet): make it now
            proxy = protocol._proxy = _proxy.make_proxy(transport, protocol._rec)
        return proxy, protocol._app
    return pair


def _make_factory_taking(original: Any, name: str) -> Any:
    pair = name in _PAIR_RETURNING
    side = _FACTORY_TAKING[name]

    tls_server = name in ("create_server", "create_unix_server")
    tls_client = name in ("create_connection", "create_unix_connection")

    @functools.wraps(original)
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        scoped = scope.get()
        if scoped is not None:
            args, kwargs = scoped.wrap_call(name, side, args, kwargs)
        instrumenting = auto
        if instrumenting is not None:
            args, kwargs = instrumenting.wrap_call(name, side, args, kwargs)
        if tls_server and kwargs.get("ssl") is not None and args and type(self).__module__.startswith("uvloop"):
            args, kwargs = _uvloop_tls_server(self, args, kwargs)
        if (
            tls_client
            and kwargs.get("ssl")
            and args
            and isinstance(args[0], _factory_mod.TracedProtocolFactory)
            and _uvloop_tls_client.applies(self, args[0], kwargs)
        ):
            result = await _uvloop_tls_client.connect(original, self, name, args, kwargs, _watch_handshake)
            return _map_pair(result)
        if type(self) not in patches._seen:
            # A loop class of its own (a subclass): its own methods get their hooks before any
            # connection, as _make no longer checks the loop per connection.
            patches.ensure(type(self))
        result = await original(self, *_loop_args(args), **_loop_kwargs(kwargs))
        _tell_listeners(name, args, kwargs, result)
        return _map_pair(result) if pair else result

    return method


# What the loop gets in place of a traced factory: its argument-free entry (see TracedProtocolFactory._make).
def _loop_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    if args and type(args[0]) is _factory_mod.TracedProtocolFactory:
        return (args[0]._make,) + args[1:]
    return args


def _loop_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    factory = kwargs.get("protocol_factory")
    if type(factory) is _factory_mod.TracedProtocolFactory:
        return dict(kwargs, protocol_factory=factory._make)
    return kwargs


def _tell_listeners(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
    """A traced factory's group learns which sockets it serves (its connections then share their attributes).

    Any other use of the factory (an accepted socket, an outgoing connection,
    a pipe) makes its group classify every connection from then on."""
    factory = args[0] if args else kwargs.get("protocol_factory")
    if not isinstance(factory, _factory_mod.TracedProtocolFactory):
        return
    try:
        sockets = getattr(result, "sockets", None) if name in ("create_server", "create_unix_server") else None
        factory.group.listening_on(sockets)
    except Exception as exc:  # noqa: BLE001
        report("listeners", exc)


def _uvloop_tls_server(
    loop: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    # uvloop does the TLS handshake of create_server(ssl=) in Cython, where no
    # hook reaches: a failed handshake would never be seen. For traced
    # factories, serve plain TCP and put uvloop's own SSLProtocol in front of
    # each connection ourselves, as uvloop would, with a waiter we can watch.
    factory = args[0]
    sslcontext = kwargs["ssl"]
    ssl_protocol_cls = getattr(sys.modules.get("uvloop.loop"), "SSLProtocol", None)
    if (
        not isinstance(factory, _factory_mod.TracedProtocolFactory)
        or not isinstance(sslcontext, ssl.SSLContext)
        or ssl_protocol_cls is None
    ):
        return args, kwargs
    kwargs = dict(kwargs)
    del kwargs["ssl"]
    timeouts = {k: kwargs.pop(k) for k in ("ssl_handshake_timeout", "ssl_shutdown_timeout") if k in kwargs}

    def tls_factory() -> _TLSHandoff:
        wrapper = factory()
        waiter = loop.create_future()
        ssl_protocol = ssl_protocol_cls(
            loop, wrapper, sslcontext, waiter, server_side=True, server_hostname=None, **timeouts
        )
        return _TLSHandoff(wrapper, ssl_protocol, waiter)

    return (tls_factory,) + args[1:], kwargs


class _TLSHandoff(asyncio.Protocol):
    """Sees the raw connection (for the record), then hands it to the SSL protocol for good."""

    __slots__ = ("_wrapper", "_ssl_protocol", "_waiter")

    def __init__(self, wrapper: Any, ssl_protocol: Any, waiter: Any) -> None:
        self._wrapper = wrapper
        self._ssl_protocol = ssl_protocol
        self._waiter = waiter

    def connection_made(self, transport: Any) -> None:
        ssl_protocol, waiter = self._ssl_protocol, self._waiter
        self._ssl_protocol = self._waiter = None
        try:
            _watch_handshake(self._wrapper._rec, transport.get_extra_info("socket"), waiter)
        except Exception as exc:  # noqa: BLE001
            report("tls handshake watch", exc)

        def close_on_failure(fut: asyncio.Future[Any]) -> None:
            # What uvloop's own server does when a handshake fails.
            exc = None if fut.cancelled() else fut.exception()
            if fut.cancelled() or exc is not None:
                transport._force_close(exc)

        waiter.add_done_callback(close_on_failure)
        self._wrapper = None
        transport.set_protocol(ssl_protocol)
        ssl_protocol.connection_made(transport)


class _SocketInfo:
    """get_extra_info for a connection whose TLS handshake failed before any transport reached us."""

    __slots__ = ("_extra",)

    def __init__(self, sock: Any) -> None:
        self._extra = {"socket": sock}
        for key, method in (("sockname", "getsockname"), ("peername", "getpeername")):
            try:
                self._extra[key] = getattr(sock, method)()
            except (OSError, AttributeError):
                pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)


def _make_make_ssl_transport(original: Any, name: str = "_make_ssl_transport") -> Any:
    # asyncio's own TLS for create_server(ssl=)/create_connection(ssl=): the
    # handshake happens before our wrapper hears of the connection, and a
    # failed one never reaches it. The waiter tells us how it went.
    @functools.wraps(original)
    def method(
        self: Any, rawsock: Any, protocol: Any, sslcontext: Any, waiter: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        transport = original(self, rawsock, protocol, sslcontext, waiter, *args, **kwargs)
        if waiter is not None and isinstance(protocol, _protocols._Wrapper):
            try:
                _watch_handshake(protocol._rec, rawsock, waiter)
            except Exception as exc:  # noqa: BLE001
                report("tls handshake watch", exc)
        return transport

    return method


def _watch_handshake(rec: ConnectionRecord, sock: Any, waiter: asyncio.Future[Any]) -> None:
    started = monotonic()
    info = _SocketInfo(sock)

    def done(fut: asyncio.Future[Any]) -> None:
        try:
            elapsed = monotonic() - started
            failed = fut.cancelled() or fut.exception() is not None
            if not failed:
                if rec.opened_at and rec.tls_handshake_s is None:
                    rec.tls_handshake_s = elapsed
                    rec.notify("on_tls", rec.transport, optional=True)
                return
            if rec.opened_at == 0.0:
                # Never reached the app: record the attempt as a connection
                # that ended in a failed handshake.
                exc = None if fut.cancelled() else fut.exception()
                rec.open(info)
                rec.opened_at = started
                rec.tls_handshake_s = elapsed
                rec.close(exc if isinstance(exc, Exception) else None, TLS_FAILED)
        except Exception as exc:  # noqa: BLE001
            report("tls handshake watch", exc)

    waiter.add_done_callback(done)


def _make_start_tls(original: Any, name: str = "start_tls") -> Any:
    @functools.wraps(original)
    async def start_tls(self: Any, transport: Any, protocol: Any, sslcontext: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(transport, _proxy.TracedTransport):
            return await original(self, transport, protocol, sslcontext, *args, **kwargs)
        return await _start_tls(original, self, transport, protocol, sslcontext, args, kwargs)

    return start_tls


async def _start_tls(
    original: Any,
    loop: Any,
    proxy: _proxy.TracedTransport,
    protocol: Any,
    sslcontext: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    inner = proxy._transport
    rec = proxy._rec
    old = _proxy.wrapper_of(proxy)
    if old is None:  # the connection is over, or nothing of ours is installed on it
        return await original(loop, inner, protocol, sslcontext, *args, **kwargs)
    # Upgrade the real transport (uvloop accepts nothing else) with a fresh
    # wrapper above TLS, so the record goes on counting what the app sees.
    new = _protocols.wrap(protocol, rec, loop)
    started = monotonic()
    try:
        app_transport = await original(loop, inner, new, sslcontext, *args, **kwargs)
    except BaseException as exc:
        try:
            still_ours = inner.get_protocol() is old
        except Exception:  # noqa: BLE001
            still_ours = False
        if not still_ours:
            rec.tls_handshake_s = monotonic() - started
            # start_tls closes the connection on failure, and our first wrapper
            # is no longer installed to see it end.
            rec.close(exc if isinstance(exc, Exception) else None, TLS_FAILED)
        raise
    rec.tls_handshake_s = monotonic() - started
    if app_transport is None:
        # start_tls may return None (the connection was lost meanwhile, or a
        # test double): so does this, rather than a proxy over None.
        return None
    upgraded = _proxy.make_proxy(app_transport, rec)
    new._proxy = upgraded
    if rec.group.capture_extra:
        from ..datapath.extra import snapshot_extra

        rec.extra = snapshot_extra(upgraded)
    rec.notify("on_tls", app_transport, optional=True)
    return upgraded


def _make_sendfile(original: Any, name: str = "sendfile") -> Any:
    @functools.wraps(original)
    async def sendfile(
        self: Any, transport: Any, file: Any, offset: int = 0, count: Optional[int] = None, *, fallback: bool = True
    ) -> Any:
        if not isinstance(transport, _proxy.TracedTransport):
            return await original(self, transport, file, offset, count, fallback=fallback)
        return await _sendfile(original, self, transport, file, offset, count, fallback)

    return sendfile


async def _sendfile(
    original: Any,
    loop: Any,
    proxy: _proxy.TracedTransport,
    file: Any,
    offset: int,
    count: Optional[int],
    fallback: bool,
) -> int:
    rec = proxy._rec
    written_before = rec.tx
    try:
        position_before = file.tell()
    except Exception:  # noqa: BLE001
        position_before = None
    try:
        sent: int = await original(loop, proxy, file, offset, count, fallback=fallback)
    except BaseException:
        # Native sendfile moves the file position by what it sent, even when it
        # fails part-way: count those bytes, the fallback's went through write().
        try:
            if position_before is not None:
                moved = file.tell() - offset
                if file.tell() != position_before and moved > 0:
                    _count_native(rec, moved, written_before)
        except Exception:  # noqa: BLE001
            pass
        raise
    finally:
        _restore_transport_map(loop, proxy)
    _count_native(rec, sent, written_before)
    return sent


def _count_native(rec: ConnectionRecord, sent: int, written_before: int) -> None:
    # Whatever the loop reports as sent but did not pass through write().
    native = sent - (rec.tx - written_before)
    if native > 0:
        rec.tx += native


def _restore_transport_map(loop: Any, proxy: _proxy.TracedTransport) -> None:
    # selector_events' native path re-registers the transport it was given in
    # loop._transports; put the real one back.
    transports = getattr(loop, "_transports", None)
    if transports is None:
        return
    try:
        inner = proxy._transport
        fd = getattr(inner, "_sock_fd", None)
        if fd is not None and transports.get(fd) is proxy:
            transports[fd] = inner
    except Exception as exc:  # noqa: BLE001
        report("sendfile.restore", exc)


patches.register(_hooks_for)
