"""Wrapping protocols: installed on the real transport, in front of the app's protocol.

One class per read path. asyncio picks the buffered path with
``isinstance(p, BufferedProtocol)``; uvloop with ``hasattr(p, "get_buffer") and
not isinstance(p, asyncio.Protocol)``. So the plain wrapper must not have
``get_buffer`` at all, and nothing here forwards unknown attributes.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from . import proxy as _proxy
from .record import ConnectionRecord

_make_proxy = _proxy.make_proxy
_new = object.__new__
_new_record = ConnectionRecord._fast
_set = object.__setattr__  # the proxy's own slot, past its forwarding __setattr__


class _Wrapper:
    """Shared behaviour; the concrete classes add the protocol base and the slots."""

    __slots__ = ()
    # The proxy's get_protocol() looks for this flag (it does not import us).
    _traced_wrapper = True
    _app: Any
    _rec: ConnectionRecord
    _proxy: Any

    def __init__(self, app: Any, rec: ConnectionRecord) -> None:
        self._app = app
        self._rec = rec
        self._proxy = None

    @classmethod
    def _for(cls, app: Any, group: Any) -> _Wrapper:
        """``cls(app, ConnectionRecord(group))`` without two type calls (once per connection)."""
        wrapper = _new(cls)
        wrapper._app = app
        wrapper._rec = _new_record(group)
        wrapper._proxy = None
        return wrapper

    def connection_made(self, transport: Any) -> None:
        rec = self._rec
        proxy = self._proxy = _make_proxy(transport, self, rec)
        rec.open(transport)
        # The span-context variant calls _made instead, once rec.open() has
        # started the span whose context it runs the app's callback in.
        self._app.connection_made(proxy)

    def _made(self, proxy: Any) -> None:
        self._app.connection_made(proxy)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._rec.close(exc)
        proxy = self._proxy
        if proxy is not None and proxy._wrapper is self:
            _set(proxy, "_wrapper", None)  # see _detach
        self._app.connection_lost(exc)

    def _detach(self) -> None:
        # Break proxy -> wrapper (the wrapper keeps its proxy: create_connection
        # may still need it to return) so that, once the transport lets go of
        # us, the proxy, this wrapper and the app's protocol are freed by
        # refcounting alone, as they would be unwrapped.
        proxy = self._proxy
        if proxy is not None and proxy._wrapper is self:
            _set(proxy, "_wrapper", None)

    def _replace_app(self, protocol: Any, proxy: Any) -> None:
        """``proxy.set_protocol(protocol)``: keep this wrapper if the read path is the same."""
        cls = wrapper_class(protocol, self._rec)
        if type(self) is cls:
            self._app = protocol
            return
        new = cls(protocol, self._rec)
        new._proxy = proxy
        self._proxy = None
        proxy._wrapper = new
        proxy._transport.set_protocol(new)

    def pause_writing(self) -> None:
        self._rec.writing_paused()
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._rec.writing_resumed()
        self._app.resume_writing()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self._app!r}>"


class PlainWrapper(_Wrapper, asyncio.Protocol):
    __slots__ = ("_app", "_rec", "_proxy")

    def data_received(self, data: bytes) -> None:
        self._rec.rx += len(data)
        self._app.data_received(data)

    def eof_received(self) -> Optional[bool]:
        self._rec.eof_received()
        return self._app.eof_received()


class BufferedWrapper(_Wrapper, asyncio.BufferedProtocol):
    __slots__ = ("_app", "_rec", "_proxy")

    def get_buffer(self, sizehint: int) -> Any:
        # The app's own buffer, handed through: no copy.
        return self._app.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._rec.rx += nbytes
        self._app.buffer_updated(nbytes)

    def eof_received(self) -> Optional[bool]:
        self._rec.eof_received()
        return self._app.eof_received()


class DatagramWrapper(_Wrapper, asyncio.DatagramProtocol):
    __slots__ = ("_app", "_rec", "_proxy")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._rec.rx += len(data)
        self._app.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._app.error_received(exc)


class SubprocessWrapper(_Wrapper, asyncio.SubprocessProtocol):
    __slots__ = ("_app", "_rec", "_proxy")

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._rec.rx += len(data)
        self._app.pipe_data_received(fd, data)

    def pipe_connection_lost(self, fd: int, exc: Optional[BaseException]) -> None:
        self._app.pipe_connection_lost(fd, exc)

    def process_exited(self) -> None:
        self._app.process_exited()


def _on_uvloop(loop: Any) -> bool:
    return loop is not None and type(loop).__module__.startswith("uvloop")


class _AlreadyTraced:
    """Stands in for a wrapper class when the factory's product is one of our wrappers already.

    A factory can be traced twice over: ``instrument()`` wraps the factory
    uvicorn builds around ``traced_transport.uvicorn.http(...)``, or an app
    calls ``traced()`` on a factory whose products are traced. Counting such a
    connection twice would double every sum over ``transport.name``, so the
    outer layer hands back the inner wrapper untouched (the innermost, most
    specific name wins). The decision is cached per class like any other, so a
    factory that is traced once pays nothing for this.
    """

    __slots__ = ()

    def __new__(cls, app: Any, rec: ConnectionRecord) -> Any:  # type: ignore[misc]
        return app

    @staticmethod
    def _for(app: Any, group: Any) -> Any:
        return app


_class_cache: dict[tuple, type] = {}


def wrapper_class_for(app: Any, loop: Any = None) -> type:
    """The wrapper that takes the same read path the loop would take for ``app``."""
    if loop is None:
        loop = asyncio.events._get_running_loop()
    # The answer depends on the app's class and the kind of loop only; cache it
    # (one dict lookup per connection instead of several isinstance checks).
    cache_key = (type(app), type(loop))
    cls = _class_cache.get(cache_key)
    if cls is None:
        cls = _class_cache[cache_key] = _choose(app, _on_uvloop(loop))
    return cls


def _choose(app: Any, uvloop: bool) -> type:
    if isinstance(app, _Wrapper):
        return _AlreadyTraced
    if isinstance(app, asyncio.SubprocessProtocol):
        return SubprocessWrapper
    if isinstance(app, asyncio.DatagramProtocol):
        return DatagramWrapper
    if uvloop:
        buffered = hasattr(app, "get_buffer") and not isinstance(app, asyncio.Protocol)
    else:
        buffered = isinstance(app, asyncio.BufferedProtocol)
    if buffered:
        return BufferedWrapper
    if not isinstance(app, asyncio.Protocol):
        # Duck-typed protocols: follow what they implement.
        if hasattr(app, "datagram_received"):
            return DatagramWrapper
        if hasattr(app, "pipe_data_received"):
            return SubprocessWrapper
    return PlainWrapper


def wrapper_class(app: Any, rec: ConnectionRecord, loop: Any = None) -> type:
    """The wrapper class for ``app`` in ``rec``'s group (its span-context variant if opted in)."""
    cls = wrapper_class_for(app, loop)
    if rec.group.parent_context and cls is not _AlreadyTraced:
        from .context import context_variant

        cls = context_variant(cls)
    return cls


def wrap(app: Any, rec: ConnectionRecord, loop: Any = None) -> _Wrapper:
    return wrapper_class(app, rec, loop)(app, rec)


def app_of(protocol: Any) -> Any:
    """The app's protocol behind ``protocol`` if it is one of our wrappers."""
    if isinstance(protocol, _Wrapper):
        return protocol._app
    return protocol
