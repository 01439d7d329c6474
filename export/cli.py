"""`simpool-export`: checkpoint (or random init) -> verified model.onnx + manifest.json.

Exit codes: 0 written and verified; 1 the parity gate or the INT8 quality gate failed (nothing is left
behind);
2 bad arguments, or a checkpoint that is refused, unreadable or does not match the model;
3 the exporter itself failed (a bug: the traceback is printed, nothing is left behind). Scripts
can tell "this model does not verify" (1) from "fix the command" (2) from "report this" (3).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from simpool_serve.spec import DEFAULT_OPSET

# torch, timm and onnx load inside run(): a usage error is reported without waiting for them.
if TYPE_CHECKING:
    from simpool_serve.export.calibration import CalibrationSet
    from simpool_serve.export.graph import ServingGraph
    from simpool_serve.export.manifest import ManifestInputs
    from simpool_serve.models.checkpoint import ImportedCheckpoint
    from simpool_serve.models.model import ModelConfig, SimPoolModel
    from simpool_serve.spec import Manifest

EXIT_PARITY = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
# ViT's attention needs opset 14 (scaled_dot_product_attention); the top is onnx's newest opset.
MIN_OPSET = 14


def _gamma(text: str) -> float | None:
    if text.lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simpool-export",
        description="Export a SimPool model (timm backbone + SimPool head) to a verified ONNX graph.",
    )
    p.add_argument("--arch", help="timm ResNet, ConvNeXt or ViT name (default: from the checkpoint's args)")
    p.add_argument("--out", required=True, type=Path, help="output folder for model.onnx and manifest.json")
    p.add_argument(
        "--checkpoint", help="path, hf://OWNER/REPO/FILE or https URL (.pth, .pth.tar, .safetensors)"
    )
    p.add_argument(
        "--checkpoint-key",
        help="weights to take: state_dict (default) or state_dict_ema; teacher (default) or student",
    )
    p.add_argument(
        "--gamma",
        type=_gamma,
        default=argparse.SUPPRESS,  # absent: the checkpoint's args, else the paper's default
        help="SimPool γ, or 'none' (default: the checkpoint's, else 2.0 for CNNs and 1.25 for ViT)",
    )
    p.add_argument("--name", help="model name in the manifest (default: the --out folder's name)")
    p.add_argument(
        "--num-classes", type=int, help="classifier classes; 0 = no classifier (default: checkpoint)"
    )
    p.add_argument("--image-size", type=int, help="input side S in pixels (default 224)")
    p.add_argument(
        "--random-init", action="store_true", help="untrained random weights (for tests and demos)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--fp16", action="store_true", help="half-precision weights; input uint8, outputs float32")
    p.add_argument(
        "--int8", action="store_true", help="static INT8 (QDQ) for CPUs, calibrated on --calibration images"
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="images for --int8: every 5th (path order) is held out for the quality gate, the rest calibrate",
    )
    p.add_argument(
        "--calibration-count", type=int, metavar="N", help="calibrate on at most N images (default: all)"
    )
    p.add_argument(
        "--triton-repo",
        type=Path,
        help="also write a Triton model repository entry DIR/NAME/config.pbtxt + DIR/NAME/1/model.onnx",
    )
    p.add_argument(
        "--triton-max-batch-size",
        type=int,
        default=32,
        help="max_batch_size of the Triton entry (default 32)",
    )
    p.add_argument(
        "--triton-tensorrt",
        action="store_true",
        help="add the TensorRT accelerator (FP16, engine cache) to the Triton entry",
    )
    return p


def _load(args: argparse.Namespace) -> tuple[ImportedCheckpoint | None, str | None]:
    from simpool_serve.models.checkpoint import import_checkpoint
    from simpool_serve.models.remote import resolve_checkpoint
    from simpool_serve.models.safe_load import load_file
    from simpool_serve.spec import sha256_file

    if args.random_init:
        return None, None
    path = resolve_checkpoint(args.checkpoint)

    sha = sha256_file(path) if path.is_file() else None
    imported = import_checkpoint(load_file(path), key=args.checkpoint_key)
    print(f"checkpoint: {path} ({imported.format} layout, sha256 {sha})")
    return imported, sha


@dataclass(frozen=True)
class _Built:
    """The model to export and where its weights came from."""

    model: SimPoolModel
    config: ModelConfig
    imported: ImportedCheckpoint | None
    checkpoint_sha256: str | None


def _build(args: argparse.Namespace) -> _Built:
    from simpool_serve.models.checkpoint import UNSET, load_weights, resolve_config
    from simpool_serve.models.model import build_model

    imported, ckpt_sha = _load(args)
    gamma = args.gamma if hasattr(args, "gamma") else UNSET
    config = resolve_config(imported, args.arch, gamma, args.num_classes, args.image_size)
    model = build_model(config, seed=args.seed if args.random_init else None)
    if imported is not None:
        for note in load_weights(model, imported):
            print(f"note: {note}")
    print(
        f"model: {config.arch} ({model.family}, placement {model.placement}), γ={config.gamma}, "
        f"β={'yes' if config.use_beta else 'no'}, classes={config.num_classes}, dim={model.embedding_dim}"
    )
    return _Built(model, config, imported, ckpt_sha)


def _out_dir(out: Path) -> tuple[Path, Path]:
    """Creates --out and removes a manifest that would describe another graph; (onnx, manifest) paths."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    manifest_path = out / "manifest.json"
    manifest_path.unlink(missing_ok=True)  # never leave a manifest that describes another graph
    return out / "model.onnx", manifest_path


def _export_and_verify(
    graph: ServingGraph, reference: ServingGraph, path: Path, image_size: int, opset: int
) -> dict[str, float]:
    """Writes the graph and runs the parity gate; a graph that was never verified is not left behind."""
    import onnx

    from simpool_serve.export.graph import export_onnx
    from simpool_serve.export.parity import check_parity

    try:
        export_onnx(graph, path, image_size, opset)
        onnx.checker.check_model(str(path), full_check=True)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {opset})")
        return check_parity(path, reference, image_size)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _parity_ok(errors: dict[str, float], fp16: bool, path: Path) -> bool:
    from simpool_serve.export.parity import FP16_TOLERANCE, FP32_TOLERANCE

    tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    report = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
    print(
        "parity (onnxruntime CPU vs PyTorch fp32; S×S at batch 1 and 3, other sizes and scales), "
        f"worst relative error: {report}"
    )
    if all(v <= tolerance for v in errors.values()):
        return True
    path.unlink(missing_ok=True)
    print(f"error: parity above {tolerance:g}: the graph was removed", file=sys.stderr)
    return False


def _manifest_inputs(
    args: argparse.Namespace, built: _Built, grid: tuple[int, int], outputs: list[str]
) -> ManifestInputs:
    from simpool_serve.export.manifest import ManifestInputs

    config, model, imported = built.config, built.model, built.imported
    return ManifestInputs(
        name=args.name or args.out.resolve().name,
        arch=config.arch,
        family=model.family,
        placement=model.placement,
        embedding_dim=model.embedding_dim,
        num_classes=config.num_classes,
        grid=grid,
        gamma=config.gamma,
        use_beta=config.use_beta,
        weights="random" if imported is None else "checkpoint",
        checkpoint_sha256=built.checkpoint_sha256,
        checkpoint_format=imported.format if imported else None,
        seed=args.seed if imported is None else None,
        opset=args.opset,
        precision="fp16" if args.fp16 else "fp32",
        outputs=outputs,
    )


def _write_triton(args: argparse.Namespace, name: str) -> None:
    from simpool_serve.export.triton_repo import write_triton_entry

    entry = write_triton_entry(
        args.triton_repo,
        name,
        args.out,
        max_batch_size=args.triton_max_batch_size,
        tensorrt=args.triton_tensorrt,
    )
    print(f"wrote Triton model {entry}/config.pbtxt and {entry}/1/model.onnx")


def run(args: argparse.Namespace, split: CalibrationSet | None = None) -> int:
    import torch

    from simpool_serve.export.graph import ServingGraph
    from simpool_serve.export.manifest import build_manifest, write_manifest
    from simpool_serve.export.preprocess import preprocessing_for

    t0 = time.perf_counter()
    built = _build(args)
    model, config = built.model, built.config
    dino = built.imported is not None and built.imported.format == "dino"
    pre = preprocessing_for(config.arch, config.image_size, dino=dino)
    reference = ServingGraph(model, pre.mean, pre.std).eval()
    with torch.no_grad():
        _, attention, _ = model(torch.zeros(1, 3, config.image_size, config.image_size))
    grid = (int(attention.shape[1]), int(attention.shape[2]))
    graph = reference
    if args.fp16:
        graph = ServingGraph(copy.deepcopy(model).half(), pre.mean, pre.std).eval()

    onnx_path, manifest_path = _out_dir(args.out)
    # With --int8 the verified fp32 graph is an intermediate: the reference of the quality gate.
    fp32_path = args.out / ".model.fp32.onnx" if args.int8 else onnx_path
    errors = _export_and_verify(graph, reference, fp32_path, config.image_size, args.opset)
    if not _parity_ok(errors, args.fp16, fp32_path):
        return EXIT_PARITY

    inputs = _manifest_inputs(args, built, grid, graph.output_names)
    if split is not None:
        fp32_manifest = build_manifest(inputs, pre, fp32_path, errors)
        try:
            int8_inputs = _int8(fp32_path, onnx_path, split, fp32_manifest, inputs)
        finally:
            fp32_path.unlink(missing_ok=True)
        if int8_inputs is None:
            return EXIT_PARITY
        inputs = int8_inputs
    write_manifest(build_manifest(inputs, pre, onnx_path, errors), manifest_path)
    print(f"wrote {manifest_path} in {time.perf_counter() - t0:.1f}s")
    if args.triton_repo is not None:
        _write_triton(args, inputs.name)
    if built.imported is None:
        print("warning: random weights — this model is untrained and its answers are meaningless")
    return 0


def _int8(
    fp32_path: Path, onnx_path: Path, split: CalibrationSet, fp32_manifest: Manifest, inputs: ManifestInputs
) -> ManifestInputs | None:
    """Quantizes and gates; the INT8 graph's manifest inputs, or None (graph removed) below the gate."""
    import dataclasses

    from simpool_serve.export.quality import MIN_COSINE
    from simpool_serve.export.quantize import quantization_record, quantize_and_compare

    print(f"int8: calibrating on {len(split.calibration)} images, {len(split.held_out)} held out")
    try:
        agreement = quantize_and_compare(fp32_path, onnx_path, split, fp32_manifest)
    except BaseException:
        onnx_path.unlink(missing_ok=True)
        raise
    top1 = "" if agreement.top1_agreement is None else f", top-1 agreement {agreement.top1_agreement:.3f}"
    print(
        f"int8 vs fp32 on {agreement.images} held-out images: lowest embedding cosine "
        f"{agreement.min_cosine:.5f} (mean {agreement.mean_cosine:.5f}){top1}, "
        f"largest attention difference {agreement.attention_max_abs:.2e}"
    )
    if agreement.min_cosine < MIN_COSINE:
        onnx_path.unlink(missing_ok=True)
        print(f"error: lowest cosine under {MIN_COSINE}: the INT8 graph was removed", file=sys.stderr)
        return None
    record = quantization_record(split, agreement)
    return dataclasses.replace(inputs, precision="int8", quantization=record)


def _checkpoint_problem(source: str | None) -> str | None:
    """Why a local --checkpoint cannot be read (None when it can, or when it is a URL to download)."""
    if source is None or source.startswith(("hf://", "https://", "http://")):
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return f"checkpoint {path} does not exist"
    if not path.is_file():
        return f"checkpoint {path} is not a file"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.random_init == bool(args.checkpoint):
        parser.error("pass exactly one of --checkpoint or --random-init")
    if args.int8 != (args.calibration is not None):
        parser.error("--int8 and --calibration DIR go together")
    if args.int8 and args.fp16:
        parser.error("--int8 and --fp16 exclude each other")
    if args.calibration_count is not None and (not args.int8 or args.calibration_count < 1):
        parser.error("--calibration-count N needs --int8 and N >= 1")
    if args.image_size is not None and args.image_size < 32:
        parser.error("--image-size must be at least 32")
    if args.triton_max_batch_size < 1:
        parser.error("--triton-max-batch-size must be at least 1")
    problem = _checkpoint_problem(args.checkpoint)
    if problem is not None:  # found before torch loads: a typo costs milliseconds, not seconds
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    import onnx

    if not MIN_OPSET <= args.opset <= onnx.defs.onnx_opset_version():
        parser.error(f"--opset must be between {MIN_OPSET} and {onnx.defs.onnx_opset_version()}")
    from simpool_serve.models.safe_load import CheckpointError

    try:
        # A calibration folder that cannot calibrate is a usage error, found before torch even loads.
        split = None
        if args.int8:
            from simpool_serve.export.calibration import split_folder

            split = split_folder(args.calibration, args.calibration_count)
        return run(args, split)
    except (CheckpointError, ValueError) as exc:  # refused, unreadable, mismatched, unsupported arch
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        traceback.print_exc()
        print(
            "error: the exporter failed unexpectedly (the traceback is above; "
            "no unverified graph was left in --out); please report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
