"""The served graph: uint8 NHWC pixels in, SimPool outputs out, normalisation inside.

Putting the normalisation into the graph means a client (or the service) only has to resize and
crop: the mean/std a model was trained with can never be applied twice or forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from simpool_serve.models.model import SimPoolModel
from simpool_serve.spec import DEFAULT_OPSET, INPUT, OUTPUTS, REQUIRED_OUTPUTS


class ServingGraph(nn.Module):
    """Wraps a SimPoolModel with the serving contract's input and outputs."""

    def __init__(self, model: SimPoolModel, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        # On the 0..255 scale so that the graph needs a single subtract and divide.
        self.register_buffer("mean", torch.tensor([m * 255.0 for m in mean]).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([s * 255.0 for s in std]).reshape(1, 3, 1, 1))

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUTS if self.model.head is not None else REQUIRED_OUTPUTS)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images: uint8 (N, S, S, 3) RGB -> float32 outputs in `output_names` order."""
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype)  # (N, 3, S, S)
        x = (x - self.mean) / self.std
        embedding, attention, logits = self.model(x)
        outs = [embedding.float(), attention.float()]
        if logits is not None:
            outs.append(logits.float())
        return tuple(outs)


def export_onnx(graph: ServingGraph, path: Path, image_size: int, opset: int = DEFAULT_OPSET) -> None:
    """Writes a single-file ONNX graph with a dynamic batch axis, at exactly the requested opset.

    Opset ≥ 18 uses the dynamo exporter (torch.export + onnxscript): its graph is about half the
    size of the TorchScript exporter's, keeps every non-batch dimension static (the TorchScript one
    turns the embedding width into a symbolic name), and is optimised. It implements nothing below
    opset 18, so older opsets (for older onnxruntime builds) go through the TorchScript exporter.
    """
    example = torch.randint(0, 256, (2, image_size, image_size, 3), dtype=torch.uint8)
    names = graph.output_names
    with torch.no_grad():
        if opset >= 18:
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=[INPUT],
                output_names=names,
                dynamic_shapes={INPUT: {0: torch.export.Dim("N", min=1, max=4096)}},
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[INPUT],
                output_names=names,
                dynamic_axes={n: {0: "N"} for n in [INPUT, *names]},
                opset_version=opset,
                dynamo=False,
            )
    proto = onnx.load(str(path), load_external_data=False)
    written = {o.domain: o.version for o in proto.opset_import}
    if written.get("", written.get("ai.onnx")) != opset:
        path.unlink(missing_ok=True)
        raise ValueError(f"the exporter wrote opset {written} instead of the requested {opset}")
    strip_provenance(proto)
    onnx.save(proto, str(path))


def strip_provenance(model: onnx.ModelProto) -> None:
    """Drops the exporter's per-node stack traces and doc strings.

    They hold the exporter's source paths, so the same weights exported from another checkout got
    another `onnx_sha256`, hence another fingerprint, and a retrieval index would re-embed for nothing.
    """
    model.doc_string = ""
    _strip(model.graph)
    for function in model.functions:
        _strip(function)


def _strip(g: onnx.GraphProto | onnx.FunctionProto) -> None:
    g.doc_string = ""
    del g.metadata_props[:]
    for v in (*g.value_info, *(() if isinstance(g, onnx.FunctionProto) else (*g.input, *g.output))):
        v.doc_string = ""
        del v.metadata_props[:]
    for node in g.node:
        node.doc_string = ""
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _strip(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _strip(sub)
