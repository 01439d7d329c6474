"""`simpool-export` end to end: the ONNX graph and manifest.json that the service relies on."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from simpool_serve.export.graph import ServingGraph
from simpool_serve.export.parity import check_parity
from simpool_serve.export.preprocess import preprocessing_for
from simpool_serve.models.model import ModelConfig, build_model
from simpool_serve.spec import Manifest
from tests.helpers import run_export
from tests.unit.test_simpool_head import rel_err


def manifest_of(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def session(d: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])


def photo_batch(photos: dict[str, Path], n: int, size: int = 224) -> np.ndarray:
    names = ["astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg", "camera.png"]
    imgs = [Image.open(photos[names[i % len(names)]]).convert("RGB").resize((size, size)) for i in range(n)]
    return np.stack([np.asarray(i) for i in imgs])


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_manifest_has_every_contract_field(model_repo: Path, name: str) -> None:
    d = model_repo / name
    text = (d / "manifest.json").read_text()
    m = json.loads(text)
    missing = set(Manifest.model_fields) - set(m)
    assert not missing, missing  # every field written, even those that may be null
    # Strict: the JSON types are the manifest's own (no "512" for 512, no true for 1).
    Manifest.model_validate_json(text, strict=True)
    nullable = {"gamma", "checkpoint_sha256", "labels", "quantization"}  # quantization: INT8 only
    assert all(m[f] is not None for f in set(Manifest.model_fields) - nullable), m
    assert m["name"] == name
    assert m["weights"] == "random" and m["checkpoint_sha256"] is None and m["seed"] == 0
    assert m["onnx_sha256"] == hashlib.sha256((d / "model.onnx").read_bytes()).hexdigest()
    # timm's evaluation crop for the architecture (crop_pct 0.95 / 0.9), as the paper's train script used.
    assert m["input_size"] == 224 and m["resize"] == {"resnet18": 235, "vit_tiny": 248}[name]
    assert m["interpolation"] in ("bilinear", "bicubic")
    assert all(isinstance(v, float) for v in m["mean"] + m["std"]) and len(m["mean"]) == len(m["std"]) == 3
    assert m["precision"] == "fp32" and m["opset"] == 18
    assert datetime.fromisoformat(m["created_at"]).tzinfo is not None
    assert all(v <= 1e-4 for v in m["parity"].values())
    if name == "resnet18":
        assert (m["arch"], m["embedding_dim"], m["num_classes"], m["grid"]) == ("resnet18", 512, 1000, [7, 7])
        assert m["gamma"] == 2.0 and m["mean"] == pytest.approx([0.485, 0.456, 0.406])
        assert len(m["labels"]) == 1000 and all(isinstance(s, str) and s for s in m["labels"])
        assert m["labels"][0].startswith("tench") and m["labels"][999].startswith("toilet tissue")
        assert m["outputs"] == ["embedding", "attention", "logits"]
    else:
        assert (m["arch"], m["embedding_dim"], m["num_classes"], m["grid"]) == (
            "vit_tiny_patch16_224",
            192,
            0,
            [14, 14],
        )
        assert m["gamma"] == 1.25 and m["labels"] is None and m["outputs"] == ["embedding", "attention"]


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_graph_signature(model_repo: Path, name: str) -> None:
    d = model_repo / name
    m = manifest_of(d)
    model = onnx.load(str(d / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert not list(d.glob("*.data")) and not any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer
    )
    initializers = {i.name for i in model.graph.initializer}
    required = [i for i in model.graph.input if i.name not in initializers]
    (inp,) = required  # `images` is the only input a caller must feed
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    # N, H and W are symbolic: the graph takes any size, not only the 224x224 it was exported at.
    assert [d.dim_param for d in dims[:3]] == ["N", "H", "W"] and dims[3].dim_value == 3
    assert not any(d.dim_value for d in dims[:3])
    (scale,) = [i for i in model.graph.input if i.name == m["scale_input"]]
    assert scale.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and not scale.type.tensor_type.shape.dim
    default = next(i for i in model.graph.initializer if i.name == "scale")
    assert onnx.numpy_helper.to_array(default) == np.float32(1.0)
    assert m["dynamic_size"] is True and m["min_side"] == {"resnet18": 32, "vit_tiny": 16}[name]
    outs = {o.name: o for o in model.graph.output}
    assert list(outs) == m["outputs"]
    for o in outs.values():
        assert o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert o.type.tensor_type.shape.dim[0].dim_param  # dynamic batch


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_dynamic_batch_on_photos(model_repo: Path, name: str, photos: dict[str, Path]) -> None:
    m = manifest_of(model_repo / name)
    sess = session(model_repo / name)
    batch = photo_batch(photos, 5)
    full = dict(zip(m["outputs"], sess.run(m["outputs"], {"images": batch}), strict=True))
    assert full["embedding"].shape == (5, m["embedding_dim"])
    assert full["attention"].shape == (5, *m["grid"])
    np.testing.assert_allclose(full["attention"].sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert (full["attention"] >= 0).all()
    if m["num_classes"]:
        assert full["logits"].shape == (5, m["num_classes"])
    for n in (1, 2):
        part = sess.run(m["outputs"], {"images": batch[:n]})
        for k, p in zip(m["outputs"], part, strict=True):
            assert rel_err(p, full[k][:n]) < 1e-4


def test_random_init_is_reproducible(model_repo: Path, tmp_path: Path, photos: dict[str, Path]) -> None:
    proc = run_export(
        tmp_path / "again", "--arch", "resnet18", "--num-classes", "1000", "--random-init", "--seed", "0"
    )
    # The optional scale input is by design: onnxruntime's load-time warning about it is not shown.
    assert ":onnxruntime:" not in proc.stdout + proc.stderr, proc.stderr
    batch = photo_batch(photos, 2)
    a = session(model_repo / "resnet18").run(None, {"images": batch})
    b = session(tmp_path / "again").run(None, {"images": batch})
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert manifest_of(tmp_path / "again")["name"] == "again"  # default name: the folder's
    # Same weights, same graph bytes, hence the same fingerprint; no exporter source paths inside.
    sha = manifest_of(model_repo / "resnet18")["onnx_sha256"]
    assert manifest_of(tmp_path / "again")["onnx_sha256"] == sha
    graph_bytes = (tmp_path / "again" / "model.onnx").read_bytes()
    assert b"graph.py" not in graph_bytes and b"stack_trace" not in graph_bytes
    s0 = build_model(ModelConfig("resnet18", num_classes=10, gamma=2.0), seed=0).state_dict()
    s1 = build_model(ModelConfig("resnet18", num_classes=10, gamma=2.0), seed=1).state_dict()
    assert not torch.equal(s0["pool.wq.weight"], s1["pool.wq.weight"])


def test_parity_gate_detects_a_different_model(model_repo: Path) -> None:
    other = build_model(ModelConfig("resnet18", num_classes=1000, gamma=2.0), seed=1)
    m = manifest_of(model_repo / "resnet18")
    errors = check_parity(
        model_repo / "resnet18" / "model.onnx", ServingGraph(other, m["mean"], m["std"]), 224
    )
    assert all(v > 1e-2 for v in errors.values()), errors


def test_fp16_graph(model_repo: Path, tmp_path: Path, photos: dict[str, Path]) -> None:
    out = tmp_path / "vit_tiny_fp16"
    proc = run_export(out, "--arch", "vit_tiny_patch16_224", "--num-classes", "0", "--random-init", "--fp16")
    assert "parity" in proc.stdout
    m = manifest_of(out)
    assert m["precision"] == "fp16" and all(v <= 1e-2 for v in m["parity"].values())
    model = onnx.load(str(out / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert (out / "model.onnx").stat().st_size < 0.6 * (model_repo / "vit_tiny" / "model.onnx").stat().st_size
    batch = photo_batch(photos, 3)
    half = session(out).run(None, {"images": batch})
    full = session(model_repo / "vit_tiny").run(None, {"images": batch})
    for h, f in zip(half, full, strict=True):
        assert h.dtype == np.float32 and rel_err(h, f) < 1e-2


def test_convnext_options(tmp_path: Path) -> None:
    """A ConvNeXt with --gamma none, another input size and an older opset (TorchScript exporter)."""
    out = tmp_path / "cnx"
    run_export(
        out, "--arch", "convnext_tiny", "--random-init", "--gamma", "none",
        "--image-size", "160", "--opset", "17", "--num-classes", "5", "--name", "cnx-small",
    )  # fmt: skip
    m = manifest_of(out)
    assert (m["name"], m["gamma"], m["input_size"], m["resize"], m["grid"]) == (
        "cnx-small",
        None,
        160,
        168,  # floor(160 / 0.95): convnext's crop_pct, scaled to the input size
        [5, 5],
    )
    assert m["placement"] == "pool_then_norm" and m["opset"] == 17 and m["labels"] is None
    opsets = {o.domain: o.version for o in onnx.load(str(out / "model.onnx")).opset_import}
    assert opsets[""] == 17
    outs = session(out).run(None, {"images": np.zeros((4, 160, 160, 3), np.uint8)})
    assert [o.shape for o in outs] == [(4, 768), (4, 5, 5), (4, 5)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "resnet18"], "exactly one of --checkpoint or --random-init"),
        (["--arch", "no_such_net", "--random-init"], "unknown timm architecture"),
        (["--arch", "efficientnet_b0", "--random-init"], "not a timm ResNet, ConvNeXt or ViT"),
        (["--arch", "resnet18", "--random-init", "--gamma", "big"], "expected a number or 'none'"),
        (["--arch", "vit_tiny_patch16_224", "--random-init", "--opset", "13"], "--opset must be between 14"),
        (["--checkpoint", "/nonexistent/weights.pth"], "checkpoint /nonexistent/weights.pth does not exist"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_export(tmp_path / "out", *args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_missing_checkpoint_fails_before_torch_loads(tmp_path: Path) -> None:
    """A mistyped path is reported in one line, before torch and timm are even imported."""
    import subprocess
    import sys

    missing = tmp_path / "nope.pth"
    code = (
        "import sys; from simpool_serve.export.cli import main; "
        f"rc = main(['--out', {str(tmp_path / 'out')!r}, '--checkpoint', {str(missing)!r}]); "
        "print(rc, 'torch' in sys.modules, 'timm' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"error: checkpoint {missing} does not exist"


def test_preprocessing_uses_the_papers_evaluation_crop() -> None:
    """Supervised: the paper's train script evaluates with the pretrained config's crop_pct
    (supervised/timm/models/resnet.py: resnet50 crop_pct=0.95); DINO: Resize(256) + CenterCrop(224)."""
    assert preprocessing_for("resnet50", 224, dino=False).resize == 235
    assert preprocessing_for("vit_small_patch16_224", 224, dino=False).resize == 248
    assert preprocessing_for("convnext_small", 224, dino=False).resize == 235
    assert preprocessing_for("resnet50", 224, dino=True).resize == 256
    assert preprocessing_for("vit_small_patch16_224", 224, dino=True).resize == 256


def test_parity_failure_exits_1_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Above the tolerance the exporter exits 1, and no graph or manifest is left behind."""
    from simpool_serve.export import cli, parity

    monkeypatch.setattr(parity, "check_parity", lambda *a, **k: {"embedding": 3e-4, "attention": 1e-7})
    out = tmp_path / "bad"
    code = cli.main(["--arch", "resnet18", "--random-init", "--num-classes", "0", "--out", str(out)])
    assert code == 1
    assert "embedding 3.00e-04" in capsys.readouterr().out
    assert not (out / "model.onnx").exists() and not (out / "manifest.json").exists()


def test_exporter_crash_exits_3_with_traceback_and_leaves_no_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failure inside the exporter is not a parity failure (1) or a usage error (2): scripts can
    tell "report this" apart, and a half-written graph is removed."""
    from simpool_serve.export import cli, graph

    def broken_export(model: object, path: Path, *args: object) -> None:
        path.write_bytes(b"half a graph")
        raise RuntimeError("exporter bug")

    monkeypatch.setattr(graph, "export_onnx", broken_export)
    out = tmp_path / "crash"
    code = cli.main(["--arch", "resnet18", "--random-init", "--num-classes", "0", "--out", str(out)])
    assert code == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: exporter bug" in err and "failed unexpectedly" in err
    assert not (out / "model.onnx").exists() and not (out / "manifest.json").exists()


def test_out_that_cannot_be_created_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    proc = run_export(tmp_path / "file" / "out", "--arch", "resnet18", "--random-init", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot create --out" in proc.stderr
