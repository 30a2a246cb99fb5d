"""Telemetry must never hurt the app: failures are logged, rate-limited, and swallowed.

:class:`RateLimitedLog` is the one rate-limited logger of the project: ``report()``
uses it for failures in the data path, and ``traced_transport.exporters`` (the scrape
endpoint, the histogram bridge, multiworker) make their own instances over their own
loggers (``traced_transport`` cannot import the exporters, so it lives here).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

logger = logging.getLogger("traced_transport")


class RateLimitedLog:
    """Log at most once per ``interval`` seconds per ``site``; count the rest and say so in the next record.

    A broken exporter called on every connection must not flood the app's logs.
    ``interval=math.inf`` logs each site once. Never raises.
    """

    def __init__(self, log: logging.Logger, interval: float = 60.0) -> None:
        self.log = log
        self.interval = interval
        # Reentrant: a signal handler that reports on the thread holding it must not deadlock.
        self._lock = threading.RLock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, site: str, msg: str, *args: Any, exc_info: Any = None, level: int = logging.WARNING) -> None:
        try:
            now = time.monotonic()
            with self._lock:
                last = self._last.get(site)
                if last is not None and now - last < self.interval:
                    self._suppressed[site] = self._suppressed.get(site, 0) + 1
                    return
                self._last[site] = now
                dropped = self._suppressed.pop(site, 0)
            if dropped:
                msg += f" ({dropped} similar messages suppressed)"
            self.log.log(level, msg, *args, exc_info=exc_info)
        except Exception:  # noqa: BLE001 - logging itself must not break the app either
            pass

    def reset(self) -> None:
        """Forget which sites were logged (tests use this to see a first record again)."""
        with self._lock:
            self._last.clear()
            self._suppressed.clear()


_telemetry_failures = RateLimitedLog(logger)


def report(site: str, exc: BaseException | None = None) -> None:
    """Log a telemetry failure at ``site`` at most once per interval."""
    _telemetry_failures(
        site,
        "traced_transport: telemetry failure in %s; the application is unaffected",
        site,
        exc_info=exc if exc is not None else True,
    )


def reset_rate_limit() -> None:
    """Forget which sites were logged (tests use this to see a first report again)."""
    _telemetry_failures.reset()
