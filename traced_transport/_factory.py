"""``traced()``: wrap a protocol factory so every connection it serves is recorded."""
from __future__ import annotations

from asyncio.events import _get_running_loop
from typing import Any, Callable, Optional

from . import _hooks, _protocols
from ._record import ConnectionRecord, Group, Observer
from ._registry import Registry, default_registry

SIDES = ("server", "client")


class TracedProtocolFactory:
    """A protocol factory, usable anywhere asyncio takes one."""

    __slots__ = ("protocol_factory", "group", "__weakref__")

    def __init__(self, protocol_factory: Callable[..., Any], group: Group) -> None:
        self.protocol_factory = protocol_factory
        self.group = group

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        app = self.protocol_factory(*args, **kwargs)
        loop = _get_running_loop()
        loop_cls = type(loop)
        if loop_cls not in _hooks._seen and loop is not None:
            _hooks.ensure(loop_cls)
        return _protocols.wrap(app, ConnectionRecord(self.group), loop)

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
    """
    if not callable(protocol_factory):
        raise TypeError(f"protocol_factory must be callable, got {protocol_factory!r}")
    if side not in SIDES:
        raise ValueError(f"side must be 'server' or 'client', got {side!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    _hooks.ensure_known_loops()
    if observer is None and registry is None:
        # The default: OpenTelemetry through the global providers.
        from ._telemetry import default_telemetry

        observer = default_telemetry()
    if registry is None:
        registry = getattr(observer, "registry", None) or default_registry
    group = Group(name, side, registry, observer, capture_extra)
    return TracedProtocolFactory(protocol_factory, group)
