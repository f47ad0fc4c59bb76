"""Tracing across services: W3C trace context (`traceparent`, `tracestate`) on every bus message and every
HTTP call between services, and an OpenTelemetry span for each hop.

Spans are exported over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the exporter's other `OTEL_EXPORTER_OTLP_*` settings
apply. Otherwise the tracer is OpenTelemetry's no-op one: a span costs an object and records nothing,
and a trace context that arrives is still passed on (a service without an endpoint does not break the
trace of the services around it). The tracer is this module's, not OpenTelemetry's global one, so a
test can give it an in-memory exporter and take it back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Final

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TRACE_HEADERS: Final = ("traceparent", "tracestate")
ENDPOINT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Probes and scrapes are not hops of any case's path.
UNTRACED_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})

_propagator = TraceContextTextMapPropagator()
_tracer: trace.Tracer = trace.NoOpTracer()
_provider: TracerProvider | None = None


def configure_tracing(
    service: str, *, exporter: SpanExporter | None = None, batch: bool = True
) -> TracerProvider | None:
    """Record spans as `service` and export them with `exporter`, or over OTLP/HTTP when an endpoint
    variable is set; without either, leave tracing off. Returns the provider (None: off)."""
    global _tracer, _provider
    if exporter is None:
        if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
            return None
        # Imported only when used: the exporter pulls in protobuf and requests.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    processor: SpanProcessor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(processor)
    shutdown_tracing()
    _provider, _tracer = provider, provider.get_tracer("lazaretto")
    return provider


def shutdown_tracing() -> None:
    """Export what is buffered and go back to the no-op tracer."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _provider, _tracer = None, trace.NoOpTracer()


def enabled() -> bool:
    return _provider is not None


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
    parent: Context | None = None,
    start_time: int | None = None,
) -> Iterator[Span]:
    """A span, current inside the block, child of `parent` (default: the current span); `start_time`
    in nanoseconds since the epoch when it began before the block."""
    if _provider is None and not trace.get_current_span(parent).get_span_context().is_valid:
        # Tracing off and no trace to carry on: the no-op span would change nothing but cost (made
        # and made current per delivery, it was a tenth of a busy consumer's CPU).
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes, start_time=start_time
    ) as current:
        yield current


def inject(carrier: MutableMapping[str, Any]) -> None:
    """Write the current trace context into `carrier` (message headers, HTTP headers) when there is one."""
    _propagator.inject(carrier)


def extract(headers: Mapping[str, Any] | None) -> Context:
    """The trace context in `headers` (AMQP may hand header values as bytes); empty if none or invalid."""
    carrier: dict[str, str] = {}
    if not headers:
        return Context()
    for name, value in headers.items():
        if name.lower() in TRACE_HEADERS and isinstance(value, str | bytes):
            carrier[name.lower()] = value.decode("latin-1") if isinstance(value, bytes) else value
    return _propagator.extract(carrier)


def current_carrier() -> dict[str, str]:
    """The current trace context as headers, to store beside a message published later (outbox)."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


@contextlib.contextmanager
def resumed(carrier: Mapping[str, Any] | None) -> Iterator[None]:
    """Make the trace context stored in `carrier` current inside the block (nothing if it holds none)."""
    if not carrier:
        yield
        return
    token = otel_context.attach(extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


# -- HTTP between services --------------------------------------------------------------------------


def _client_attributes(request: httpx.Request) -> dict[str, str | int | float | bool]:
    return {
        "http.request.method": request.method,
        "server.address": request.url.host,
        "server.port": request.url.port or (443 if request.url.scheme == "https" else 80),
        "url.path": request.url.path,
    }


class TracingTransport(httpx.AsyncBaseTransport):
    """An httpx transport that makes each request a client span and sends its `traceparent`."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with span(request.method, kind=SpanKind.CLIENT, attributes=_client_attributes(request)) as current:
            inject(request.headers)
            response = await self._inner.handle_async_request(request)
            _record_status(current, response.status_code)
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class SyncTracingTransport(httpx.BaseTransport):
    """`TracingTransport` for a synchronous client (the CLI)."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with span(request.method, kind=SpanKind.CLIENT, attributes=_client_attributes(request)) as current:
            inject(request.headers)
            response = self._inner.handle_request(request)
            _record_status(current, response.status_code)
            return response

    def close(self) -> None:
        self._inner.close()


def _record_status(current: Span, status: int) -> None:
    current.set_attribute("http.response.status_code", status)
    if status >= 500:
        current.set_status(Status(StatusCode.ERROR))


class TraceRequests:
    """ASGI middleware: each request a server span, child of the `traceparent` it arrived with, named
    after its route (`POST /v1/cases/{case_id}/release`) once routing found one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        attributes: dict[str, str | int | float | bool] = {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
        }
        with span(method, kind=SpanKind.SERVER, attributes=attributes, parent=extract(headers)) as current:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    _record_status(current, int(message["status"]))
                await send(message)

            try:
                await self.app(scope, receive, send_with_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    current.update_name(f"{method} {route}")
                    current.set_attribute("http.route", route)
