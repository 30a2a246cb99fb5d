"""EndpointOptions: the scrape endpoint's options, defined once and shared by the endpoint, setup() and the CLI."""

from __future__ import annotations

import argparse
import base64
import http.client

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, Counter
from traced_transport.exporters import options, sdk
from traced_transport.exporters.options import BASIC_AUTH_ENV, EndpointOptions
from traced_transport.exporters.prometheus import ScrapeEndpoint


def parsed(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    return parser.parse_args(argv)


def test_command_line_builds_the_options():
    args = parsed(["--metrics-port", "0", "--metrics-path", "/m", "--basic-auth", "u:p:w"])
    opts = EndpointOptions.from_args(args, environ={})
    assert (opts.host, opts.port, opts.path, opts.basic_auth) == ("127.0.0.1", 0, "/m", ("u", "p:w"))
    assert EndpointOptions.from_args(parsed([]), environ={BASIC_AUTH_ENV: "a:b"}).basic_auth == ("a", "b")
    assert EndpointOptions.from_args(parsed([]), environ={}) == EndpointOptions()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": "metrics"},
        {"keyfile": "k.pem"},
        {"client_cafile": "ca.pem"},
        {"basic_auth": ("a:b", "c")},
        {"max_connections": 0},
    ],
)
def test_invalid_combinations_raise(kwargs):
    with pytest.raises(ValueError):
        EndpointOptions(**kwargs)
    with pytest.raises(ValueError):
        ScrapeEndpoint(CollectorRegistry(), **kwargs)


def test_password_never_in_repr():
    opts = EndpointOptions(basic_auth=("prom", "hunter2"))
    assert "hunter2" not in repr(opts) and "prom" in repr(opts)
    with pytest.raises(TypeError):
        opts.with_(no_such_option=1)


def test_one_options_object_serves_the_endpoint_and_setup():
    registry = CollectorRegistry()
    Counter("opt_things", "Things", registry=registry).inc()
    opts = EndpointOptions(port=0, path="/scrape", basic_auth=("u", "p"))
    with ScrapeEndpoint(registry, opts) as ep:
        assert ep.url.endswith("/scrape")
        conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=10)
        conn.request("GET", "/scrape", headers={"Authorization": "Basic " + base64.b64encode(b"u:p").decode()})
        response = conn.getresponse()
        assert response.status == 200 and b"opt_things_total 1.0" in response.read()
        conn.close()
    s = sdk.setup(endpoint=opts, set_global=False, otlp=False)
    try:
        assert s.endpoint.options == opts and s.url.endswith("/scrape")
    finally:
        s.shutdown()
