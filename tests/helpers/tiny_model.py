"""A tiny SimPool-shaped ONNX graph built in memory with `onnx.helper`, saved as a real model folder.

It has the serving graph's real interface (input `images` uint8 [N, S, S, 3]; outputs `embedding`
[N, D], `attention` [N, h, w] summing to 1 over the grid, and `logits` [N, C] with a classifier) and a
manifest naming its bytes, so the engine loads, verifies and runs it with a real onnxruntime session,
in the test's process and in milliseconds: no torch, no export. Its computation is attention pooling
in miniature: patch tokens, one query, a softmax over the grid, the weighted sum of the tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from simpool_serve.spec import Manifest, sha256_file

OPSET = 17


def tiny_graph(
    size: int = 32, patch: int = 8, dim: int = 8, classes: int = 3, seed: int = 0
) -> onnx.ModelProto:
    """The graph: uint8 pixels → tokens of `patch`×`patch` patches → attention over the grid → outputs."""
    h = w = size // patch
    rng = np.random.default_rng(seed)
    weights = {
        "scale": np.array(1.0 / 255.0, np.float32),
        "to_patches": np.array([-1, h, patch, w, patch, 3], np.int64),
        "to_tokens": np.array([-1, h * w, patch * patch * 3], np.int64),
        "to_scores": np.array([-1, 1, h * w], np.int64),
        "to_grid": np.array([-1, h, w], np.int64),
        "to_rows": np.array([-1, dim], np.int64),
        "embed": rng.normal(0, 0.1, (patch * patch * 3, dim)).astype(np.float32),
        "query": rng.normal(0, 1.0, (dim, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "scale"], ["xs"]),
        helper.make_node("Reshape", ["xs", "to_patches"], ["p6"]),
        helper.make_node("Transpose", ["p6"], ["pt"], perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", ["pt", "to_tokens"], ["patches"]),
        helper.make_node("MatMul", ["patches", "embed"], ["tokens"]),  # [N, hw, D]
        helper.make_node("MatMul", ["tokens", "query"], ["scores"]),  # [N, hw, 1]
        helper.make_node("Reshape", ["scores", "to_scores"], ["scores_row"]),  # [N, 1, hw]
        helper.make_node("Softmax", ["scores_row"], ["weights"], axis=2),
        helper.make_node("MatMul", ["weights", "tokens"], ["pooled"]),  # [N, 1, D]
        helper.make_node("Reshape", ["pooled", "to_rows"], ["embedding"]),
        helper.make_node("Reshape", ["weights", "to_grid"], ["attention"]),
    ]
    outputs = [
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim]),
        helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["N", h, w]),
    ]
    if classes:
        weights["classifier"] = rng.normal(0, 1.0, (dim, classes)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["embedding", "classifier"], ["logits"]))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]))
    graph = helper.make_graph(
        nodes,
        "tiny_simpool",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", size, size, 3])],
        outputs,
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # read by every onnxruntime this project supports
    onnx.checker.check_model(model)
    return model


def write_tiny_model(
    folder: Path,
    *,
    size: int = 32,
    patch: int = 8,
    dim: int = 8,
    classes: int = 3,
    seed: int = 0,
    interpolation: str = "bicubic",
) -> Manifest:
    """`folder/model.onnx` + `folder/manifest.json` describing it, as `simpool-export` lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_graph(size, patch, dim, classes, seed), folder / "model.onnx")
    manifest = Manifest(
        name=folder.name,
        arch="tiny_simpool",
        embedding_dim=dim,
        num_classes=classes,
        input_size=size,
        grid=(size // patch, size // patch),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        resize=size * 8 // 7,
        interpolation=interpolation,  # type: ignore[arg-type]
        weights="random",
        onnx_sha256=sha256_file(folder / "model.onnx"),
        labels=[f"class_{i}" for i in range(classes)] if classes else None,
        opset=OPSET,
        precision="fp32",
    )
    (folder / "manifest.json").write_text(manifest.to_json())
    return manifest


def write_tiny_repository(root: Path) -> Path:
    """A repository of two tiny models: `tiny_cls` (3 classes) and `tiny_emb` (no classifier)."""
    write_tiny_model(root / "tiny_cls", classes=3, seed=0)
    write_tiny_model(root / "tiny_emb", classes=0, seed=1, dim=6, interpolation="bilinear")
    return root
