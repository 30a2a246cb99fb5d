"""The per-connection record: plain integer fields the data path adds to.

Nothing here is called per byte. The proxy and the wrapping protocol do
``record.rx += n`` / ``record.tx += n`` inline; everything else (transitions,
open, close) happens at most once per flow-control change or connection.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional, Protocol

from ._classify import conn_key
from ._safety import report

if TYPE_CHECKING:
    from ._registry import Registry

monotonic = time.monotonic
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

_RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Observer(Protocol):
    """What the telemetry layer plugs in; every call is guarded."""

    def on_open(self, record: "ConnectionRecord", transport: Any) -> None: ...

    def on_event(self, record: "ConnectionRecord", name: str, seconds: Optional[float]) -> None:
        """A transition; ``seconds`` is the pause's length on a resume."""

    def on_close(self, record: "ConnectionRecord", exc: Optional[BaseException]) -> None: ...


class Group:
    """What one ``traced()`` call shares between its connections."""

    __slots__ = ("name", "side", "registry", "observer", "capture_extra", "parent_context")

    def __init__(
        self,
        name: str,
        side: str,
        registry: "Registry",
        observer: Optional[Observer] = None,
        capture_extra: bool = False,
    ):
        self.name = name
        self.side = side
        self.registry = registry
        self.observer = observer
        self.capture_extra = capture_extra
        # The observer asks for app callbacks to run in its per-connection context.
        self.parent_context = bool(getattr(observer, "parent_context", False))


class ConnectionRecord:
    """What happened on one connection. Read from any thread; written on the loop."""

    __slots__ = (
        "group",
        "key",  # interned low-cardinality attribute tuple, see ConnKey
        "rx",
        "tx",
        "opened_at",
        "closed_at",
        "read_paused_since",
        "read_pauses",
        "read_paused_s",
        "write_paused_since",
        "write_pauses",
        "write_paused_s",
        "eof",
        "local_close",
        "aborted",
        "close_reason",
        "error_type",
        "tls_handshake_s",
        "extra",
        "state",  # the observer's own per-connection object (e.g. a span)
        "transport",  # the real transport while open (write-buffer gauge); None after close
        "__weakref__",
    )

    def __init__(self, group: Group) -> None:
        self.group = group
        self.key = None
        self.rx = 0
        self.tx = 0
        self.opened_at = 0.0
        self.closed_at: Optional[float] = None
        self.read_paused_since: Optional[float] = None
        self.read_pauses = 0
        self.read_paused_s = 0.0
        self.write_paused_since: Optional[float] = None
        self.write_pauses = 0
        self.write_paused_s = 0.0
        self.eof = False
        self.local_close = False
        self.aborted = False
        self.close_reason: Optional[str] = None
        self.error_type: Optional[str] = None
        self.tls_handshake_s: Optional[float] = None
        self.extra: Optional[dict] = None
        self.state: Any = None
        self.transport: Any = None

    # -- lifecycle -------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.closed_at is None and self.opened_at != 0.0

    @property
    def duration_s(self) -> float:
        end = self.closed_at if self.closed_at is not None else monotonic()
        return end - self.opened_at

    def open(self, transport: Any) -> None:
        """``transport`` is the real transport; observers get it too."""
        self.opened_at = monotonic()
        self.transport = transport
        try:
            self.key = conn_key(self.group, transport)
        except Exception as exc:  # noqa: BLE001
            report("classify", exc)
            self.key = conn_key(self.group, None)
        if self.group.capture_extra:
            from ._extra import snapshot_extra

            self.extra = snapshot_extra(transport)
        self.group.registry._opened(self)
        observer = self.group.observer
        if observer is not None:
            try:
                observer.on_open(self, transport)
            except Exception as exc:  # noqa: BLE001
                report("observer.on_open", exc)

    def close(self, exc: Optional[BaseException], reason: Optional[str] = None) -> None:
        """End the record once; later calls do nothing."""
        if self.closed_at is not None or self.opened_at == 0.0:
            return
        # A pause still open ends with the connection; report it like a resume.
        if self.read_paused_since is not None:
            self.reading_resumed()
        if self.write_paused_since is not None:
            self.writing_resumed()
        now = monotonic()
        if reason is not None:
            self.close_reason = reason
            self.error_type = reason if exc is None else type(exc).__name__
            if reason == TLS_FAILED:
                self.error_type = TLS_FAILED
        elif exc is not None:
            self.close_reason = RESET if isinstance(exc, _RESET_ERRORS) else ERROR
            self.error_type = type(exc).__name__
        elif self.aborted:
            self.close_reason = ABORTED
            self.error_type = ABORTED
        elif self.eof and not self.local_close:
            self.close_reason = EOF
        else:
            self.close_reason = CLOSED
        self.closed_at = now
        self.transport = None
        self.group.registry._closed_record(self)
        observer = self.group.observer
        if observer is not None:
            try:
                observer.on_close(self, exc)
            except Exception as err:  # noqa: BLE001
                report("observer.on_close", err)

    # -- flow-control transitions -----------------------------------------
    # Each returns without effect when the state does not change: a repeated
    # pause is not a second pause.
    def reading_paused(self) -> None:
        if self.read_paused_since is None and self.closed_at is None:
            self.read_paused_since = monotonic()
            self.read_pauses += 1
            self._event("reading.paused")

    def reading_resumed(self) -> None:
        since = self.read_paused_since
        if since is not None:
            self.read_paused_since = None
            paused = monotonic() - since
            self.read_paused_s += paused
            self._event("reading.resumed", paused)

    def writing_paused(self) -> None:
        if self.write_paused_since is None and self.closed_at is None:
            self.write_paused_since = monotonic()
            self.write_pauses += 1
            self._event("writing.paused")

    def writing_resumed(self) -> None:
        since = self.write_paused_since
        if since is not None:
            self.write_paused_since = None
            paused = monotonic() - since
            self.write_paused_s += paused
            self._event("writing.resumed", paused)

    def eof_received(self) -> None:
        if not self.eof:
            self.eof = True
            self._event("eof")

    def _event(self, name: str, seconds: Optional[float] = None) -> None:
        observer = self.group.observer
        if observer is not None:
            try:
                observer.on_event(self, name, seconds)
            except Exception as exc:  # noqa: BLE001
                report("observer.on_event", exc)

    def __repr__(self) -> str:
        return (
            f"<ConnectionRecord {self.group.name}/{self.group.side} rx={self.rx} tx={self.tx} "
            f"read_pauses={self.read_pauses} write_pauses={self.write_pauses} "
            f"end={self.close_reason}>"
        )
