"""Wrapping protocols: installed on the real transport, in front of the app's protocol.

One class per shape of app protocol (see shapes.py): the wrapper has the
app's asyncio protocol base classes and exactly the optional callbacks the app
has, so that every ``isinstance``/``hasattr`` a loop makes before calling
(asyncio's ``isinstance(p, BufferedProtocol)``, uvloop's ``hasattr(p,
"get_buffer") and not isinstance(p, asyncio.Protocol)``, uvloop's lookup of
``eof_received``...) answers as for the app. Nothing here forwards unknown
attributes.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from ..report import report
from . import abandoned as _abandoned
from . import proxy as _proxy
from . import record as _record
from . import shapes as _shapes
from .classify import classify as _classify
from .record import ConnectionRecord, monotonic

_proxy_recipes = _proxy._recipes
_proxy_recipe_for = _proxy._recipe_for
_ref = _record._ref
_REASON_BY_FLAGS = _record._REASON_BY_FLAGS
_EOF, _ABORTED = _record._EOF, _record._ABORTED
_ABORTED_TYPE = _record.ABORTED


class _Wrapper:
    """Shared behaviour; the concrete classes add the protocol base and the slots."""

    __slots__ = ()
    # The proxy's get_protocol() looks for this flag (it does not import us).
    _traced_wrapper = True
    _app: Any
    _rec: ConnectionRecord
    _proxy: Any

    # Made by a type call without arguments and its fields set after (see new_wrapper and the
    # factory): object's own __init__ as a C slot, no frame, and no object.__new__ call, which
    # costs an argument tuple and its slice.
    __init__ = object.__init__

    def connection_made(self, transport: Any) -> None:
        rec = self._rec
        group = rec.group
        fast = group.fast_open
        if fast is None or fast[0] is not type(transport):
            self._open(transport)
            return
        # The group's connections so far came on this transport class, from one listener and
        # without open hooks: its proxy recipe and attribute set, found once (Group.fast_open).
        # make_proxy(transport, rec), without its frame.
        _, state, cls, key = fast
        proxy = self._proxy = state()
        proxy._transport = transport
        proxy._rec = rec
        proxy.__class__ = cls
        rec.opened_at = monotonic()
        try:
            rec._transport_ref = _ref(transport)
        except TypeError:  # not weakly referenceable (a stand-in of ours): held instead
            rec._transport_ref = _abandoned.strong(transport)
        rec.key = key
        group._live.add(rec)
        self._app.connection_made(proxy)

    def _open(self, transport: Any) -> None:
        """connection_made the general way (the group's short way does not cover this connection); it may set the short way up."""
        rec = self._rec
        # make_proxy(transport, rec), without its frame.
        tcls = type(transport)
        state, cls, pipes = _proxy_recipes.get(tcls) or _proxy_recipe_for(tcls)
        proxy = self._proxy = state()
        proxy._transport = transport
        proxy._rec = rec
        if pipes:
            proxy._pipes = {}
        proxy.__class__ = cls
        # rec.open(transport), without its frame (a test compares the two).
        group = rec.group
        rec.opened_at = monotonic()
        try:
            rec._transport_ref = _ref(transport)
        except TypeError:  # not weakly referenceable (a stand-in of ours): held instead
            rec._transport_ref = _abandoned.strong(transport)
        fixed = group.fixed_keys
        key = fixed.get(tcls) or _classify(group, transport)
        if fixed.get(tcls) is key and not pipes and not group.open_hooks:
            # This listener's connections on tcls share key: the next ones open the short way.
            group.fast_open = (tcls, state, cls, key)
        rec.key = key
        group._live.add(rec)
        if group.open_hooks:
            rec._open_hooks(transport)
        # The span-context variant calls _made instead, once rec.open() has
        # started the span whose context it runs the app's callback in.
        self._app.connection_made(proxy)

    def _made(self, proxy: Any) -> None:
        self._app.connection_made(proxy)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        rec = self._rec
        group = rec.group
        if exc is not None or rec._rare is not None or group.tcp_info or rec.closed_at is not None or not rec.opened_at:
            rec.close(exc)  # an error, a pause, TCP_INFO, or not open: the general end
            self._app.connection_lost(exc)
            return
        # rec.close(None) for the rest, without its frame (a test compares the two).
        closed_at = rec.closed_at = monotonic()
        flags = rec._flags
        rec.close_reason = _REASON_BY_FLAGS[flags]
        if flags & _ABORTED:
            rec.error_type = _ABORTED_TYPE
        ended = group._ended
        ended.append(rec)
        group._live.discard(rec)
        if len(ended) > _record.MAX_ENDED:
            group.registry._fold_now()
        on_close = group.on_close
        if on_close is not None:
            # Most connections: what the observer would do with them is an append, without its call.
            quiet = group.quiet_close
            if (
                quiet is not None
                and quiet[0] is rec.key
                and rec.error_type is None
                and rec.state is None
                and (duration := closed_at - rec.opened_at) <= quiet[2]
            ):
                quiet[1].append(duration)
            else:
                try:
                    on_close(rec, None)
                except Exception as exc2:  # noqa: BLE001
                    report("observer.on_close", exc2)
        rec._transport_ref = None
        self._app.connection_lost(exc)

    def _replace_app(self, protocol: Any, proxy: Any) -> None:
        """``proxy.set_protocol(protocol)``: keep this wrapper if the read path is the same."""
        cls = wrapper_class(protocol, self._rec)
        if type(self) is cls:
            self._app = protocol
            return
        new = new_wrapper(cls, protocol, self._rec)
        new._proxy = proxy
        self._proxy = None
        proxy._transport.set_protocol(new)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self._app!r}>"


# The optional callbacks (see shapes.py): a wrapper class has those of them
# its app's protocol has.
def _pause_writing(self: Any) -> None:
    self._rec.writing_paused()
    self._app.pause_writing()


def _resume_writing(self: Any) -> None:
    self._rec.writing_resumed()
    self._app.resume_writing()


def _data_received(self: Any, data: bytes) -> None:
    self._rec.rx += len(data)
    self._app.data_received(data)


def _eof_received(self: Any) -> Any:  # the app's answer (bool | None), passed on as is
    rec = self._rec
    group = rec.group
    if group.eof_hooks:  # an observer wants the EOF as an event: the record's full path
        rec.eof_received()
    else:  # the flag and, if a span may want it, the time: without the record's frame
        rec._flags |= _EOF
        if group.timed_eof and rec.eof_at is None:
            rec.eof_at = monotonic()
    return self._app.eof_received()


def _get_buffer(self: Any, sizehint: int) -> Any:
    # The app's own buffer, handed through: no copy.
    return self._app.get_buffer(sizehint)


def _buffer_updated(self: Any, nbytes: int) -> None:
    self._rec.rx += nbytes
    self._app.buffer_updated(nbytes)


def _datagram_received(self: Any, data: bytes, addr: Any) -> None:
    self._rec.rx += len(data)
    self._app.datagram_received(data, addr)


def _error_received(self: Any, exc: Exception) -> None:
    self._app.error_received(exc)


def _pipe_data_received(self: Any, fd: int, data: bytes) -> None:
    self._rec.rx += len(data)
    self._app.pipe_data_received(fd, data)


def _pipe_connection_lost(self: Any, fd: int, exc: Optional[BaseException]) -> None:
    self._app.pipe_connection_lost(fd, exc)


def _process_exited(self: Any) -> None:
    self._app.process_exited()


_METHODS = {name: globals()[f"_{name}"] for name in _shapes.OPTIONAL_CALLBACKS}
_SLOTS = ("_app", "_rec", "_proxy")


class PlainWrapper(_Wrapper, asyncio.Protocol):
    __slots__ = _SLOTS
    data_received = _data_received
    eof_received = _eof_received
    pause_writing = _pause_writing
    resume_writing = _resume_writing


class BufferedWrapper(_Wrapper, asyncio.BufferedProtocol):
    __slots__ = _SLOTS
    get_buffer = _get_buffer
    buffer_updated = _buffer_updated
    eof_received = _eof_received
    pause_writing = _pause_writing
    resume_writing = _resume_writing


class DatagramWrapper(_Wrapper, asyncio.DatagramProtocol):
    __slots__ = _SLOTS
    datagram_received = _datagram_received
    error_received = _error_received
    pause_writing = _pause_writing
    resume_writing = _resume_writing


class SubprocessWrapper(_Wrapper, asyncio.SubprocessProtocol):
    __slots__ = _SLOTS
    pipe_data_received = _pipe_data_received
    pipe_connection_lost = _pipe_connection_lost
    process_exited = _process_exited
    pause_writing = _pause_writing
    resume_writing = _resume_writing


_KNOWN = (PlainWrapper, BufferedWrapper, DatagramWrapper, SubprocessWrapper)


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


_class_cache: dict[tuple[type, type], type] = {}


def wrapper_class_for(app: Any, loop: Any = None) -> type:
    """The wrapper of ``app``'s shape: every loop takes the path with it that it takes with ``app``."""
    if loop is None:
        loop = asyncio.events._get_running_loop()
    # Cached per (app class, loop class), for the callers without a cache of their own
    # (set_protocol, start_tls; the factory keeps its last answer per app class).
    # The shape itself does not depend on the loop.
    cache_key = (type(app), type(loop))
    cls = _class_cache.get(cache_key)
    if cls is None:
        if isinstance(app, _Wrapper):
            cls = _AlreadyTraced
        else:
            cls = _shapes.build(_shapes.shape_of(app), _Wrapper, _METHODS, _SLOTS, _KNOWN)
        _class_cache[cache_key] = cls
    return cls


def wrapper_class(app: Any, rec: ConnectionRecord, loop: Any = None) -> type:
    """The wrapper class for ``app`` in ``rec``'s group (its span-context variant if opted in)."""
    return wrapper_class_in(rec.group, app, loop)


def wrapper_class_in(group: Any, app: Any, loop: Any = None) -> type:
    """The wrapper class for ``app`` in ``group`` (its span-context variant if opted in)."""
    cls = wrapper_class_for(app, loop)
    if group.parent_context and cls is not _AlreadyTraced:
        from .context import context_variant

        cls = context_variant(cls)
    return cls


def new_wrapper(cls: type, app: Any, rec: ConnectionRecord) -> Any:
    """An instance of the wrapper class ``cls`` for ``app`` (``app`` itself if ``cls`` is _AlreadyTraced)."""
    if cls is _AlreadyTraced:
        return app
    wrapper: Any = cls()
    wrapper._app = app
    wrapper._rec = rec
    wrapper._proxy = None
    return wrapper


def wrap(app: Any, rec: ConnectionRecord, loop: Any = None) -> Any:
    return new_wrapper(wrapper_class(app, rec, loop), app, rec)


def app_of(protocol: Any) -> Any:
    """The app's protocol behind ``protocol`` if it is one of our wrappers."""
    if isinstance(protocol, _Wrapper):
        return protocol._app
    return protocol
