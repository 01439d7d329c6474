"""`ModelInferRequest` / `ModelInferResponse` <-> the Open Inference Protocol codec (`oip/codec.py`).

The gRPC request is the HTTP one in another envelope: its inputs, outputs and parameters become the
codec's JSON header, and its tensors (raw or typed contents) the binary data after it, so the HTTP
codec checks and reads them with the same rules and the same words: `images` (BYTES, encoded files)
or `pixels` (UINT8), shapes, counts, byte limits. A client that sent `raw_input_contents` gets
`raw_output_contents` (as Triton answers); one that sent typed contents gets typed contents.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from simpool_serve.service.encoding import finite_rows
from simpool_serve.service.engine import Limits
from simpool_serve.service.grpc.stubs import grpc_service_pb2 as pb
from simpool_serve.service.oip import codec


def parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A parameter map as plain values (bool, int, float or str)."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(param, which)
    return out


def _typed_bytes(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes:
    """A typed tensor's contents in the binary form the codec reads (the codec refuses other types)."""
    contents = tensor.contents
    if tensor.datatype == "BYTES":
        return codec.serialize_bytes(list(contents.bytes_contents))
    if tensor.datatype == "UINT8":
        values = np.asarray(contents.uint_contents, dtype=np.int64)
        if values.size and values.max() > 255:
            raise codec.malformed(f"input {tensor.name!r}: UINT8 values must be 0..255")
        return values.astype(np.uint8).tobytes()
    return b""


def parse(request: pb.ModelInferRequest, limits: Limits) -> tuple[codec.InferRequest, bool]:
    """The codec's request, and whether the client sent raw contents (and so gets raw outputs)."""
    raw = len(request.raw_input_contents) > 0
    if raw and len(request.raw_input_contents) != len(request.inputs):
        raise codec.malformed(
            f"{len(request.raw_input_contents)} raw_input_contents for {len(request.inputs)} inputs"
        )
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for i, tensor in enumerate(request.inputs):
        blob = request.raw_input_contents[i] if raw else _typed_bytes(tensor)
        params = parameters(tensor.parameters) | {"binary_data_size": len(blob)}
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)})
        inputs[-1]["parameters"] = params
        blobs.append(blob)
    limits.check_body(sum(len(b) for b in blobs))
    header: dict[str, Any] = {"inputs": inputs, "parameters": parameters(request.parameters)}
    if request.id:
        header["id"] = request.id
    if request.outputs:
        outputs = request.outputs
        header["outputs"] = [{"name": o.name, "parameters": parameters(o.parameters)} for o in outputs]
    head = orjson.dumps(header)
    return codec.parse_request(head + b"".join(blobs), len(head), limits), raw


def response(
    model: str,
    request_id: str | None,
    fingerprint: str,
    tensors: Sequence[tuple[codec.OutputChoice, np.ndarray]],
    raw: bool,
) -> pb.ModelInferResponse:
    """The answer: FP32 outputs in request order, the fingerprint as a parameter, the id echoed."""
    answer = pb.ModelInferResponse(
        model_name=model, model_version="1", id=request_id if request_id is not None else uuid.uuid4().hex
    )
    answer.parameters["fingerprint"].string_param = fingerprint
    for choice, array in tensors:
        rows = finite_rows(array)
        out = answer.outputs.add(name=choice.name, datatype="FP32", shape=rows.shape)
        if raw:
            answer.raw_output_contents.append(rows.astype("<f4", copy=False).tobytes())
        else:
            out.contents.fp32_contents.extend(rows.ravel().tolist())
    return answer
