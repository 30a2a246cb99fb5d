"""What the records say: bytes, flow-control transitions, lifecycle and close reasons."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import weakref

import pytest
from _helpers import BufferedCollect, Collect, closed, tcp_pair

import traced_transport as tt


def srv(registry, name="s", **kw):
    return lambda f: tt.traced(f, name=name, registry=registry, **kw)


def cli(registry, name="c", **kw):
    return lambda f: tt.traced(f, name=name, side="client", registry=registry, **kw)


def test_exact_counts_both_sides(run, registry):
    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            lambda: Collect(echo=True), wrap_server=srv(registry), wrap_client=cli(registry)
        )
        payload = [b"a" * 10, bytearray(b"b" * 70000), memoryview(b"c" * 3), b""]
        for p in payload:
            c_tr.write(p)
        c_tr.writelines(iter([b"dd", memoryview(bytearray(b"eee"))]))
        # memoryview of a non-byte format: counted in bytes, not items
        c_tr.write(memoryview(struct.pack("4i", 1, 2, 3, 4)).cast("i"))
        total = 10 + 70000 + 3 + 2 + 3 + 16
        await c_app.wait_bytes(total)
        live = {r.group.name: r for r in registry.live()}
        assert (live["c"].tx, live["c"].rx, live["s"].rx, live["s"].tx) == (total,) * 4
        c_tr.close()
        await s_app.lost
        await closed(server)
        s, c = registry.totals("s"), registry.totals("c")
        assert (s.rx, s.tx, c.rx, c.tx) == (total,) * 4
        assert (s.opened, s.closed, s.active, c.opened, c.closed, c.active) == (1, 1, 0, 1, 1, 0)

    run(main)


def test_buffered_protocol_no_copy(run, registry):
    async def main():
        apps = []

        def factory():
            apps.append(BufferedCollect(size=1024))
            return apps[-1]

        server, s_app, c_tr, c_app = await tcp_pair(factory, wrap_server=srv(registry))
        wrapper = tt.unwrap(s_app.transport).get_protocol()
        assert isinstance(wrapper, asyncio.BufferedProtocol)
        assert not isinstance(wrapper, asyncio.Protocol)
        c_tr.write(b"q" * 50000)
        await s_app.wait_bytes(50000)
        assert bytes(s_app.data) == b"q" * 50000
        # the loop read straight into the app's own buffer: only that one was handed out
        assert s_app.buffers_handed == {id(s_app.view)}
        assert registry.live()[0].rx == 50000
        c_tr.close()
        await s_app.lost
        await closed(server)

    run(main)


def test_reading_pause_transitions(run, registry):
    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=srv(registry))
        tr = s_app.transport
        rec = tr.traced_record
        tr.pause_reading()
        tr.pause_reading()  # repeated: not a second pause
        assert not tr.is_reading()
        assert rec.read_pauses == 1 and rec.read_paused_since is not None
        snap = registry.snapshot().totals()
        assert sum(t.read_paused_now for t in snap.values()) == 1
        c_tr.write(b"held")
        tr.resume_reading()
        tr.resume_reading()
        await s_app.wait_bytes(4)
        assert rec.read_pauses == 1 and rec.read_paused_since is None and rec.read_paused_s > 0
        tr.pause_reading()
        assert rec.read_pauses == 2
        tr.close()  # closed while paused
        await s_app.lost
        c_tr.close()
        await closed(server)
        t = registry.totals("s")
        # the pause still open at close is ended by the close
        assert t.read_pauses == 2 and t.read_paused_now == 0 and t.read_paused_s > 0

    run(main)


def test_writing_pause_transitions(run, registry):
    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=srv(registry))
        tr = s_app.transport
        rec = tr.traced_record
        c_tr.pause_reading()  # a slow reader: the server's writes back up
        tr.set_write_buffer_limits(high=16384, low=4096)
        assert tr.get_write_buffer_limits() == tt.unwrap(tr).get_write_buffer_limits()
        chunk = b"w" * 65536
        while not s_app.paused:
            tr.write(chunk)
        assert rec.write_pauses == 1 and rec.write_paused_since is not None
        assert tr.get_write_buffer_size() > 0
        c_tr.resume_reading()
        await s_app.resumed_event.wait()
        assert rec.write_paused_since is None and rec.write_paused_s > 0
        assert s_app.paused == s_app.resumed == 1
        await c_app.wait_bytes(rec.tx)
        tr.close()
        await c_app.lost
        await closed(server)

    run(main)


@pytest.mark.parametrize("how", ["local_close", "peer_eof", "abort", "peer_reset"])
def test_close_reasons(run, registry, how):
    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=srv(registry))
        tr = s_app.transport
        if how == "local_close":
            tr.close()
        elif how == "peer_eof":
            c_tr.write_eof() if c_tr.can_write_eof() else c_tr.close()
        elif how == "abort":
            tr.abort()
        elif how == "peer_reset":
            sock = c_tr.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c_tr.abort()
        exc = await s_app.lost
        await closed(server)
        c_tr.close()
        t = registry.totals("s")
        assert t.closed == 1
        expected = {"local_close": "closed", "peer_eof": "eof", "abort": "aborted", "peer_reset": None}[how]
        (reason,) = t.close_reasons
        if how == "peer_reset":
            # A reset is seen as an error or, if the RST arrives after reading EOF, as EOF.
            assert reason in ("reset", "eof") and (reason == "reset") == isinstance(exc, ConnectionResetError)
        else:
            assert reason == expected and exc is None
        rec_type = {"aborted": "aborted", "reset": "ConnectionResetError"}.get(reason)
        closed_key = next(iter(registry.snapshot().closed))
        assert closed_key.name == "s"
        return rec_type

    run(main)


def test_set_protocol_switches_read_path(run, registry):
    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=srv(registry))
        tr = s_app.transport
        inner = tt.unwrap(tr)
        first_wrapper = inner.get_protocol()
        buffered = BufferedCollect(size=512)
        tr.set_protocol(buffered)
        assert tr.get_protocol() is buffered
        assert isinstance(inner.get_protocol(), asyncio.BufferedProtocol)
        c_tr.write(b"1" * 3000)
        await buffered.wait_bytes(3000)
        plain = Collect()
        tr.set_protocol(plain)
        assert tr.get_protocol() is plain
        assert type(inner.get_protocol()) is type(first_wrapper)
        plain2 = Collect()
        tr.set_protocol(plain2)  # same read path: our wrapper stays, re-pointed
        assert inner.get_protocol() is not plain2
        c_tr.write(b"2" * 10)
        await plain2.wait_bytes(10)
        assert bytes(plain.data) == b""
        assert tr.traced_record.rx == 3010
        c_tr.close()
        assert await plain2.lost is None  # connection_lost goes to the current protocol
        assert not s_app.lost.done()
        await closed(server)
        assert registry.totals("s").rx == 3010

    run(main)


def test_write_errors_propagate_and_are_not_counted(run, registry):
    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=srv(registry), wrap_client=cli(registry))
        with pytest.raises(TypeError) as wrapped_err:
            c_tr.write("not bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError) as plain_err:
            tt.unwrap(c_tr).write("not bytes")  # type: ignore[arg-type]
        assert str(wrapped_err.value) == str(plain_err.value)
        if c_tr.can_write_eof():
            c_tr.write_eof()
            with pytest.raises(RuntimeError):
                c_tr.write(b"after eof")
        assert c_tr.traced_record.tx == 0
        c_tr.close()
        c_tr.close()  # idempotent, like the real one
        await s_app.lost
        await closed(server)

    run(main)


def test_app_exception_reaches_loop_handler_unchanged(run, registry):
    class Boom(Exception):
        pass

    class Raiser(Collect):
        def data_received(self, data):
            raise Boom("from the app")

    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        loop.set_exception_handler(lambda loop, ctx: seen.append(ctx.get("exception")))
        server, s_app, c_tr, c_app = await tcp_pair(Raiser, wrap_server=srv(registry))
        c_tr.write(b"x")
        exc = await s_app.lost
        # the loop treats the app's exception as fatal, exactly as unwrapped
        assert isinstance(exc, Boom) or any(isinstance(e, Boom) for e in seen)
        await closed(server)
        c_tr.close()
        t = registry.totals("s")
        assert t.rx == 1 and t.closed == 1

    run(main)


def test_no_reference_cycle_after_close(run, registry):
    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(wrap_server=srv(registry), wrap_client=cli(registry))
        proxy_ref = weakref.ref(c_tr)
        app_ref = weakref.ref(c_app)
        c_tr.close()
        await c_app.lost
        await s_app.lost
        await closed(server)
        return proxy_ref, app_ref

    gc.collect()
    gc.disable()
    try:
        proxy_ref, app_ref = run(main)
        # freed by reference counting alone, as unwrapped objects would be
        assert proxy_ref() is None
        assert app_ref() is None
    finally:
        gc.enable()


def test_extra_snapshot_on_tls(run, registry, server_ctx, client_ctx):
    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            wrap_server=srv(registry, capture_extra=True),
            wrap_client=cli(registry, capture_extra=True),
            ssl_server=server_ctx,
            ssl_client=client_ctx,
        )
        s_rec = s_app.transport.traced_record
        c_rec = c_tr.traced_record
        assert s_rec.extra["peername"] == c_tr.get_extra_info("sockname")
        assert s_rec.extra["tls_version"] == c_tr.get_extra_info("ssl_object").version()
        assert s_rec.extra["cipher"] == s_app.transport.get_extra_info("cipher")
        assert isinstance(c_rec.extra["peercert_der"], bytes)
        assert c_rec.extra["peercert"]["subjectAltName"]
        assert s_rec.key.tls_version == c_rec.key.tls_version and s_rec.key.tls_version.startswith("1.")
        assert s_rec.key.server_port == server.sockets[0].getsockname()[1]
        assert c_rec.key.server_port is None
        c_tr.close()
        await s_app.lost
        await closed(server)

    run(main)
