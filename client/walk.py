"""Finding the images under a folder and identifying their content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from simpool_serve.spec import IMAGE_EXTENSIONS


def find_images(root: Path) -> list[str]:
    """Paths (relative to `root`, '/'-separated, sorted) of every image file below it.

    Relative paths keep an index valid when the folder is moved or mounted elsewhere.
    Symlinked folders are not followed, so a link cycle cannot make the walk endless.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
