"""The Open Inference Protocol's JSON, as pydantic models: the request is validated with them, the answers
are documented with them (OpenAPI), and the tests read them as the protocol's shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    # Unknown keys are ignored, as Triton does: clients add their own (`sequence_id`, `priority`, ...).
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class RequestInput(_Open):
    name: str = Field(
        description="`images`: BYTES [N] (encoded files) or UINT8 [N, S, S, 3] (the graph's own input, "
        "as Triton takes it); `pixels`: UINT8 [N, S, S, 3], the same as `images` in UINT8."
    )
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_size`: the tensor's bytes follow the JSON header."
    )
    data: Any = Field(None, description="The tensor in JSON, flat or nested row-major; absent if binary.")


class RequestOutput(_Open):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="`binary_data`: answer this output binary.")


# A 16×16 PNG (a colour ramp): the documented example is a request that really runs.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAHUlEQVR42mNkYGgQYGAgHrEwCDCQBEY1jGoYOhoAHg"
    "oCnoxpJwYAAAAASUVORK5CYII="
)
INFER_EXAMPLE: dict[str, Any] = {
    "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [EXAMPLE_PNG]}],
    "outputs": [{"name": "embedding"}],
    "parameters": {"normalize": True},
}


class InferenceRequest(_Open):
    id: str | None = Field(None, description="Echoed in the answer.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="`normalize` (bool): L2-normalise `embedding`; `binary_data_output` (bool): every "
        "output binary unless it says otherwise.",
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="Outputs to answer; default: all.")


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any]
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dynamic dimension.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool
    error: str | None = None


class ModelReady(BaseModel):
    name: str
    ready: bool


class ErrorOut(BaseModel):
    error: str


class RepositoryIndexRequest(_Open):
    ready: bool = Field(False, description="Only the models ready for inference.")


class RepositoryControlRequest(_Open):
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Triton's load options; a `config` or `file:` override is refused (write the folder).",
    )


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, UNAVAILABLE or LOADING.")
    reason: str = Field(
        description="Why the model is not READY, or what its READY version hides (a newer version that is "
        "incomplete or failed to load); empty otherwise."
    )
