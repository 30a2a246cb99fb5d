"""Histogram values wait in pending lists until a read folds them in; on_close's fast path appends there.

What must hold: the points equal those of counting each value when recorded
(counts, sum to the bit, min, max), however the values were batched; nothing is
lost or counted twice when a reader folds beside the recording thread; and the
fast path of ``Telemetry.on_close``, and its copy that the wrapping protocol's
``connection_lost`` takes without the call (``Group.quiet_close``), end where the
general path would have.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from bisect import bisect_left
from typing import Any, Optional

import pytest

import traced_transport as tt
import traced_transport.datapath.protocols as protocols_module
import traced_transport.datapath.record as record_module
import traced_transport.datapath.registry as registry_module
import traced_transport.telemetry.telemetry as telemetry_module
from traced_transport.datapath.classify import ConnKey
from traced_transport.datapath.protocols import wrap
from traced_transport.datapath.record import ConnectionRecord, Group
from traced_transport.telemetry.histogram import HistogramAggregate
from traced_transport.telemetry.policy import DEFAULT, SpanPolicy

BOUNDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
DURATION = "transport.connection.duration"


class Reference:
    """What the aggregate made before the pending lists: each value counted when recorded."""

    def __init__(self) -> None:
        self.points: dict[Any, list[Any]] = {}

    def record(self, value: float, key: Any) -> None:
        point = self.points.setdefault(key, [[0] * (len(BOUNDS) + 1), 0.0, math.inf, -math.inf])
        point[0][bisect_left(BOUNDS, value)] += 1
        point[1] += value
        if value < point[2]:
            point[2] = value
        if value > point[3]:
            point[3] = value


def _same(a: float, b: float) -> bool:
    """Equal to the bit (the sign of a zero included), or both NaN."""
    return (a != a and b != b) or (a == b and math.copysign(1.0, a) == math.copysign(1.0, b))


def _assert_points(points: list[Any], reference: Reference) -> None:
    assert len(points) == len(reference.points)
    for p in points:
        counts, total, low, high = reference.points[p.attributes["k"]]
        assert list(p.counts) == counts and p.count == sum(counts)
        assert _same(p.sum, total), (p.sum, total)
        assert _same(p.min, low) and _same(p.max, high), (p.min, low, p.max, high)


def _value(rng: random.Random, odd: bool) -> float:
    if odd and rng.random() < 0.1:
        return rng.choice([math.nan, math.inf, -math.inf, 0.0, -0.0, *BOUNDS])
    return rng.expovariate(rng.choice([1000.0, 5.0, 0.05]))


@pytest.mark.parametrize("seed", range(12))
def test_points_equal_counting_each_value_when_recorded(seed):
    """Small batches and large ones, one bucket or many, bounds, zeros of both signs, infinities and NaN."""
    rng = random.Random(seed)
    agg = HistogramAggregate("h", "s", "", BOUNDS)
    interval = agg.open_interval()
    cumulative, delta = Reference(), Reference()
    for _ in range(rng.choice([1, 15, 16, 300, 3000])):
        value, key = _value(rng, odd=seed % 3 == 0), rng.choice("ab")
        agg.record(value, key, {"k": key})
        cumulative.record(value, key)
        delta.record(value, key)
        if rng.random() < 0.002:
            _assert_points(agg.points(interval)[1], delta)
            delta = Reference()
    _assert_points(agg.points()[1], cumulative)
    _assert_points(agg.points(interval)[1], delta)


def test_values_appended_to_the_pending_list_are_recorded():
    agg = HistogramAggregate("h", "s", "", BOUNDS)
    values = agg.pending("k", {"k": "k"})
    assert agg.pending("k", {"k": "k"}) is values  # one list per attribute set, for good
    reference = Reference()
    for value in (0.001, 0.5, 400.0, 0.01):
        values.append(value)
        reference.record(value, "k")
    _assert_points(agg.points()[1], reference)
    assert values == [] and agg.pending("k", {}) is values


def test_the_recording_side_folds_past_max_pending():
    agg = HistogramAggregate("h", "s", "", BOUNDS)
    agg.max_pending = 3
    for value in (0.001, 0.002, 0.003):
        agg.record(value, "k", {"k": "k"})
    assert len(agg._pending["k"]) == 3 and not agg._points
    agg.record(0.004, "k", {"k": "k"})
    # Folded without a read: memory stays bounded when nobody reads.
    assert agg._pending["k"] == [] and sum(agg._points["k"].counts) == 4


def test_an_interval_opened_later_does_not_get_values_recorded_before_it():
    agg = HistogramAggregate("h", "s", "", BOUNDS)
    agg.record(1.5, "k", {"k": "k"})
    interval = agg.open_interval()
    agg.record(0.5, "k", {"k": "k"})
    (point,) = agg.points(interval)[1]
    assert point.count == 1 and point.sum == 0.5
    (point,) = agg.points()[1]
    assert point.count == 2 and point.sum == 2.0


def test_pending_values_are_counted_before_a_value_with_an_exemplar():
    agg = HistogramAggregate("h", "s", "", (1.0,))
    for value in (0.1, 0.2, 3.0):
        agg.record(value, "k", {})
    agg.record_with_exemplar(0.3, "k", {}, trace_id=1, span_id=2, time_ns=20)
    agg.record_with_exemplar(0.4, "k", {}, trace_id=3, span_id=4, time_ns=10)  # older: not the exemplar
    agg.record(0.5, "k", {})
    agg.add_exemplar(0.5, "k", trace_id=5, span_id=6, time_ns=30)  # the value is still pending: folded first
    (point,) = agg.points()[1]
    assert point.counts == (5, 1) and point.sum == 0.1 + 0.2 + 3.0 + 0.3 + 0.4 + 0.5
    assert [(e.trace_id, e.value) for e in point.exemplars if e is not None] == [(5, 0.5)]


@pytest.mark.parametrize("delta", [False, True])
def test_a_reader_on_another_thread_neither_loses_nor_double_counts(delta):
    agg = HistogramAggregate("h", "s", "", BOUNDS)
    agg.max_pending = 50  # the recording thread folds too, racing the reader
    interval = agg.open_interval() if delta else None
    per_thread, threads = 20_000, 2
    done = threading.Event()
    seen = {"count": 0, "sum": 0.0, "buckets": [0] * (len(BOUNDS) + 1)}

    def read() -> None:
        while True:
            finished = done.is_set()
            if delta:
                for p in agg.points(interval)[1]:
                    seen["count"] += p.count
                    seen["buckets"] = [a + b for a, b in zip(seen["buckets"], p.counts)]
            else:
                agg.points()
            if finished:
                return

    def record(seed: int) -> None:
        values = agg.pending(("direct", seed), {"k": "direct"})
        for i in range(per_thread):
            value = (i % 1000) / 1000.0
            if i % 2:
                values.append(value)  # as on_close's fast path does
                if len(values) > agg.max_pending:
                    agg.fold()
            else:
                agg.record(value, "shared", {"k": "shared"})

    reader = threading.Thread(target=read)
    reader.start()
    recorders = [threading.Thread(target=record, args=(seed,)) for seed in range(threads)]
    for t in recorders:
        t.start()
    for t in recorders:
        t.join()
    done.set()
    reader.join()
    expected = Reference()
    for seed in range(threads):
        for i in range(per_thread):
            expected.record((i % 1000) / 1000.0, "all")
    (counts, total, _, _) = expected.points["all"]
    points = agg.points()[1]
    assert sum(p.count for p in points) == threads * per_thread
    assert [sum(c) for c in zip(*(p.counts for p in points))] == counts
    assert math.isclose(sum(p.sum for p in points), total)
    if delta:
        assert seen["count"] == threads * per_thread and seen["buckets"] == counts


# -- Telemetry.on_close ----------------------------------------------------------------------------------------
KEY = ConnKey("pending", "server", "tcp", "ipv4", 8080, None)
OTHER_KEY = ConnKey("pending", "server", "tcp", "ipv6", 8080, None)


def _telemetry(readers: int = 1, **kwargs: Any) -> tt.Telemetry:
    # The default policy, not the environment's (the test suite's keeps every span).
    telemetry = tt.Telemetry(tt.Registry(), **{"span_policy": DEFAULT, **kwargs})
    for _ in range(readers):
        telemetry.histogram_reader(True)
    return telemetry


def _record(
    telemetry: tt.Telemetry,
    duration: float,
    key: ConnKey = KEY,
    error_type: Optional[str] = None,
    group_policy: Optional[str] = None,
    state: Any = None,
) -> ConnectionRecord:
    group = Group(
        "pending", "server", telemetry.registry, telemetry, span_policy=group_policy and SpanPolicy(group_policy)
    )
    rec = ConnectionRecord(group)
    rec.key = key
    rec.opened_at = 100.0
    rec.closed_at = 100.0 + duration
    rec.close_reason = "eof" if error_type is None else "error"
    rec.error_type = error_type
    rec.state = state
    return rec


class Spy:
    """Counts the calls to ``telemetry.<name>`` (on_close's general path by default), and runs it.

    A group binds ``on_close`` when it is made: spy on it before making the group."""

    def __init__(self, telemetry: tt.Telemetry, name: str = "_on_close") -> None:
        self.calls = 0
        original = getattr(telemetry, name)

        def spy(rec: ConnectionRecord, exc: Optional[BaseException]) -> None:
            self.calls += 1
            original(rec, exc)

        setattr(telemetry, name, spy)


def _duration_points(telemetry: tt.Telemetry) -> list[tuple[Any, ...]]:
    return sorted(
        (tuple(sorted(p.attributes.items())), p.counts, p.sum, p.min, p.max)
        for p in telemetry.histograms[DURATION].points()[1]
    )


def test_fast_path_ends_where_the_general_path_does():
    rng = random.Random(7)
    fast, general = _telemetry(), _telemetry()
    spy = Spy(fast)
    for _ in range(1000):
        duration = rng.expovariate(rng.choice([1000.0, 0.5]))
        key = KEY if rng.random() < 0.8 else OTHER_KEY
        fast.on_close(_record(fast, duration, key), None)
        general._on_close(_record(general, duration, key), None)
    assert _duration_points(fast) == _duration_points(general)
    # Only the connections the default policy may keep (slower than 10 s) took the general path.
    assert 0 < spy.calls < 1000


@pytest.mark.parametrize(
    ("settings", "rec_kwargs", "general"),
    [
        ({}, {}, False),
        ({}, {"error_type": "ConnectionResetError"}, True),
        ({}, {"state": object()}, True),
        ({}, {"duration": 11.0}, True),  # the default policy keeps slower_than=10
        ({"span_policy": "all"}, {}, True),
        ({"span_policy": "errors,ratio=0.5"}, {}, True),
        ({"span_policy": "none"}, {"duration": 1e6}, False),
        ({"spans": False}, {"duration": 11.0}, False),
        ({"parent_context": True}, {"duration": 11.0}, False),
        ({"access_log": True}, {}, True),
        ({"readers": 0}, {}, True),  # the API histogram must get the value
        ({}, {"group_policy": "all"}, True),
        ({}, {"group_policy": "slower_than=0.5", "duration": 0.4}, False),
        ({}, {"group_policy": "slower_than=0.5", "duration": 0.6}, True),
        ({"access_log": True}, {"group_policy": "none"}, True),
    ],
)
def test_which_connections_take_the_general_path(settings, rec_kwargs, general):
    telemetry = _telemetry(**settings)
    spy = Spy(telemetry)
    telemetry.on_close(_record(telemetry, **{"duration": 0.003, **rec_kwargs}), None)
    assert spy.calls == int(general)
    (point,) = telemetry.histograms[DURATION].points()[1]
    assert point.count == 1


def test_settings_changed_after_construction_reach_the_fast_path():
    telemetry = _telemetry()
    spy = Spy(telemetry)
    telemetry.on_close(_record(telemetry, 0.003), None)
    telemetry.access_log = True
    telemetry.on_close(_record(telemetry, 0.003), None)
    telemetry.access_log = False
    telemetry.span_policy = SpanPolicy("all")
    telemetry.on_close(_record(telemetry, 0.003), None)
    telemetry.span_policy = SpanPolicy("errors")
    telemetry.histogram_reader(False)  # no reader left: values go to the API histogram too
    telemetry.on_close(_record(telemetry, 0.003), None)
    telemetry.histogram_reader(True)
    telemetry.on_close(_record(telemetry, 0.003), None)
    assert spy.calls == 3
    (point,) = telemetry.histograms[DURATION].points()[1]
    assert point.count == 5


def test_fast_path_folds_a_full_pending_list(monkeypatch):
    monkeypatch.setattr(telemetry_module, "MAX_PENDING", 3)
    telemetry = _telemetry()
    aggregate = telemetry.histograms[DURATION]
    for _ in range(4):
        telemetry.on_close(_record(telemetry, 0.003), None)
    (values,) = aggregate._pending.values()
    assert values == [] and sum(next(iter(aggregate._points.values())).counts) == 4


def test_span_policy_drops_up_to():
    assert SpanPolicy("errors").drops_up_to == math.inf
    assert SpanPolicy("errors,slower_than=5,paused_longer_than=1").drops_up_to == 5
    assert SpanPolicy("all").drops_up_to == -math.inf
    assert SpanPolicy("slower_than=5,ratio=0.1").drops_up_to == -math.inf
    assert SpanPolicy("errors,slower_than=5") == SpanPolicy("slower_than=5,errors")


# -- Group.quiet_close: the wrapper's connection_lost takes the fast path itself, without calling on_close -------
NOW = 1000.0


def _closed_by_record(
    group: Group,
    duration: float,
    key: ConnKey = KEY,
    exc: Optional[BaseException] = None,
    state: Any = None,
    aborted: bool = False,
) -> ConnectionRecord:
    """A connection of ``group`` ended by its wrapping protocol's connection_lost, as a loop ends it."""
    rec = ConnectionRecord(group)
    rec.key = key
    rec.opened_at = NOW - duration
    rec.state = state
    rec.aborted = aborted
    wrap(asyncio.Protocol(), rec).connection_lost(exc)
    return rec


@pytest.fixture
def fixed_clock(monkeypatch):
    for module in (record_module, protocols_module):
        monkeypatch.setattr(module, "monotonic", lambda: NOW)


def test_connection_lost_ends_where_on_close_does(fixed_clock):
    rng = random.Random(11)
    quiet, general = _telemetry(), _telemetry()
    counter = Spy(quiet, "on_close")
    group = Group("pending", "server", quiet.registry, quiet)
    for _ in range(2000):
        duration = rng.expovariate(rng.choice([1000.0, 0.5]))
        key = KEY if rng.random() < 0.9 else OTHER_KEY
        exc = ConnectionResetError() if rng.random() < 0.05 else None
        rec = _closed_by_record(group, duration, key, exc)
        twin = _record(general, rec.closed_at - rec.opened_at, key, rec.error_type)  # type: ignore[operator]
        general._on_close(twin, exc)
    assert _duration_points(quiet) == _duration_points(general)
    # Most connections took the fast path inside connection_lost: the calls are the errors, the slow ones
    # (the default policy keeps slower_than=10), each change of key and each full pending list.
    assert 100 < counter.calls < 1000


@pytest.mark.parametrize(
    ("change", "calls"),
    [
        ("nothing", 1),
        ("error", 2),
        ("aborted", 2),
        ("state", 2),
        ("slow", 2),
        ("other key", 2),
        ("access_log", 2),
        ("span policy all", 2),
        ("reader detached", 2),
    ],
)
def test_what_makes_connection_lost_call_on_close_again(fixed_clock, change, calls):
    telemetry = _telemetry()
    counter = Spy(telemetry, "on_close")
    group = Group("pending", "server", telemetry.registry, telemetry)
    _closed_by_record(group, 0.003)  # the first one calls: on_close sets the group's fast path up
    assert counter.calls == 1 and group.quiet_close is not None
    duration, key, exc, state = 0.003, KEY, None, None
    if change == "error":
        exc = ConnectionResetError()
    elif change == "state":
        state = object()
    elif change == "slow":
        duration = 11.0
    elif change == "other key":
        key = OTHER_KEY
    elif change == "access_log":
        telemetry.access_log = True
    elif change == "span policy all":
        telemetry.span_policy = SpanPolicy("all")
    elif change == "reader detached":
        telemetry.histogram_reader(False)
    _closed_by_record(group, duration, key, exc, state, aborted=change == "aborted")
    assert counter.calls == calls
    points = telemetry.histograms[DURATION].points()[1]
    assert sum(p.count for p in points) == 2


def test_a_registry_read_folds_the_durations_appended_without_on_close(fixed_clock):
    telemetry = _telemetry()
    counter = Spy(telemetry, "on_close")
    group = Group("pending", "server", telemetry.registry, telemetry)
    aggregate = telemetry.histograms[DURATION]
    for _ in range(5):
        _closed_by_record(group, 0.003)
    (values,) = aggregate._pending.values()
    assert counter.calls == 1 and len(values) == 5  # the first set the fast path up
    telemetry.registry.snapshot()
    assert values == [] and sum(next(iter(aggregate._points.values())).counts) == 5


def test_the_loop_s_own_fold_bounds_the_durations_appended_without_on_close(fixed_clock, monkeypatch):
    monkeypatch.setattr(record_module, "MAX_ENDED", 3)
    telemetry = _telemetry()
    group = Group("pending", "server", telemetry.registry, telemetry)
    aggregate = telemetry.histograms[DURATION]
    longest = 0
    for _ in range(50):
        _closed_by_record(group, 0.003)
        longest = max(longest, *(len(v) for v in aggregate._pending.values()))
    # No reader: the loop folds the ended queue past MAX_ENDED, and the durations with it.
    assert longest <= 4 and len(telemetry.registry._ended) <= 4
    assert sum(p.count for p in aggregate.points()[1]) == 50


def test_fold_listeners_are_held_weakly_and_their_failures_reported(monkeypatch):
    reported = []
    monkeypatch.setattr(registry_module, "report", lambda what, exc: reported.append((what, type(exc))))
    registry = tt.Registry()
    calls = []

    class Listener:
        def folded(self) -> None:
            calls.append("method")

    listener = Listener()
    registry.add_fold_listener(listener.folded)
    registry.add_fold_listener(lambda: calls.append("function"))
    registry.add_fold_listener(lambda: 1 / 0)
    registry.snapshot()
    assert calls == ["method", "function"] and reported == [("registry fold listener", ZeroDivisionError)]
    del listener
    registry.snapshot()
    assert calls == ["method", "function", "function"] and len(registry._fold_listeners) == 2


def test_a_failing_on_close_leaves_the_record_ended(fixed_clock):
    telemetry = _telemetry()

    def broken(rec: ConnectionRecord, exc: Optional[BaseException]) -> None:
        raise RuntimeError("observer bug")

    telemetry.on_close = broken  # type: ignore[method-assign]
    group = Group("pending", "server", telemetry.registry, telemetry)
    rec = _closed_by_record(group, 0.003)
    assert rec.close_reason == "closed" and group.quiet_close is None


def test_a_setting_changed_while_on_close_works_leaves_the_group_without_a_stale_copy(fixed_clock):
    # on_close reads the settings' generation, then works out the group's copy; a setting changed on
    # another thread in between (here: the access log turned on) makes the copy stale before it lands.
    telemetry = _telemetry()
    group = Group("pending", "server", telemetry.registry, telemetry)
    generation = telemetry._fast_close_generation
    telemetry.access_log = True
    telemetry._quiet(group, KEY, [], 10.0, generation)
    assert group.quiet_close is None
    telemetry._quiet(group, KEY, [], 10.0, telemetry._fast_close_generation)
    assert group.quiet_close is not None
    telemetry.access_log = False
    assert group.quiet_close is None
