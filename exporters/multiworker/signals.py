"""The one patch multiworker makes: ``signal.raise_signal``, while a worker exports.

uvicorn ends a worker after its graceful shutdown on ``SIGTERM`` by re-raising the
signal with ``signal.raise_signal()`` once the default handler is back: the process
then dies without ``atexit``, and the worker's last counts would be lost. While the
patch is on, ``raise_signal`` of a deadly signal whose handler is the default one
first runs the hook (the final write, bounded in time), then the original.

Visible and removable: :func:`raise_signal_patched` says whether it is on,
:func:`unpatch_raise_signal` puts the original back (a worker's ``close()`` does it),
and the replacement carries ``__wrapped__`` (the original), as ``functools.wraps``
does. Any other signal, or a signal with a handler, goes straight to the original.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Optional

__all__ = ["DEADLY", "original_raise_signal", "patch_raise_signal", "raise_signal_patched", "unpatch_raise_signal"]

logger = logging.getLogger("traced_transport.exporters.multiworker")

DEADLY = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT") if hasattr(signal, n))

# What was there when this module was first imported; every path that really raises uses it.
original_raise_signal = signal.raise_signal
_hook: Optional[Callable[[int], None]] = None
_lock = threading.Lock()


def _raise_signal(signalnum: int) -> None:
    hook = _hook
    if hook is not None:
        try:
            if signalnum in DEADLY and signal.getsignal(signalnum) == signal.SIG_DFL:
                hook(signalnum)
        except Exception:
            logger.warning("multiworker: final write before signal %s failed", signalnum, exc_info=True)
    return original_raise_signal(signalnum)


_raise_signal.__doc__ = original_raise_signal.__doc__
_raise_signal.__wrapped__ = original_raise_signal  # type: ignore[attr-defined]


def patch_raise_signal(hook: Callable[[int], None]) -> None:
    """Put the patched ``signal.raise_signal`` in place, ``hook(signalnum)`` running before a deadly default."""
    global _hook
    with _lock:
        _hook = hook
        if signal.raise_signal is not _raise_signal:
            signal.raise_signal = _raise_signal


def unpatch_raise_signal() -> bool:
    """Restore the original ``signal.raise_signal``; False when someone replaced ours since (it is left alone)."""
    global _hook
    with _lock:
        _hook = None
        if signal.raise_signal is _raise_signal:
            signal.raise_signal = original_raise_signal
            return True
        return False


def raise_signal_patched() -> bool:
    """Whether ``signal.raise_signal`` is multiworker's replacement right now."""
    return signal.raise_signal is _raise_signal
