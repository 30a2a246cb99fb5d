"""Proxy transports: what the app holds instead of the real transport.

A proxy class is made per real transport class, so that it is an instance of
exactly the asyncio transport ABCs the real one is (``isinstance`` checks keep
their answers), its name contains the real class's name, and it has exactly
the methods the real class has (``hasattr`` keeps its answers too). Calls are
forwarded unchanged; the few that carry bytes or flow-control changes also add
to the connection's record, after the real call returned, so that a call that
raises records nothing. Anything else, private attributes included (asyncio
reaches for ``_start_tls_compatible``, ``_sendfile_compatible``, ``_sock``,
``_force_close``, ``_wait``...), reaches the real transport too:

* every name the real class has (methods, properties, slots, class
  attributes), and every private name its methods' code mentions (which
  covers the instance attributes it sets: ``self._sock = ...``), gets a
  forwarder on the proxy class;
* setting an attribute on a proxy sets it on the real transport, and a new
  name gets a forwarder on the proxy class from then on.

A forwarder for a name the real transport lacks raises AttributeError, as
the real transport does, so ``hasattr`` keeps its answers. The one thing a
proxy does not see: an attribute that code outside the real class sets on the
real transport directly (not through the proxy) under a name the class never
mentions.

No ``__getattr__``: on CPython 3.10/3.11 a class with ``__getattr__`` gets no
specialised attribute access at all (every ``proxy.write`` lookup, and every
``self._transport``/``self._rec`` inside it, went through
``slot_tp_getattr_hook``), which made the proxy cost more than the forwarding
it does; ``bench/echo_callgrind.py`` shows the difference with its
``reference`` and ``reference_getattr`` modes. A real class with its own
``__getattr__`` or ``__getattribute__`` (another proxy, say) still gets a
``__getattr__`` proxy.

Why one module of this size: the forwarders and the class builder
(``proxy_class_for``) decide together which names a proxy class has; apart,
the rule "exactly the real class's names" would have two places to go wrong.
"""

from __future__ import annotations

import asyncio
from asyncio import transports as _transports
from collections.abc import Callable
from types import FunctionType
from typing import Any

from .record import _ABORTED, _EOF, _LOCAL_CLOSE, ConnectionRecord


def _nbytes(data: Any) -> int:
    # Never raises: a counting error must not turn a successful write into an
    # exception the app would not have seen unwrapped.
    try:
        return memoryview(data).nbytes
    except Exception:  # noqa: BLE001
        try:
            return len(data)
        except Exception:  # noqa: BLE001
            return 0


_OWN_SLOTS = frozenset({"_transport", "_rec", "_pipes"})


class TracedTransport:
    """Behaviour shared by every proxy class; see :func:`make_proxy`."""

    __slots__ = ()
    _transport: Any
    _rec: ConnectionRecord
    _pipes: dict[int, Any]  # subprocess transports' proxies only: fd -> pipe proxy
    # Made as an instance of the class's state class, then moved to the class (see make_proxy):
    # object's own __init__ as a C slot, not a real transport base class's (_FlowControlMixin's
    # would set attributes through our __setattr__).
    __init__ = object.__init__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._transport!r}>"

    @property
    def traced_record(self) -> ConnectionRecord:
        """The connection's record (public, for apps that want their own counts)."""
        return self._rec

    @property
    def traced_inner(self) -> Any:
        """The real transport."""
        return self._transport

    def __delattr__(self, name: str) -> None:
        if name in _OWN_SLOTS:
            object.__delattr__(self, name)
        else:
            delattr(self._transport, name)
            _note_restored_method(self, name)


class _ForwardExplicit(TracedTransport):
    """Base of proxies whose class forwards every known name explicitly."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN_SLOTS:
            object.__setattr__(self, name, value)
            return
        setattr(self._transport, name, value)
        cls = type(self)
        if not hasattr(cls, name):
            # A new name: readable through every proxy of this class from now on.
            type.__setattr__(getattr(cls, "_replaced_base", cls), name, _forward_attribute(name))
        else:
            _note_replaced_method(self, name)


class _ForwardUnknown(TracedTransport):
    """Base of proxies over a class that resolves names itself (``__getattr__``)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the proxy does not have (or unset inherited
        # slots such as _FlowControlMixin's _loop / _protocol_paused).
        if name in _OWN_SLOTS:
            raise AttributeError(name)
        return getattr(self._transport, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN_SLOTS:
            object.__setattr__(self, name, value)
        else:
            setattr(self._transport, name, value)
            _note_replaced_method(self, name)


# -- methods replaced through a proxy -------------------------------------------
# `transport.pause_reading = mock.Mock()` (mock.patch.object, test doubles) sets
# the attribute on the real transport; the proxy's class would go on answering
# `transport.pause_reading` with its own forwarder, so reading back what was set
# gave something else. Such a proxy is moved to a subclass (same slots, so
# __class__ can change; isinstance and the name stay) where those names are
# read from the real transport. The common path never pays for this.

_replaced_classes: dict[tuple[type, frozenset[str]], type] = {}


def _with_replaced(proxy: Any, names: frozenset[str]) -> None:
    cls = type(proxy)
    base = getattr(cls, "_replaced_base", cls)
    if not names:
        object.__setattr__(proxy, "__class__", base)
        return
    sub = _replaced_classes.get((base, names))
    if sub is None:
        ns: dict[str, Any] = {name: _forward_attribute(name) for name in names}
        ns.update(
            __slots__=(),
            __module__=base.__module__,
            __qualname__=base.__qualname__,
            __doc__=base.__doc__,
            _replaced_base=base,
            _replaced_names=names,
        )
        sub = _replaced_classes[(base, names)] = type(base.__name__, (base,), ns)
    object.__setattr__(proxy, "__class__", sub)


def _note_replaced_method(proxy: Any, name: str) -> None:
    cls = type(proxy)
    replaced: frozenset[str] = getattr(cls, "_replaced_names", frozenset())
    if name not in replaced and isinstance(getattr(cls, name, None), FunctionType):
        _with_replaced(proxy, replaced | {name})


def _note_restored_method(proxy: Any, name: str) -> None:
    replaced: frozenset[str] = getattr(type(proxy), "_replaced_names", frozenset())
    if name in replaced:
        _with_replaced(proxy, replaced - {name})


# -- forwarding methods, installed on a proxy class only where the real class has them --


def write(self: TracedTransport, data: Any) -> None:
    self._transport.write(data)
    self._rec.tx += len(data) if type(data) is bytes else _nbytes(data)


def writelines(self: TracedTransport, list_of_data: Any) -> None:
    if type(list_of_data) is not list and type(list_of_data) is not tuple:
        list_of_data = list(list_of_data)  # counted below, so consume an iterator once
    n = 0
    for data in list_of_data:
        n += len(data) if type(data) is bytes else _nbytes(data)
    self._transport.writelines(list_of_data)
    self._rec.tx += n


# A marker for "the app did not pass this argument": forwarders pass on exactly
# the arguments they were given (a mock in the app's tests sees the same call).
_UNSET: Any = object()


def sendto(self: TracedTransport, data: Any, addr: Any = _UNSET) -> None:
    if addr is _UNSET:
        self._transport.sendto(data)
    else:
        self._transport.sendto(data, addr)
    self._rec.tx += len(data) if type(data) is bytes else _nbytes(data)


def pause_reading(self: TracedTransport) -> None:
    self._transport.pause_reading()
    self._rec.reading_paused()


def resume_reading(self: TracedTransport) -> None:
    self._transport.resume_reading()
    self._rec.reading_resumed()


def close(self: TracedTransport) -> None:
    rec = self._rec
    flags = rec._flags
    if not flags & _EOF:  # we closed first (the flags' properties would cost a frame each)
        rec._flags = flags | _LOCAL_CLOSE
    if rec.group.tcp_info:  # TCP_INFO: a TLS transport lets its socket go before the record closes
        rec.notify("on_closing", self._transport, False)
    self._transport.close()


def abort(self: TracedTransport) -> None:
    rec = self._rec
    rec._flags |= _ABORTED
    if rec.group.tcp_info:  # as in close()
        rec.notify("on_closing", self._transport, False)
    self._transport.abort()


def wrapper_of(proxy: TracedTransport) -> Any:
    """Our wrapping protocol installed for ``proxy``'s open connection, or None.

    Found through the real transport rather than kept on the proxy: the proxy
    then holds nothing but the transport and the record (no proxy <-> wrapper
    cycle, one field less to set per connection)."""
    rec = proxy._rec
    if rec.closed_at is not None:
        return None
    try:
        protocol = proxy._transport.get_protocol()
    except Exception:  # noqa: BLE001 - a transport without one: nothing of ours there
        return None
    if getattr(type(protocol), "_traced_wrapper", False) and protocol._rec is rec:
        return protocol
    return None


def set_protocol(self: TracedTransport, protocol: Any) -> None:
    wrapper = wrapper_of(self)
    if wrapper is None:
        # Connection over, or a pipe of a subprocess: nothing of ours in between.
        self._transport.set_protocol(protocol)
        return
    # The wrapper decides: re-point itself, or install a wrapper of another
    # read path (plain <-> buffered) so the real transport picks the path it
    # would pick for `protocol`.
    wrapper._replace_app(protocol, self)


def get_protocol(self: TracedTransport) -> Any:
    protocol = self._transport.get_protocol()
    if getattr(type(protocol), "_traced_wrapper", False):
        return protocol._app
    return protocol


def get_extra_info(self: TracedTransport, name: str, default: Any = _UNSET) -> Any:
    if default is _UNSET:
        return self._transport.get_extra_info(name)
    return self._transport.get_extra_info(name, default)


def get_pipe_transport(self: TracedTransport, fd: int) -> Any:
    pipe = self._transport.get_pipe_transport(fd)
    if pipe is None or isinstance(pipe, TracedTransport):
        # Already a proxy (the pipe's own factory was traced): hand out the very
        # object the loop gave the pipe's protocol, not a proxy over a proxy.
        return pipe
    cache = self._pipes
    proxy = cache.get(fd)
    if proxy is None or proxy._transport is not pipe:
        proxy = make_proxy(pipe, self._rec)
        cache[fd] = proxy
    return proxy


def _forward(name: str) -> Callable[..., Any]:
    def forward(self: TracedTransport, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._transport, name)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = name
    return forward


def _forward_attribute(name: str) -> property:
    def fget(self: TracedTransport) -> Any:
        return getattr(self._transport, name)

    def fset(self: TracedTransport, value: Any) -> None:
        setattr(self._transport, name, value)

    def fdel(self: TracedTransport) -> None:
        delattr(self._transport, name)

    return property(fget, fset, fdel, f"Forwarded to the real transport's {name}.")


def _resolves_names_itself(inner_cls: type) -> bool:
    # inner_cls.__getattribute__ is the class's own (unbound, from its MRO); mypy
    # takes it for the metaclass's bound one.
    return (
        getattr(inner_cls, "__getattr__", None) is not None or inner_cls.__getattribute__ is not object.__getattribute__  # type: ignore[comparison-overlap]
    )


_COUNTING = {
    f.__name__: f
    for f in (
        write,
        writelines,
        sendto,
        pause_reading,
        resume_reading,
        close,
        abort,
        set_protocol,
        get_protocol,
        get_extra_info,
        get_pipe_transport,
    )
}

# Plain forwarders for the rest of the public transport API. Listing them
# (rather than leaving them to __getattr__) keeps them fast and visible.
_PLAIN = (
    "write_eof",
    "can_write_eof",
    "is_closing",
    "is_reading",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "set_write_buffer_limits",
    "get_read_buffer_size",
    "get_pid",
    "get_returncode",
    "send_signal",
    "terminate",
    "kill",
)

# The public asyncio transport ABCs, most derived first.
_ABCS = (
    _transports._FlowControlMixin,
    asyncio.Transport,
    asyncio.ReadTransport,
    asyncio.WriteTransport,
    asyncio.DatagramTransport,
    asyncio.SubprocessTransport,
    asyncio.BaseTransport,
)

_classes: dict[type, type] = {}
# Proxy class -> the class of its slots (see _state_class).
_states: dict[type, type] = {}
# Proxy classes with a _pipes slot (subprocess transports).
_with_pipes: set[type] = set()


def _bases_for(inner_cls: type) -> tuple[type, ...]:
    chosen: list[type] = []
    for abc in _ABCS:
        if issubclass(inner_cls, abc) and not any(issubclass(c, abc) for c in chosen):
            chosen.append(abc)
    return tuple(chosen)


def _code_names(code: Any, out: set[str]) -> None:
    out.update(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            _code_names(const, out)


def _attribute_names(inner_cls: type) -> set[str]:
    """Names worth forwarding: the class's own, and the private names its methods use."""
    names = set(dir(inner_cls))
    used: set[str] = set()
    for klass in inner_cls.__mro__:
        if klass is object:
            continue
        for value in vars(klass).values():
            if isinstance(value, property):
                funcs: tuple[Any, ...] = (value.fget, value.fset, value.fdel)
            else:
                funcs = (getattr(value, "__func__", value),)
            for func in funcs:
                code = getattr(func, "__code__", None)
                if code is not None and hasattr(code, "co_names"):
                    _code_names(code, used)
    names.update(n for n in used if n.startswith("_") and not n.startswith("__"))
    return names


def proxy_class_for(inner_cls: type) -> type:
    """The proxy class for transports of class ``inner_cls``, built on first use and cached.

    The app must not be able to tell a proxy from the real transport, and the
    proxy must cost no more than an explicit forwarding method per call. So the
    class is built from what ``inner_cls`` has, in this order (the first step
    that defines a name wins: each later step skips names already in ``ns``):

    1. the counting methods (``write``, ``pause_reading``, ``close``...), only
       those ``inner_cls`` has, so ``hasattr(proxy, "sendto")`` answers as the
       real transport would;
    2. plain forwarders for the rest of the public transport API it has;
    3. forwarders for every method of the asyncio ABCs it derives from: those
       become the proxy's bases too (for ``isinstance``), and their methods,
       inherited as is, would act on the proxy's own empty state;
    4. unless ``inner_cls`` resolves names itself (``__getattr__`` or its own
       ``__getattribute__``: then the proxy falls back to ``__getattr__``), a
       forwarder for every other name: its attributes, and the private names
       its methods' code mentions, which finds the instance attributes asyncio
       and the loops reach for (``_sock``, ``_protocol_paused``...).

    The class gets only the proxy's own slots (no ``__dict__``: every other
    attribute write goes to the real transport), the ABC bases after the
    forwarding base (so its ``__setattr__``/``__getattr__`` come first in the
    MRO), and a name containing the real class's (CPython's tests check that an
    SSL transport's class name contains "ssl").
    """
    cls = _classes.get(inner_cls)
    if cls is not None:
        return cls
    bases = _bases_for(inner_cls)
    # The proxy's own state; __weakref__ because a real transport can be weakly referenced, so the proxy must be too.
    slots = ["_transport", "_rec", "__weakref__"]
    ns: dict[str, Any] = {"__module__": __name__, "__doc__": f"Traced proxy over {inner_cls.__qualname__}."}
    if hasattr(inner_cls, "get_pipe_transport"):
        slots.append("_pipes")  # subprocess transports: one proxy per pipe, handed out again on each call
    state = _state_class(inner_cls, bases, tuple(slots))
    # 1. Counting methods, each only where the real class has it.
    for name, fn in _COUNTING.items():
        if hasattr(inner_cls, name):
            ns[name] = fn
    # 2. The rest of the public API, forwarded as is.
    for name in _PLAIN:
        if hasattr(inner_cls, name):
            ns[name] = _forward(name)
    # 3. Methods the ABC bases define (e.g. _FlowControlMixin's private helpers)
    # would act on the proxy's own unset state: forward them too.
    for base in bases:
        for klass in base.__mro__:
            if klass is object:
                continue
            for name, value in vars(klass).items():
                if name.startswith("__") or name in ns or not callable(value):
                    continue
                ns[name] = _forward(name)
    # 4. Everything else. A class that answers unknown names itself cannot be
    # listed in advance: its proxy asks it at each lookup (__getattr__), slower
    # but exact. Otherwise every name is forwarded explicitly.
    if _resolves_names_itself(inner_cls):
        base = _ForwardUnknown
    else:
        base = _ForwardExplicit
        # Everything else the real class has, forwarded by name: methods as
        # methods; properties, slots (the ABC bases' _loop, _extra... included),
        # plain class attributes and instance attributes as properties.
        for name in sorted(_attribute_names(inner_cls)):
            if name.startswith("__") or name in ns or name in _OWN_SLOTS or name in vars(TracedTransport):
                continue
            try:
                value = getattr(inner_cls, name)
            except AttributeError:
                value = None
            if callable(value) and not isinstance(value, type):
                ns[name] = _forward(name)
            else:
                ns[name] = _forward_attribute(name)
    ns["__slots__"] = ()
    # The forwarding base first, so its __setattr__/__getattr__ come before anything the ABCs define.
    cls = type(f"Traced{inner_cls.__name__}", (base, state), ns)
    _states[cls] = state
    if "_pipes" in slots:
        _with_pipes.add(cls)
    _classes[inner_cls] = cls
    return cls


def _state_class(inner_cls: type, bases: tuple[type, ...], slots: tuple[str, ...]) -> type:
    """The class that holds a proxy class's slots: the ABC bases and the slots, and nothing else.

    A proxy is made as an instance of it, its slots stored by the interpreter (no ``__setattr__``
    here: its attribute stores are the specialised slot stores), and then moved to the proxy class,
    which adds no slots of its own and so may take the instance over. In the proxy class, with the
    forwarding ``__setattr__``, each slot costs a call to its descriptor's ``__set__`` instead.
    Nobody else sees an instance of this class.
    """
    ns: dict[str, Any] = {"__slots__": slots, "__module__": __name__, "__init__": object.__init__}
    ns["__qualname__"] = ns["__doc__"] = f"_Traced{inner_cls.__name__}State"
    return type(f"_Traced{inner_cls.__name__}State", bases or (object,), ns)


# Real transport class -> (its proxy's state class, the proxy class, whether it has a _pipes slot).
_recipes: dict[type, tuple[Any, ...]] = {}


def _recipe_for(inner_cls: type) -> tuple[Any, ...]:
    cls = proxy_class_for(inner_cls)
    found = _recipes[inner_cls] = (_states[cls], cls, cls in _with_pipes)
    return found


def make_proxy(inner: Any, rec: ConnectionRecord) -> Any:
    state, cls, pipes = _recipes.get(type(inner)) or _recipe_for(type(inner))
    # Made in its state class and moved to its own (see _state_class); the wrapping protocol's
    # connection_made does the same without this frame.
    proxy = state()
    proxy._transport = inner
    proxy._rec = rec
    if pipes:
        proxy._pipes = {}
    proxy.__class__ = cls
    return proxy


def is_proxy(obj: Any) -> bool:
    return isinstance(obj, TracedTransport)


def unwrap(transport: Any) -> Any:
    """The real transport under any number of proxies."""
    while isinstance(transport, TracedTransport):
        transport = transport._transport
    return transport
