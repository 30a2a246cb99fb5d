"""A real OTLP receiver in the test process: OTLP/HTTP (protobuf) and OTLP/gRPC on 127.0.0.1.

Everything that arrives is decoded and kept; ``wait_for(predicate)`` blocks on a
condition variable until the predicate holds (re-checked at every arrival), so
tests never sleep to synchronise.
"""

from __future__ import annotations

import gzip
import http.server
import threading
import zlib
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Optional

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

HTTP = "http/protobuf"
GRPC = "grpc"

_MESSAGES = {
    "/v1/traces": ("traces", trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse),
    "/v1/metrics": (
        "metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
}


def any_value(value: Any) -> Any:
    """An OTLP AnyValue as a Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(key_values: Any) -> dict:
    return {kv.key: any_value(kv.value) for kv in key_values}


@dataclass
class Request:
    signal: str  # "traces" | "metrics"
    protocol: str  # HTTP | GRPC
    headers: dict  # lower-case names (HTTP headers or gRPC metadata)
    message: Any  # ExportTraceServiceRequest | ExportMetricsServiceRequest
    content_encoding: Optional[str] = None


@dataclass
class Span:
    resource: dict
    scope: str
    span: Any  # opentelemetry.proto.trace.v1.trace_pb2.Span
    attributes: dict
    request: Request = field(repr=False)

    @property
    def name(self) -> str:
        return self.span.name


@dataclass
class Metric:
    resource: dict
    scope: str
    metric: Any  # opentelemetry.proto.metrics.v1.metrics_pb2.Metric
    request: Request = field(repr=False)

    @property
    def name(self) -> str:
        return self.metric.name

    @property
    def kind(self) -> str:
        return self.metric.WhichOneof("data")

    @property
    def data(self) -> Any:
        return getattr(self.metric, self.kind)

    def points(self) -> list[tuple[dict, Any]]:
        return [(attributes(p.attributes), p) for p in self.data.data_points]


class OTLPReceiver:
    """Start with ``start()``; ``http_endpoint`` / ``grpc_endpoint`` are base URLs for OTEL_EXPORTER_OTLP_ENDPOINT."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.requests: list[Request] = []
        self.rejected: list[tuple[str, int]] = []  # (path, HTTP status) of requests turned away
        self._http: Optional[http.server.ThreadingHTTPServer] = None
        self._http_thread: Optional[threading.Thread] = None
        self._grpc: Optional[grpc.Server] = None
        self._executor: Optional[futures.ThreadPoolExecutor] = None
        self.http_port = self.grpc_port = 0

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> OTLPReceiver:
        receiver = self

        class Handler(_Handler):
            pass

        Handler.receiver = receiver
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="otlp-http", daemon=True)
        self._http_thread.start()

        self._executor = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc")
        self._grpc = grpc.server(self._executor)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait()
            self._grpc = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http_thread.join()
            self._http = None

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def endpoint(self, protocol: str) -> str:
        return self.grpc_endpoint if protocol == GRPC else self.http_endpoint

    # -- storage -----------------------------------------------------------------
    def add(self, request: Request) -> None:
        with self._cond:
            self.requests.append(request)
            self._cond.notify_all()

    def reject(self, path: str, status: int) -> None:
        with self._cond:
            self.rejected.append((path, status))
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self.rejected.clear()

    def wait_for(self, predicate: Callable[[OTLPReceiver], Any], timeout: float = 10.0, what: str = "") -> Any:
        """Block until ``predicate(self)`` is truthy (checked now and at every arrival); return its value."""
        with self._cond:
            result = self._cond.wait_for(lambda: predicate(self), timeout)
            if not result:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or predicate}; received "
                    f"{[(r.signal, r.protocol) for r in self.requests]}, rejected {self.rejected}"
                )
            return result

    def spans(self, service: Optional[str] = None) -> list[Span]:
        with self._cond:
            requests = [r for r in self.requests if r.signal == "traces"]
        out = []
        for request in requests:
            for rs in request.message.resource_spans:
                resource = attributes(rs.resource.attributes)
                if service is not None and resource.get("service.name") != service:
                    continue
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append(Span(resource, ss.scope.name, span, attributes(span.attributes), request))
        return out

    def metrics(self, service: Optional[str] = None) -> list[Metric]:
        with self._cond:
            requests = [r for r in self.requests if r.signal == "metrics"]
        out = []
        for request in requests:
            for rm in request.message.resource_metrics:
                resource = attributes(rm.resource.attributes)
                if service is not None and resource.get("service.name") != service:
                    continue
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        out.append(Metric(resource, sm.scope.name, metric, request))
        return out

    def latest(self, name: str, service: Optional[str] = None) -> Optional[Metric]:
        """The last export of metric ``name`` (cumulative metrics: the current totals)."""
        found = [m for m in self.metrics(service) if m.name == name]
        return found[-1] if found else None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporters' sessions expect
    receiver: OTLPReceiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _reply(self, status: int, body: bytes = b"", content_type: str = "application/x-protobuf") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self._read_body()
        entry = _MESSAGES.get(self.path)
        if entry is None:
            self.receiver.reject(self.path, 404)
            return self._reply(404, b"not found", "text/plain")
        signal, request_cls, response_cls = entry
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/x-protobuf":
            self.receiver.reject(self.path, 415)
            return self._reply(415, b"only application/x-protobuf", "text/plain")
        encoding = self.headers.get("Content-Encoding", "").strip().lower() or None
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding is not None:
                raise ValueError(encoding)
            message = request_cls.FromString(body)
        except (OSError, ValueError, zlib.error, DecodeError):
            self.receiver.reject(self.path, 400)
            return self._reply(400, b"undecodable", "text/plain")
        headers = {k.lower(): v for k, v in self.headers.items()}
        # Stored before answering: once an exporter's flush returns, what it sent is here.
        self.receiver.add(Request(signal, HTTP, headers, message, encoding))
        self._reply(200, response_cls().SerializeToString())


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self.receiver.add(Request("traces", GRPC, dict(context.invocation_metadata()), request))
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self.receiver.add(Request("metrics", GRPC, dict(context.invocation_metadata()), request))
        return metrics_service_pb2.ExportMetricsServiceResponse()
