"""Fixtures of the integration tests: real client tools, certificates on disk, a real OTel SDK in memory."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from _helpers import require_binary


@pytest.fixture(scope="session")
def curl() -> str:
    return require_binary("curl", "curl")


@pytest.fixture(scope="session")
def openssl() -> str:
    return require_binary("openssl", "openssl")


@pytest.fixture(scope="session")
def nghttp() -> str:
    return require_binary("nghttp", "nghttp2-client")


@dataclass
class Certs:
    ca: str  # the CA the clients trust, and the server trusts for client certificates
    cert: str  # server certificate chain (127.0.0.1, localhost)
    key: str  # server key
    client: str  # client certificate + key (PEM) issued by ca
    stranger: str  # client certificate + key issued by another CA


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    trustme = pytest.importorskip("trustme")
    d = tmp_path_factory.mktemp("certs")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(d / "server.pem"), append=i > 0)
    server.private_key_pem.write_to_path(str(d / "server.key"))
    ca.issue_cert("alice@example.com").private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    other.issue_cert("mallory@example.com").private_key_and_cert_chain_pem.write_to_path(str(d / "stranger.pem"))
    return Certs(
        str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"), str(d / "client.pem"), str(d / "stranger.pem")
    )
