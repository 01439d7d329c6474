"""Every failure the engine or a door can raise has one gRPC code, and it agrees with its HTTP status."""

from __future__ import annotations

import grpc
import pytest

from simpool_serve.service.engine.errors import Kind
from simpool_serve.service.grpc.status import CODE
from simpool_serve.service.http_status import STATUS
from simpool_serve.service.refusals import RefusalKind

BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


@pytest.mark.parametrize("kind", [*Kind, *RefusalKind], ids=str)
def test_each_kind_has_the_code_of_its_http_status(kind: Kind | RefusalKind) -> None:
    assert kind in CODE, f"{kind!r} has no gRPC code (service/grpc/status.py)"
    if kind is Kind.OVERLOADED:
        assert CODE[kind] is grpc.StatusCode.RESOURCE_EXHAUSTED  # 503, the queue is full
    elif kind is Kind.NOT_READY:
        assert CODE[kind] is grpc.StatusCode.UNAVAILABLE  # 503, loading or failing
    else:
        assert CODE[kind] is BY_HTTP[STATUS[kind]]
