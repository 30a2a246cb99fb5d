"""Clients created with create_connection(ssl=...): handshakes timed, failures counted, on both loops.

On uvloop the client handshake used to run where no hook reaches; see
traced_transport/loops/uvloop_tls_client.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile

import pytest
from _helpers import Collect, closed

import traced_transport as tt


async def _echo_server(server_ctx, **kwargs):
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Collect(echo=True), "127.0.0.1", 0, ssl=server_ctx, **kwargs)


def test_tls_client_handshake_measured(run, registry, server_ctx, client_ctx):
    async def main():
        loop = asyncio.get_running_loop()
        server = await _echo_server(server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            plain_tr, _ = await loop.create_connection(Collect, "127.0.0.1", port, ssl=client_ctx)
            plain_tr.close()
            transport, proto = await loop.create_connection(
                tt.traced(Collect, side="client", registry=registry),
                "127.0.0.1",
                port,
                ssl=client_ctx,
                server_hostname="localhost",
            )
            # What the app gets: the loop's own TLS transport, behind a proxy.
            assert type(proto) is Collect
            assert tt.is_proxy(transport)
            assert type(tt.unwrap(transport)) is type(plain_tr)
            assert transport.get_protocol() is proto
            assert transport.get_extra_info("ssl_object") is not None
            assert transport.get_extra_info("sslcontext") is client_ctx
            transport.write(b"ping")
            await proto.wait_bytes(4)
            assert bytes(proto.data) == b"ping"
            rec = transport.traced_record
            assert rec.tls_handshake_s is not None and rec.tls_handshake_s > 0
            assert rec.tx == 4 and rec.rx == 4  # plaintext, above TLS
            transport.close()
            await proto.lost
        finally:
            await closed(server)

    run(main)
    t = registry.totals()
    assert t.opened == 1 and t.closed == 1 and t.active == 0
    assert t.close_reasons.get("tls_handshake_failed") is None


def test_tls_client_handshake_failure_counted(run, registry, server_ctx):
    untrusting = ssl.create_default_context()  # does not trust the test CA

    async def main():
        loop = asyncio.get_running_loop()
        server = await _echo_server(server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.create_connection(Collect, "127.0.0.1", port, ssl=untrusting)
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.create_connection(
                    tt.traced(Collect, side="client", registry=registry),
                    "127.0.0.1",
                    port,
                    ssl=untrusting,
                    server_hostname="localhost",
                )
        finally:
            await closed(server)

    run(main)
    t = registry.totals()
    assert t.opened == 1 and t.closed == 1 and t.active == 0
    assert t.close_reasons == {"tls_handshake_failed": 1}


def test_tls_client_through_tracing_and_unix_sockets(run, registry, server_ctx, client_ctx):
    async def main():
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory() as d:
            path = f"{d}/s"
            server = await loop.create_unix_server(lambda: Collect(echo=True), path, ssl=server_ctx)
            try:
                with tt.tracing(client_name="tls-client", registry=registry):
                    transport, proto = await loop.create_unix_connection(
                        Collect, path, ssl=client_ctx, server_hostname="localhost"
                    )
                assert tt.is_proxy(transport) and type(proto) is Collect
                transport.write(b"x" * 10)
                await proto.wait_bytes(10)
                assert transport.traced_record.tls_handshake_s > 0
                transport.close()
                await proto.lost
                # uvloop's own errors for a missing server_hostname are kept.
                with tt.tracing(client_name="tls-client", registry=registry), pytest.raises(ValueError):
                    await loop.create_unix_connection(Collect, path, ssl=client_ctx)
            finally:
                await closed(server)

    run(main)
    assert registry.totals("tls-client").closed == 1


def test_start_tls_returning_none_returns_none(registry):
    # A loop whose start_tls gives None (aiohttp's suite has such a double):
    # the hook hands back None, not a proxy over None.
    class NoneTLS(asyncio.SelectorEventLoop):
        async def start_tls(self, transport, protocol, sslcontext, **kwargs):
            return None

    from traced_transport.loops import patches

    loop = NoneTLS()
    patches.ensure(NoneTLS)
    a, b = socket.socketpair()

    async def main():
        a.setblocking(False)
        transport, proto = await loop.create_connection(tt.traced(Collect, side="client", registry=registry), sock=a)
        assert tt.is_proxy(transport)
        assert await loop.start_tls(transport, proto, ssl.create_default_context()) is None
        transport.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        a.close()
        b.close()
