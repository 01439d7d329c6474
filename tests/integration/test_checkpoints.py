"""The paper's four released checkpoint layouts, imported and checked against an independent float64 run.

Each test checkpoint holds random weights in exactly the layout of the paper's files: supervised
(timm train script: `state_dict` + `state_dict_ema`, `args` Namespace, SimPool under
`global_pool.pool.*` / `gp.pool.*`) and DINO (`teacher` / `student`, `module.backbone.` / `backbone.`
prefixes, SimPool under `simpool.*`, a DINO projection head to ignore). The DINO ResNet-50 comes
from torchvision, not timm, so its key names are checked against an independent implementation.
The float64 reference runs the backbone in double precision and SimPool, norm and classifier in NumPy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision
from PIL import Image

from simpool_serve.models.checkpoint import import_checkpoint, load_weights, resolve_config, save_checkpoint
from simpool_serve.models.model import ModelConfig, build_model
from simpool_serve.models.safe_load import load_file
from tests.helpers import run_export, run_exports
from tests.unit.test_simpool_head import layer_norm, rel_err, simpool_reference

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def perturbed(sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random weights that exercise every parameter (norm statistics included)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = v + torch.rand(v.shape, generator=g) * 0.5
        else:
            out[k] = v + torch.randn(v.shape, generator=g) * 0.02
    return out


def simpool_weights(dim: int, seed: int, beta: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {
        "norm_patches.weight": 1.0 + 0.1 * torch.randn(dim, generator=g),
        "norm_patches.bias": 0.1 * torch.randn(dim, generator=g),
        # A sharper query than a default init: attention peaks (max ≈ 0.3..0.6) as in trained models.
        "wq.weight": torch.randn(dim, dim, generator=g) * 5.0 * dim**-0.5,
        "wk.weight": torch.randn(dim, dim, generator=g) * dim**-0.5,
    }
    if beta:
        sd["beta"] = torch.tensor([0.25])
    return sd


def dino_head(dim: int, seed: int) -> dict[str, torch.Tensor]:
    """The DINO projection head's keys (smaller out_dim than the paper's 65536: they are dropped anyway)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "head.mlp.0.weight": torch.randn(256, dim, generator=g),
        "head.mlp.0.bias": torch.zeros(256),
        "head.mlp.2.weight": torch.randn(256, 256, generator=g),
        "head.mlp.2.bias": torch.zeros(256),
        "head.mlp.4.weight": torch.randn(64, 256, generator=g),
        "head.mlp.4.bias": torch.zeros(64),
        "head.last_layer.weight_g": torch.ones(512, 1),
        "head.last_layer.weight_v": torch.randn(512, 64, generator=g),
    }


def prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


@dataclass
class Layout:
    """A checkpoint file in one of the paper's layouts, and what the float64 reference needs."""

    path: Path
    backbone: torch.nn.Module  # float64, in eval mode, with the checkpoint's backbone weights
    pool: dict[str, np.ndarray]
    gamma: float | None
    use_beta: bool
    norm: tuple[np.ndarray, np.ndarray] | None  # final norm after pooling (DINO ViT)
    classifier: tuple[np.ndarray, np.ndarray] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    features: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def _np(sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.double().numpy() for k, v in sd.items()}


def cnn_features(bb: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    act = bb.act1 if hasattr(bb, "act1") else bb.relu  # timm's name / torchvision's name
    x = bb.maxpool(act(bb.bn1(bb.conv1(x))))
    return bb.layer4(bb.layer3(bb.layer2(bb.layer1(x))))


def vit_tokens(norm: bool) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    def run(bb: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = bb.patch_embed(x) + bb.pos_embed
        for blk in bb.blocks:
            x = blk(x)
        return bb.norm(x) if norm else x

    return run


def dino_vit_tokens(bb: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The paper's DINO ViT in SimPool mode (self_supervised/vision_transformer.py, prepare_tokens and
    interpolate_pos_encoding): it counts x.shape[1] - 1 patches although it has no [CLS] token, so the
    count never matches and the position embedding is always resampled, also at 224 px."""
    w, h = x.shape[2], x.shape[3]
    x = bb.patch_embed.proj(x).flatten(2).transpose(1, 2)  # its PatchEmbed: conv, flatten, transpose
    pos, dim = bb.pos_embed, x.shape[-1]
    n = pos.shape[1]
    if x.shape[1] - 1 != n or w != h:  # always true here, as in the paper
        w0, h0 = w // 16 + 0.1, h // 16 + 0.1
        pos = torch.nn.functional.interpolate(
            pos.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
            mode="bicubic",
        )
        pos = pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    x = x + pos
    for blk in bb.blocks:
        x = blk(x)
    return x


def build_supervised_resnet50(root: Path) -> Layout:
    torch.manual_seed(10)
    bb = timm.create_model("resnet50", num_classes=1000)
    sd = perturbed(bb.state_dict(), 11)
    pool = simpool_weights(2048, 12, beta=False)
    state = {**sd, **prefixed("global_pool.pool.", pool)}
    ema = perturbed(state, 13)
    args = argparse.Namespace(model="resnet50", gp="simpool", gamma=2.0, lr=0.4, epochs=100, aa="rand-m9")
    path = root / "resnet50_supervised_simpool_ep100.pth.tar"
    ckpt = {"epoch": 99, "arch": "resnet50", "state_dict": state, "state_dict_ema": ema}
    torch.save({**ckpt, "optimizer": {"state": {}, "param_groups": []}, "version": 2, "args": args}, path)
    bb.load_state_dict(sd)
    return Layout(
        path, bb.double().eval(), _np(pool), 2.0, False, None,
        (sd["fc.weight"].double().numpy(), sd["fc.bias"].double().numpy()),
        IMAGENET_MEAN, IMAGENET_STD, cnn_features,
    )  # fmt: skip


def build_supervised_vit_small(root: Path) -> Layout:
    torch.manual_seed(20)
    bb = timm.create_model("vit_small_patch16_224", num_classes=1000, class_token=False, global_pool="")
    sd = perturbed(bb.state_dict(), 21)
    pool = simpool_weights(384, 22, beta=False)
    state = {**sd, **prefixed("gp.pool.", pool)}
    args = argparse.Namespace(model="vit_small_patch16_224", gp="simpool", gamma=1.25, mixup=0.2)
    path = root / "vits_gem1.25_supervised_beta.pth.tar"
    torch.save(
        {"epoch": 99, "arch": "vit_small_patch16_224", "state_dict": state,
         "state_dict_ema": perturbed(state, 23), "args": args, "metric": 74.2},
        path,
    )  # fmt: skip
    bb.load_state_dict(sd)
    return Layout(
        path, bb.double().eval(), _np(pool), 1.25, False, None,
        (sd["head.weight"].double().numpy(), sd["head.bias"].double().numpy()),
        (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), vit_tokens(norm=True),
    )  # fmt: skip


def build_dino_resnet50(root: Path) -> Layout:
    torch.manual_seed(30)
    tv = torchvision.models.resnet50(zero_init_residual=True)
    sd = {k: v for k, v in perturbed(tv.state_dict(), 31).items() if not k.startswith("fc.")}
    for k in sd:  # residual branches on, at a trained network's scale (features up to ~5)
        if k.endswith("bn3.weight"):
            sd[k] = sd[k] + 0.5
    pool = simpool_weights(2048, 32, beta=False)
    # ResNet has BatchNorm, so DINO wraps teacher and student in DDP: both carry `module.`.
    teacher = prefixed(
        "module.", {**prefixed("backbone.", {**sd, **prefixed("simpool.", pool)}), **dino_head(2048, 33)}
    )
    student = {k: v + 0.01 if v.is_floating_point() else v for k, v in teacher.items()}
    args = argparse.Namespace(arch="resnet50", mode="simpool", gamma=2.0, patch_size=16, out_dim=512)
    path = root / "resnet50_dino_simpool_ep100.pth"
    torch.save({"student": student, "teacher": teacher, "epoch": 100, "args": args,
                "dino_loss": {"center": torch.zeros(1, 512)}}, path)  # fmt: skip
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(sd)
    return Layout(
        path, tv.double().eval(), _np(pool), 2.0, False, None, None,
        IMAGENET_MEAN, IMAGENET_STD, cnn_features,
    )  # fmt: skip


def build_dino_vit_small(
    root: Path, gamma: float | None = 1.25, name: str = "vits_dino_simpool_ep100.pth"
) -> Layout:
    torch.manual_seed(40)
    bb = timm.create_model("vit_small_patch16_224", num_classes=0, class_token=False, global_pool="")
    sd = perturbed(bb.state_dict(), 41)
    pool = simpool_weights(384, 42, beta=True)  # the teacher always carries simpool.beta
    teacher = {**prefixed("backbone.", {**sd, **prefixed("simpool.", pool)}), **dino_head(384, 43)}
    student = prefixed("module.", {k: v * 1.01 for k, v in teacher.items()})
    args = argparse.Namespace(arch="vit_small", mode="simpool", gamma=gamma, patch_size=16, out_dim=512)
    path = root / name
    torch.save({"student": student, "teacher": teacher, "epoch": 100, "args": args}, path)
    bb.load_state_dict(sd)
    return Layout(
        path, bb.double().eval(), _np(pool), gamma, gamma is not None,
        (sd["norm.weight"].double().numpy(), sd["norm.bias"].double().numpy()), None,
        IMAGENET_MEAN, IMAGENET_STD, dino_vit_tokens,
    )  # fmt: skip


BUILDERS = {
    "supervised_resnet50": build_supervised_resnet50,
    "supervised_vit_small": build_supervised_vit_small,
    "dino_resnet50": build_dino_resnet50,
    "dino_vit_small": build_dino_vit_small,
}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Layout]:
    root = tmp_path_factory.mktemp("paper_checkpoints")
    return {name: build(root) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def exported(
    layouts: dict[str, Layout], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, str]]:
    """Each layout exported once through the real CLI (no --arch: it comes from the checkpoint's args)."""
    root = tmp_path_factory.mktemp("exported_layouts")
    procs = run_exports({root / name: ("--checkpoint", str(layout.path)) for name, layout in layouts.items()})
    return {name: (root / name, procs[root / name].stdout) for name in layouts}


def crops(photos: dict[str, Path], manifest: dict) -> np.ndarray:
    """Real photographs, resized and centre-cropped as the manifest says."""
    size, resize = manifest["input_size"], manifest["resize"]
    resample = Image.BICUBIC if manifest["interpolation"] == "bicubic" else Image.BILINEAR
    out = []
    for name in ("astronaut.jpg", "coffee.jpg", "chelsea.jpg"):
        img = Image.open(photos[name]).convert("RGB")
        scale = resize / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), resample)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        out.append(np.asarray(img.crop((left, top, left + size, top + size))))
    return np.stack(out)


def float64_reference(layout: Layout, images: np.ndarray) -> dict[str, np.ndarray]:
    x = images.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    x = (x - np.array(layout.mean).reshape(1, 3, 1, 1)) / np.array(layout.std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        feats = layout.features(layout.backbone, torch.from_numpy(x)).numpy()
    pooled, attn = simpool_reference(feats, layout.pool, layout.gamma, layout.use_beta)
    if layout.norm is not None:
        pooled = layer_norm(pooled, *layout.norm)
    out = {"embedding": pooled, "attention": attn}
    if layout.classifier is not None:
        out["logits"] = pooled @ layout.classifier[0].T + layout.classifier[1]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_layout_exports_with_parity(
    name: str, layouts: dict[str, Layout], exported: dict[str, tuple[Path, str]], photos: dict[str, Path]
) -> None:
    layout = layouts[name]
    out_dir, stdout = exported[name]
    manifest = json.loads((out_dir / "manifest.json").read_text())
    dino = name.startswith("dino")
    assert "parity" in stdout and ("dino layout" if dino else "timm layout") in stdout
    assert manifest["weights"] == "checkpoint"
    assert manifest["checkpoint_sha256"] == hashlib.sha256(layout.path.read_bytes()).hexdigest()
    assert manifest["arch"] == ("resnet50" if "resnet" in name else "vit_small_patch16_224")
    assert manifest["gamma"] == layout.gamma
    assert manifest["num_classes"] == (0 if dino else 1000)
    assert manifest["outputs"] == (
        ["embedding", "attention"] if dino else ["embedding", "attention", "logits"]
    )
    assert manifest["mean"] == pytest.approx(list(layout.mean))
    assert manifest["std"] == pytest.approx(list(layout.std))
    assert all(v <= 1e-4 for v in manifest["parity"].values())

    images = crops(photos, manifest)
    session = ort.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = manifest["outputs"]
    got = dict(zip(names, session.run(names, {"images": images}), strict=True))
    ref = float64_reference(layout, images)
    h, w = manifest["grid"]
    ref["attention"] = ref["attention"].reshape(-1, h, w)
    errors = {k: rel_err(got[k], ref[k]) for k in names}
    print(f"{name}: ONNX fp32 vs float64 reference: {errors}; export gate: {manifest['parity']}")
    assert set(ref) == set(names)
    assert all(e < 1e-4 for e in errors.values()), errors
    np.testing.assert_allclose(got["attention"].sum(axis=(1, 2)), 1.0, atol=1e-5)
    # A row does not depend on its batch-mates: the same photo among other batch-mates gives the same
    # row (same batch size, so onnxruntime picks the same kernels), and alone it agrees to fp32 noise.
    noise = np.random.default_rng(1).integers(0, 256, images.shape, dtype=np.uint8)
    for i in range(len(images)):
        mixed = noise.copy()
        mixed[(i + 1) % len(images)] = images[i]
        row = (i + 1) % len(images)
        other = session.run(names, {"images": mixed})
        alone = session.run(names, {"images": images[i : i + 1]})
        for k, m, a in zip(names, other, alone, strict=True):
            assert rel_err(m[row], got[k][i]) < 1e-5
            assert rel_err(a[0], got[k][i]) < 1e-4


def test_ema_and_student_weights_are_selectable(layouts: dict[str, Layout]) -> None:
    ckpt = load_file(layouts["supervised_resnet50"].path)
    ema = import_checkpoint(ckpt, key="state_dict_ema")
    plain = import_checkpoint(ckpt)
    assert torch.equal(ema.state_dict["pool.wq.weight"], ckpt["state_dict_ema"]["global_pool.pool.wq.weight"])
    assert torch.equal(plain.state_dict["head.weight"], ckpt["state_dict"]["fc.weight"])
    dino = load_file(layouts["dino_vit_small"].path)
    student = import_checkpoint(dino, key="student")
    assert torch.equal(
        student.state_dict["pool.wk.weight"], dino["student"]["module.backbone.simpool.wk.weight"]
    )
    assert not any(k.startswith(("head.", "backbone.head.")) for k in student.state_dict)


def test_dino_vit_without_gamma_ignores_teacher_beta(tmp_path: Path) -> None:
    """The paper's no-γ DINO ViT teacher still carries simpool.beta: β is unused without γ."""
    layout = build_dino_vit_small(tmp_path, gamma=None, name="vits_dino_simpool_no_gamma_ep100.pth")
    imported = import_checkpoint(load_file(layout.path))
    config = resolve_config(imported)
    assert config.arch == "vit_small_patch16_224" and config.gamma is None and not config.use_beta
    model = build_model(config)
    notes = load_weights(model, imported)
    assert any("β" in n for n in notes)
    assert model.pool.beta is None and model.placement == "pool_then_norm"
    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    ref = float64_reference(layout, images)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).reshape(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0 - mean) / std
    with torch.no_grad():
        emb, attn, logits = model.double()(x)
    assert logits is None
    # 1e-7, not float64 noise: the resampled pos_embed is stored as a float32 weight.
    assert rel_err(emb.numpy(), ref["embedding"]) < 1e-7
    assert rel_err(attn.reshape(2, -1).numpy(), ref["attention"]) < 1e-7


def test_dino_vit_pos_embed_is_resampled_as_in_the_paper(layouts: dict[str, Layout]) -> None:
    """The paper's DINO ViT never adds its stored pos_embed as is (see dino_vit_tokens): ours must not."""
    layout = layouts["dino_vit_small"]
    imported = import_checkpoint(load_file(layout.path))
    model = build_model(resolve_config(imported))
    notes = load_weights(model, imported)
    assert any("pos_embed" in n for n in notes)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        ref = dino_vit_tokens(layout.backbone, x)
        got = model.double().features(x)
        stored = vit_tokens(norm=False)(layout.backbone, x)
    assert rel_err(got.numpy(), ref.numpy()) < 1e-6
    assert rel_err(stored.numpy(), ref.numpy()) > 1e-3  # the resampling does matter


def test_flags_override_checkpoint_args(layouts: dict[str, Layout]) -> None:
    imported = import_checkpoint(load_file(layouts["supervised_resnet50"].path))
    assert resolve_config(imported).gamma == 2.0
    assert resolve_config(imported, gamma=None).gamma is None
    assert resolve_config(imported, gamma=3.0, num_classes=0).num_classes == 0


def small_supervised_checkpoint(path: Path, edit: Callable[[dict], None] | None = None) -> Path:
    torch.manual_seed(0)
    sd = timm.create_model("resnet18", num_classes=10).state_dict()
    sd.update(prefixed("global_pool.pool.", simpool_weights(512, 1, beta=False)))
    if edit is not None:
        edit(sd)
    torch.save({"state_dict": sd, "args": argparse.Namespace(model="resnet18", gamma=2.0)}, path)
    return path


def test_key_mismatch_lists_missing_and_unexpected(tmp_path: Path) -> None:
    def damage(sd: dict) -> None:
        del sd["layer1.0.conv1.weight"]
        sd["layer9.extra.weight"] = torch.zeros(1)

    path = small_supervised_checkpoint(tmp_path / "bad.pth", damage)
    proc = run_export(tmp_path / "out", "--checkpoint", str(path), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "missing keys (1): backbone.layer1.0.conv1.weight" in proc.stderr
    assert "unexpected keys (1): backbone.layer9.extra.weight" in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_not_a_simpool_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "official.pth"
    torch.save({"state_dict": timm.create_model("resnet18").state_dict()}, path)
    proc = run_export(tmp_path / "out", "--arch", "resnet18", "--checkpoint", str(path), check=False)
    assert proc.returncode == 2
    assert "no SimPool weights found" in proc.stderr


class Payload:
    """Unpickling this would run `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "args": Payload(marker)}, path)
    proc = run_export(tmp_path / "out", "--arch", "resnet18", "--checkpoint", str(path), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refused" in proc.stderr and "system" in proc.stderr and "allow-list" in proc.stderr
    assert not marker.exists()
    # The payload is live: an unrestricted unpickler (in a throwaway process) does run it.
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert marker.exists()


def test_numpy1_scalar_in_checkpoint_is_allowed(tmp_path: Path) -> None:
    """A file written under numpy 1.x names numpy scalars `numpy.core.multiarray.scalar` (numpy 2:
    `numpy._core...`): the allow-listed type must be accepted under both names."""
    path = tmp_path / "np1.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "metric": np.float64(74.25)}, path)
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    assert b"numpy._core.multiarray\nscalar" in entries[pkl]
    entries[pkl] = entries[pkl].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    loaded = load_file(path)
    assert float(loaded["metric"]) == 74.25 and torch.equal(loaded["state_dict"]["fc.weight"], torch.zeros(1))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_own_state_dict_round_trip(suffix: str, tmp_path: Path, photos: dict[str, Path]) -> None:
    model = build_model(ModelConfig("resnet18", num_classes=7, gamma=None), seed=5)
    path = tmp_path / f"own{suffix}"
    save_checkpoint(model, path)
    imported = import_checkpoint(load_file(path))
    assert imported.format == "simpool-serve"
    config = resolve_config(imported)
    assert config == ModelConfig("resnet18", num_classes=7, gamma=None, placement="map")
    again = build_model(config)
    load_weights(again, imported)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(model(x)[::2], again(x)[::2], strict=True):
            assert torch.equal(a, b)
    if suffix == ".safetensors":  # once through the CLI: no --arch, no --gamma needed
        proc = run_export(tmp_path / "out", "--checkpoint", str(path))
        manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert manifest["gamma"] is None and manifest["num_classes"] == 7 and "parity" in proc.stdout


def test_hub_download_without_network_fails_clearly(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cmd = [
        str(Path(sys.executable).parent / "simpool-export"), "--out", str(tmp_path / "out"),
        "--checkpoint", "hf://billpsomas/resnet50_dino_simpool_ep100/resnet50_dino_simpool_ep100.pth",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert "cannot download hf://billpsomas/resnet50_dino_simpool_ep100" in proc.stderr
    assert "Traceback" not in proc.stderr


def facebook_convnext_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ConvNeXt key names -> the original (Facebook) names that the paper's DINO ConvNeXt uses."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^stem\.", "downsample_layers.0.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.norm.", "norm.")
        out[k] = v
    return out


@pytest.mark.parametrize("kind", ["supervised", "dino"])
def test_convnext_layouts(kind: str, tmp_path: Path) -> None:
    """ConvNeXt pools, then applies its final norm; the paper's runs are convnext_small, tiny here.

    Supervised: timm names, SimPool under head.global_pool.pool.*, norm head.norm, classifier head.fc.
    DINO: the original (Facebook) key names, SimPool under simpool.*, final norm `norm`.
    """
    torch.manual_seed(50)
    # Supervised: a pooling head, as in the paper's timm (global_pool="" would make head.fc a 1x1 conv).
    pool_type = "" if kind == "dino" else "avg"
    bb = timm.create_model("convnext_tiny", num_classes=0 if kind == "dino" else 10, global_pool=pool_type)
    sd = perturbed(bb.state_dict(), 51)
    pool = simpool_weights(768, 52, beta=False)
    path = tmp_path / f"convnext_{kind}_simpool.pth"
    if kind == "dino":
        fb = facebook_convnext_keys(sd)
        assert (
            "downsample_layers.1.1.weight" in fb and "stages.3.2.pwconv2.weight" in fb and "norm.weight" in fb
        )
        backbone = prefixed("backbone.", {**fb, **prefixed("simpool.", pool)})
        teacher = prefixed("module.", {**backbone, **dino_head(768, 53)})
        args = argparse.Namespace(arch="convnext_tiny", mode="simpool", gamma=2.0, patch_size=16)
        torch.save({"teacher": teacher, "student": teacher, "args": args}, path)
    else:
        state = {**sd, **prefixed("head.global_pool.pool.", pool)}
        args = argparse.Namespace(model="convnext_tiny", gp="simpool", gamma=2.0)
        torch.save({"state_dict": state, "state_dict_ema": state, "args": args}, path)

    imported = import_checkpoint(load_file(path))
    model = build_model(resolve_config(imported))
    load_weights(model, imported)
    assert model.placement == "pool_then_norm" and model.num_classes == (0 if kind == "dino" else 10)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bb.load_state_dict(sd)
    with torch.no_grad():
        feats = bb.double().eval().forward_features(x).numpy()
        emb, attn, logits = model.double()(x)
    ref, ref_attn = simpool_reference(feats, _np(pool), 2.0)
    ref = layer_norm(ref, sd["head.norm.weight"].double().numpy(), sd["head.norm.bias"].double().numpy())
    assert rel_err(emb.numpy(), ref) < 1e-10
    assert rel_err(attn.reshape(2, -1).numpy(), ref_attn) < 1e-10
    if kind == "supervised":
        ref_logits = ref @ sd["head.fc.weight"].double().numpy().T + sd["head.fc.bias"].double().numpy()
        assert rel_err(logits.numpy(), ref_logits) < 1e-10


def test_bare_dino_backbone_state_dict(layouts: dict[str, Layout], tmp_path: Path) -> None:
    """A teacher backbone saved on its own (no `backbone.` prefix, no args) needs --arch; still DINO."""
    full = load_file(layouts["dino_vit_small"].path)
    bare = {k[len("backbone.") :]: v for k, v in full["teacher"].items() if k.startswith("backbone.")}
    torch.save(bare, tmp_path / "vits_dino_backbone.pth")
    imported = import_checkpoint(load_file(tmp_path / "vits_dino_backbone.pth"))
    assert imported.format == "dino" and imported.arch is None
    config = resolve_config(imported, arch="vit_small_patch16_224", gamma=1.25)
    assert config.placement == "pool_then_norm" and config.use_beta and config.num_classes == 0
    reference = import_checkpoint(full)
    assert set(imported.state_dict) == set(reference.state_dict)
    assert all(torch.equal(v, reference.state_dict[k]) for k, v in imported.state_dict.items())


def test_vit_checkpoint_at_another_image_size(layouts: dict[str, Layout]) -> None:
    """--image-size 160 on a 224 checkpoint: position embeddings resampled to the 10x10 grid."""
    imported = import_checkpoint(load_file(layouts["supervised_vit_small"].path))
    model = build_model(resolve_config(imported, image_size=160))
    notes = load_weights(model, imported)
    assert any("resampled pos_embed to the 10x10 grid" in n for n in notes)
    with torch.no_grad():
        emb, attn, logits = model(torch.randn(2, 3, 160, 160))
    assert emb.shape == (2, 384) and attn.shape == (2, 10, 10) and logits.shape == (2, 1000)


# -- the paper's retrieval protocol (DINO's multi_scale), against an independent float64 reference -----

RETRIEVAL_SCALES = (1.0, 2**-0.5, 0.5)  # self_supervised/utils.py multi_scale


def retrieval_photos() -> list[tuple[str, Image.Image, tuple[int, int, int, int] | None, int]]:
    """Decoded real photographs of several aspect ratios: (name, image, region box or None, size)."""
    import skimage.data as data

    coffee = Image.fromarray(data.coffee())  # 600x400, landscape 3:2
    rocket = Image.fromarray(data.rocket()).transpose(Image.Transpose.ROTATE_90)  # 427x640, portrait
    astronaut = Image.fromarray(data.astronaut())  # 512x512
    chelsea = Image.fromarray(data.chelsea())  # 451x300
    return [
        ("coffee", coffee, None, 224),
        ("rocket-portrait", rocket, None, 224),
        ("astronaut-region", astronaut, (60, 20, 430, 300), 224),
        ("chelsea", chelsea, None, 320),
    ]


def full_view(image: Image.Image, box: tuple[int, int, int, int] | None, size: int) -> np.ndarray:
    """The region first (if any), then Pillow's thumbnail: aspect kept, never enlarged."""
    img = image.crop(box) if box is not None else image.copy()
    img.thumbnail((size, size), Image.LANCZOS)
    return np.asarray(img.convert("RGB"))


def multi_scale_reference(layout: Layout, pixels: np.ndarray) -> np.ndarray:
    """float64: normalise, rescale the normalised tensor bilinearly per scale, the layout's forward
    (backbone, SimPool with per-image γ-pooling, final norm), mean over scales, L2."""
    x = pixels.astype(np.float64).transpose(2, 0, 1)[None] / 255.0
    x = (x - np.array(layout.mean).reshape(1, 3, 1, 1)) / np.array(layout.std).reshape(1, 3, 1, 1)
    x = torch.from_numpy(x)
    total = None
    for s in RETRIEVAL_SCALES:
        inp = (
            x
            if s == 1
            else torch.nn.functional.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        )
        with torch.no_grad():
            feats = layout.features(layout.backbone, inp).numpy()
        pooled, _ = simpool_reference(feats, layout.pool, layout.gamma, layout.use_beta)
        if layout.norm is not None:
            pooled = layer_norm(pooled, *layout.norm)
        total = pooled if total is None else total + pooled
    v = total[0] / len(RETRIEVAL_SCALES)
    return v / np.linalg.norm(v)


def multi_scale_onnx(session: ort.InferenceSession, pixels: np.ndarray) -> np.ndarray:
    """The same through the graph: uint8 pixels in, each scale fed to its `scale` input."""
    total = np.zeros(0)
    for s in RETRIEVAL_SCALES:
        (emb,) = session.run(["embedding"], {"images": pixels[None], "scale": np.array(s, np.float32)})
        total = emb[0].astype(np.float64) + (total if total.size else 0.0)
    v = total / len(RETRIEVAL_SCALES)
    return v / np.linalg.norm(v)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dino_resnet50", "dino_vit_small", "supervised_resnet50"])
def test_multi_scale_full_view_matches_float64_reference(
    name: str, layouts: dict[str, Layout], exported: dict[str, tuple[Path, str]]
) -> None:
    """The retrieval descriptor (full view, 3 scales inside the graph) is the paper's protocol."""
    layout = layouts[name]
    session = ort.InferenceSession(str(exported[name][0] / "model.onnx"), providers=["CPUExecutionProvider"])
    shapes = set()
    for photo, image, box, size in retrieval_photos():
        pixels = full_view(image, box, size)
        shapes.add(pixels.shape[:2])
        ref = multi_scale_reference(layout, pixels)
        got = multi_scale_onnx(session, pixels)
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        print(f"{name} {photo} {pixels.shape[:2]}: ONNX multi-scale vs float64 reference {err:.2e}")
        assert err < 1e-4, (photo, pixels.shape, err)
    assert len(shapes) == 4 and any(h > w for h, w in shapes) and any(w > h for h, w in shapes)


def test_dino_vit_in_own_layout_keeps_the_dino_rule(layouts: dict[str, Layout], tmp_path: Path) -> None:
    """A DINO ViT saved in the project's layout (here at --image-size 160) reloads with its 14x14
    pos_embed and DINO's resample, not timm's: the same answers at any size."""
    imported = import_checkpoint(load_file(layouts["dino_vit_small"].path))
    model = build_model(resolve_config(imported, image_size=160))
    load_weights(model, imported)
    save_checkpoint(model, tmp_path / "own.safetensors")
    again = import_checkpoint(load_file(tmp_path / "own.safetensors"))
    reloaded = build_model(resolve_config(again))
    load_weights(reloaded, again)
    assert reloaded.pos_rule == "dino" and tuple(reloaded.backbone.pos_embed.shape) == (1, 196, 384)
    x = torch.randn(1, 3, 100, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        ref = dino_vit_tokens(layouts["dino_vit_small"].backbone, x)
        got = reloaded.double().features(x)
    assert rel_err(got.numpy(), ref.numpy()) < 1e-6
