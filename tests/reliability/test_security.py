"""Security: loopback by default; only the exact basic-auth credentials get in; no peer address, peer port,
certificate subject or other client-controlled string (SNI, payload) ever becomes a metric label."""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import inspect
import re
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("prometheus_client")

from _echo import Echo
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from traced_transport.exporters import options, sdk
from traced_transport.exporters.options import EndpointOptions
from traced_transport.exporters.prometheus import ScrapeEndpoint

import traced_transport as tt

METRIC_LABELS = {
    "transport_name",
    "transport_side",
    "network_transport",
    "network_type",
    "server_port",
    "tls_protocol_version",
    "tls_cipher",
    "error_type",
    "le",
}
PEERS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
SUBJECTS = ["alice-7f3a@example.org", "bob-19c2@example.org", "carol-55e1@example.org"]
SNI = "sni-user-controlled.example"


def _parsed(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    return parser.parse_args(argv)


def test_loopback_by_default():
    # The endpoint's options are defined once, in EndpointOptions; ScrapeEndpoint takes them.
    assert EndpointOptions().host == "127.0.0.1"
    assert ScrapeEndpoint(CollectorRegistry()).host == "127.0.0.1"
    assert EndpointOptions.from_args(_parsed([])).host == "127.0.0.1"
    assert inspect.signature(sdk.setup).parameters["metrics_host"].default == "127.0.0.1"
    s = sdk.setup(metrics_port=0, set_global=False, otlp=False)
    try:
        assert s.endpoint.host == "127.0.0.1"
        assert s.url.startswith("http://127.0.0.1:")
    finally:
        s.shutdown()


@pytest.fixture(scope="module")
def auth_endpoint():
    registry = CollectorRegistry()
    Counter("secret_things", "Only for the scraper", registry=registry).inc()
    ep = ScrapeEndpoint(registry, port=0, basic_auth=("prom", "s3cr3t-Pass")).start()
    yield ep
    ep.stop()


def _status(ep, headers) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=10)
    try:
        conn.putrequest("GET", "/metrics", skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


creds = st.tuples(
    st.one_of(st.just("prom"), st.text(max_size=10)),
    st.one_of(st.just("s3cr3t-Pass"), st.just("s3cr3t-pass"), st.just("s3cr3t-Pass "), st.text(max_size=14)),
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    user_password=creds,
    scheme=st.sampled_from(["Basic", "basic", "BASIC", "Bearer", ""]),
    mangle=st.sampled_from(["none", "no-colon", "junk-b64", "extra-space"]),
)
def test_only_the_exact_credentials_get_in(auth_endpoint, user_password, scheme, mangle):
    user, password = user_password
    raw = f"{user}:{password}".encode("utf-8", "surrogatepass")
    if mangle == "no-colon":
        raw = raw.replace(b":", b"", 1)
    token = base64.b64encode(raw).decode()
    if mangle == "junk-b64":
        token = token[:-1] + "!"
    value = f"{scheme} {token}" if scheme else token
    if mangle == "extra-space":
        value = value.replace(" ", "  ")
    status, body = _status(auth_endpoint, {"Authorization": value})
    right = (
        (user, password) == ("prom", "s3cr3t-Pass") and scheme.lower() == "basic" and mangle in ("none", "extra-space")
    )
    assert status == (200 if right else 401), (value, status)
    assert (b"secret_things" in body) == right
    assert _status(auth_endpoint, {})[0] == 401  # missing credentials


def test_no_peer_or_client_string_becomes_a_label(run, loop_kind, ca):
    """mTLS clients from three loopback addresses, each with its own certificate subject and an SNI name,
    plus plain TCP clients from many source ports: the scrape's labels hold none of it."""
    s = sdk.setup(service_name="labels", metrics_port=0, set_global=False, otlp=False)
    registry = tt.Registry()
    telemetry = tt.Telemetry(registry, meter_provider=s.meter_provider, tracer_provider=s.tracer_provider)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", SNI).configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctxs = []
    for subject in SUBJECTS:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ca.issue_cert(subject).configure_cert(ctx)
        client_ctxs.append(ctx)
    seen_client_ports = set()
    server_ports = {}

    async def main():
        loop = asyncio.get_running_loop()
        tls = await loop.create_server(tt.traced(Echo, name="mtls", observer=telemetry), "127.0.0.1", 0, ssl=server_ctx)
        plain = await loop.create_server(tt.traced(Echo, name="plain", observer=telemetry), "0.0.0.0", 0)
        server_ports["mtls"] = tls.sockets[0].getsockname()[1]
        server_ports["plain"] = plain.sockets[0].getsockname()[1]
        for peer, ctx in zip(PEERS, client_ctxs):
            reader, writer = await tt.open_connection(
                "127.0.0.1",
                server_ports["mtls"],
                ssl=ctx,
                server_hostname=SNI,
                local_addr=(peer, 0),
                name="mtls-client",
                observer=telemetry,
            )
            seen_client_ports.add(writer.get_extra_info("sockname")[1])
            writer.write(f"hello from {peer}\n".encode())
            await reader.readline()
            writer.close()
            await writer.wait_closed()
        for i, peer in enumerate(PEERS * 4):
            reader, writer = await tt.open_connection(
                peer, server_ports["plain"], local_addr=(peer, 0), name="plain-client", observer=telemetry
            )
            seen_client_ports.add(writer.get_extra_info("sockname")[1])
            writer.write(f"{SUBJECTS[i % 3]}\n".encode())  # a user-controlled string in the payload
            await reader.readline()
            writer.close()
            await writer.wait_closed()
        for srv in (tls, plain):
            srv.close()
            await srv.wait_closed()

    try:
        run(main, timeout=60)
        conn = http.client.HTTPConnection("127.0.0.1", s.endpoint.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    finally:
        s.shutdown()
    labels = {}
    for family in text_string_to_metric_families(text):
        if family.name == "target_info":
            continue  # the resource (service name, SDK version), not per-connection data
        for sample in family.samples:
            for k, v in sample.labels.items():
                labels.setdefault(k, set()).add(v)
    assert set(labels) <= METRIC_LABELS, set(labels) - METRIC_LABELS
    assert {"mtls", "mtls-client", "plain", "plain-client"} <= labels["transport_name"]
    # A client's port number can equal a listening port on another address (the kernel picks each
    # on its own): such a number is a listening port here, which server_port may carry.
    client_ports = seen_client_ports - set(server_ports.values())
    forbidden = set(PEERS) | set(SUBJECTS) | {SNI} | {str(p) for p in client_ports}
    for name, label_values in labels.items():
        for value in label_values:
            for bad in forbidden:
                assert bad not in value, (name, bad, value)
    # the cipher (handshake histogram) is a name the server chose from its own list
    assert all(re.fullmatch(r"[A-Z0-9_]+", v) for v in labels.get("tls_cipher", set()) - {""}), labels["tls_cipher"]
    # server_port is the listening port only
    assert labels["server_port"] - {""} == {str(p) for p in server_ports.values()}
