"""OpenTelemetry tracing: on only when `OTEL_TRACES_EXPORTER` names an exporter (not `none`).

Configured by the SDK's standard variables alone (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_PROTOCOL` = `http/protobuf` (default) or `grpc`, `OTEL_SERVICE_NAME`,
`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, ...). When off, nothing of OpenTelemetry's SDK is imported or
started and every span site is skipped; when on, the app's lifespan flushes and stops it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

SERVICE_NAME = "simpool-serve"  # unless OTEL_SERVICE_NAME says otherwise


class TracingError(ValueError):
    """An `OTEL_*` setting this service cannot follow (a start-up error, named in one line)."""


@dataclass(frozen=True)
class Tracing:
    provider: TracerProvider
    tracer: Tracer

    def shutdown(self) -> None:
        """Exports what is buffered, then stops the exporter's thread."""
        self.provider.shutdown()


def _exporter(environ: Mapping[str, str]) -> SpanExporter:
    name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingError(f"OTEL_TRACES_EXPORTER={name!r}: use otlp, console or none")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use http/protobuf or grpc")


def check_env(environ: Mapping[str, str] | None = None) -> None:
    """Raises `TracingError` for an exporter or protocol this service cannot use (a start-up check)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() not in ("", "none"):
        _exporter(env)


def tracing_from_env(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The tracer the environment asks for, or None (tracing off: nothing is set up)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() in ("", "none"):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = _exporter(env)
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the sampler comes from
    # OTEL_TRACES_SAMPLER (parent-based, always on, by default).
    resource = Resource.create({} if env.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, provider.get_tracer("simpool_serve"))
