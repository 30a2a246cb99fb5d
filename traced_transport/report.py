"""Telemetry must never hurt the app: failures are logged, rate-limited, and swallowed."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("traced_transport")

# One record per failure site per interval: a broken exporter called on every
# connection must not flood the app's logs.
_LOG_INTERVAL_S = 60.0
_last_logged: dict[str, float] = {}
_suppressed: dict[str, int] = {}


def report(site: str, exc: BaseException | None = None) -> None:
    """Log a telemetry failure at ``site`` at most once per interval."""
    try:
        now = time.monotonic()
        last = _last_logged.get(site)
        if last is not None and now - last < _LOG_INTERVAL_S:
            _suppressed[site] = _suppressed.get(site, 0) + 1
            return
        _last_logged[site] = now
        dropped = _suppressed.pop(site, 0)
        suffix = f" ({dropped} similar failures suppressed)" if dropped else ""
        logger.warning(
            "traced_transport: telemetry failure in %s; the application is unaffected%s",
            site,
            suffix,
            exc_info=exc if exc is not None else True,
        )
    except Exception:  # noqa: BLE001 - logging itself must not break the app either
        pass


def reset_rate_limit() -> None:
    """Forget which sites were logged (tests use this to see a first report again)."""
    _last_logged.clear()
    _suppressed.clear()
