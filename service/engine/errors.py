"""How a request through the engine can fail: a neutral `Kind`, a detail fit for the client, a reason.

Each kind has exactly one HTTP status (`Kind.status`), so every door (REST, Open Inference Protocol,
OpenAI) answers the same failure with the same code and only chooses the JSON shape around `detail`.
`reason` is the label of the `simpool_failures_total` metric.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    BAD_IMAGE = "bad_image"  # undecodable image or base64
    UNAUTHORIZED = "unauthorized"  # missing or wrong API key
    NOT_FOUND = "not_found"  # unknown model
    TOO_LARGE = "too_large"  # too many images, bytes or pixels
    UNSUPPORTED_MEDIA = "unsupported_media"  # a content type no door reads
    INVALID = "invalid"  # a malformed body or field, an output the model lacks
    DISCONNECTED = "disconnected"  # the client left before its answer
    INTERNAL = "internal"  # inference failed (the log has the traceback)
    UNAVAILABLE = "unavailable"  # queue full, or not ready: come back after `retry_after_s`
    TIMEOUT = "timeout"  # the request's deadline passed

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS = {
    Kind.BAD_IMAGE: 400,
    Kind.UNAUTHORIZED: 401,
    Kind.NOT_FOUND: 404,
    Kind.TOO_LARGE: 413,
    Kind.UNSUPPORTED_MEDIA: 415,
    Kind.INVALID: 422,
    Kind.DISCONNECTED: 499,  # nginx's "client closed request": logged and counted, never seen by a client
    Kind.INTERNAL: 500,
    Kind.UNAVAILABLE: 503,
    Kind.TIMEOUT: 504,
}


class EngineError(Exception):
    """Ends a request: its `kind` (so its HTTP `status`), `detail` for the client, `reason` for metrics."""

    def __init__(self, kind: Kind, detail: str, reason: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.reason = reason
        self.retry_after_s = retry_after_s

    @property
    def status(self) -> int:
        return self.kind.status

    @property
    def headers(self) -> dict[str, str]:
        """`Retry-After` for a refusal the client may retry; `WWW-Authenticate` for a missing key."""
        if self.kind is Kind.UNAUTHORIZED:
            return {"WWW-Authenticate": "Bearer"}
        if self.retry_after_s is not None:
            return {"Retry-After": str(max(1, self.retry_after_s))}
        return {}


def unavailable(detail: str, reason: str, retry_after_s: int = 1) -> EngineError:
    """503 with `Retry-After`, for a full queue or a model that is not ready: the client may come back."""
    return EngineError(Kind.UNAVAILABLE, detail, reason, retry_after_s=retry_after_s)


# A batch that failed inside onnxruntime: the client learns only that, the log gets the traceback.
INFERENCE_FAILED = "inference failed; the error is in the server log"
