"""The loop methods this package replaces, in one visible, removable place.

Importing ``traced_transport`` hooks the loop classes it knows (asyncio's
selector loop, uvloop's if imported): see ``hooks`` for why that cannot wait
for the first ``traced()`` call. Every replaced method is listed by
:func:`patched` and put back by :func:`unpatch`; each hooked function keeps the
original under ``__traced_transport_original__``. A loop class seen later
(another loop implementation, a subclass defining its own methods) is hooked
the first time a traced factory runs on it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

_MARK = "__traced_transport_original__"
# (method name, maker(original, name) -> hooked function), set by ``hooks``;
# kept here as a callable so this module never imports the hooks it installs.
_table: Callable[[], list[tuple[str, Callable[[Any, str], Any]]]] = list
_seen: set[type] = set()
_patched: list[tuple[type, str, Any]] = []


def register(table: Callable[[], list[tuple[str, Callable[[Any, str], Any]]]]) -> None:
    global _table
    _table = table


def seen(loop_cls: type) -> bool:
    return loop_cls in _seen


def ensure_for_running_loop() -> None:
    loop = asyncio.events._get_running_loop()
    if loop is not None and type(loop) not in _seen:
        ensure(type(loop))


def ensure_known_loops() -> None:
    """Hook the loop classes an app is about to use, before it calls create_connection."""
    if asyncio.SelectorEventLoop not in _seen:
        ensure(asyncio.SelectorEventLoop)
    uvloop = sys.modules.get("uvloop")
    loop_cls = getattr(uvloop, "Loop", None)
    if loop_cls is not None and loop_cls not in _seen:
        ensure(loop_cls)
    ensure_for_running_loop()


def definer(loop_cls: type, name: str) -> Any:
    """The class in ``loop_cls``'s MRO that defines ``name`` (None if none does)."""
    for klass in loop_cls.__mro__:
        if name in vars(klass):
            return klass
    return None


def ensure(loop_cls: type) -> None:
    """Hook ``loop_cls``'s methods where they are defined, so subclasses and
    ``super()`` calls go through the hook too; an extension type that cannot be
    patched is shadowed on ``loop_cls`` itself (uvloop.Loop over uvloop.loop.Loop)."""
    _seen.add(loop_cls)
    for name, make in _table():
        owner = definer(loop_cls, name)
        if owner is None:
            continue
        current = vars(owner)[name]
        if hasattr(current, _MARK):
            continue
        hooked = make(current, name)
        setattr(hooked, _MARK, current)
        for target in (owner, loop_cls):
            own = vars(target).get(name)
            if own is not None and hasattr(own, _MARK):
                break
            try:
                setattr(target, name, hooked)
            except (TypeError, AttributeError):
                continue  # an extension type: try the class itself next
            _patched.append((target, name, own))
            break


def patched() -> list[str]:
    """Every loop method replaced now, as ``"module.Class.method"``."""
    return [f"{cls.__module__}.{cls.__qualname__}.{name}" for cls, name, _ in _patched]


def unpatch() -> None:
    """Put back every replaced loop method.

    Factories made by ``traced()`` keep working for connections already open;
    a loop call made afterwards with a traced factory returns ``(real
    transport, wrapper)`` until the next ``traced()`` call or
    ``instrument()`` hooks the loops again.
    """
    while _patched:
        loop_cls, name, own = _patched.pop()
        hooked = loop_cls.__dict__.get(name)
        if hooked is not None and hasattr(hooked, _MARK):
            if own is None:
                delattr(loop_cls, name)
            else:
                setattr(loop_cls, name, own)
    _seen.clear()


# The name the tests have always used.
remove_all = unpatch
