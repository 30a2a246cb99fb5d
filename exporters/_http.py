"""A small, defensive HTTP/1.1 server on its own threads (used by the scrape endpoint).

Built on ``socketserver`` and ``http.server`` with the limits a metrics endpoint
facing an untrusted network needs:

- one accept thread; each connection is served on its own daemon thread, at
  most ``max_connections`` at once (beyond that a plaintext client gets a 503,
  a TLS client is closed);
- a TLS handshake happens on the connection's thread, never in the accept
  thread, and must finish within ``timeout``;
- a request head (request line and headers) must arrive within ``timeout``
  in total (not per ``recv``), so a client trickling bytes cannot hold a
  thread; an idle keep-alive connection is closed after ``timeout``;
- request line at most 8 KiB (414), head at most 32 KiB and 100 header lines
  (431), malformed requests get a 400; error bodies are short plain text,
  never a traceback; exceptions in a handler are logged, rate-limited.

No asyncio: the server must not be touched by ``traced_transport.instrument()``
hooks on loop classes, and must not share an event loop with the application.
"""

from __future__ import annotations

import errno
import http.client
import io
import logging
import selectors
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Optional

from traced_transport.report import RateLimitedLog

logger = logging.getLogger("traced_transport.exporters.http")

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD = 32 * 1024
LINGER_S = 1.0
LINGER_BYTES = 1 << 20


rate_limited = RateLimitedLog(logger)  # the shared one (traced_transport.report)


class _DeadlineReader(io.RawIOBase):
    """Socket reads that fail once a deadline has passed (total, not per recv)."""

    def __init__(self, sock: socket.socket, idle_timeout: float) -> None:
        self._sock = sock
        self.idle_timeout = idle_timeout
        self.deadline: Optional[float] = None
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request head not received in time")
            self._sock.settimeout(remaining)
        else:
            self._sock.settimeout(self.idle_timeout)
        n = self._sock.recv_into(buffer)
        self.received += n
        return n


class _HeadReader:
    """What ``http.client.parse_headers`` reads from: ``readline`` with a byte budget for the whole head."""

    def __init__(self, buffered: io.BufferedReader) -> None:
        self._f = buffered
        self.budget = MAX_HEAD

    def readline(self, limit: int = -1) -> bytes:
        if self.budget <= 0:
            raise http.client.LineTooLong("request head")
        n = self.budget + 1 if limit is None or limit < 0 else min(limit, self.budget + 1)
        line = self._f.readline(n)
        self.budget -= len(line)
        if self.budget < 0:
            raise http.client.LineTooLong("request head")
        return line

    def read(self, n: int = -1) -> bytes:  # not used for GET/HEAD; bounded anyway
        return self._f.read(min(n, self.budget) if n is not None and n >= 0 else self.budget)


class _Writer(io.BufferedIOBase):
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


# app(handler) -> Response: the handler gives .command, .path, .headers, .client_address.
App = Callable[["Handler"], Response]


def _printable(text: str, limit: int = 200) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text[:limit])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Errors found before a version is parsed are still answered with a status line (HTTP/0.9 is not served).
    default_request_version = "HTTP/1.1"
    server_version = "traced-transport"
    sys_version = ""
    server: Server

    # -- socketserver.BaseRequestHandler ---------------------------------------
    def setup(self) -> None:
        self.connection = self.request
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        except OSError:
            pass
        self._raw = _DeadlineReader(self.connection, self.server.timeout_s)
        self._buffered = io.BufferedReader(self._raw, 8192)
        self.rfile = _HeadReader(self._buffered)  # type: ignore[assignment]
        self.wfile = _Writer(self.connection)  # type: ignore[assignment]
        self._extra_headers: list[tuple[str, str]] = []

    def finish(self) -> None:
        try:
            self._buffered.close()
        except Exception:  # noqa: BLE001
            pass

    # -- request loop -----------------------------------------------------------
    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection and not self.server.stopping:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        self.command = ""
        self.request_version = ""
        self.requestline = ""
        self._extra_headers = []
        raw = self._raw
        raw.deadline = time.monotonic() + self.server.timeout_s
        raw.received = 0
        self.rfile.budget = MAX_HEAD
        try:
            line = self._buffered.readline(MAX_REQUEST_LINE + 1)
            if not line:
                self.close_connection = True
                return
            if len(line) > MAX_REQUEST_LINE or not line.endswith(b"\n"):
                if len(line) > MAX_REQUEST_LINE:
                    self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                else:  # EOF in the middle of the request line
                    self.close_connection = True
                return
            self.rfile.budget = MAX_HEAD - len(line)
            self.raw_requestline = line
            if not self.parse_request():
                return
            if self.request_version.startswith("HTTP/0."):
                # http.server would answer "HTTP/0.9" with a bare body, no status line or headers.
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
                return
            raw.deadline = None
            self.connection.settimeout(self.server.timeout_s)
            if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0").strip() not in (
                "",
                "0",
            ):
                # We never read request bodies: answer, then close rather than desynchronise.
                self.close_connection = True
            self._dispatch()
        except TimeoutError:
            if raw.received and raw.deadline is not None:
                self._try_send_error(HTTPStatus.REQUEST_TIMEOUT)
            self.close_connection = True
        except (ConnectionError, ssl.SSLError, OSError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a request the parser chokes on: 400, never a traceback
            rate_limited("parse", "scrape endpoint: could not parse a request: %r", exc, level=logging.INFO)
            self._try_send_error(HTTPStatus.BAD_REQUEST)
            self.close_connection = True

    def _try_send_error(self, code: int) -> None:
        try:
            self.connection.settimeout(1.0)
            self.send_error(code)
        except Exception:  # noqa: BLE001
            pass

    def _dispatch(self) -> None:
        try:
            response = self.server.app(self)
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            rate_limited("handler", "scrape endpoint: request handler failed: %r", exc, exc_info=exc)
            response = Response(500, [], b"500 Internal Server Error\n")
        if response.status >= 400:
            self._extra_headers = response.headers
            self.send_error(response.status, body=response.body)
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    # -- responses ---------------------------------------------------------------
    def send_error(
        self, code: int, message: Optional[str] = None, explain: Optional[str] = None, *, body: Optional[bytes] = None
    ) -> None:
        code = int(code)
        if self.request_version.startswith("HTTP/0."):  # answered with a status line all the same
            self.request_version = self.default_request_version
            self.close_connection = True
        try:
            short = self.responses[code][0]
        except KeyError:
            short = "Error"
        if body is None:
            text = f"{code} {short}"
            if message and message != short:
                text += f": {_printable(message)}"
            body = (text + "\n").encode("ascii", "replace")
        if code not in (401, 404, 405):  # after anything else the stream may be out of step
            self.close_connection = True
        self.log_error("code %d, %s", code, _printable(message or short))
        self.send_response(code)  # the reason phrase is the standard one, never client text
        for name, value in self._extra_headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_response(self, code: int, message: Optional[str] = None) -> None:
        super().send_response(code, None)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s - %s", self.client_address, _printable(format % args, 400))


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """The server side of a TLS handshake, all of it within ``deadline`` (not per recv)."""
    sock.setblocking(False)
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            wait = selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            wait = selectors.EVENT_WRITE
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("TLS handshake not completed in time")
        with selectors.DefaultSelector() as sel:
            sel.register(sock, wait)
            if not sel.select(remaining):
                raise TimeoutError("TLS handshake not completed in time")


class Server(socketserver.TCPServer):
    """Accepts on one thread; serves each connection on a bounded pool of daemon threads."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple,
        family: int,
        app: App,
        *,
        ssl_context: Optional[ssl.SSLContext],
        max_connections: int,
        timeout: float,
    ) -> None:
        self.address_family = family
        self.app = app
        self.ssl_context = ssl_context
        self.timeout_s = timeout
        self.max_connections = max_connections
        self.stopping = False
        self._stopped = threading.Event()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._connections: dict[int, tuple[socket.socket, threading.Thread]] = {}
        super().__init__(address, Handler, bind_and_activate=False)
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    # -- socketserver hooks ---------------------------------------------------
    def get_request(self) -> tuple:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # The listening socket stays readable: without a pause this would spin.
                rate_limited("accept-resources", "scrape endpoint: accept failed (%s); backing off", exc)
                self._stopped.wait(0.1)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.stopping or not self._slots.acquire(blocking=False):
            self._reject(request)
            return
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="traced-transport-scrape-conn",
            daemon=True,
        )
        with self._lock:
            self._connections[id(request)] = (request, thread)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._connections.pop(id(request), None)
            self._slots.release()
            self.shutdown_request(request)
            raise

    def _reject(self, request: socket.socket) -> None:
        rate_limited("busy", "scrape endpoint: %d connections already open; refusing one", self.max_connections)
        if self.ssl_context is None:
            body = b"503 Service Unavailable: too many connections\n"
            try:
                request.setblocking(False)
                request.send(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
            except OSError:
                pass
        self.shutdown_request(request)

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        sock: socket.socket = request
        key = id(request)
        try:
            sock.settimeout(self.timeout_s)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                with self._lock:
                    if key in self._connections:
                        self._connections[key] = (sock, self._connections[key][1])
                if self.stopping:
                    return
                _handshake(sock, time.monotonic() + self.timeout_s)
                sock.settimeout(self.timeout_s)
            self.RequestHandlerClass(sock, client_address, self)
        except (TimeoutError, ConnectionError, ssl.SSLError) as exc:
            logger.debug("scrape endpoint: connection from %s ended: %r", client_address, exc)
        except OSError as exc:
            logger.debug("scrape endpoint: connection from %s ended: %r", client_address, exc)
        except Exception as exc:  # noqa: BLE001
            rate_limited("connection", "scrape endpoint: connection handler failed: %r", exc, exc_info=exc)
        finally:
            self._lingering_close(sock)
            with self._lock:
                self._connections.pop(key, None)
            self._slots.release()

    def shutdown_request(self, request: Any) -> None:
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            request.close()
        except OSError:
            pass

    def _lingering_close(self, sock: Any) -> None:
        """Close after an answer, reading (and dropping) what the client still sends for a moment.

        Closing with unread input makes the kernel send a reset, which can destroy the
        response (a 431, say) before the client has read it; so: stop writing, let
        the client see EOF and close, and only then close. Bounded in time and bytes.
        """
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            drained = 0
            while drained < LINGER_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                data = sock.recv(65536)
                if not data:
                    break
                drained += len(data)
        except (OSError, ValueError):
            pass
        try:
            sock.close()
        except OSError:
            pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        rate_limited("accept", "scrape endpoint: error serving %s", client_address, exc_info=sys.exc_info())

    # -- stopping -------------------------------------------------------------
    def stop_connections(self, timeout: float) -> None:
        """Unblock and wait for the connection threads (after the accept loop has stopped)."""
        self.stopping = True
        self._stopped.set()
        with self._lock:
            conns = list(self._connections.values())
        for sock, _ in conns:
            try:
                # The plain socket's shutdown, also for an SSLSocket (whose own would drop its
                # SSL object under the thread reading it): the reader sees EOF and ends.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for _, thread in conns:
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0))

    def active_connections(self) -> int:
        with self._lock:
            return len(self._connections)
