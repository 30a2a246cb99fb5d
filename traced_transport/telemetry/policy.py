"""Which connections get a span: decided when the connection ends, where all of it is known.

Modelled on Envoy's access-log filters (status, duration, runtime fraction):
conditions combine with *or*, and the SDK's sampler still has the final say on
a connection the policy keeps. A connection the policy drops makes no
OpenTelemetry call at all.

    all                      every connection's span goes to the sampler (eager spans did this)
    none                     no connection spans
    errors                   ended with an error.type (reset, aborted, TLS handshake failed, error)
    slower_than=<seconds>    lasted longer than that
    paused_longer_than=<s>   reading or writing stayed paused longer than that, in one pause
    ratio=<0..1>             a random fraction of the connections no other condition kept

Written as a comma-separated list, e.g. ``errors,slower_than=5,ratio=0.01``, in
``Telemetry(span_policy=...)``, ``traced(span_policy=...)`` or the
``TRACED_TRANSPORT_SPAN_POLICY`` environment variable.
"""

from __future__ import annotations

import math
import os
from random import random
from typing import Any, Optional, Union

ENV = "TRACED_TRANSPORT_SPAN_POLICY"
DEFAULT = "errors,slower_than=10,paused_longer_than=1"

_USAGE = (
    "a comma-separated list of: all, none, errors, slower_than=<seconds>, paused_longer_than=<seconds>, "
    "ratio=<0..1> (e.g. 'errors,slower_than=5,ratio=0.01')"
)


class SpanPolicy:
    """A parsed span policy; ``keep(record, longest_pause)`` runs once per ended connection."""

    __slots__ = ("text", "all", "errors", "slower_than", "paused_longer_than", "ratio", "slow", "drops_up_to")

    def __init__(self, text: str) -> None:
        self.text = text
        self.all = False
        self.errors = False
        self.slower_than: Optional[float] = None
        self.paused_longer_than: Optional[float] = None
        self.ratio = 0.0
        words = [w.strip() for w in text.split(",")] if isinstance(text, str) else []
        if not words or not all(words):
            raise ValueError(f"span policy {text!r}: expected {_USAGE}")
        for word in words:
            name, eq, value = word.partition("=")
            name = name.strip()
            if not eq and name == "all":
                self.all = True
            elif not eq and name == "none":
                if len(words) > 1:
                    raise ValueError(f"span policy {text!r}: 'none' cannot be combined with other conditions")
            elif not eq and name == "errors":
                self.errors = True
            elif eq and name in ("slower_than", "paused_longer_than", "ratio"):
                number = _number(text, name, value)
                if name == "ratio":
                    if not 0.0 <= number <= 1.0:
                        raise ValueError(f"span policy {text!r}: ratio must be between 0 and 1, got {value.strip()!r}")
                    self.ratio = number
                elif number < 0:
                    raise ValueError(f"span policy {text!r}: {name} must be >= 0 seconds, got {value.strip()!r}")
                else:
                    setattr(self, name, number)
            else:
                raise ValueError(f"span policy {text!r}: unknown condition {word!r}; expected {_USAGE}")
        # slower_than as a number that every duration is under when it is not set.
        self.slow = math.inf if self.slower_than is None else self.slower_than
        # The longest a connection without error or pause can last and surely be dropped: one comparison
        # instead of keep() (-inf: all and ratio keep some whatever they lasted).
        self.drops_up_to = -math.inf if self.all or self.ratio else self.slow

    @property
    def keeps_nothing(self) -> bool:
        return not (
            self.all
            or self.errors
            or self.slower_than is not None
            or self.paused_longer_than is not None
            or self.ratio > 0
        )

    def keep(self, rec: Any, longest_pause: float = 0.0) -> bool:
        """Whether the ended connection ``rec`` gets a span (the sampler decides after)."""
        if self.all:
            return True
        if self.errors and rec.error_type is not None:
            return True
        if self.slower_than is not None and rec.closed_at - rec.opened_at > self.slower_than:
            return True
        if self.paused_longer_than is not None and longest_pause > self.paused_longer_than:
            return True
        return self.ratio > 0.0 and random() < self.ratio

    def __repr__(self) -> str:
        return f"SpanPolicy({self.text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpanPolicy):
            return NotImplemented
        return all(
            getattr(self, f) == getattr(other, f) for f in self.__slots__ if f not in ("text", "slow", "drops_up_to")
        )

    __hash__ = None  # type: ignore[assignment]


def _number(text: str, name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"span policy {text!r}: {name} needs a number, got {value.strip()!r}")
    return number


def span_policy(value: Union[str, SpanPolicy, None] = None) -> SpanPolicy:
    """``value`` as a SpanPolicy; None: the environment variable, else the default."""
    if isinstance(value, SpanPolicy):
        return value
    if value is None:
        env = os.environ.get(ENV)
        if env is not None and env.strip():
            try:
                return SpanPolicy(env)
            except ValueError as exc:
                raise ValueError(f"{ENV}: {exc}") from None
        return SpanPolicy(DEFAULT)
    return SpanPolicy(value)


__all__ = ["DEFAULT", "ENV", "SpanPolicy", "span_policy"]
