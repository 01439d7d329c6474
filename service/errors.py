"""The errors a request can end in: an HTTP status, a client-facing `detail`, and a reason for metrics."""

from __future__ import annotations


class ServiceError(Exception):
    """Ends a request with `status` and JSON `{"detail": detail}`; `reason` labels the failure metric."""

    def __init__(self, status: int, detail: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason
        self.headers = headers or {}


def unavailable(detail: str, reason: str, retry_after_s: int = 1) -> ServiceError:
    """503 with `Retry-After`, for a full queue or a model that is not ready: the client may come back."""
    return ServiceError(503, detail, reason, {"Retry-After": str(max(1, retry_after_s))})


# A batch that failed inside onnxruntime: the client learns only that, the log gets the traceback.
INFERENCE_FAILED = "inference failed; the error is in the server log"
