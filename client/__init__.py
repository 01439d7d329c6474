"""Python client for simpool-serve, and the `simpool-embed` bulk embedder.

Importing this package never imports torch, timm or onnxruntime: only `simpool-embed --local`
loads the service's runtime, and only when asked.
"""

from simpool_serve.client.async_client import AsyncSimPoolClient
from simpool_serve.client.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    DeadlineExceededError,
    ModelNotFoundError,
    PayloadTooLargeError,
    ResponseFormatError,
    ServerError,
    ServiceUnavailableError,
    SimPoolConnectionError,
    SimPoolError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)
from simpool_serve.client.results import (
    AttentionResult,
    ClassifyResult,
    EmbedResult,
    ImageFailure,
    ModelInfo,
    Prediction,
)
from simpool_serve.client.retry import RetryPolicy
from simpool_serve.client.sync_client import SimPoolClient

__all__ = [
    "APIError",
    "AsyncSimPoolClient",
    "AttentionResult",
    "AuthenticationError",
    "BadRequestError",
    "ClassifyResult",
    "DeadlineExceededError",
    "EmbedResult",
    "ImageFailure",
    "ModelInfo",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "Prediction",
    "ResponseFormatError",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "SimPoolClient",
    "SimPoolConnectionError",
    "SimPoolError",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
]
