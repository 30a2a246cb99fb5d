"""The per-connection shortcuts: same objects as the plain constructors, registry counts exact without a lock."""

from __future__ import annotations

import asyncio

import pytest
from _helpers import Collect, closed, tcp_pair

import traced_transport as tt
from traced_transport.datapath.classify import ConnKey
from traced_transport.datapath.protocols import PlainWrapper, wrap
from traced_transport.datapath.record import ConnectionRecord, Group


def _fields(obj) -> dict:
    slots = [s for cls in type(obj).__mro__ for s in getattr(cls, "__slots__", ()) if s != "__weakref__"]
    return {s: getattr(obj, s) for s in slots}


def test_the_factory_makes_the_wrapper_and_record_the_constructors_make(run):
    registry = tt.Registry()
    factory = tt.traced(asyncio.Protocol, name="g", registry=registry)

    async def main():
        return factory(), factory()  # the first learns the classes, the second takes the short path

    for fast in run(main):
        slow = wrap(fast._app, ConnectionRecord(factory.group))
        assert type(fast) is type(slow) is PlainWrapper and type(fast._app) is asyncio.Protocol and fast._proxy is None
        assert _fields(fast._rec) == _fields(slow._rec)


def _ended_record(registry: tt.Registry) -> ConnectionRecord:
    group = Group("g", "server", registry)
    rec = ConnectionRecord(group)
    rec.open(None)
    rec.rx = 10
    return rec


def test_a_record_between_ended_queue_and_live_set_counts_once():
    registry = tt.Registry()
    rec = _ended_record(registry)
    # What close() does first; a reader arriving before the live set lets go.
    rec.closed_at = rec.opened_at
    rec.close_reason = "closed"
    registry._ended.append(rec)
    totals = registry.totals()
    assert (totals.opened, totals.closed, totals.active, totals.rx) == (1, 1, 0, 10)
    registry._live.discard(rec)
    totals = registry.totals()
    assert (totals.opened, totals.closed, totals.active, totals.rx) == (1, 1, 0, 10)


def test_the_loop_folds_a_long_ended_queue(run):
    registry = tt.Registry()

    async def main():
        for _ in range(3):
            server, s_app, c_tr, c_app = await tcp_pair(wrap_server=lambda f: tt.traced(f, name="s", registry=registry))
            c_tr.close()
            await s_app.lost
            await closed(server)

    import traced_transport.datapath.record as record

    old, record.MAX_ENDED = record.MAX_ENDED, 1
    try:
        run(main)
    finally:
        record.MAX_ENDED = old
    # Folded on the loop (the queue never held more than two), nothing lost.
    assert len(registry._ended) <= 2
    totals = registry.totals()
    assert (totals.opened, totals.closed, totals.active) == (3, 3, 0)
    assert sum(totals.close_reasons.values()) == 3


def test_a_fold_of_interleaved_attribute_sets_adds_each_record_once():
    registry = tt.Registry()
    group = Group("g", "server", registry)
    a = ConnKey("g", "server", "tcp", "ipv4", 1, None)
    b = ConnKey("g", "server", "tcp", "ipv6", 2, "1.3")
    specs = [
        (a, 1, 2, "eof", 0),
        (a, 10, 20, "closed", 2),
        (b, 100, 200, "reset", 0),
        (a, 3, 4, "eof", 1),
        (b, 5, 6, "eof", 0),
    ]
    expected: dict = {}
    for key, rx, tx, reason, pauses in specs:
        rec = ConnectionRecord(group)
        rec.key, rec.rx, rec.tx, rec.close_reason, rec.opened_at = key, rx, tx, reason, 1.0
        if pauses:
            rec.read_pauses, rec.read_paused_s = pauses, pauses / 2
        registry._ended.append(rec)
        t = expected.setdefault(key, [0, 0, 0, {}, 0, 0.0])
        t[0] += 1
        t[1] += rx
        t[2] += tx
        t[3][reason] = t[3].get(reason, 0) + 1
        t[4] += pauses
        t[5] += pauses / 2
    closed = registry.snapshot().closed
    got = {
        key: [t.closed, t.rx, t.tx, t.close_reasons, t.read_pauses, t.read_paused_s]
        for key, t in closed.items()
        if t.opened == t.closed
    }
    assert got == expected and not registry._ended


def test_factory_follows_a_change_of_app_class(run):
    registry = tt.Registry()

    class _Buffered(asyncio.BufferedProtocol):
        pass

    made = []

    def factory():
        app = Collect() if not made else _Buffered()
        made.append(app)
        return app

    traced = tt.traced(factory, name="s", registry=registry)

    async def main():
        first = traced()
        second = traced()
        return type(first).__name__, type(second).__name__

    assert run(main) == ("PlainWrapper", "BufferedWrapper")


async def _one_connection(port: int, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(Collect, host, port)
    transport.write(b"abc")
    transport.close()
    await proto.lost


class _Apps(list):
    """A protocol factory that keeps what it made, so a test can await their ends."""

    def __call__(self) -> Collect:
        self.append(Collect())
        return self[-1]

    async def all_lost(self) -> None:
        for app in self:
            await app.lost


def test_one_listener_fixes_the_attribute_set_and_two_keep_classifying(run):
    registry = tt.Registry()
    apps = _Apps()
    one = tt.traced(apps, name="one", registry=registry)
    two = tt.traced(apps, name="two", registry=registry)

    async def main():
        loop = asyncio.get_running_loop()
        s1 = await loop.create_server(one, "127.0.0.1", 0)
        s2a = await loop.create_server(two, "127.0.0.1", 0)
        s2b = await loop.create_server(two, "127.0.0.1", 0)
        ports = [s.sockets[0].getsockname()[1] for s in (s1, s2a, s2b)]
        for port in (ports[0], ports[0], ports[1], ports[2], ports[1]):
            await _one_connection(port)
        await apps.all_lost()
        for s in (s1, s2a, s2b):
            await closed(s)
        return ports

    ports = run(main)
    # One listener: its connections' attribute set is kept per transport class.
    assert one.group.listeners is not None and len(one.group.listeners) == 1
    (fixed,) = one.group.fixed_keys.values()
    assert (fixed.name, fixed.network_transport, fixed.network_type, fixed.server_port) == (
        "one",
        "tcp",
        "ipv4",
        ports[0],
    )
    # Two listeners: nothing fixed, each connection counted under its own port.
    assert len(two.group.listeners) == 2 and not two.group.fixed_keys
    snapshot = registry.snapshot()
    by_port = {k.server_port: t.closed for k, t in snapshot.closed.items() if k.name == "two"}
    assert by_port == {ports[1]: 2, ports[2]: 1}
    assert {k.server_port: t.closed for k, t in snapshot.closed.items() if k.name == "one"} == {ports[0]: 2}


def test_an_accepted_socket_makes_its_group_classify_every_connection(run):
    import socket

    registry = tt.Registry()
    apps = _Apps()
    factory = tt.traced(apps, name="accepted", registry=registry)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        connecting = asyncio.ensure_future(_one_connection(port))
        sock, _ = await loop.sock_accept(listener)
        await loop.connect_accepted_socket(factory, sock)
        await connecting
        await apps.all_lost()
        listener.close()
        await closed(server)
        return port

    port = run(main)
    assert factory.group.listeners is None and not factory.group.fixed_keys
    (key,) = registry.snapshot().closed
    assert key.server_port == port


def test_the_loop_gets_the_factory_s_argument_free_entry(run, monkeypatch):
    # The loop hooks pass the loop TracedProtocolFactory._make, positional or as protocol_factory=:
    # no connection goes through __call__'s generic call slot, and every one is recorded.
    from traced_transport.loops.factory import TracedProtocolFactory

    calls = []
    original = TracedProtocolFactory.__call__

    def counted(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TracedProtocolFactory, "__call__", counted)
    registry = tt.Registry()

    async def main():
        loop = asyncio.get_running_loop()
        server, s_app, c_tr, c_app = await tcp_pair(
            wrap_server=lambda f: tt.traced(f, name="s", registry=registry),
            wrap_client=lambda f: tt.traced(f, name="c", side="client", registry=registry),
        )
        c_tr.close()
        await s_app.lost
        await closed(server)
        accepted = loop.create_future()

        def make():
            proto = Collect()
            accepted.set_result(proto)
            return proto

        by_keyword = await loop.create_server(
            protocol_factory=tt.traced(make, name="k", registry=registry), host="127.0.0.1", port=0
        )
        port = by_keyword.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        await (await accepted).made
        writer.close()
        await closed(by_keyword)

    run(main)
    assert calls == []
    assert {name: registry.totals(name).opened for name in ("s", "c", "k")} == {"s": 1, "c": 1, "k": 1}


def test_a_loop_class_of_its_own_gets_its_hooks_before_a_connection():
    # _make does not look at the loop per connection: the loop call that hands it over hooks a
    # loop class that defines hooked methods itself (here start_tls), as the factory did before.
    from traced_transport.loops import hooks

    class OwnLoop(asyncio.SelectorEventLoop):
        async def start_tls(self, *args, **kwargs):
            return await super().start_tls(*args, **kwargs)

    registry = tt.Registry()
    accepted: dict = {}

    def app():
        proto = Collect()
        accepted["future"].set_result(proto)
        return proto

    factory = tt.traced(app, name="own", registry=registry)  # made before the loop runs
    loop = OwnLoop()
    try:

        async def main():
            accepted["future"] = loop.create_future()
            server = await loop.create_server(factory, "127.0.0.1", 0)
            _, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            proto = await accepted["future"]
            await proto.made
            writer.close()
            await proto.lost
            await closed(server)

        loop.run_until_complete(main())
    finally:
        loop.close()
    assert hasattr(vars(OwnLoop)["start_tls"], hooks.patches._MARK)
    assert registry.totals("own").closed == 1


# -- the wrapper's own open and clean close against ConnectionRecord.open/close -------------------------------
class _FakeTransport(asyncio.Transport):
    def get_extra_info(self, name, default=None):
        return default

    def is_closing(self):
        return False


class _Calls:
    """An observer that writes down what it is called with."""

    def __init__(self) -> None:
        self.calls: list = []

    def on_open(self, rec, transport):
        self.calls.append(("open", type(transport).__name__))

    def on_event(self, rec, name, seconds):
        self.calls.append(("event", name))

    def on_close(self, rec, exc):
        self.calls.append(("close", rec.close_reason, rec.error_type, rec.rx, rec.tx, rec in rec.group._live))


def _ended_both_ways(flags: int, exc, observer) -> tuple:
    registry = tt.Registry()
    group = Group("g", "server", registry, observer)
    transport = _FakeTransport()
    wrapped, plain = ConnectionRecord(group), ConnectionRecord(group)
    wrapper = wrap(asyncio.Protocol(), wrapped)
    wrapper.connection_made(transport)
    plain.open(transport)
    opened = (wrapped in registry._live, plain in registry._live, wrapped.transport, plain.transport)
    for rec in (wrapped, plain):
        rec.rx, rec.tx = 3, 4
        rec._flags |= flags
    wrapper.connection_lost(exc)
    plain.close(exc)
    return wrapped, plain, registry, opened, transport


@pytest.mark.parametrize("flags", range(8))  # every combination of the peer's EOF, a local close, an abort
@pytest.mark.parametrize("exc", [None, ConnectionResetError()])
@pytest.mark.parametrize("observed", [False, True])
def test_the_wrapper_opens_and_ends_a_record_as_open_and_close_do(flags, exc, observed):
    observer = _Calls() if observed else None
    wrapped, plain, registry, opened, transport = _ended_both_ways(flags, exc, observer)
    assert opened == (True, True, transport, transport)
    ignore = {"opened_at", "closed_at"}
    assert {k: v for k, v in _fields(wrapped).items() if k not in ignore} == {
        k: v for k, v in _fields(plain).items() if k not in ignore
    }
    assert wrapped.closed_at is not None and wrapped._transport_ref is None
    assert registry._ended == [wrapped, plain] and not registry._live
    if observer is not None:
        first, second = observer.calls[::2], observer.calls[1::2]
        assert first == second and [c[0] for c in observer.calls] == ["open", "open", "close", "close"]


def test_a_listener_s_followers_open_the_short_way_as_open_does(monkeypatch):
    from traced_transport.datapath import protocols

    general = []
    monkeypatch.setattr(
        protocols._Wrapper,
        "_open",
        lambda self, t, _open=protocols._Wrapper._open: general.append(self) or _open(self, t),
    )

    class Closes:  # an observer without an open hook (Group.open_hooks is False)
        def on_close(self, rec, exc):
            pass

    registry = tt.Registry()
    group = Group("g", "server", registry, Closes())
    # As classify leaves it for a group served by one listener.
    group.fixed_keys[_FakeTransport] = ConnKey("g", "server", "tcp", "ipv4", 8080, None)
    first, second, plain = ConnectionRecord(group), ConnectionRecord(group), ConnectionRecord(group)
    wrappers = [wrap(asyncio.Protocol(), rec) for rec in (first, second)]
    for wrapper in wrappers:
        wrapper.connection_made(_FakeTransport())
    transport = _FakeTransport()
    plain.open(transport)
    assert general == wrappers[:1] and group.fast_open is not None  # the first set the short way up
    ignore = {"opened_at", "_transport_ref"}
    assert {k: v for k, v in _fields(second).items() if k not in ignore} == {
        k: v for k, v in _fields(plain).items() if k not in ignore
    }
    assert second.key is group.fixed_keys[_FakeTransport] and second in registry._live
    assert type(wrappers[1]._proxy) is type(wrappers[0]._proxy) and wrappers[1]._proxy._rec is second
    assert second.transport is wrappers[1]._proxy._transport


def test_the_short_way_ends_when_the_group_serves_another_listener():
    group = Group("g", "server", tt.Registry())
    group.fixed_keys[_FakeTransport] = ConnKey("g", "server", "tcp", "ipv4", 8080, None)
    wrap(asyncio.Protocol(), ConnectionRecord(group)).connection_made(_FakeTransport())
    assert group.fast_open is not None
    group.listening_on(None)  # e.g. an accepted socket handed to connect_accepted_socket
    assert group.fast_open is None and not group.fixed_keys


def test_a_group_with_open_hooks_never_takes_the_short_way():
    group = Group("g", "server", tt.Registry(), capture_extra=True)
    group.fixed_keys[_FakeTransport] = ConnKey("g", "server", "tcp", "ipv4", 8080, None)
    wrap(asyncio.Protocol(), ConnectionRecord(group)).connection_made(_FakeTransport())
    assert group.fast_open is None


def test_every_way_of_making_a_proxy_gives_the_proxy_class_with_its_slots_set():
    from traced_transport.datapath import proxy as proxies

    group = Group("g", "server", tt.Registry())
    group.fixed_keys[_FakeTransport] = ConnKey("g", "server", "tcp", "ipv4", 8080, None)
    made = []
    for _ in range(2):  # the general way, then the short way
        rec = ConnectionRecord(group)
        wrapper = wrap(asyncio.Protocol(), rec)
        transport = _FakeTransport()
        wrapper.connection_made(transport)
        made.append((wrapper._proxy, transport, rec))
    rec = ConnectionRecord(group)
    transport = _FakeTransport()
    made.append((proxies.make_proxy(transport, rec), transport, rec))
    cls = proxies.proxy_class_for(_FakeTransport)
    for proxy, transport, rec in made:
        assert type(proxy) is cls and proxy._transport is transport and proxy._rec is rec
        assert isinstance(proxy, asyncio.Transport) and proxy.traced_inner is transport
    # Its state class adds no name a probe could see, and writes still reach the real transport.
    state = proxies._states[cls]
    assert set(vars(state)) - {"__slots__", "__module__", "__init__", "__qualname__", "__doc__"} <= {
        "_transport",
        "_rec",
        "__weakref__",
    }
    proxy, transport, _ = made[-1]
    proxy.custom = 1
    assert transport.custom == 1 and proxy.custom == 1
