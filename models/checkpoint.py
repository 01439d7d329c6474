"""Importing the paper's checkpoints (and our own) into a SimPoolModel, with strict key matching.

Layouts, told apart by their keys (no flag needed):

- ``timm`` — the paper's supervised runs (its copy of timm's train script): ``state_dict`` (or
  ``state_dict_ema``), SimPool under ``global_pool.pool.*`` (ResNet), ``gp.pool.*`` (ViT) or
  ``head.global_pool.pool.*`` (ConvNeXt), classifier ``fc.*`` / ``head.*`` / ``head.fc.*``, training
  arguments in ``args`` (``args.model``, ``args.gamma``).
- ``dino`` — the paper's self-supervised runs: ``teacher`` (default) or ``student``, backbone keys under
  ``backbone.`` or ``module.backbone.``, SimPool under ``simpool.*``; the DINO projection head is
  dropped; ``args.arch``, ``args.patch_size``, ``args.gamma``.
- ``simpool-serve`` — our own state dict (``backbone.*``, ``pool.*``, ``head.*``) with its config,
  as a ``.pth`` or ``.safetensors`` file (see :func:`save_checkpoint`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from simpool_serve.models.model import DEFAULT_GAMMA, ModelConfig, Placement, SimPoolModel, family_of
from simpool_serve.models.safe_load import CheckpointError

SUPERVISED_POOL_PREFIXES = ("head.global_pool.pool.", "global_pool.pool.", "gp.pool.")
CLASSIFIER_KEYS = {"fc.": "head.", "head.fc.": "head.", "head.": "head."}
DINO_VIT_NAMES = {"vit_tiny": "vit_tiny", "vit_small": "vit_small", "vit_base": "vit_base"}


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class ImportedCheckpoint:
    """A checkpoint's weights in our layout plus what it says about the model that produced them.

    Built complete by one converter per layout and never changed afterwards."""

    state_dict: dict[str, torch.Tensor]
    format: str  # "timm", "dino" or "simpool-serve"
    arch: str | None = None
    gamma: Any = UNSET  # float | None when the checkpoint says; UNSET when it does not
    placement: Placement | None = None
    num_classes: int | None = None
    image_size: int | None = None
    notes: tuple[str, ...] = ()


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


def prefixed_keys(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def _tensors_only(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{where} is not a state dict of tensors")
    return dict(obj)


def _dino_arch(name: str, patch_size: int | None) -> str:
    name = name.replace("deit", "vit")
    if name in DINO_VIT_NAMES:
        return f"{name}_patch{patch_size or 16}_224"
    return name


def _args_of(ckpt: dict[str, Any]) -> dict[str, Any]:
    args = ckpt.get("args")
    if args is None:
        return {}
    return dict(vars(args)) if hasattr(args, "__dict__") else dict(args) if isinstance(args, dict) else {}


def _map_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        pool = next((p for p in SUPERVISED_POOL_PREFIXES if key.startswith(p)), None)
        if pool is not None:
            out["pool." + key[len(pool) :]] = value
        elif key in ("fc.weight", "fc.bias", "head.fc.weight", "head.fc.bias", "head.weight", "head.bias"):
            out["head." + key.rsplit(".", 1)[1]] = value
        else:
            out["backbone." + key] = value
    return out


def _map_dino(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    sd = _strip(sd, "module.")
    backbone = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    dropped = len(sd) - len(backbone)  # the DINO projection head (head.mlp.*, head.last_layer.*)
    out: dict[str, torch.Tensor] = {}
    for key, value in backbone.items():
        if key.startswith("simpool."):
            out["pool." + key[len("simpool.") :]] = value
        else:
            out["backbone." + key] = value
    return out, dropped


def _dino_teacher_student(ckpt: dict[str, Any], args: dict[str, Any], key: str | None) -> ImportedCheckpoint:
    """The paper's DINO training checkpoint: ``teacher`` (default) or ``student``."""
    which = key or "teacher"
    if which not in ckpt:
        raise CheckpointError(f"DINO checkpoint has no {which!r} (it has {sorted(ckpt)})")
    sd, dropped = _map_dino(_tensors_only(ckpt[which], which))
    arch = _dino_arch(str(args["arch"]), args.get("patch_size")) if "arch" in args else None
    note = f"DINO {which}: ignored {dropped} keys outside the backbone (projection head)"
    return ImportedCheckpoint(
        sd, "dino", arch=arch, gamma=args.get("gamma", UNSET), num_classes=0, notes=(note,)
    )


def _own_config(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The config our own files carry: beside the weights (.pth) or in the metadata (.safetensors)."""
    if ckpt.get("simpool_config") is not None:
        return dict(ckpt["simpool_config"])
    meta = ckpt.get("__metadata__") or {}
    return json.loads(meta["simpool_config"]) if "simpool_config" in meta else None


def _weights_of(ckpt: dict[str, Any], key: str | None) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: the asked key, else ``state_dict``, ``model`` or the top level."""
    if key is not None:
        if key not in ckpt:
            raise CheckpointError(f"checkpoint has no {key!r} (it has {sorted(ckpt)})")
        raw = _tensors_only(ckpt[key], key)
    elif "state_dict" in ckpt:
        raw = _tensors_only(ckpt["state_dict"], "state_dict")
    elif "model" in ckpt and isinstance(ckpt["model"], dict):
        raw = _tensors_only(ckpt["model"], "model")
    else:
        raw = _tensors_only(ckpt, "the checkpoint")
    return _strip(raw, "module.")


def _is_own(raw: dict[str, torch.Tensor], config: dict[str, Any] | None) -> bool:
    return config is not None or (
        any(k.startswith("pool.") for k in raw) and any(k.startswith("backbone.") for k in raw)
    )


def _own_state_dict(raw: dict[str, torch.Tensor], config: dict[str, Any] | None) -> ImportedCheckpoint:
    """The project's own layout: already our key names, its config beside it."""
    cfg = config or {}
    return ImportedCheckpoint(
        raw,
        "simpool-serve",
        arch=cfg.get("arch"),
        gamma=cfg.get("gamma", UNSET),
        placement=cfg.get("placement"),
        num_classes=cfg.get("num_classes"),
        image_size=cfg.get("image_size"),
    )


def _is_bare_dino(raw: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("simpool.", "backbone.simpool.")) for k in raw)


def _bare_dino_backbone(raw: dict[str, torch.Tensor], args: dict[str, Any]) -> ImportedCheckpoint:
    """A DINO backbone saved on its own (with or without its ``backbone.`` prefix)."""
    bare = raw if any(k.startswith("backbone.") for k in raw) else prefixed_keys("backbone.", raw)
    sd, dropped = _map_dino(bare)
    notes = (f"ignored {dropped} keys outside the backbone (DINO projection head)",) if dropped else ()
    return ImportedCheckpoint(sd, "dino", gamma=args.get("gamma", UNSET), num_classes=0, notes=notes)


def _timm_training(
    ckpt: dict[str, Any], raw: dict[str, torch.Tensor], args: dict[str, Any], key: str | None
) -> ImportedCheckpoint:
    """The paper's supervised runs (timm's train script): SimPool under the pooling prefixes."""
    if not any(k.startswith(SUPERVISED_POOL_PREFIXES) for k in raw):
        raise CheckpointError(
            "no SimPool weights found: expected keys under global_pool.pool.*, gp.pool.*, "
            "head.global_pool.pool.* (supervised), simpool.* (DINO) or pool.* (simpool-serve)"
        )
    sd = _map_timm(raw)
    # timm's saver stores `arch` as args.model, or as the model's class name when it has no args.
    top = ckpt.get("arch")
    arch = args.get("model") or (top if isinstance(top, str) and timm.models.is_model(top) else None)
    classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    notes = ("using the EMA weights (state_dict_ema)",) if key == "state_dict_ema" else ()
    return ImportedCheckpoint(
        sd, "timm", arch=arch, gamma=args.get("gamma", UNSET), num_classes=classes, notes=notes
    )


def import_checkpoint(ckpt: Any, key: str | None = None) -> ImportedCheckpoint:
    """Recognises the layout of a loaded checkpoint and hands it to that layout's converter."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"a checkpoint must hold a dict, not {type(ckpt).__name__}")
    args = _args_of(ckpt)
    if "teacher" in ckpt or "student" in ckpt:
        return _dino_teacher_student(ckpt, args, key)
    config = _own_config(ckpt)
    raw = _weights_of(ckpt, key)
    if _is_own(raw, config):
        return _own_state_dict(raw, config)
    if _is_bare_dino(raw):
        return _bare_dino_backbone(raw, args)
    return _timm_training(ckpt, raw, args, key)


def load_weights(model: SimPoolModel, imported: ImportedCheckpoint) -> list[str]:
    """Loads the weights strictly; returns notes on what was adapted. Raises CheckpointError on mismatch."""
    sd = dict(imported.state_dict)
    notes = list(imported.notes)
    if model.pool.beta is None and "pool.beta" in sd:
        # β is used only with γ. The paper's DINO ViT teacher is built with its default γ and β even
        # for runs trained without γ, so its files carry simpool.beta regardless.
        del sd["pool.beta"]
        notes.append(
            f"ignored the checkpoint's β: it is used only with γ, and this model has γ={model.pool.gamma}"
        )
    if model.head is None:
        dropped = [k for k in sd if k.startswith("head.")]
        for k in dropped:
            del sd[k]
        if dropped:
            notes.append("dropped the checkpoint's classifier (--num-classes 0)")
    if model.family == "convnext" and any(k.startswith("backbone.downsample_layers.") for k in sd):
        sd = _convert_fb_convnext(model, sd)
    if model.pos_rule == "dino":  # the paper's DINO ViT, imported or saved in our own layout
        sd = _dino_pos_embed(model, sd, notes)
    elif model.family == "vit":
        sd = _resample_pos_embed(model, sd, notes)

    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint ({imported.format} layout) does not match {model.config.arch}:\n"
            f"  missing keys ({len(missing)}): {_preview(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_preview(unexpected)}"
        )
    wrong = [
        f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if sd[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(f"checkpoint shapes do not match {model.config.arch}: {_preview(wrong)}")
    model.load_state_dict(sd, strict=True)
    return notes


def _preview(keys: list[str], limit: int = 12) -> str:
    if not keys:
        return "none"
    more = f", … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _convert_fb_convnext(model: SimPoolModel, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DINO ConvNeXt uses Facebook's original key names; timm converts them to its own."""
    from timm.models.convnext import checkpoint_filter_fn

    backbone = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    converted = checkpoint_filter_fn(backbone, model.backbone)
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    return {**{"backbone." + k: v for k, v in converted.items()}, **rest}


def _resample_pos_embed(
    model: SimPoolModel, sd: dict[str, torch.Tensor], notes: list[str]
) -> dict[str, torch.Tensor]:
    key = "backbone.pos_embed"
    target = model.backbone.pos_embed
    if key not in sd or sd[key].shape == target.shape:
        return sd
    from timm.layers import resample_abs_pos_embed

    grid = list(model.backbone.patch_embed.grid_size)
    sd = dict(sd)
    sd[key] = resample_abs_pos_embed(sd[key], grid, num_prefix_tokens=0)
    notes.append(f"resampled pos_embed to the {grid[0]}x{grid[1]} grid")
    return sd


def _dino_pos_embed(
    model: SimPoolModel, sd: dict[str, torch.Tensor], notes: list[str]
) -> dict[str, torch.Tensor]:
    """The paper's DINO ViT (SimPool mode, no [CLS]) resamples its positional embedding at every
    forward pass, even at its training size: its ``interpolate_pos_encoding`` counts the patches as
    ``x.shape[1] - 1`` (written for a [CLS] token it no longer has), so the count never matches and
    it always runs ``F.interpolate(..., scale_factor=(g + 0.1) / sqrt(N), mode="bicubic")``. The
    model does the same in its forward (``SimPoolModel.pos_rule``), for any token grid, so the
    checkpoint's square grid is kept as it is: the model's parameter takes its shape.
    """
    key = "backbone.pos_embed"
    if key not in sd:
        return sd
    n = int(sd[key].shape[1])
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f"DINO pos_embed has {n} tokens, not a square grid (a [CLS] entry?)")
    current = model.backbone.pos_embed
    if current.shape != sd[key].shape:
        model.backbone.pos_embed = torch.nn.Parameter(torch.zeros_like(sd[key]))
    notes.append(
        f"pos_embed kept on its {side}x{side} grid: resampled in every forward, as the paper's DINO ViT does"
    )
    return sd


def save_checkpoint(model: SimPoolModel, path: Path) -> None:
    """Writes the project's own layout: .safetensors (config in its metadata) or .pth."""
    config = {**model.config.to_dict(), "placement": model.placement}
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={"simpool_config": json.dumps(config)})
    else:
        torch.save({"state_dict": sd, "simpool_config": config}, str(path))


def _placement(ck: ImportedCheckpoint | None, family: str) -> Placement | None:
    """DINO ViTs pool the raw tokens and normalise after; everything else keeps its family's default."""
    if ck is None:
        return None
    if ck.placement is not None:
        return ck.placement
    return "pool_then_norm" if ck.format == "dino" and family == "vit" else None


def resolve_config(
    imported: ImportedCheckpoint | None,
    arch: str | None = None,
    gamma: Any = UNSET,
    num_classes: int | None = None,
    image_size: int | None = None,
) -> ModelConfig:
    """Merges what a checkpoint says with the command line's flags: flags win, then the checkpoint,
    then the paper's defaults (γ 2.0 for CNNs, 1.25 for ViT; 1000 classes for an untrained model)."""
    ck = imported
    arch = arch or (ck.arch if ck else None)
    if not arch:
        raise CheckpointError("the checkpoint does not name its architecture: pass --arch")
    family = family_of(arch)
    if gamma is UNSET:
        gamma = ck.gamma if ck is not None and ck.gamma is not UNSET else DEFAULT_GAMMA[family]
    if num_classes is None:
        num_classes = ck.num_classes if ck is not None and ck.num_classes is not None else (0 if ck else 1000)
    use_beta = gamma is not None and ck is not None and "pool.beta" in ck.state_dict
    return ModelConfig(
        arch=arch,
        num_classes=int(num_classes),
        gamma=None if gamma is None else float(gamma),
        use_beta=use_beta,
        placement=_placement(ck, family),
        image_size=int(image_size or (ck.image_size if ck and ck.image_size else 224)),
    )
