"""``traced()``: wrap a protocol factory so every connection it serves is recorded."""

from __future__ import annotations

import logging
import os
import threading
from asyncio.events import _get_running_loop
from collections.abc import Callable
from typing import Any, Optional

from ..datapath import protocols as _protocols
from ..datapath.record import ConnectionRecord, Group, Observer
from ..datapath.registry import Registry, default_registry
from . import patches

SIDES = ("server", "client")

# ``name`` is a metric label: every distinct value is another set of series in
# every backend. A few per process is the intended use (one per listener or
# client pool); thousands mean a per-request or per-peer value slipped in. The
# cap turns that misuse into an error at the traced() call, not into a metrics
# bill. Names already seen are always accepted.
DEFAULT_MAX_NAMES = 100
MAX_NAMES_ENV = "TRACED_TRANSPORT_MAX_NAMES"
_names_lock = threading.Lock()
_names: set[str] = set()


def _cap_from_env() -> int:
    raw = os.environ.get(MAX_NAMES_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_NAMES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        # Not worth failing the app's import over: say so and keep the default.
        logging.getLogger("traced_transport").warning(
            "%s must be a positive integer, got %r: using %d", MAX_NAMES_ENV, raw, DEFAULT_MAX_NAMES
        )
        return DEFAULT_MAX_NAMES
    return value


_max_names = _cap_from_env()


def set_max_transport_names(limit: int) -> int:
    """Allow at most ``limit`` distinct ``transport.name`` values in this process; returns the previous limit.

    The default is 100, or the ``TRACED_TRANSPORT_MAX_NAMES`` environment variable.
    Lowering it below the number of names already in use only refuses new ones.
    """
    global _max_names
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"the limit must be a positive integer, got {limit!r}")
    with _names_lock:
        previous, _max_names = _max_names, limit
    return previous


def transport_names() -> frozenset[str]:
    """The distinct ``transport.name`` values ``traced()`` has accepted so far."""
    with _names_lock:
        return frozenset(_names)


def _admit_name(name: str) -> None:
    if name in _names:  # the common case, without the lock (set reads are atomic)
        return
    with _names_lock:
        if name in _names:
            return
        if len(_names) >= _max_names:
            raise ValueError(
                f"traced(name={name!r}) would be distinct transport.name number {len(_names) + 1}, over the "
                f"limit of {_max_names}. transport.name is a metric label: use a constant per listener or "
                f"client pool, never a per-connection, per-peer or per-request value. If you really need "
                f"more names, raise the limit with traced_transport.set_max_transport_names(n) or the "
                f"{MAX_NAMES_ENV} environment variable."
            )
        _names.add(name)


class _LoopRecord(ConnectionRecord):
    """A ConnectionRecord made without arguments, its fields set by the factory (see ``_make``).

    ``object.__init__`` as a C slot: no frame, and no ``object.__new__`` call, which costs
    an argument tuple. Only the factory makes these; to everything else it is a ConnectionRecord.
    """

    __slots__ = ()
    __init__ = object.__init__


class TracedProtocolFactory:
    """A protocol factory, usable anywhere asyncio takes one."""

    __slots__ = ("protocol_factory", "group", "_learned", "_loop_cls", "__weakref__")

    def __init__(self, protocol_factory: Callable[..., Any], group: Group) -> None:
        self.protocol_factory = protocol_factory
        self.group = group
        # (the app class of the last connection, the wrapper class for it): a factory nearly
        # always makes one class of protocol. One tuple, so that a loop on another thread never
        # pairs one class with another's wrapper. (An app protocol traced already is never
        # remembered here.)
        self._learned: tuple[Optional[type], Any] = (None, None)
        # The loop class __call__ last ran on (the hooks hand the loops they know _make instead).
        self._loop_cls: Optional[type] = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        loop = _get_running_loop()
        if loop is not None and type(loop) is not self._loop_cls:
            # A new kind of loop: its hooks, which hand the loop _make from then on.
            if type(loop) not in patches._seen:
                patches.ensure(type(loop))
            self._loop_cls = type(loop)
        return self._wrap(self.protocol_factory(*args, **kwargs))

    def _make(self) -> Any:
        """The wrapped protocol for what the app's factory makes without arguments.

        The loop hooks hand the loop this bound method in place of the factory (the loops call
        it without arguments): a plain method call per connection, where ``__call__`` costs the
        interpreter's generic call slot and an argument tuple and keyword dict. Only a loop
        whose hooks are in place gets it, so it need not check the loop's.
        """
        app = self.protocol_factory()
        learned = self._learned
        if type(app) is not learned[0]:
            return self._wrap_new_class(app)
        # The wrapper and ConnectionRecord(group), made here without a frame
        # each: once per connection. The record's fields are __init__'s (a test
        # compares them).
        rec = _LoopRecord()
        rec.group = self.group
        rec.key = None  # set when it opens
        rec.rx = 0
        rec.tx = 0
        rec.opened_at = 0.0
        rec.closed_at = None
        rec.close_reason = None
        rec.error_type = None
        rec.state = None
        rec._transport_ref = None
        rec._flags = 0
        rec._rare = None
        rec.eof_at = None
        wrapper: Any = learned[1]()  # protocols.new_wrapper, inline
        wrapper._app = app
        wrapper._rec = rec
        wrapper._proxy = None
        return wrapper

    def _wrap(self, app: Any) -> Any:
        """The wrapped protocol for ``app`` (``app`` itself if it is traced already)."""
        learned = self._learned
        if type(app) is not learned[0]:
            return self._wrap_new_class(app)
        return _protocols.new_wrapper(learned[1], app, ConnectionRecord(self.group))

    def _wrap_new_class(self, app: Any) -> Any:
        # A new app class: find its wrapper class once (the same on every loop). An app
        # protocol that is traced already is handed back as is, and its class is not
        # remembered, so each of its instances comes here.
        cls = _protocols.wrapper_class_in(self.group, app)  # the running loop's, by default
        if cls is _protocols._AlreadyTraced:
            return app
        self._learned = (type(app), cls)
        return _protocols.new_wrapper(cls, app, ConnectionRecord(self.group))

    def __repr__(self) -> str:
        return f"<traced {self.protocol_factory!r} name={self.group.name!r} side={self.group.side!r}>"


def traced(
    protocol_factory: Callable[..., Any],
    *,
    name: str = "transport",
    side: str = "server",
    registry: Optional[Registry] = None,
    observer: Optional[Observer] = None,
    capture_extra: bool = False,
    span_policy: Any = None,
) -> TracedProtocolFactory:
    """Wrap ``protocol_factory`` so that its connections get proxy transports.

    ``name`` becomes the ``transport.name`` attribute (keep it a constant: it is a
    metric label); ``side`` is ``"server"`` or ``"client"``.

    With neither ``registry`` nor ``observer``, connections are recorded in the
    default registry and exported through OpenTelemetry's global providers
    (see :class:`Telemetry`). ``observer=Telemetry(...)`` chooses providers and
    options; ``registry=`` alone records without any OpenTelemetry call. ``capture_extra=True``
    keeps a snapshot of ``get_extra_info`` (peer, TLS, certificate) in each
    record's ``extra``; it is off by default because it costs memory and time
    per connection.

    ``span_policy`` chooses which of these connections get a span, decided when
    each ends (e.g. ``"errors,slower_than=5"``; see
    ``traced_transport.telemetry.policy``); None: the observer's policy.

    At most 100 distinct names are accepted per process (see
    :func:`set_max_transport_names`); one more raises ``ValueError``.
    """
    if not callable(protocol_factory):
        raise TypeError(f"protocol_factory must be callable, got {protocol_factory!r}")
    if side not in SIDES:
        raise ValueError(f"side must be 'server' or 'client', got {side!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    _admit_name(name)
    patches.ensure_known_loops()
    if observer is None and registry is None:
        # The default: OpenTelemetry through the global providers.
        from ..telemetry.telemetry import default_telemetry

        observer = default_telemetry()
    if registry is None:
        registry = getattr(observer, "registry", None) or default_registry
    if span_policy is not None:
        from ..telemetry.policy import SpanPolicy

        if not isinstance(span_policy, SpanPolicy):
            span_policy = SpanPolicy(span_policy)
    group = Group(name, side, registry, observer, capture_extra, span_policy)
    return TracedProtocolFactory(protocol_factory, group)
