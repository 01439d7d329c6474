"""Exceptions the client raises: one class per status the service documents.

Callers catch the class that matches what they can do about it (re-send smaller
requests on 413, fix the key on 401, ...); every one carries the server's `detail`.
"""

from __future__ import annotations

import json
from typing import Any


class SimPoolError(Exception):
    """Base class of everything this client raises on purpose."""


class SimPoolConnectionError(SimPoolError):
    """The service could not be reached (or kept dropping the connection) within the retry budget."""


class ResponseFormatError(SimPoolError):
    """The service answered 2xx with a body this client does not understand."""


class APIError(SimPoolError):
    """The service answered with an error status; `detail` is its explanation."""

    status_code: int = 0

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.headers = headers or {}


class BadRequestError(APIError):
    """400: an image or its base64 could not be decoded (the detail names the index)."""


class AuthenticationError(APIError):
    """401: missing or wrong API key."""


class ModelNotFoundError(APIError):
    """404: the service has no model of that name."""


class PayloadTooLargeError(APIError):
    """413: too many images, bytes or pixels in one request."""


class UnsupportedMediaTypeError(APIError):
    """415: the request's content type is not accepted."""


class UnprocessableEntityError(APIError):
    """422: the request body is malformed."""


class ServiceUnavailableError(APIError):
    """503: queue full or not ready; raised once retries honouring Retry-After ran out of time."""


class DeadlineExceededError(APIError):
    """504: the request's deadline passed inside the service."""


class ServerError(APIError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: ModelNotFoundError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    503: ServiceUnavailableError,
    504: DeadlineExceededError,
}


def error_for(status_code: int, body: bytes, headers: dict[str, str] | None = None) -> APIError:
    """Builds the exception for an error answer, keeping the server's `detail` verbatim when it is text."""
    detail: Any
    try:
        detail = json.loads(body).get("detail", body.decode("utf-8", "replace"))
    except (ValueError, AttributeError):
        detail = body.decode("utf-8", "replace") or f"HTTP {status_code}"
    if not isinstance(detail, str):
        detail = json.dumps(detail)  # e.g. a validation error list
    cls = _BY_STATUS.get(status_code, ServerError if status_code >= 500 else APIError)
    return cls(status_code, detail, headers)
