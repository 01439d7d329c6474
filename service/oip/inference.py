"""An Open Inference Protocol inference, whichever transport carried it (HTTP's `/v2` or gRPC).

A parsed `InferRequest` becomes the engine's `Call` (the outputs it names, the descriptor in its
parameters), and the engine's `Answer` becomes the output tensors it asked for. No transport here.
"""

from __future__ import annotations

import numpy as np

from simpool_serve.service import encoding
from simpool_serve.service.engine import Answer, Call, EngineError, Kind, LoadedModel
from simpool_serve.service.oip import codec
from simpool_serve.spec import EMBEDDING

VERSION = "1"  # every model has one version: the graph in its folder


def check_version(model: LoadedModel, version: str | None) -> None:
    """NOT_FOUND for a version other than the one a model has (empty or None: the model's own)."""
    if version not in (None, "", VERSION):
        raise EngineError(
            Kind.NOT_FOUND,
            f"model {model.name!r} has no version {version!r}; it has {VERSION!r}",
            "unknown_model",
        )


def call_of(req: codec.InferRequest, model: LoadedModel) -> Call:
    """The engine call of an inference: its one input, the outputs it names, its descriptor."""
    outputs = [c.name for c in req.choose_outputs(model.output_names)]
    if req.descriptor.view == "full" and outputs != [EMBEDDING]:
        raise EngineError(Kind.INVALID, "view=full answers only the 'embedding' output", "malformed")
    tensor = req.tensor
    if isinstance(tensor, codec.Images):
        return Call(images=tensor.payloads, outputs=outputs, descriptor=req.descriptor)
    return Call(pixels=tensor.array, outputs=outputs, descriptor=req.descriptor)


def output_tensors(
    req: codec.InferRequest, model: LoadedModel, answer: Answer
) -> list[tuple[codec.OutputChoice, np.ndarray]]:
    """The requested outputs, in the order asked; `embedding` L2-normalised when the request says
    `normalize` or the descriptor already is a unit vector (as REST's /embed normalises)."""
    normalize = req.normalize or answer.normalized
    tensors = []
    for choice in req.choose_outputs(model.output_names):
        if choice.name == EMBEDDING and normalize:
            array = np.stack(encoding.embeddings(answer.outputs, True, "float"))
        else:
            array = np.stack([o[choice.name] for o in answer.outputs if o is not None])
        tensors.append((choice, array))
    return tensors
