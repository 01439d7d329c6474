"""Reading checkpoint files without ever running code from them.

``torch.load(weights_only=True)`` unpickles only tensors, containers and primitive types; on top of
that we allow a short list of harmless classes that the paper's files contain (its training scripts
store their ``argparse.Namespace``). Anything else — in particular a pickle that names a callable
such as ``os.system`` — is refused before it is ever called. ``.safetensors`` files hold no code at all.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Plain data holders only: none of them runs code when reconstructed.
ALLOWED_GLOBALS: list[Any] = [
    argparse.Namespace,
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
    np.dtypes.Int32DType,
    np.dtypes.BoolDType,
    np._core.multiarray.scalar,
    # Files written under numpy 1.x (the paper's, 2023) name the same function by its old module.
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
]


class CheckpointError(Exception):
    """A checkpoint that cannot be used: refused, unreadable, or not matching the model."""


class CheckpointRefused(CheckpointError):
    """The file needs a type outside the allow-list: we refuse it instead of unpickling it."""


def _name(entry: Any) -> str:
    """The pickle name an allow-list entry matches: its own, or the one given beside it."""
    return entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"


def _refused_names(path: Path, exc: BaseException) -> str:
    """Names the globals the file asks for beyond the allow-list (scanned, never unpickled)."""
    allowed = {_name(g) for g in ALLOWED_GLOBALS}
    try:
        wanted = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        names = sorted(set(wanted) - allowed)
        if names:
            return ", ".join(names)
    except Exception:  # the scan is best effort; fall back to torch's own message
        pass
    lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
    return lines[0] if lines else type(exc).__name__


def load_file(path: Path) -> Any:
    """Loads a .pth/.pth.tar/.pt (restricted unpickler) or .safetensors file onto the CPU."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                tensors[key] = fh.get_tensor(key)
        return {"state_dict": tensors, "__metadata__": metadata}
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        allowed = ", ".join(sorted(_name(g) for g in ALLOWED_GLOBALS))
        raise CheckpointRefused(
            f"refused to load {path}: it needs a type that is not on the allow-list "
            f"({_refused_names(path, exc)}). Only tensors, plain containers and these types are "
            f"unpickled: {allowed}. Nothing from the file was executed."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
