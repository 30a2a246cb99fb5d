"""Zero-code: trace every transport the app's loops create, without touching its code.

``instrument()`` hooks the loop classes' factory-taking methods (asyncio's, and
uvloop's when it is installed) so that a protocol factory the app did not wrap
itself goes through ``traced()``. ``uninstrument()`` removes every hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any, Optional

from ..datapath.record import Group, Observer
from ..datapath.registry import Registry
from . import hooks as _hooks
from . import patches
from .factory import TracedProtocolFactory, traced

_NETWORK = frozenset(
    {
        "create_server",
        "create_unix_server",
        "connect_accepted_socket",
        "create_connection",
        "create_unix_connection",
        "create_datagram_endpoint",
    }
)
_LOCAL = frozenset({"connect_read_pipe", "connect_write_pipe", "subprocess_exec", "subprocess_shell"})

_lock = threading.Lock()


class _Auto:
    """What instrument() was asked for; consulted by the loop hooks on each call."""

    def __init__(
        self,
        server_name: Optional[str],
        client_name: Optional[str],
        pipes: bool,
        observer: Optional[Observer],
        registry: Optional[Registry],
    ) -> None:
        self.server_name = server_name
        self.client_name = client_name
        self.methods = _NETWORK | (_LOCAL if pipes else frozenset())
        self.observer = observer
        self.registry = registry
        self._groups: dict[str, Group] = {}

    def wrap_call(
        self, method: str, side: Optional[str], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if method not in self.methods:
            return args, kwargs
        if args:
            factory, rest = args[0], args[1:]
        elif "protocol_factory" in kwargs:
            factory, rest = kwargs["protocol_factory"], ()
        else:
            return args, kwargs
        if isinstance(factory, TracedProtocolFactory) or not callable(factory):
            return args, kwargs
        if getattr(factory, "__module__", None) == "asyncio.base_subprocess":
            # asyncio's subprocess transport connecting its own stdin/stdout/
            # stderr: those pipes belong to the subprocess connection (traced,
            # with their bytes, when pipes=True); tracing them again counted
            # every subprocess as 1 + its pipes, and its bytes twice.
            return args, kwargs
        if side is None:  # a datagram endpoint: a client when it has a remote address
            remote = kwargs.get("remote_addr", rest[1] if len(rest) > 1 else None)
            side = "client" if remote is not None else "server"
        if (self.server_name if side == "server" else self.client_name) is None:
            return args, kwargs  # tracing() asked for the other side only
        wrapped = self._factory(factory, side)
        if args:
            return (wrapped,) + rest, kwargs
        kwargs = dict(kwargs, protocol_factory=wrapped)
        return args, kwargs

    def _factory(self, factory: Any, side: str) -> TracedProtocolFactory:
        group = self._groups.get(side)
        if group is None:
            name = self.server_name if side == "server" else self.client_name
            # name is not None: wrap_call() returned before this for a side without one.
            group = traced(factory, name=name, side=side, observer=self.observer, registry=self.registry).group  # type: ignore[arg-type]
            self._groups[side] = group
        return TracedProtocolFactory(factory, group)


def instrument(
    *,
    server_name: str = "server",
    client_name: str = "client",
    pipes: bool = False,
    observer: Optional[Observer] = None,
    registry: Optional[Registry] = None,
) -> None:
    """Trace every server and client transport created on any asyncio or uvloop loop.

    Server connections get ``transport.name=server_name``, client connections
    ``client_name`` (``server.port`` tells listeners apart). ``pipes=True`` also
    traces pipes and subprocesses. Calling it again replaces the options;
    factories the app wrapped with ``traced()`` itself are left as they are.
    """
    with _lock:
        _hooks.auto = _Auto(server_name, client_name, pipes, observer, registry)
        patches.ensure(asyncio.BaseEventLoop)
        patches.ensure(asyncio.SelectorEventLoop)
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            uvloop = None
        if uvloop is not None:
            patches.ensure(uvloop.Loop)


@contextlib.contextmanager
def tracing(
    *,
    server_name: Optional[str] = None,
    client_name: Optional[str] = None,
    pipes: bool = False,
    observer: Optional[Observer] = None,
    registry: Optional[Registry] = None,
) -> Iterator[None]:
    """``instrument()`` for the loop calls made inside this block (this task) only.

    Servers created inside the block are traced as ``server_name``, outgoing
    connections as ``client_name``; a side whose name is None is left alone.
    The scope is a context variable, so it follows the code inside the block
    across ``await`` and into the tasks created there (a server's connection
    handlers included, when ``client_name`` is set). It is how the framework
    helpers (``traced_transport.hypercorn``, ``.websockets``, ``.aiohttp``)
    reach protocol factories that the framework creates internally.
    Factories already wrapped with ``traced()`` are left as they are, and
    inside the block the scope wins over ``instrument()``.
    """
    patches.ensure_known_loops()
    token = _hooks.scope.set(_Auto(server_name, client_name, pipes, observer, registry))
    try:
        yield
    finally:
        _hooks.scope.reset(token)


def uninstrument() -> None:
    """Stop tracing factories the app did not wrap itself; idempotent.

    The loop hooks stay: they pass untraced calls straight through, and
    ``loop.create_connection(traced(f), ...)`` needs them in place *before*
    the call, since Python looks the method up before it evaluates
    ``traced(f)``. ``traced_transport.unpatch()`` removes them."""
    with _lock:
        _hooks.auto = None


def is_instrumented() -> bool:
    return _hooks.auto is not None
