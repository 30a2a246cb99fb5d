"""The scrape endpoint's options, defined once.

:class:`EndpointOptions` is what :class:`~traced_transport.exporters.prometheus.ScrapeEndpoint`
takes, what ``sdk.setup(endpoint=...)`` and ``multiworker.serve(options=...)`` pass on,
and what the command line builds with :func:`add_arguments` / :meth:`EndpointOptions.from_args`
(``traced-transport run``). A new option is a field here plus, when the command line
should have it, one ``add_argument`` below.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

__all__ = ["BASIC_AUTH_ENV", "EndpointOptions", "add_arguments"]

BASIC_AUTH_ENV = "TRACED_TRANSPORT_BASIC_AUTH"


@dataclass(frozen=True)
class EndpointOptions:
    """Where and how the scrape endpoint listens.

    - ``host``/``port``: loopback and 9464 unless told otherwise; ``port=0`` picks a free port.
    - ``path``: where the metrics are (other paths get ``404``).
    - ``certfile``/``keyfile``: serve HTTPS (TLS 1.2+). ``client_cafile``: require a
      client certificate signed by one of these CAs (needs ``certfile``).
    - ``basic_auth=(user, password)``: HTTP basic auth, compared in constant time.
    - ``max_connections``: connections served at once; ``timeout``: bounds the TLS
      handshake, the request head, an idle keep-alive connection and a response.
    """

    host: str = "127.0.0.1"
    port: int = 9464
    path: str = "/metrics"
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    client_cafile: Optional[str] = None
    basic_auth: Optional[tuple[str, str]] = None
    max_connections: int = 16
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile without certfile")
        if self.client_cafile is not None and self.certfile is None:
            raise ValueError("client_cafile (client certificates) needs TLS: pass certfile too")
        if self.basic_auth is not None and ":" in self.basic_auth[0]:
            raise ValueError("a basic-auth user name cannot contain ':'")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")

    def __repr__(self) -> str:  # the password stays out of logs and tracebacks
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.basic_auth is not None:
            shown["basic_auth"] = (self.basic_auth[0], "<hidden>")
        return "EndpointOptions(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def with_(self, **changes: Any) -> EndpointOptions:
        """A copy with ``changes`` (field names); unknown names raise ``TypeError``."""
        return replace(self, **changes) if changes else self

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Optional[dict] = None) -> EndpointOptions:
        """The options :func:`add_arguments` parsed; basic auth also from ``TRACED_TRANSPORT_BASIC_AUTH``."""
        env = os.environ if environ is None else environ
        auth = args.basic_auth or env.get(BASIC_AUTH_ENV)
        basic_auth = None
        if auth:
            user, _, password = auth.partition(":")
            basic_auth = (user, password)
        return cls(
            host=args.metrics_host,
            port=args.metrics_port,
            path=args.metrics_path,
            certfile=args.certfile or None,
            keyfile=(args.keyfile or None) if args.certfile else None,
            client_cafile=args.client_cafile or None,
            basic_auth=basic_auth,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The endpoint's command-line options: ``--metrics-host``, ``--metrics-port``, ``--metrics-path``, TLS, auth."""
    default = EndpointOptions()
    group = parser.add_argument_group("scrape endpoint")
    group.add_argument(
        "--metrics-host",
        default=default.host,
        help="address of the scrape endpoint (default: %(default)s; anything else must be asked for)",
    )
    group.add_argument(
        "--metrics-port",
        type=int,
        default=default.port,
        help="port of the scrape endpoint; 0 picks a free one (default: %(default)s)",
    )
    group.add_argument("--metrics-path", default=default.path, help="path of the metrics (default: %(default)s)")
    group.add_argument("--certfile", help="serve the endpoint over TLS with this certificate (PEM)")
    group.add_argument("--keyfile", help="the certificate's private key (PEM)")
    group.add_argument("--client-cafile", help="require client certificates signed by this CA")
    group.add_argument(
        "--basic-auth",
        metavar="USER:PASSWORD",
        help=f"require HTTP basic auth on the endpoint (or set {BASIC_AUTH_ENV})",
    )
