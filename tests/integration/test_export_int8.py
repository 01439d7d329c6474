"""`simpool-export --int8`: the quality gate on real photographs, the manifest, the service serving it.

Calibration and held-out images are crops and flips of scikit-image's photographs, written as JPEG
files; the folder splits every fifth file (path order) off for the gate.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from simpool_serve.service.engine.preprocess import decode_image
from simpool_serve.spec import fingerprint, load_manifest
from tests.helpers import cosine, run_export, start_server

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
VARIANTS = 5  # 30 images: 24 calibrate, 6 held out
R18 = ["--arch", "resnet18", "--num-classes", "1000", "--random-init", "--seed", "0"]


def augmented(root: Path) -> list[Path]:
    """Random crops (45-100 % of the area, aspect 3:4 to 4:3), every other one mirrored."""
    import skimage.data

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        w, h = img.size
        for k in range(VARIANTS):
            scale, aspect = rng.uniform(0.45, 1.0), rng.uniform(0.75, 1.33)
            cw, ch = min(w, int(w * (scale * aspect) ** 0.5)), min(h, int(h * (scale / aspect) ** 0.5))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = img.crop((x, y, x + cw, y + ch))
            if k % 2:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            paths.append(root / f"{name}_{k}.jpg")
            crop.save(paths[-1], quality=90)
    return sorted(paths)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return augmented(tmp_path_factory.mktemp("calibration") / "photos")


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory, calibration: list[Path]) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("int8") / "resnet18_int8"
    proc = run_export(out, *R18, "--int8", "--calibration", str(calibration[0].parent))
    return out, proc.stdout + proc.stderr


def test_gate_passes_on_held_out_photos_and_manifest_says_how(
    int8_export: tuple[Path, str], calibration: list[Path]
) -> None:
    out, output = int8_export
    assert ":onnxruntime:" not in output  # no load-time warning from the quantizer's own sessions either
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]  # no fp32 left over
    m = json.loads((out / "manifest.json").read_text())
    assert m["precision"] == "int8"
    q = m["quantization"]
    calibrated = [p for i, p in enumerate(calibration) if i % 5 != 4]
    digest = hashlib.sha256()
    for p in calibrated:
        digest.update(hashlib.sha256(p.read_bytes()).hexdigest().encode())
    assert q["method"] == "static-qdq-minmax-per-channel"
    assert q["calibration_images"] == len(calibrated) == 24
    assert q["calibration_sha256"] == digest.hexdigest()
    assert q["held_out_images"] == 6
    assert 0.99 <= q["min_cosine"] <= 1.0
    assert 0.0 <= q["top1_agreement"] <= 1.0
    assert f"lowest embedding cosine {q['min_cosine']:.5f}" in output
    assert m["onnx_sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()


def test_graph_is_integer_and_the_head_float(int8_export: tuple[Path, str]) -> None:
    graph = onnx.load(str(int8_export[0] / "model.onnx")).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(producer.get(n.input[0]) == "DequantizeLinear" for n in convs)
    # Per-channel weights: one scale per output channel of the first convolution (64).
    weight_dq = next(n for n in graph.node if n.output[0] == convs[0].input[1])
    scale = next(i for i in graph.initializer if i.name == weight_dq.input[1])
    assert list(scale.dims) == [64]
    delicate = [n for n in graph.node if n.op_type in ("Softmax", "Pow", "ReduceMin", "LayerNormalization")]
    assert len(delicate) == 5
    for node in delicate:
        assert producer.get(node.input[0]) != "DequantizeLinear", node.name


def test_int8_graph_agrees_with_fp32_on_held_out_photos(
    int8_export: tuple[Path, str], model_repo: Path, calibration: list[Path]
) -> None:
    """Independently of the gate: the same seed's fp32 graph and the INT8 one, on the held-out photos."""
    manifest = load_manifest(int8_export[0] / "manifest.json")
    held_out = [p for i, p in enumerate(calibration) if i % 5 == 4]
    x = np.stack([decode_image(p.read_bytes(), manifest, 10**8) for p in held_out])
    cpu = ["CPUExecutionProvider"]
    fp32 = ort.InferenceSession(str(model_repo / "resnet18" / "model.onnx"), providers=cpu)
    int8 = ort.InferenceSession(str(int8_export[0] / "model.onnx"), providers=cpu)
    a, b = fp32.run(["embedding"], {"images": x})[0], int8.run(["embedding"], {"images": x})[0]
    cosines = [cosine(u, v) for u, v in zip(a, b, strict=True)]
    assert min(cosines) == pytest.approx(manifest.quantization.min_cosine, abs=1e-5)


def test_gate_fails_below_cosine_and_leaves_nothing(tmp_path: Path, calibration: list[Path]) -> None:
    """Calibrated on near-black images only, the ranges clip real photographs: the held-out photos (every
    fifth file) then fall under the 0.99 cosine, and the export must refuse."""
    folder = tmp_path / "dark"
    folder.mkdir()
    for i in range(10):
        if i % 5 == 4:
            shutil.copy(calibration[i], folder / f"{i:02d}.jpg")
        else:
            Image.new("RGB", (256, 256), (i, i, i)).save(folder / f"{i:02d}.png")
    out = tmp_path / "bad"
    proc = run_export(out, *R18, "--int8", "--calibration", str(folder), check=False)
    assert proc.returncode == 1, proc.stderr
    assert "lowest cosine under 0.99: the INT8 graph was removed" in proc.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8"], "--int8 and --calibration DIR go together"),
        (["--int8", "--calibration", "{photos}", "--fp16"], "--int8 and --fp16 exclude each other"),
        (["--int8", "--calibration", "{few}"], "need at least 8 and 2: add images"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, calibration: list[Path], extra: list[str], message: str) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for p in calibration[:6]:
        shutil.copy(p, few / p.name)
    args = [a.format(photos=calibration[0].parent, few=few) for a in extra]
    proc = run_export(tmp_path / "out", *R18, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_service_serves_int8_under_its_own_fingerprint(
    int8_export: tuple[Path, str], model_repo: Path, calibration: list[Path], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(int8_export[0], repo / "resnet18_int8")
    shutil.copytree(model_repo / "resnet18", repo / "resnet18")
    with start_server(repo, tmp_path) as server, server.client() as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["resnet18_int8"]["precision"] == "int8"
        assert models["resnet18_int8"]["quantization"]["calibration_images"] == 24
        assert models["resnet18"]["precision"] == "fp32"
        fp = {name: m["fingerprint"] for name, m in models.items()}
        assert fp["resnet18_int8"] != fp["resnet18"]
        assert fp["resnet18_int8"] == fingerprint(load_manifest(repo / "resnet18_int8" / "manifest.json"))
        photo = calibration[4]  # held out
        answers = {}
        for name in ("resnet18", "resnet18_int8"):
            r = client.post("/embed", files=[("images", photo.read_bytes())], data={"model": name})
            assert r.status_code == 200, r.text
            assert r.json()["fingerprint"] == fp[name]
            answers[name] = np.array(r.json()["embeddings"][0])
        assert cosine(answers["resnet18"], answers["resnet18_int8"]) >= 0.99
