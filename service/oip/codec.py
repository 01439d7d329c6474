"""Open Inference Protocol bodies <-> tensors: JSON tensors and the binary tensor data extension.

No HTTP here. A request body (JSON header, then the binary tensors it declares with
`binary_data_size`, in input order; `Inference-Header-Content-Length` says where the JSON ends) becomes
an `InferRequest`; outputs become an answer body the same way. BYTES elements in binary form are each
a 4-byte little-endian length followed by the bytes, as the extension defines.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from simpool_serve.service.encoding import finite_rows
from simpool_serve.service.engine.descriptor import Descriptor
from simpool_serve.service.engine.errors import EngineError, Kind
from simpool_serve.service.engine.limits import Limits
from simpool_serve.service.oip.schemas import InferenceRequest, RequestInput
from simpool_serve.service.refusals import unsupported_media
from simpool_serve.service.validation import describe
from simpool_serve.spec import EMBEDDING

IMAGES, PIXELS = "images", "pixels"
_LENGTH = struct.Struct("<I")


def malformed(detail: str) -> EngineError:
    return EngineError(Kind.INVALID, detail, "malformed")


@dataclass(frozen=True, slots=True)
class Images:
    """Encoded image files: raw bytes (binary tensor) or base64 / data-URI text (JSON tensor)."""

    payloads: list[bytes | str]


@dataclass(frozen=True, slots=True)
class Pixels:
    """Already resized and cropped RGB pixels, uint8 [N, S, S, 3], fed to the graph as they are."""

    array: np.ndarray


@dataclass(frozen=True, slots=True)
class OutputChoice:
    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A parsed inference request; `outputs` is None when the client asked for every output."""

    id: str | None
    tensor: Images | Pixels
    outputs: tuple[OutputChoice, ...] | None
    binary_output: bool  # the request's `binary_data_output`: the default for every output
    normalize: bool
    descriptor: Descriptor  # the view, scales, region and whitening asked for in `parameters`

    @property
    def count(self) -> int:
        return len(self.tensor.payloads) if isinstance(self.tensor, Images) else len(self.tensor.array)

    def choose_outputs(self, available: Sequence[str]) -> list[OutputChoice]:
        """The outputs to answer, in the order asked (default: all the model has; only `embedding` for
        a full view or several scales, which describe the image with a vector alone)."""
        if self.outputs is None:
            if self.descriptor.view == "full" or self.descriptor.normalized_only:
                return [OutputChoice(EMBEDDING, self.binary_output)]
            return [OutputChoice(name, self.binary_output) for name in available]
        for choice in self.outputs:
            if choice.name not in available:
                raise malformed(f"unknown output {choice.name!r}; this model has {list(available)}")
        return list(self.outputs)


# -- request ---------------------------------------------------------------------------------------


def inflate(body: bytes, content_encoding: str | None, limits: Limits) -> bytes:
    """A body sent compressed (`Content-Encoding: gzip` or `deflate`, as Triton's clients can), inflated
    to at most `limit` bytes: a small bomb is refused at the limit, not expanded whole."""
    coding = (content_encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding not in ("gzip", "deflate"):
        raise unsupported_media(f"content encoding {coding!r}: use gzip, deflate or none")
    limit = limits.max_request_bytes
    inflater = zlib.decompressobj(wbits=31 if coding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise malformed(f"body is not valid {coding}: {exc}") from None
    limits.check_body(len(out))
    return out


def header_length(value: str | None, body_size: int) -> int:
    """Where the JSON header ends: `Inference-Header-Content-Length`, or the whole body without it."""
    if value is None:
        return body_size
    text = value.strip()
    if not text.isdigit() or int(text) > body_size:
        raise malformed(
            f"Inference-Header-Content-Length {value!r} is not a length within the body ({body_size} bytes)"
        )
    return int(text)


def parse_request(body: bytes, json_length: int, limits: Limits) -> InferRequest:
    """Validates the JSON header and cuts the binary tensors out of the rest of the body."""
    try:
        req = InferenceRequest.model_validate_json(body[:json_length])
    except ValidationError as exc:
        raise malformed(describe(exc)) from None
    params = req.parameters or {}
    normalize = _bool_param(params, "normalize", False)
    try:
        descriptor = Descriptor.from_parameters(params)
    except ValidationError as exc:
        raise malformed(f"parameters: {describe(exc)}") from None
    binary_output = _bool_param(params, "binary_data_output", False)
    if len(req.inputs) != 1:
        names = [i.name for i in req.inputs]
        raise malformed(f"exactly one input, {IMAGES!r} or {PIXELS!r}, is expected; got {names}")
    tensor_in = req.inputs[0]
    raw = memoryview(body)[json_length:]
    size = _binary_size(tensor_in)
    if size is not None and size != len(raw):
        raise malformed(
            f"input {tensor_in.name!r} declares binary_data_size {size}, "
            f"but {len(raw)} bytes follow the JSON header"
        )
    if size is None and len(raw):
        raise malformed(f"{len(raw)} bytes follow the JSON header, but no input declares binary_data_size")
    data = raw if size is not None else None
    if tensor_in.name == IMAGES and tensor_in.datatype != "UINT8":
        tensor: Images | Pixels = _images(tensor_in, data, limits)
    elif tensor_in.name in (IMAGES, PIXELS):  # UINT8 `images` is the graph's input, as Triton takes it
        tensor = _pixels(tensor_in, data, limits)
    else:
        raise malformed(
            f"unknown input {tensor_in.name!r}: use {IMAGES!r} (BYTES files, or UINT8 pixels) or {PIXELS!r}"
        )
    outputs = None
    if req.outputs is not None:
        outputs = tuple(
            OutputChoice(o.name, _bool_param(o.parameters or {}, "binary_data", binary_output))
            for o in req.outputs
        )
        if len({o.name for o in outputs}) != len(outputs):
            raise malformed("an output is requested twice")
        for o in req.outputs:
            if (o.parameters or {}).get("classification"):
                raise malformed("the classification extension is not supported; request 'logits'")
    return InferRequest(req.id, tensor, outputs, binary_output, normalize, descriptor)


def _bool_param(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise malformed(f"parameter {key!r} must be true or false, got {value!r}")
    return value


def _binary_size(tensor: RequestInput) -> int | None:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise malformed(f"input {tensor.name!r}: binary_data_size must be a byte count, got {size!r}")
    if tensor.data is not None:
        raise malformed(f"input {tensor.name!r} has both binary_data_size and data")
    return size


def _count(tensor: RequestInput, limits: Limits) -> int:
    if any(d < 0 for d in tensor.shape):
        raise malformed(f"input {tensor.name!r}: shape {tensor.shape} has a negative dimension")
    n = tensor.shape[0] if tensor.shape else 0
    if n < 1:
        raise malformed(f"input {tensor.name!r}: shape {tensor.shape} holds no image")
    limits.check_images(n)
    return n


def _images(tensor: RequestInput, raw: memoryview | None, limits: Limits) -> Images:
    if tensor.datatype != "BYTES":
        raise malformed(
            f"input {IMAGES!r} must be BYTES (encoded image files) or UINT8 [N, S, S, 3], "
            f"not {tensor.datatype}"
        )
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise malformed(f"input {IMAGES!r} must have shape [N] or [N, 1], got {tensor.shape}")
    n = _count(tensor, limits)
    if raw is not None:
        payloads: list[bytes | str] = list(deserialize_bytes(raw, n))
    else:
        payloads = _json_strings(tensor.data, n)
    if len(payloads) != n:
        raise malformed(
            f"input {IMAGES!r}: shape {tensor.shape} says {n} images, the data holds {len(payloads)}"
        )
    return Images(payloads)


def _json_strings(data: Any, n: int) -> list[bytes | str]:
    if data is None:
        raise malformed(f"input {IMAGES!r} has neither data nor binary_data_size")
    flat = _flatten(data) if isinstance(data, list) else [data]
    if not all(isinstance(s, str) for s in flat):
        raise malformed(f"input {IMAGES!r}: JSON data must be strings (base64 or data URIs of image files)")
    return list(flat)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _pixels(tensor: RequestInput, raw: memoryview | None, limits: Limits) -> Pixels:
    name = tensor.name
    if tensor.datatype != "UINT8":
        raise malformed(f"input {name!r} must be UINT8, not {tensor.datatype}")
    if len(tensor.shape) != 4 or tensor.shape[3] != 3 or tensor.shape[1] != tensor.shape[2]:
        raise malformed(f"input {name!r} must have shape [N, S, S, 3], got {tensor.shape}")
    _count(tensor, limits)
    want = int(np.prod(tensor.shape))
    if raw is not None:
        if len(raw) != want:
            raise malformed(f"input {name!r}: shape {tensor.shape} needs {want} bytes, got {len(raw)}")
        return Pixels(np.frombuffer(raw, dtype=np.uint8).reshape(tensor.shape))
    if tensor.data is None:
        raise malformed(f"input {name!r} has neither data nor binary_data_size")
    try:
        values = np.asarray(tensor.data)
    except ValueError:
        raise malformed(f"input {name!r}: data is not a regular array") from None
    if values.size != want or values.dtype.kind not in "iu":
        raise malformed(f"input {name!r}: shape {tensor.shape} needs {want} integers, got {values.size}")
    if values.min() < 0 or values.max() > 255:
        raise malformed(f"input {name!r}: values must be 0..255")
    return Pixels(values.astype(np.uint8).reshape(tensor.shape))


def deserialize_bytes(raw: memoryview | bytes, limit: int) -> list[bytes]:
    """BYTES elements of a binary tensor: each a 4-byte little-endian length, then that many bytes.

    At most `limit` elements are read: a body of millions of empty elements is refused at `limit + 1`.
    """
    out: list[bytes] = []
    view, offset = memoryview(raw), 0
    while offset < len(view):
        if len(out) > limit:
            break
        if offset + 4 > len(view):
            raise malformed(f"BYTES element {len(out)} is cut off in its 4-byte length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise malformed(f"BYTES element {len(out)} declares {length} bytes, {len(view) - offset} remain")
        out.append(bytes(view[offset : offset + length]))
        offset += length
    return out


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """The inverse of `deserialize_bytes` (clients and tests build binary BYTES tensors this way)."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


# -- answer ----------------------------------------------------------------------------------------


def encode_response(
    model: str,
    request_id: str | None,
    fingerprint: str,
    tensors: Sequence[tuple[OutputChoice, np.ndarray]],
) -> tuple[bytes, int | None]:
    """The answer body, and the JSON header's length when binary tensors follow it (else None).

    The request's `id` is echoed; a request without one gets a fresh id, as KServe answers.
    """
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for choice, array in tensors:
        rows = finite_rows(array)
        out: dict[str, Any] = {"name": choice.name, "datatype": "FP32", "shape": list(rows.shape)}
        if choice.binary:
            blob = rows.astype("<f4", copy=False).tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = rows.ravel()
        outputs.append(out)
    header = orjson.dumps(
        {
            "model_name": model,
            "model_version": "1",
            "id": request_id if request_id is not None else uuid.uuid4().hex,
            "parameters": {"fingerprint": fingerprint},
            "outputs": outputs,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
