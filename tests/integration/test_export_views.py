"""Graphs of any size and the in-graph rescale: what a full view and multi-scale descriptors rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from simpool_serve.export.graph import ServingGraph
from simpool_serve.models.model import ModelConfig, build_model
from simpool_serve.spec import Manifest
from tests.unit.test_simpool_head import rel_err

# How conftest's model_repo exports them (random init, seed 0).
CONFIGS = {
    "resnet18": ModelConfig("resnet18", num_classes=1000, gamma=2.0),
    "vit_tiny": ModelConfig("vit_tiny_patch16_224", num_classes=0, gamma=1.25),
}


def session(d: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])


def reference(model_repo: Path, name: str) -> ServingGraph:
    m = json.loads((model_repo / name / "manifest.json").read_text())
    return ServingGraph(build_model(CONFIGS[name], seed=0), m["mean"], m["std"]).eval()


def photo(photos: dict[str, Path], name: str, size: tuple[int, int]) -> np.ndarray:
    return np.array(Image.open(photos[name]).convert("RGB").resize(size, Image.BICUBIC))


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_scale_input_defaults_to_one(model_repo: Path, name: str, photos: dict[str, Path]) -> None:
    sess = session(model_repo / name)
    batch = np.stack([photo(photos, "coffee.jpg", (224, 224)), photo(photos, "chelsea.jpg", (224, 224))])
    plain = sess.run(None, {"images": batch})
    fed = sess.run(None, {"images": batch, "scale": np.array(1.0, np.float32)})
    for a, b in zip(plain, fed, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
@pytest.mark.parametrize(("size", "scale"), [((290, 168), 1.0), ((181, 263), 2**-0.5), ((333, 250), 0.5)])
def test_any_size_and_scale_match_pytorch(
    model_repo: Path, name: str, size: tuple[int, int], scale: float, photos: dict[str, Path]
) -> None:
    """Non-square photographs at sizes that are not multiples of the stride, rescaled in the graph
    as F.interpolate(scale_factor=s, bilinear, align_corners=False) rescales the normalised tensor."""
    batch = np.stack([photo(photos, "rocket.jpg", size), photo(photos, "astronaut.jpg", size)])
    got = session(model_repo / name).run(None, {"images": batch, "scale": np.array(scale, np.float32)})
    with torch.no_grad():
        ref = reference(model_repo, name)(torch.from_numpy(batch), float(np.float32(scale)))
    for g, r in zip(got, ref, strict=True):
        assert g.shape == tuple(r.shape)
        assert rel_err(g, r.numpy()) < 1e-4
    if name == "vit_tiny":  # the grid is floor(H·s / 16) x floor(W·s / 16)
        h, w = int(size[1] * np.float32(scale)), int(size[0] * np.float32(scale))
        assert got[1].shape == (2, h // 16, w // 16)


def test_vit_drops_the_remainder_pixels(model_repo: Path, photos: dict[str, Path]) -> None:
    """A ViT at 61x90 sees exactly what it sees at 48x80: the remainder is dropped, never padded."""
    sess = session(model_repo / "vit_tiny")
    image = photo(photos, "coffee.jpg", (90, 61))[None]
    full = sess.run(None, {"images": image})
    cut = sess.run(None, {"images": np.ascontiguousarray(image[:, :48, :80])})
    assert full[1].shape == (1, 3, 5)
    for a, b in zip(full, cut, strict=True):
        assert rel_err(a, b) < 1e-6


def test_rescale_runs_on_the_normalised_tensor_not_on_rounded_pixels(
    model_repo: Path, photos: dict[str, Path]
) -> None:
    """Rescaling uint8 pixels outside the graph (rounded) is measurably another descriptor."""
    image = photo(photos, "astronaut.jpg", (320, 240))[None]
    sess = session(model_repo / "resnet18")
    (inside,) = sess.run(["embedding"], {"images": image, "scale": np.array(0.5, np.float32)})
    x = torch.from_numpy(image).permute(0, 3, 1, 2).double()
    small = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    rounded = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    (outside,) = sess.run(["embedding"], {"images": np.ascontiguousarray(rounded)})
    with torch.no_grad():
        (ref, *_) = reference(model_repo, "resnet18")(torch.from_numpy(image), 0.5)
    assert rel_err(inside, ref.numpy()) < 1e-5
    assert rel_err(outside, ref.numpy()) > 10 * rel_err(inside, ref.numpy())


def test_manifest_says_the_graph_takes_any_size(model_repo: Path) -> None:
    m = Manifest.model_validate_json((model_repo / "vit_tiny" / "manifest.json").read_text())
    assert (m.dynamic_size, m.scale_input, m.min_side) == (True, "scale", 16)
    # A folder exported before graphs took any size lacks the fields: the service refuses full views.
    old = {k: v for k, v in m.model_dump().items() if k not in ("dynamic_size", "scale_input", "min_side")}
    before = Manifest.model_validate(old)
    assert (before.dynamic_size, before.scale_input, before.min_side) == (False, None, None)
