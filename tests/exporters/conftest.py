"""Fixtures for the exporter tests: promtool's verdict and TLS material on disk (promtool_bin and
prometheus_bin come from tests/conftest.py)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest


@pytest.fixture(scope="session")
def promtool_check(promtool_bin):
    """promtool_check(text) -> promtool's complaints (stdout+stderr), "" when clean."""

    def check(text: str) -> str:
        proc = subprocess.run([promtool_bin, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
        out = (proc.stdout + proc.stderr).decode().strip()
        if proc.returncode != 0 and not out:
            out = f"promtool exited with {proc.returncode}"
        return out

    return check


@dataclass
class Certs:
    ca: str  # CA bundle trusted by clients (server certificate's issuer) and by the server
    server_cert: str  # server certificate chain + key (PEM), for 127.0.0.1 / localhost / ::1
    server_key: str
    client: str  # client certificate + key, issued by the same CA
    stranger: str  # client certificate + key from another CA


@pytest.fixture(scope="session")
def scrape_certs(tmp_path_factory) -> Certs:
    trustme = pytest.importorskip("trustme")
    d = tmp_path_factory.mktemp("scrape-certs")
    ca = trustme.CA()
    other = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "::1")
    client = ca.issue_cert("scraper@example.com")
    stranger = other.issue_cert("stranger@example.com")
    paths = {}
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(d / "server.pem"), append=True)
    server.private_key_pem.write_to_path(str(d / "server.key"))
    for name, issued in (("client", client), ("stranger", stranger)):
        p = d / f"{name}.pem"
        issued.private_key_and_cert_chain_pem.write_to_path(str(p))
        paths[name] = str(p)
    return Certs(
        ca=str(d / "ca.pem"),
        server_cert=str(d / "server.pem"),
        server_key=str(d / "server.key"),
        client=paths["client"],
        stranger=paths["stranger"],
    )
