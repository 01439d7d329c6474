"""Engine results -> OpenAI's JSON shapes (embeddings, model list, errors). No HTTP here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from simpool_serve.spec import Manifest

OWNER = "simpool-serve"

# Our failure reasons, as the `code` OpenAI's clients see (their own names where OpenAI has one).
_CODES = {"unknown_model": "model_not_found", "unauthorized": "invalid_api_key"}
# Which request field an error is about, for `param`.
_PARAMS = {
    "unknown_model": "model",
    "bad_image": "input",
    "image_too_large": "input",
    "too_many_images": "input",
    "text_input": "input",
}


def embeddings_body(model: str, fingerprint: str, vectors: list[Any]) -> dict[str, Any]:
    """`vectors` are already L2-normalised, as float rows or base64 strings (one per input, in order)."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},  # images have no tokens
        "fingerprint": fingerprint,
    }


def model_entry(name: str, manifest: Manifest) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _created(manifest), "owned_by": OWNER}


def _created(manifest: Manifest) -> int:
    """The export time as Unix seconds (OpenAI's `created`); 0 when the manifest does not say."""
    if not manifest.created_at:
        return 0
    try:
        return int(datetime.fromisoformat(manifest.created_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def error_body(status: int, message: str, reason: str) -> dict[str, Any]:
    """OpenAI's error shape; `type` as OpenAI uses it: the client's fault, or the server's."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": _PARAMS.get(reason),
            "code": _CODES.get(reason, reason),
        }
    }
