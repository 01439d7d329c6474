"""The Triton model configuration: parsed against Triton's own ModelConfig protobuf (text and JSON), its
tensors checked against the real graph in onnxruntime, and `simpool-export --triton-repo` end to end."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from simpool_serve.service.oip.model_config import to_pbtxt, triton_config
from simpool_serve.spec import fingerprint, load_manifest, sha256_file
from tests.helpers import run_export

ORT_TYPES = {"tensor(uint8)": mc.TYPE_UINT8, "tensor(float)": mc.TYPE_FP32}


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def check_against_graph(config: mc.ModelConfig, onnx_path: Path) -> None:
    """Every tensor the config names is the graph's, with its type and its shape after the batch axis."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [t.name for t in actual]
        for t, a in zip(declared, actual, strict=True):
            assert t.data_type == ORT_TYPES[a.type]
            assert isinstance(a.shape[0], str)  # the graph's batch axis is dynamic; Triton adds it
            if all(isinstance(d, int) for d in a.shape[1:]):
                assert list(t.dims) == a.shape[1:]


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_config_parses_as_triton_model_config(model_repo: Path, name: str) -> None:
    manifest = load_manifest(model_repo / name / "manifest.json")
    config = triton_config(manifest, name, max_batch_size=16)
    parsed = parse_pbtxt(to_pbtxt(config))
    # The JSON form (what /v2/models/{m}/config answers) is the same message.
    assert json_format.ParseDict(config, mc.ModelConfig()) == parsed
    assert parsed.name == name and parsed.platform == "onnxruntime_onnx" and parsed.max_batch_size == 16
    size = manifest.input_size
    assert list(parsed.input[0].dims) == [size, size, 3]
    outputs = {o.name: list(o.dims) for o in parsed.output}
    assert outputs["embedding"] == [manifest.embedding_dim]
    assert outputs["attention"] == list(manifest.grid)
    assert ("logits" in outputs) is (manifest.num_classes > 0)
    assert parsed.HasField("dynamic_batching")
    assert [w.batch_size for w in parsed.model_warmup] == [1, 16]
    assert parsed.model_warmup[0].inputs["images"].zero_data
    assert parsed.parameters["simpool_fingerprint"].string_value == fingerprint(manifest)
    assert not parsed.HasField("optimization")
    check_against_graph(parsed, model_repo / name / "model.onnx")


def test_tensorrt_block(model_repo: Path) -> None:
    manifest = load_manifest(model_repo / "resnet18" / "manifest.json")
    parsed = parse_pbtxt(to_pbtxt(triton_config(manifest, "r", tensorrt=True, trt_cache_dir='/c "x"')))
    (trt,) = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt"
    assert trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_engine_cache_enable"] == "1"
    assert trt.parameters["trt_engine_cache_path"] == '/c "x"'  # quoted and escaped in the text


def test_bad_batch_size_is_refused(model_repo: Path) -> None:
    manifest = load_manifest(model_repo / "resnet18" / "manifest.json")
    with pytest.raises(ValueError, match="max_batch_size"):
        triton_config(manifest, "r", max_batch_size=0)


def test_export_writes_a_triton_repository_entry(tmp_path: Path) -> None:
    repo = tmp_path / "triton"
    proc = run_export(
        tmp_path / "small",
        *("--arch", "resnet18", "--num-classes", "10", "--image-size", "64", "--name", "small"),
        *("--random-init", "--triton-repo", str(repo), "--triton-max-batch-size", "8", "--triton-tensorrt"),
    )
    assert "config.pbtxt" in proc.stdout
    entry = repo / "small"
    assert sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
    ]
    manifest = load_manifest(tmp_path / "small" / "manifest.json")
    assert sha256_file(entry / "1" / "model.onnx") == manifest.onnx_sha256  # the verified graph itself
    parsed = parse_pbtxt((entry / "config.pbtxt").read_text())
    assert parsed.name == "small" and parsed.max_batch_size == 8
    assert list(parsed.input[0].dims) == [64, 64, 3]
    assert parsed.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    check_against_graph(parsed, entry / "1" / "model.onnx")


def test_export_refuses_a_zero_triton_batch(tmp_path: Path) -> None:
    proc = run_export(
        tmp_path / "x", "--arch", "resnet18", "--random-init", "--triton-repo", str(tmp_path / "t"),
        "--triton-max-batch-size", "0", check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--triton-max-batch-size" in proc.stderr
