"""The served graph: uint8 NHWC pixels of any size in, SimPool outputs out, normalisation inside.

Putting the normalisation into the graph means a client (or the service) only has to resize and
crop: the mean/std a model was trained with can never be applied twice or forgotten.

The graph takes any H×W (its spatial axes are symbolic) and an optional ``scale`` input: the
normalised image is rescaled bilinearly by that factor before the backbone, as the paper's
retrieval code (DINO's ``multi_scale``) rescales its normalised tensor. ``scale`` is an initializer
listed as an input, holding 1.0: a caller that does not feed it gets the plain graph's answers.

The exporters cannot trace a resize whose output size depends on an input's value, so the
pixels-to-backbone part (transpose, normalise, ``Resize``) is written here as ONNX nodes by hand and
joined to the traced backbone, whose input (the normalised tensor) has symbolic N, H and W.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from simpool_serve.models.model import SimPoolModel
from simpool_serve.spec import DEFAULT_OPSET, INPUT, OUTPUTS, REQUIRED_OUTPUTS, SCALE_INPUT

_NORMALISED = "normalised"  # the traced backbone's input, fed by the hand-written prelude


class ServingGraph(nn.Module):
    """Wraps a SimPoolModel with the served inputs (pixels, optional scale) and outputs."""

    def __init__(self, model: SimPoolModel, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        # On the 0..255 scale so that the graph needs a single subtract and divide; always float32
        # (a half-precision model gets its input cast after the normalisation).
        self.pixel_mean = tuple(float(m) * 255.0 for m in mean)
        self.pixel_std = tuple(float(s) * 255.0 for s in std)

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUTS if self.model.head is not None else REQUIRED_OUTPUTS)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W), normalised as the model was trained."""
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        mean = torch.tensor(self.pixel_mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std, dtype=torch.float32).reshape(1, 3, 1, 1)
        return (x - mean) / std

    def backbone_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Normalised float32 (N, 3, H, W) -> float32 outputs in `output_names` order."""
        dtype = next(self.model.parameters()).dtype
        embedding, attention, logits = self.model(x.to(dtype))
        outs = [embedding.float(), attention.float()]
        if logits is not None:
            outs.append(logits.float())
        return tuple(outs)

    def forward(self, images: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
        """images: uint8 (N, H, W, 3); scale: the bilinear rescale of the normalised image."""
        x = self.normalise(images)
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        return self.backbone_outputs(x)


class _Backbone(nn.Module):
    """What the exporter traces: the normalised tensor in, the served outputs out."""

    def __init__(self, graph: ServingGraph) -> None:
        super().__init__()
        self.serving = graph  # not `graph`: torch.export's GraphModule has an attribute of that name

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.serving.backbone_outputs(x)


def export_onnx(graph: ServingGraph, path: Path, image_size: int, opset: int = DEFAULT_OPSET) -> None:
    """Writes a single-file ONNX graph with dynamic batch and spatial axes, at exactly the requested opset.

    Opset ≥ 18 uses the dynamo exporter (torch.export + onnxscript): its graph is about half the
    size of the TorchScript exporter's, keeps the embedding width static (the TorchScript one
    turns it into a symbolic name), and is optimised. It implements nothing below opset 18, so
    older opsets (for older onnxruntime builds) go through the TorchScript exporter.
    """
    _trace_backbone(_Backbone(graph).eval(), path, image_size, opset, graph.output_names)
    proto = onnx.load(str(path), load_external_data=False)
    written = {o.domain: o.version for o in proto.opset_import}
    if written.get("", written.get("ai.onnx")) != opset:
        path.unlink(missing_ok=True)
        raise ValueError(f"the exporter wrote opset {written} instead of the requested {opset}")
    dtype = next(graph.model.parameters()).dtype
    prepend_pixel_input(proto, graph.pixel_mean, graph.pixel_std, half=dtype == torch.float16)
    strip_provenance(proto)
    onnx.save(proto, str(path))


def _trace_backbone(module: nn.Module, path: Path, image_size: int, opset: int, names: list[str]) -> None:
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        if opset >= 18:
            n = torch.export.Dim("N", min=1, max=4096)
            h, w = torch.export.Dim("H", min=16, max=8192), torch.export.Dim("W", min=16, max=8192)
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[_NORMALISED],
                output_names=names,
                dynamic_shapes={"x": {0: n, 2: h, 3: w}},
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            program.save(str(path), external_data=False)
        else:
            axes = {_NORMALISED: {0: "N", 2: "H", 3: "W"}, **{o: {0: "N"} for o in names}}
            axes["attention"] = {0: "N", 1: "h", 2: "w"}
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[_NORMALISED],
                output_names=names,
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )


def prepend_pixel_input(
    model: onnx.ModelProto, mean: Sequence[float], std: Sequence[float], half: bool = False
) -> None:
    """Replaces the backbone's float input with the served ones: ``images`` uint8 [N, H, W, 3] and
    the optional ``scale`` (float32 scalar, default 1.0), joined by transpose, normalisation and a
    bilinear ``Resize`` (half_pixel, as ``F.interpolate(scale_factor=s, align_corners=False)``)."""
    g = model.graph
    (core,) = [i for i in g.input if i.name == _NORMALISED]
    g.input.remove(core)
    pre = "pixels/"
    images = helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["N", "H", "W", 3])
    scale = helper.make_tensor_value_info(SCALE_INPUT, TensorProto.FLOAT, [])
    g.input.insert(0, scale)
    g.input.insert(0, images)
    constants = {
        SCALE_INPUT: numpy_helper.from_array(_f32(1.0, ()), SCALE_INPUT),
        pre + "mean": numpy_helper.from_array(_f32(mean, (1, 3, 1, 1)), pre + "mean"),
        pre + "std": numpy_helper.from_array(_f32(std, (1, 3, 1, 1)), pre + "std"),
        pre + "lead": numpy_helper.from_array(_f32((1.0, 1.0), (2,)), pre + "lead"),
        pre + "one": numpy_helper.from_array(_i64((1,)), pre + "one"),
    }
    g.initializer.extend(constants.values())
    last = pre + "rescaled" if half else _NORMALISED
    nodes = [
        helper.make_node("Transpose", [INPUT], [pre + "nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", [pre + "nchw"], [pre + "float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", [pre + "float", pre + "mean"], [pre + "centred"]),
        helper.make_node("Div", [pre + "centred", pre + "std"], [pre + "normalised"]),
        helper.make_node("Reshape", [SCALE_INPUT, pre + "one"], [pre + "scale1"]),
        helper.make_node("Concat", [pre + "lead", pre + "scale1", pre + "scale1"], [pre + "scales"], axis=0),
        helper.make_node(
            "Resize",
            [pre + "normalised", "", pre + "scales"],
            [last],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
    ]
    if half:
        nodes.append(helper.make_node("Cast", [last], [_NORMALISED], to=TensorProto.FLOAT16))
    rest = list(g.node)
    del g.node[:]
    g.node.extend([*nodes, *rest])
    # The traced part's shapes are in terms of the backbone's (rescaled) H and W, not the pixels':
    # drop its optional shape hints and give the attention grid names of its own.
    del g.value_info[:]
    for out in g.output:
        if out.name == "attention":
            for dim, name in zip(out.type.tensor_type.shape.dim[1:], ("h", "w"), strict=True):
                dim.dim_param = name


def _f32(values: Sequence[float] | float, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(shape)


def _i64(values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


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
