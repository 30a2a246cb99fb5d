"""asyncio streams end to end: ``traced_transport.start_server``/``open_connection`` (the core), a TLS 1.3
server against ``openssl s_client``, and ``traced_transport.tracing(client_name=...)`` around unmodified
``asyncio.open_connection`` calls (side ``client``)."""

from __future__ import annotations

import asyncio

from _support import Otel, closed_connections, run_tool, server_ssl

import traced_transport as tt


async def echo_lines(reader, writer):
    while line := await reader.readline():
        writer.write(line.upper())
        await writer.drain()
    writer.close()


def test_start_server_open_connection_end_to_end(run):
    otel = Otel()

    async def main():
        server = await tt.start_server(echo_lines, "127.0.0.1", 0, name="lines", observer=otel.telemetry)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await tt.open_connection("127.0.0.1", port, name="lines-client", observer=otel.telemetry)
        for i in range(100):
            writer.write(b"ping %d\n" % i)
            assert await reader.readline() == b"PING %d\n" % i
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        await closed_connections(otel.registry, "lines", 1)
        server.close()
        await server.wait_closed()

    run(main)
    sent = sum(len(b"ping %d\n" % i) for i in range(100))
    server, client = otel.registry.totals("lines"), otel.registry.totals("lines-client")
    assert server.rx == server.tx == client.tx == client.rx == sent
    assert server.close_reasons == {"eof": 1}  # the client's EOF came first
    (span,) = otel.spans("lines-client")
    assert span.kind.name == "CLIENT" and "transport.eof" in [e.name for e in span.events]


def test_tls_server_against_openssl_s_client(run, openssl, certs):
    otel = Otel()
    request = b"".join(b"line %d\n" % i for i in range(50))

    async def fifty_lines(reader, writer):  # s_client -quiet ignores stdin's EOF: the server ends it
        for _ in range(50):
            writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await tt.start_server(
            fifty_lines, "127.0.0.1", 0, name="tls-lines", observer=otel.telemetry, ssl=server_ssl(certs)
        )
        port = server.sockets[0].getsockname()[1]
        code, out, err = await run_tool(
            openssl,
            "s_client",
            "-quiet",
            "-tls1_3",
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            certs.ca,
            "-verify_return_error",
            stdin=request,
        )
        await closed_connections(otel.registry, "tls-lines", 1)
        server.close()
        await server.wait_closed()
        return code, out, err

    code, out, err = run(main)
    assert out == request.upper(), err.decode()
    (span,) = otel.spans("tls-lines")
    assert span.attributes["tls.protocol.version"] == "1.3" and span.attributes["tls.cipher"].startswith("TLS_")
    assert span.attributes["transport.received"] == len(request) == span.attributes["transport.sent"]
    assert otel.value("transport.tls.handshake.duration", transport_name="tls-lines") == 1


def test_tracing_scope_traces_unmodified_client_calls(run):
    otel = Otel()

    async def main():
        server = await asyncio.start_server(echo_lines, "127.0.0.1", 0)  # not traced: outside any scope
        port = server.sockets[0].getsockname()[1]
        with tt.tracing(client_name="outgoing", observer=otel.telemetry):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert tt.is_proxy(writer.transport)
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)  # after the block: untraced
        assert not tt.is_proxy(writer2.transport)
        for r, w in ((reader, writer), (reader2, writer2)):
            w.write(b"abc\n")
            assert await r.readline() == b"ABC\n"
            w.close()
            await w.wait_closed()
        await closed_connections(otel.registry, "outgoing", 1)
        server.close()
        await server.wait_closed()

    run(main)
    totals = otel.registry.totals()
    assert totals.opened == 1 and otel.registry.totals("outgoing").tx == 4
    (span,) = otel.spans("outgoing")
    assert span.attributes["transport.side"] == "client"
