"""Static INT8 (QDQ) quantization of a verified fp32 graph, with SimPool's head kept in float.

onnxruntime's own quantizer writes QuantizeLinear/DequantizeLinear pairs around the operators it
quantizes (QDQ format); onnxruntime's CPU provider then fuses each pair with its operator into an
integer kernel (VNNI / AMX on CPUs that have them). Weights are quantized per output channel (int8,
symmetric), activations per tensor (uint8) from ranges seen on real calibration images.

What stays in float: every node of the SimPool head, from the backbone's feature map on (the keys'
LayerNorm, the query and key projections, the softmax, the per-image minimum, the γ powers and the
classifier). A range learnt per tensor cannot hold them: the attention is a softmax over up to 196
locations whose useful values are a few thousandths, and x^γ then x^(1/γ) amplify the rounding of
anything quantized before them. Measured on resnet18 (held-out photographs), see docs/export.md.
"""

from __future__ import annotations

import tempfile
from collections import deque
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from simpool_serve.export.calibration import CalibrationSet, ImageReader, load_pixels
from simpool_serve.export.checks import errors_only
from simpool_serve.export.quality import Agreement, compare
from simpool_serve.spec import Manifest

METHOD = "static-qdq-minmax-per-channel"
ATTENTION = "attention"


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of every node downstream of the SimPool head's input (the backbone's features).

    The head is found by structure, not by name (an exporter shares identical initializers, so a
    randomly initialised model's LayerNorm weights may all carry the first block's name): its keys'
    LayerNorm is the last LayerNormalization (in the graph's topological order) that the `attention`
    output depends on; any norm of the backbone comes before it.
    """
    graph = model.graph
    producer = {out: n for n in graph.node for out in n.output}
    ancestors: set[str] = set()
    stack = [ATTENTION]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in ancestors:
            continue
        ancestors.add(node.name)
        stack.extend(node.input)
    norms = [n for n in graph.node if n.op_type == "LayerNormalization" and n.name in ancestors]
    if not norms:
        raise ValueError("no SimPool head (a LayerNormalization before `attention`) in the graph")
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    # The head's input is the features tensor fed to the LayerNorm, through the reshape/transpose that
    # turns a CNN map into tokens: walk back over those to the tensor the backbone produced.
    start = norms[-1].input[0]
    while start in producer and producer[start].op_type in ("Reshape", "Transpose", "Flatten"):
        start = producer[start].input[0]
    seen: set[str] = set()
    order: list[str] = []
    queue = deque(consumers.get(start, []))
    while queue:
        node = queue.popleft()
        if node.name in seen:
            continue
        seen.add(node.name)
        order.append(node.name)
        for out in node.output:
            queue.extend(consumers.get(out, []))
    return order


def quantize_graph(
    fp32_path: Path,
    int8_path: Path,
    calibration: list[Path],
    manifest: Manifest,
    keep_head_float: bool = True,
) -> None:
    """Writes the QDQ INT8 version of `fp32_path` to `int8_path`, calibrated on `calibration`."""
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as tmp, errors_only():
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and constant folding first, as onnxruntime's quantizer asks: it needs shapes
        # to choose per-channel axes and quantizes nothing it cannot type.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        exclude = head_nodes(onnx.load(str(prepared))) if keep_head_float else []
        quantize_static(
            str(prepared),
            str(int8_path),
            ImageReader(calibration, manifest),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
            extra_options={"CalibTensorRangeSymmetric": False},
        )


def quantize_and_compare(
    fp32_path: Path, int8_path: Path, split: CalibrationSet, manifest: Manifest
) -> Agreement:
    """Quantizes on the calibration images, then compares with fp32 on the held-out ones."""
    quantize_graph(fp32_path, int8_path, split.calibration, manifest)
    return compare(fp32_path, int8_path, load_pixels(split.held_out, manifest))


def quantization_record(split: CalibrationSet, agreement: Agreement) -> dict[str, object]:
    """The manifest's `quantization` field."""
    return {
        "method": METHOD,
        "calibration_images": len(split.calibration),
        "calibration_sha256": split.sha256(),
        "held_out_images": agreement.images,
        "min_cosine": round(agreement.min_cosine, 6),
        "top1_agreement": agreement.top1_agreement,
    }
