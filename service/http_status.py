"""The HTTP face of a failure: one status per kind, and the headers that go with it.

Every HTTP door (REST, the Open Inference Protocol, OpenAI) answers a failure with this status and
only chooses the JSON shape around its detail.
"""

from __future__ import annotations

from simpool_serve.service.engine.errors import EngineError, Kind
from simpool_serve.service.refusals import Refusal, RefusalKind

Failure = EngineError | Refusal

STATUS: dict[Kind | RefusalKind, int] = {
    Kind.BAD_IMAGE: 400,
    Kind.LOAD_FAILED: 400,  # as Triton answers a failed load
    RefusalKind.UNAUTHENTICATED: 401,
    RefusalKind.FORBIDDEN: 403,
    Kind.NOT_FOUND: 404,
    Kind.TOO_LARGE: 413,
    RefusalKind.UNSUPPORTED_MEDIA: 415,
    Kind.INVALID: 422,
    Kind.DISCONNECTED: 499,  # nginx's "client closed request": logged and counted, never seen by a client
    Kind.INTERNAL: 500,
    Kind.OVERLOADED: 503,
    Kind.NOT_READY: 503,
    Kind.TIMEOUT: 504,
}


def status_of(error: Failure) -> int:
    return STATUS[error.kind]


def headers_of(error: Failure) -> dict[str, str]:
    """`WWW-Authenticate` for a missing key; `Retry-After` for a refusal the client may retry."""
    if error.kind is RefusalKind.UNAUTHENTICATED:
        return {"WWW-Authenticate": "Bearer"}
    if error.retry_after_s is not None:
        return {"Retry-After": str(max(1, error.retry_after_s))}
    return {}
