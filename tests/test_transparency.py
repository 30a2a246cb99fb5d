"""The app cannot tell it is wrapped: classes, ABCs, methods, return values."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest
from _helpers import Collect, closed, tcp_pair

import traced_transport as tt

ABCS = [
    asyncio.BaseTransport,
    asyncio.Transport,
    asyncio.ReadTransport,
    asyncio.WriteTransport,
    asyncio.DatagramTransport,
    asyncio.SubprocessTransport,
    asyncio.transports._FlowControlMixin,
]
METHODS = [
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "abort",
    "close",
    "is_closing",
    "get_extra_info",
    "set_protocol",
    "get_protocol",
    "pause_reading",
    "resume_reading",
    "is_reading",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "set_write_buffer_limits",
    "sendto",
    "get_pid",
    "get_returncode",
    "get_pipe_transport",
    "send_signal",
    "terminate",
    "kill",
    "_start_tls_compatible",
    "_sendfile_compatible",
]


def assert_looks_like(proxy, inner):
    assert tt.is_proxy(proxy)
    assert tt.unwrap(proxy) is inner
    assert type(inner).__name__ in type(proxy).__name__
    for abc in ABCS:
        assert isinstance(proxy, abc) == isinstance(inner, abc), abc
    for name in METHODS:
        assert hasattr(proxy, name) == hasattr(inner, name), name


def test_tcp_and_client_return_values(run, registry):
    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            wrap_server=lambda f: tt.traced(f, name="s", registry=registry),
            wrap_client=lambda f: tt.traced(f, name="c", side="client", registry=registry),
        )
        # create_connection returns (proxy, app protocol), exactly what connection_made saw
        assert isinstance(c_app, Collect)
        assert c_tr is c_app.transport
        assert_looks_like(c_tr, tt.unwrap(c_tr))
        assert_looks_like(s_app.transport, tt.unwrap(s_app.transport))
        assert c_tr.get_protocol() is c_app
        assert s_app.transport.get_protocol() is s_app
        assert "Traced" in repr(c_tr)
        c_tr.close()
        await c_app.lost
        await s_app.lost
        await closed(server)

    run(main)


def test_tls_server_proxy_over_ssl_transport(run, registry, server_ctx, client_ctx):
    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            wrap_server=lambda f: tt.traced(f, name="s", registry=registry),
            wrap_client=lambda f: tt.traced(f, name="c", side="client", registry=registry),
            ssl_server=server_ctx,
            ssl_client=client_ctx,
        )
        inner = tt.unwrap(s_app.transport)
        assert "SSL" in type(s_app.transport).__name__
        assert_looks_like(s_app.transport, inner)
        assert_looks_like(c_tr, tt.unwrap(c_tr))
        assert s_app.transport.get_extra_info("sslcontext") is server_ctx
        c_tr.close()
        await s_app.lost
        await closed(server)

    run(main)


def test_unix(run, registry, tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        path = str(tmp_path / "s.sock")
        apps = []

        def factory():
            apps.append(Collect(echo=True))
            return apps[-1]

        server = await loop.create_unix_server(tt.traced(factory, name="u", registry=registry), path)
        c_tr, c_app = await loop.create_unix_connection(
            tt.traced(Collect, name="uc", side="client", registry=registry), path
        )
        assert_looks_like(c_tr, tt.unwrap(c_tr))
        c_tr.write(b"x" * 1000)
        await c_app.wait_bytes(1000)
        assert_looks_like(apps[0].transport, tt.unwrap(apps[0].transport))
        c_tr.close()
        await apps[0].lost
        await closed(server)
        t = registry.totals("u")
        assert (t.rx, t.tx, t.opened, t.closed) == (1000, 1000, 1, 1)
        assert registry.snapshot().closed[next(k for k in registry.snapshot().closed if k.name == "u")]
        assert {k.network_transport for k in registry.snapshot().closed} == {"unix"}

    run(main)


def test_datagram(run, registry):
    async def main():
        loop = asyncio.get_running_loop()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(data, addr)

        class Client(asyncio.DatagramProtocol):
            def __init__(self):
                self.got = asyncio.Queue()

            def datagram_received(self, data, addr):
                self.got.put_nowait(data)

        s_tr, s_app = await loop.create_datagram_endpoint(
            tt.traced(Echo, name="udp", registry=registry), local_addr=("127.0.0.1", 0)
        )
        port = s_tr.get_extra_info("sockname")[1]
        c_tr, c_app = await loop.create_datagram_endpoint(
            tt.traced(Client, name="udpc", side="client", registry=registry), remote_addr=("127.0.0.1", port)
        )
        assert isinstance(s_app, Echo) and isinstance(c_app, Client)
        assert_looks_like(s_tr, tt.unwrap(s_tr))
        for size in (1, 100, 1200):
            c_tr.sendto(b"d" * size)
            assert await c_app.got.get() == b"d" * size
        c_tr.close()
        s_tr.close()
        await asyncio.sleep(0)  # let connection_lost callbacks (scheduled with call_soon) run
        await asyncio.sleep(0)
        s = registry.totals("udp")
        c = registry.totals("udpc")
        assert (s.rx, s.tx, c.rx, c.tx) == (1301, 1301, 1301, 1301)
        assert {k.network_transport for k in registry.snapshot().closed} == {"udp"}

    run(main)


def test_pipes(run, registry):
    async def main():
        loop = asyncio.get_running_loop()
        rfd, wfd = os.pipe()
        reader_app = Collect()
        r_tr, r_app = await loop.connect_read_pipe(
            tt.traced(lambda: reader_app, name="pipe-r", registry=registry), os.fdopen(rfd, "rb", 0)
        )
        w_tr, w_app = await loop.connect_write_pipe(
            tt.traced(Collect, name="pipe-w", side="client", registry=registry), os.fdopen(wfd, "wb", 0)
        )
        assert r_app is reader_app
        assert_looks_like(r_tr, tt.unwrap(r_tr))
        assert_looks_like(w_tr, tt.unwrap(w_tr))
        assert not isinstance(r_tr, asyncio.WriteTransport) or isinstance(tt.unwrap(r_tr), asyncio.WriteTransport)
        w_tr.write(b"p" * 5000)
        w_tr.writelines([b"a", bytearray(b"bc"), memoryview(b"def")])
        await reader_app.wait_bytes(5006)
        w_tr.close()
        await reader_app.lost
        await w_app.lost
        assert registry.totals("pipe-r").rx == 5006
        assert registry.totals("pipe-w").tx == 5006
        assert {k.network_transport for k in registry.snapshot().closed} == {"pipe"}

    run(main)


def test_subprocess(run, registry):
    async def main():
        loop = asyncio.get_running_loop()

        class Sub(asyncio.SubprocessProtocol):
            def __init__(self):
                self.out = bytearray()
                self.exited = loop.create_future()
                self.lost = loop.create_future()

            def pipe_data_received(self, fd, data):
                self.out += data

            def process_exited(self):
                self.exited.set_result(None)

            def connection_lost(self, exc):
                self.lost.set_result(exc)

        tr, app = await loop.subprocess_exec(
            tt.traced(Sub, name="sub", side="client", registry=registry),
            sys.executable,
            "-c",
            "import sys; d=sys.stdin.buffer.read(); sys.stdout.buffer.write(d*2)",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        inner = tt.unwrap(tr)
        assert_looks_like(tr, inner)
        assert tr.get_pid() == inner.get_pid()
        stdin = tr.get_pipe_transport(0)
        assert stdin is tr.get_pipe_transport(0)
        assert tt.unwrap(stdin) is inner.get_pipe_transport(0)
        stdin.write(b"z" * 3000)
        stdin.close()
        await app.exited
        await app.lost
        assert tr.get_returncode() == 0 == inner.get_returncode()
        assert bytes(app.out) == b"z" * 6000
        t = registry.totals("sub")
        assert (t.tx, t.rx, t.closed) == (3000, 6000, 1)
        tr.close()

    run(main)


def test_asyncio_subprocess_api_with_traced_factory(run, registry):
    # asyncio.subprocess.Process reaches for the private _wait() of its transport.
    async def main():
        loop = asyncio.get_running_loop()
        from asyncio import subprocess as sp

        def factory():
            return sp.SubprocessStreamProtocol(limit=2**16, loop=loop)

        tr, proto = await loop.subprocess_exec(
            tt.traced(factory, name="proc", side="client", registry=registry),
            sys.executable,
            "-c",
            "print('hi')",
            stdout=sp.PIPE,
        )
        proc = sp.Process(tr, proto, loop)
        out, _ = await proc.communicate()
        assert out.strip() == b"hi"
        assert await proc.wait() == 0
        assert registry.totals("proc").rx == len(out)

    run(main)


def test_connect_accepted_socket(run, registry):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        tr, app = await loop.connect_accepted_socket(tt.traced(Collect, name="acc", registry=registry), a)
        assert isinstance(app, Collect) and tt.is_proxy(tr)
        b.sendall(b"hello")
        await app.wait_bytes(5)
        tr.close()
        await app.lost
        b.close()
        assert registry.totals("acc").rx == 5

    run(main)


def test_traced_rejects_bad_arguments():
    with pytest.raises(ValueError):
        tt.traced(Collect, side="sideways")
    with pytest.raises(ValueError):
        tt.traced(Collect, name="")
    with pytest.raises(TypeError):
        tt.traced(42)  # type: ignore[arg-type]


def test_subprocess_signals_forward(run, registry):
    async def main():
        loop = asyncio.get_running_loop()

        class Sub(asyncio.SubprocessProtocol):
            def __init__(self):
                self.lost = loop.create_future()

            def connection_lost(self, exc):
                self.lost.set_result(exc)

        for action in ("terminate", "kill", "send_signal"):
            tr, app = await loop.subprocess_exec(
                tt.traced(Sub, name="sig", side="client", registry=registry),
                sys.executable,
                "-c",
                "import time; time.sleep(60)",
            )
            if action == "send_signal":
                import signal

                tr.send_signal(signal.SIGTERM)
            else:
                getattr(tr, action)()
            await app.lost
            assert tr.get_returncode() == tt.unwrap(tr).get_returncode() < 0
            tr.close()
            assert tr.is_closing() == tt.unwrap(tr).is_closing()
        assert registry.totals("sig").closed == 3

    run(main)


def test_eof_received_return_value_is_honoured(run, registry):
    async def main():
        loop = asyncio.get_running_loop()
        apps = []

        def factory():
            apps.append(Collect(close_on_eof=False))  # keep the half-open connection
            return apps[-1]

        server = await loop.create_server(tt.traced(factory, name="s", registry=registry), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c_tr, c_app = await loop.create_connection(Collect, "127.0.0.1", port)
        c_tr.write_eof()
        await apps[0].eof
        assert not apps[0].transport.is_closing()
        apps[0].transport.write(b"after your eof")  # still allowed: we returned True
        await c_app.wait_bytes(14)
        apps[0].transport.close()
        await apps[0].lost
        c_tr.close()
        await closed(server)
        t = registry.totals("s")
        assert t.tx == 14 and t.close_reasons == {"eof": 1}

    run(main)


def test_unix_stream_helpers(run, registry, tmp_path):
    async def main():
        path = str(tmp_path / "streams.sock")

        async def handle(reader, writer):
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await tt.start_unix_server(handle, path, name="us", registry=registry)
        reader, writer = await tt.open_unix_connection(path, name="uc", registry=registry)
        assert tt.is_proxy(writer.transport)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        await closed(server)
        assert registry.totals("us").rx == 5 == registry.totals("uc").rx

    run(main)


def test_method_replaced_through_proxy_reads_back(run, registry, loop_kind):
    # mock.patch.object(transport, "pause_reading") and the like: what was set
    # must be what is read back through the proxy, as it is unwrapped.
    from unittest import mock

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(
            wrap_client=lambda f: tt.traced(f, name="c", side="client", registry=registry)
        )
        cls = type(c_tr)
        m = mock.Mock()
        try:
            c_tr.pause_reading = m
        except AttributeError:
            assert loop_kind == "uvloop"  # extension transports refuse it, wrapped or not
        else:
            assert c_tr.pause_reading is m and tt.unwrap(c_tr).pause_reading is m
            assert isinstance(c_tr, cls) and type(c_tr).__name__ == cls.__name__
            c_tr.pause_reading()
            assert m.called and c_tr.traced_record.read_pauses == 0
            del c_tr.pause_reading
            assert type(c_tr) is cls
            c_tr.pause_reading()
            assert c_tr.traced_record.read_pauses == 1
        c_tr.close()
        await c_app.lost
        await s_app.lost
        await closed(server)

    run(main)


def test_forwarders_pass_exactly_the_arguments_given():
    # An app's own tests may mock a transport method and check the call
    # (websockets' suite does, for get_extra_info): a forwarder that filled in
    # a default argument showed up there.
    from traced_transport.datapath.proxy import make_proxy
    from traced_transport.datapath.record import ConnectionRecord, Group

    class Recording(asyncio.DatagramTransport):
        def __init__(self):
            super().__init__()
            self.calls = []

        def get_extra_info(self, *args):
            self.calls.append(("get_extra_info", args))

        def sendto(self, *args):
            self.calls.append(("sendto", args))

    inner = Recording()
    proxy = make_proxy(inner, ConnectionRecord(Group("t", "client", tt.Registry())))
    proxy.get_extra_info("sockname")
    proxy.get_extra_info("peername", 1)
    proxy.sendto(b"x")
    proxy.sendto(b"y", ("127.0.0.1", 9))
    assert inner.calls == [
        ("get_extra_info", ("sockname",)),
        ("get_extra_info", ("peername", 1)),
        ("sendto", (b"x",)),
        ("sendto", (b"y", ("127.0.0.1", 9))),
    ]
