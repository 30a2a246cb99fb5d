"""The per-connection record: plain integer fields the data path adds to.

Nothing here is called per byte. The proxy and the wrapping protocol do
``record.rx += n`` / ``record.tx += n`` inline; everything else (transitions,
open, close) happens at most once per flow-control change or connection.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any, Optional, Protocol

from ..report import report
from . import abandoned as _abandoned
from .classify import ConnKey
from .classify import classify as _classify

monotonic = time.monotonic
_ref = weakref.ref
_new = object.__new__
# Wall-clock time of a monotonic instant, for access logs and span timestamps,
# without a second clock read per event.
WALL_OFFSET = time.time() - time.monotonic()

# How a connection ended. error_type follows OpenTelemetry's error.type: absent
# (None) on a clean end, the exception class name or a short code otherwise.
CLOSED = "closed"  # closed locally, no error
EOF = "eof"  # the peer closed its side first, no error
RESET = "reset"  # ConnectionResetError / BrokenPipeError from the peer
ABORTED = "aborted"  # transport.abort() was called
ERROR = "error"  # any other exception
TLS_FAILED = "tls_handshake_failed"
ABANDONED = _abandoned.ABANDONED  # the transport was freed without connection_lost

_RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
# Ended records a registry queues before the loop folds them itself.
MAX_ENDED = 1024


class Observer(Protocol):
    """What the telemetry layer plugs in; every call is guarded."""

    def on_open(self, record: ConnectionRecord, transport: Any) -> None: ...

    def on_event(self, record: ConnectionRecord, name: str, seconds: Optional[float]) -> None:
        """A transition; ``seconds`` is the pause's length on a resume."""

    def on_close(self, record: ConnectionRecord, exc: Optional[BaseException]) -> None: ...


class RegistryLike(Protocol):
    """What a record needs from its registry (``registry.Registry`` is one; no import of it here)."""

    _live: set[ConnectionRecord]
    _ended: list[ConnectionRecord]

    def _fold_now(self) -> None: ...

    def add_fold_listener(self, listener: Callable[[], None]) -> None: ...


# What an observer lets a record do at close instead of calling on_close (Group.quiet_close).
QuietClose = tuple[ConnKey, list[float], float]


class Group:
    """What one ``traced()`` call shares between its connections.

    Everything a connection would otherwise look up when it opens or closes is
    found here once: the observer's bound hooks, the registry's live set and
    ended queue, and the attribute sets already seen (``keys``).
    """

    __slots__ = (
        "name",
        "side",
        "registry",
        "observer",
        "capture_extra",
        "parent_context",
        "keys",
        "on_open",
        "on_close",
        "on_event",
        "timed_eof",
        "eof_event",
        "span_policy",
        "_live",
        "_ended",
        "tcp_info",
        "fixed_keys",
        "listeners",
        "open_hooks",
        "eof_hooks",
        "quiet_close",
        "fast_open",
        "__weakref__",
    )

    def __init__(
        self,
        name: str,
        side: str,
        registry: RegistryLike,
        observer: Optional[Observer] = None,
        capture_extra: bool = False,
        span_policy: Any = None,
    ):
        self.name = name
        self.side = side
        self.registry = registry
        self.observer = observer
        self.capture_extra = capture_extra
        # The observer asks for app callbacks to run in its per-connection context.
        self.parent_context = bool(getattr(observer, "parent_context", False))
        # (transport class, sockname shape, port) -> ConnKey; see classify.key_for.
        self.keys: dict[tuple[Any, ...], ConnKey] = {}
        # Transport class -> the ConnKey of all this group's connections on it, while
        # they come from one listening socket (see classify.classify): no per-connection lookup.
        self.fixed_keys: dict[type, ConnKey] = {}
        # (family, port) of the listening sockets serving this group, as the loop
        # hooks see them; None once it also serves connections from elsewhere.
        self.listeners: Optional[set[tuple[int, Optional[int]]]] = set()
        self._live = registry._live
        self._ended = registry._ended
        # Bound once: a connection calls them directly, not through getattr.
        # An observer with nothing to do when some group's connections open says
        # so (wants_open), and those connections skip the call.
        wants_open = getattr(observer, "wants_open", None)
        self.on_open = getattr(observer, "on_open", None) if wants_open is None or wants_open(self) else None
        # And whether it wants the peer's EOF as an event (it may only need its time).
        self.eof_event = bool(getattr(observer, "wants_eof_event", True))
        self.on_close = getattr(observer, "on_close", None)
        self.on_event = getattr(observer, "on_event", None)
        # Whether the observer wants the time of the peer's EOF (a span event
        # it may build at close); asking for the clock otherwise costs for nothing.
        self.timed_eof = bool(getattr(observer, "wants_event_times", False))
        # This listener's span policy, over the observer's own (None: the observer's).
        self.span_policy = span_policy
        # The observer reads TCP_INFO as connections end: it gets on_closing() while the socket is open.
        self.tcp_info = bool(getattr(observer, "tcp_info", False))
        # One test per connection instead of one per optional step.
        self.open_hooks = bool(capture_extra or self.on_open is not None)
        # Whether the peer's EOF is an observer event (else the wrapper sets the flag and time itself).
        self.eof_hooks = bool(self.eof_event and self.on_event is not None)
        # Set by the observer: (key, values, up_to). A connection of attribute set ``key`` that
        # ends without error or observer state, lasting at most ``up_to`` seconds, needs nothing
        # from on_close but its duration appended to ``values``: the wrapping protocol's
        # connection_lost does that itself, without the call. The observer empties ``values``
        # whenever the registry folds (Registry.add_fold_listener), which bounds it as the ended
        # queue is bounded. None: every close calls on_close.
        self.quiet_close: Optional[QuietClose] = None
        # (transport class, its proxy's state class and class, attribute set): set
        # by the first connection opened while the group has a fixed attribute set for that
        # class, no pipes to proxy and no open hooks; its followers on that class open with
        # these, without a lookup or a test for either. None: each opens the general way.
        self.fast_open: Optional[tuple[type, type, type, ConnKey]] = None

    def listening_on(self, sockets: Any) -> None:
        """The loop hooks saw this group's factory serve ``sockets`` (None: something else, e.g. an accepted socket)."""
        listeners = self.listeners
        if listeners is None:
            return
        if sockets is None:
            self.listeners = None
        else:
            for sock in sockets:
                try:
                    name = sock.getsockname()
                    port = name[1] if type(name) is tuple and len(name) >= 2 else None
                    listeners.add((int(sock.family), port))
                except Exception:  # noqa: BLE001 - unknown: classify each connection
                    self.listeners = None
                    break
        if self.listeners is None or len(self.listeners) > 1:
            self.fixed_keys.clear()
            self.fast_open = None


class _Rare:
    """The fields most connections never set: allocated on the first write.

    A connection that never pauses, does no TLS and captures no extra info
    (most of them) carries one empty slot instead of all these fields; one
    that does pays for one more small object.
    """

    __slots__ = (
        "read_paused_since",
        "read_pauses",
        "read_paused_s",
        "write_paused_since",
        "write_pauses",
        "write_paused_s",
        "tls_handshake_s",
        "extra",
        "event_at",
    )

    def __init__(self) -> None:
        self.read_paused_since: Optional[float] = None
        self.read_pauses = 0
        self.read_paused_s = 0.0
        self.write_paused_since: Optional[float] = None
        self.write_pauses = 0
        self.write_paused_s = 0.0
        self.tls_handshake_s: Optional[float] = None
        self.extra: Optional[dict[str, Any]] = None
        # When the last flow-control transition happened (observers timestamp events with it).
        self.event_at = 0.0


def _rare_field(name: str, default: Any) -> property:
    def fget(self: ConnectionRecord) -> Any:
        rare = self._rare
        return default if rare is None else getattr(rare, name)

    def fset(self: ConnectionRecord, value: Any) -> None:
        rare = self._rare
        if rare is None:
            if value is default:
                return
            rare = self._rare = _Rare()
        setattr(rare, name, value)

    return property(fget, fset)


_EOF, _LOCAL_CLOSE, _ABORTED = 1, 2, 4
# A clean end's close_reason by its flags: aborted wins, then the peer's EOF unless we closed first.
_REASON_BY_FLAGS = tuple(
    ABORTED if flags & _ABORTED else EOF if flags & (_EOF | _LOCAL_CLOSE) == _EOF else CLOSED for flags in range(8)
)


def _flag(bit: int) -> property:
    def fget(self: ConnectionRecord) -> bool:
        return bool(self._flags & bit)

    def fset(self: ConnectionRecord, value: Any) -> None:
        self._flags = (self._flags | bit) if value else (self._flags & ~bit)

    return property(fget, fset)


class ConnectionRecord:
    """What happened on one connection. Read from any thread; written on the loop.

    The flow-control counts, ``tls_handshake_s`` and ``extra`` are
    properties over a small object made on their first write;
    ``eof``/``local_close``/``aborted`` are bits of one small int.
    """

    __slots__ = (
        "group",
        "key",  # interned low-cardinality attribute tuple, see ConnKey
        "rx",
        "tx",
        "opened_at",
        "closed_at",
        "close_reason",
        "error_type",
        "state",  # the observer's own per-connection object (e.g. a span)
        "_transport_ref",  # the real transport, weakly (see abandoned.py), while open
        "_flags",  # _EOF | _LOCAL_CLOSE | _ABORTED
        "_rare",  # a _Rare, or None while every rare field has its default
        "eof_at",  # monotonic time of the peer's EOF, if the observer asked for it
        "__weakref__",
    )

    read_paused_since = _rare_field("read_paused_since", None)
    read_pauses = _rare_field("read_pauses", 0)
    read_paused_s = _rare_field("read_paused_s", 0.0)
    write_paused_since = _rare_field("write_paused_since", None)
    write_pauses = _rare_field("write_pauses", 0)
    write_paused_s = _rare_field("write_paused_s", 0.0)
    eof = _flag(_EOF)
    local_close = _flag(_LOCAL_CLOSE)
    aborted = _flag(_ABORTED)
    tls_handshake_s = _rare_field("tls_handshake_s", None)
    extra = _rare_field("extra", None)

    def __init__(self, group: Group) -> None:
        self.group = group
        # A ConnKey from open() on; None only on a record not opened yet, which no reader sees.
        self.key: ConnKey = None  # type: ignore[assignment]
        self.rx = 0
        self.tx = 0
        self.opened_at = 0.0
        self.closed_at: Optional[float] = None
        self.close_reason: Optional[str] = None
        self.error_type: Optional[str] = None
        self.state: Any = None
        self._transport_ref: Any = None
        self._flags = 0
        self._rare: Optional[_Rare] = None
        self.eof_at: Optional[float] = None

    def _rare_fields(self) -> _Rare:
        rare = self._rare
        if rare is None:
            rare = self._rare = _Rare()
        return rare

    @property
    def transport(self) -> Any:
        """The real transport while open (write-buffer gauge); None after close or once freed."""
        ref = self._transport_ref
        return None if ref is None else ref()

    # -- lifecycle -------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.closed_at is None and self.opened_at != 0.0

    @property
    def duration_s(self) -> float:
        end = self.closed_at if self.closed_at is not None else monotonic()
        return end - self.opened_at

    def open(self, transport: Any) -> None:
        """``transport`` is the real transport; observers get it too.

        The wrapping protocol's ``connection_made`` does the same without this frame.

        Once per connection, so kept to what counting needs: what only some
        groups want (an observer's hook, the extra-info snapshot) is behind one
        flag, and a listener's connections share their attribute set."""
        group = self.group
        self.opened_at = monotonic()
        try:
            self._transport_ref = _ref(transport)
        except TypeError:  # not weakly referenceable (a stand-in of ours): held instead
            self._transport_ref = _abandoned.strong(transport)
        key = group.fixed_keys.get(type(transport))
        self.key = key if key is not None else _classify(group, transport)
        group._live.add(self)
        if group.open_hooks:
            self._open_hooks(transport)

    def _open_hooks(self, transport: Any) -> None:
        group = self.group
        if group.capture_extra:
            from .extra import snapshot_extra

            self.extra = snapshot_extra(transport)
        if group.on_open is not None:
            try:
                group.on_open(self, transport)
            except Exception as exc:  # noqa: BLE001
                report("observer.on_open", exc)

    def close(self, exc: Optional[BaseException], reason: Optional[str] = None) -> None:
        """End the record once; later calls do nothing.

        The general end. The wrapping protocol's ``connection_lost`` ends a clean connection
        (no error, no pause, no TCP_INFO: most of them) itself, the same way without this
        frame, and only there may a quiet connection skip ``on_close`` (``Group.quiet_close``)."""
        if self.closed_at is not None or self.opened_at == 0.0:
            return
        # A pause still open ends with the connection; report it like a resume.
        rare = self._rare
        if rare is not None:
            if rare.read_paused_since is not None:
                self.reading_resumed()
            if rare.write_paused_since is not None:
                self.writing_resumed()
        self.closed_at = monotonic()
        if exc is None and reason is None:
            # A clean end: the reason follows from the flags alone (one lookup).
            flags = self._flags
            self.close_reason = _REASON_BY_FLAGS[flags]
            if flags & _ABORTED:
                self.error_type = ABORTED
        else:
            self._ended_with(exc, reason)
        group = self.group
        if group.tcp_info:  # TCP_INFO (telemetry/tcp_info.py): the last moment the socket is surely open
            self.notify("on_closing", self.transport, True)
        # Into the ended queue first, then out of the live set: a reader in
        # between sees it in both and counts it once (see Registry.snapshot).
        ended = group._ended
        ended.append(self)
        group._live.discard(self)
        if len(ended) > MAX_ENDED:
            group.registry._fold_now()
        if group.on_close is not None:
            try:
                group.on_close(self, exc)
            except Exception as exc2:  # noqa: BLE001
                report("observer.on_close", exc2)
        # Kept until the observer is done: it may read get_extra_info (or TCP_INFO) at close.
        self._transport_ref = None

    def _ended_with(self, exc: Optional[BaseException], reason: Optional[str]) -> None:
        if reason is not None:
            self.close_reason = reason
            self.error_type = reason if exc is None else type(exc).__name__
            if reason == TLS_FAILED:
                self.error_type = TLS_FAILED
        else:
            self.close_reason = RESET if isinstance(exc, _RESET_ERRORS) else ERROR
            self.error_type = type(exc).__name__

    # -- flow-control transitions -----------------------------------------
    # Each returns without effect when the state does not change: a repeated
    # pause is not a second pause.
    def reading_paused(self) -> None:
        if self.closed_at is None:
            rare = self._rare_fields()
            if rare.read_paused_since is None:
                rare.read_paused_since = rare.event_at = monotonic()
                rare.read_pauses += 1
                self._event("reading.paused")

    def reading_resumed(self) -> None:
        # Any: a _Rare or None, told apart through ``since`` (which mypy cannot follow).
        rare: Any = self._rare
        since = None if rare is None else rare.read_paused_since
        if since is not None:
            rare.read_paused_since = None
            now = rare.event_at = monotonic()
            paused = now - since
            rare.read_paused_s += paused
            self._event("reading.resumed", paused)

    def writing_paused(self) -> None:
        if self.closed_at is None:
            rare = self._rare_fields()
            if rare.write_paused_since is None:
                rare.write_paused_since = rare.event_at = monotonic()
                rare.write_pauses += 1
                self._event("writing.paused")

    def writing_resumed(self) -> None:
        # Any: a _Rare or None, told apart through ``since`` (which mypy cannot follow).
        rare: Any = self._rare
        since = None if rare is None else rare.write_paused_since
        if since is not None:
            rare.write_paused_since = None
            now = rare.event_at = monotonic()
            paused = now - since
            rare.write_paused_s += paused
            self._event("writing.resumed", paused)

    def eof_received(self) -> None:
        if not self._flags & _EOF:
            self._flags |= _EOF
            group = self.group
            if group.timed_eof:
                self.eof_at = monotonic()
            if group.eof_event and group.on_event is not None:
                try:
                    group.on_event(self, "eof", None)
                except Exception as exc:  # noqa: BLE001
                    report("observer.on_event", exc)

    def _event(self, name: str, seconds: Optional[float] = None) -> None:
        on_event = self.group.on_event
        if on_event is not None:
            try:
                on_event(self, name, seconds)
            except Exception as exc:  # noqa: BLE001
                report("observer.on_event", exc)

    def notify(self, hook: str, *args: Any, optional: bool = False) -> None:
        """Call the observer's ``hook(self, *args)``; its failures never reach the app.

        ``optional`` hooks (``on_tls``) may be missing; a missing required one is
        reported like any other observer failure."""
        observer = self.group.observer
        if observer is None or (optional and not hasattr(observer, hook)):
            return
        try:
            getattr(observer, hook)(self, *args)
        except Exception as exc:  # noqa: BLE001
            report(f"observer.{hook}", exc)

    def __repr__(self) -> str:
        return (
            f"<ConnectionRecord {self.group.name}/{self.group.side} rx={self.rx} tx={self.tx} "
            f"read_pauses={self.read_pauses} write_pauses={self.write_pauses} "
            f"end={self.close_reason}>"
        )
