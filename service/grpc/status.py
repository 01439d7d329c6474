"""The gRPC face of a failure: one status code per kind, as HTTP has one status (`http_status.py`).

The `code` label of `simpool_requests_total` stays the HTTP status of the same failure, so one
dashboard or alert (`code=~"5.."`) covers every door.
"""

from __future__ import annotations

import grpc

from simpool_serve.service.engine.errors import Kind
from simpool_serve.service.http_status import STATUS, Failure
from simpool_serve.service.refusals import RefusalKind

CODE: dict[Kind | RefusalKind, grpc.StatusCode] = {
    Kind.BAD_IMAGE: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.LOAD_FAILED: grpc.StatusCode.INVALID_ARGUMENT,
    RefusalKind.UNSUPPORTED_MEDIA: grpc.StatusCode.INVALID_ARGUMENT,
    RefusalKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    RefusalKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.NOT_READY: grpc.StatusCode.UNAVAILABLE,
    Kind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.DISCONNECTED: grpc.StatusCode.CANCELLED,
    Kind.INTERNAL: grpc.StatusCode.INTERNAL,
}


def code_of(error: Failure) -> grpc.StatusCode:
    return CODE.get(error.kind, grpc.StatusCode.INTERNAL)  # every kind is listed (a test checks)


def http_equivalent(error: Failure) -> int:
    """The HTTP status of the same failure (the metrics' `code` label)."""
    return STATUS.get(error.kind, 500)
