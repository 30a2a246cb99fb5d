"""start_tls and sendfile on proxies, on both loops."""

from __future__ import annotations

import asyncio
import ssl
import sys

import pytest
from _helpers import closed, tcp_pair

import traced_transport as tt


def _is_uvloop() -> bool:
    return type(asyncio.get_running_loop()).__module__.startswith("uvloop")


def test_loop_start_tls_on_proxies(run, registry, server_ctx, client_ctx):
    async def main():
        loop = asyncio.get_running_loop()
        server, s_app, c_tr, c_app = await tcp_pair(
            wrap_server=lambda f: tt.traced(f, name="s", registry=registry),
            wrap_client=lambda f: tt.traced(f, name="c", side="client", registry=registry),
        )
        c_tr.write(b"plain")
        await s_app.wait_bytes(5)
        s_new, c_new = await asyncio.gather(
            loop.start_tls(s_app.transport, s_app, server_ctx, server_side=True),
            loop.start_tls(c_tr, c_app, client_ctx, server_hostname="localhost"),
        )
        for new in (s_new, c_new):
            assert tt.is_proxy(new)
            assert "SSL" in type(new).__name__
            assert new.get_extra_info("ssl_object") is not None
        assert s_new.get_protocol() is s_app and c_new.get_protocol() is c_app
        s_app.transport = s_new
        c_app.transport = c_new
        c_new.write(b"secret" * 1000)
        await s_app.wait_bytes(5 + 6000)
        assert bytes(s_app.data) == b"plain" + b"secret" * 1000
        s_rec, c_rec = s_new.traced_record, c_new.traced_record
        # one record per connection across the upgrade; plaintext counted after it
        assert s_rec is s_app.transport.traced_record
        assert (c_rec.tx, s_rec.rx) == (6005, 6005)
        assert s_rec.tls_handshake_s > 0 and c_rec.tls_handshake_s > 0
        c_new.close()
        await s_app.lost
        await closed(server)
        t = registry.totals("s")
        assert (t.opened, t.closed, t.rx) == (1, 1, 6005)

    run(main)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="StreamWriter.start_tls is new in 3.11")
def test_stream_writer_start_tls(run, registry, server_ctx, client_ctx):
    async def main():
        done = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            assert tt.is_proxy(writer.transport)
            await writer.start_tls(server_ctx)
            assert "SSL" in type(writer.transport).__name__ and tt.is_proxy(writer.transport)
            data = await reader.readexactly(1000)
            writer.write(data[::-1])
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            done.set_result(None)

        server = await tt.start_server(handle, "127.0.0.1", 0, name="s", registry=registry)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await tt.open_connection("127.0.0.1", port, name="c", registry=registry)
        await writer.start_tls(client_ctx, server_hostname="localhost")
        writer.write(bytes(range(250)) * 4)
        assert await reader.readexactly(1000) == (bytes(range(250)) * 4)[::-1]
        await done
        writer.close()
        await writer.wait_closed()
        await closed(server)
        s, c = registry.totals("s"), registry.totals("c")
        assert (s.rx, s.tx, c.rx, c.tx) == (1000,) * 4

    run(main)


def test_start_tls_handshake_failure_closes_record(run, registry, server_ctx):
    async def main():
        loop = asyncio.get_running_loop()
        server, s_app, c_tr, c_app = await tcp_pair(
            wrap_server=lambda f: tt.traced(f, name="s", registry=registry),
            wrap_client=lambda f: tt.traced(f, name="c", side="client", registry=registry),
        )
        untrusting = ssl.create_default_context()  # does not trust the test CA
        results = await asyncio.gather(
            loop.start_tls(s_app.transport, s_app, server_ctx, server_side=True),
            loop.start_tls(c_tr, c_app, untrusting, server_hostname="localhost"),
            return_exceptions=True,
        )
        assert isinstance(results[1], (ssl.SSLError, ConnectionError, OSError))
        await closed(server)
        c = registry.totals("c")
        assert c.closed == 1 and c.close_reasons == {"tls_handshake_failed": 1}

    run(main)


def test_sendfile(run, registry, tmp_path, server_ctx, client_ctx):
    data = bytes(range(256)) * 4000  # 1 MB
    path = tmp_path / "f.bin"
    path.write_bytes(data)

    async def main():
        loop = asyncio.get_running_loop()
        for tls in (False, True):
            registry.clear()
            server, s_app, c_tr, c_app = await tcp_pair(
                wrap_server=lambda f: tt.traced(f, name="s", registry=registry),
                wrap_client=lambda f: tt.traced(f, name="c", side="client", registry=registry),
                ssl_server=server_ctx if tls else None,
                ssl_client=client_ctx if tls else None,
            )
            with open(path, "rb") as f:
                if _is_uvloop():
                    # uvloop has no sendfile: the same NotImplementedError as unwrapped
                    with pytest.raises(NotImplementedError):
                        await loop.sendfile(c_tr, f)
                    with pytest.raises(NotImplementedError):
                        await loop.sendfile(tt.unwrap(c_tr), f)
                    sent = 0
                else:
                    if tls:
                        with pytest.raises(RuntimeError):  # no native path under TLS, as unwrapped
                            await loop.sendfile(c_tr, f, fallback=False)
                    sent = await loop.sendfile(c_tr, f, offset=10, count=len(data) - 20)
                    assert sent == len(data) - 20
                    assert f.tell() == len(data) - 10
                    assert not tt.unwrap(c_tr).is_closing()
                    if not tls:
                        # the loop's fd map holds the real transport again, not our proxy
                        fd = tt.unwrap(c_tr)._sock_fd
                        assert loop._transports[fd] is tt.unwrap(c_tr)
            c_tr.write(b"tail")
            await s_app.wait_bytes(sent + 4)
            if sent:
                assert bytes(s_app.data[:sent]) == data[10:-10]
            assert c_tr.traced_record.tx == sent + 4
            assert c_tr.get_protocol() is c_app
            c_tr.close()
            await s_app.lost
            await closed(server)
            assert registry.totals("s").rx == sent + 4 == registry.totals("c").tx

    run(main)
