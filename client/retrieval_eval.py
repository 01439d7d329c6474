"""The revisited Oxford/Paris retrieval benchmark: its files, its mAP, and the line that reports it.

The layout is the one the benchmark's authors distribute: `ROOT/DATASET/gnd_DATASET.pkl` (a dict with
`imlist` and `qimlist`, image names without extension, and `gnd`, one dict per query with `easy`,
`hard` and `junk` database indices and its box `bbx` = [x0, y0, x1, y1]) and the photographs in
`ROOT/DATASET/jpg/NAME.jpg`. mAP is computed as the benchmark's `compute_map` does (the same function
the paper's code and DINO's `eval_image_retrieval.py` use): junk images are removed from the ranking
before the trapezoidal average precision, and a query without positives is left out of the mean.
The three levels choose what counts as positive and what as junk (see `LEVELS`).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATASETS = ("roxford5k", "rparis6k")
# level → (the ground-truth lists that are positives, those that are junk), as the benchmark defines them.
LEVELS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
# What a ground-truth pickle may hold: plain containers, and numpy arrays and scalars.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class DatasetError(ValueError):
    """A data folder that is not in the revisited Oxford/Paris layout; the message names what is wrong."""


class _SafeUnpickler(pickle.Unpickler):
    """Reads lists, dicts, strings, numbers and numpy arrays; refuses anything that could run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a ground-truth file")


@dataclass(frozen=True)
class RevisitedDataset:
    """One benchmark: database images, query images and, per query, its ground truth and box."""

    name: str
    folder: Path
    images: list[str]
    queries: list[str]
    gnd: list[dict[str, np.ndarray]]  # per query: easy, hard, junk (int arrays), bbx (4 floats)

    def image_path(self, i: int) -> Path:
        return self.folder / "jpg" / f"{self.images[i]}.jpg"

    def query_path(self, i: int) -> Path:
        return self.folder / "jpg" / f"{self.queries[i]}.jpg"

    @property
    def image_paths(self) -> list[Path]:
        return [self.image_path(i) for i in range(len(self.images))]

    @property
    def query_paths(self) -> list[Path]:
        return [self.query_path(i) for i in range(len(self.queries))]

    def query_box(self, i: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """Query i's box, kept inside its upright image of `size` (width, height): cropping past the
        border would add black pixels, which the service refuses."""
        x0, y0, x1, y1 = (float(v) for v in self.gnd[i]["bbx"])
        w, h = size
        return max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)


def _indices(value: Any, key: str, query: int, n: int) -> np.ndarray:
    arr = np.asarray(value if value is not None else [], dtype=np.float64).ravel()
    if arr.size and (not np.all(arr == np.round(arr)) or arr.min() < 0 or arr.max() >= n):
        raise DatasetError(f"gnd[{query}]['{key}'] holds indices outside the {n} database images")
    return arr.astype(np.int64)


def load_dataset(root: Path | str, dataset: str, check_files: bool = True) -> RevisitedDataset:
    """Reads `ROOT/DATASET/gnd_DATASET.pkl`; with `check_files`, every image must exist in `jpg/`."""
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    folder = Path(root) / dataset
    gnd_path = folder / f"gnd_{dataset}.pkl"
    try:
        cfg = _SafeUnpickler(io.BytesIO(gnd_path.read_bytes())).load()
    except FileNotFoundError as exc:
        raise DatasetError(f"{gnd_path} is missing (download the benchmark's ground truth there)") from exc
    except Exception as exc:
        raise DatasetError(f"{gnd_path} is not a readable ground-truth pickle ({exc})") from exc
    if not isinstance(cfg, Mapping) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        raise DatasetError(f"{gnd_path} lacks the keys imlist, qimlist and gnd")
    images, queries = [str(v) for v in cfg["imlist"]], [str(v) for v in cfg["qimlist"]]
    if len(cfg["gnd"]) != len(queries):
        raise DatasetError(f"{gnd_path}: {len(cfg['gnd'])} ground-truth entries for {len(queries)} queries")
    gnd: list[dict[str, np.ndarray]] = []
    for q, entry in enumerate(cfg["gnd"]):
        if not isinstance(entry, Mapping):
            raise DatasetError(f"{gnd_path}: gnd[{q}] is not a dict")
        item = {key: _indices(entry.get(key), key, q, len(images)) for key in ("easy", "hard", "junk")}
        if "bbx" in entry:
            bbx = np.asarray(entry["bbx"], dtype=np.float64).ravel()
            if bbx.shape != (4,) or not np.isfinite(bbx).all():
                raise DatasetError(f"{gnd_path}: gnd[{q}]['bbx'] is not four numbers")
            item["bbx"] = bbx
        gnd.append(item)
    data = RevisitedDataset(dataset, folder, images, queries, gnd)
    if check_files:
        missing = [p for p in (*data.image_paths, *data.query_paths) if not p.is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise DatasetError(f"{len(missing)} images are missing under {folder / 'jpg'} (e.g. {shown})")
    return data


def level_gnd(gnd: Sequence[Mapping[str, np.ndarray]], level: str) -> list[dict[str, np.ndarray]]:
    """Per query, the positives (`ok`) and junk of a protocol level: easy, medium or hard."""
    positives, junk = LEVELS[level]

    def join(keys: tuple[str, ...], entry: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(entry.get(k, []), dtype=np.int64) for k in keys])

    return [{"ok": join(positives, g), "junk": join(junk, g)} for g in gnd]


def compute_ap(positions: np.ndarray, positives: int) -> float:
    """Average precision from the 0-based ranks of the retrieved positives (junk already removed), as the
    area under the precision-recall curve with trapezoids; `positives` counts every positive."""
    ap = 0.0
    step = 1.0 / positives
    for j, rank in enumerate(positions.tolist()):
        before = 1.0 if rank == 0 else j / rank
        after = (j + 1) / (rank + 1)
        ap += (before + after) * step / 2.0
    return ap


def compute_map(ranks: np.ndarray, gnd: Sequence[Mapping[str, np.ndarray]]) -> tuple[float, np.ndarray]:
    """(mAP, AP per query; NaN for a query without positives) for `ranks` [database, queries] of
    database indices, best first, and per query its `ok` and `junk` indices."""
    n_queries = len(gnd)
    aps = np.full(n_queries, np.nan)
    for q in range(n_queries):
        ok = np.asarray(gnd[q]["ok"], dtype=np.int64)
        if ok.size == 0:
            continue
        junk = np.asarray(gnd[q].get("junk", []), dtype=np.int64)
        column = ranks[:, q]
        pos = np.flatnonzero(np.isin(column, ok))
        junk_pos = np.flatnonzero(np.isin(column, junk))
        # Each positive moves up by the number of junk images ranked above it.
        pos = pos - np.searchsorted(junk_pos, pos)
        aps[q] = compute_ap(pos, ok.size)
    valid = aps[~np.isnan(aps)]
    return (float(valid.mean()) if valid.size else float("nan")), aps


def rank(database: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """[database, queries] indices by decreasing inner product (cosine for unit rows), ties in index order."""
    similarity = np.asarray(database, dtype=np.float64) @ np.asarray(queries, dtype=np.float64).T
    return np.argsort(-similarity, axis=0, kind="stable")


def evaluate(ranks: np.ndarray, gnd: Sequence[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """mAP (a fraction) at the three levels."""
    return {level: compute_map(ranks, level_gnd(gnd, level))[0] for level in LEVELS}


def map_line(maps: Mapping[str, float]) -> str:
    """The final report line: `mAP easy=E medium=M hard=H`, percent with two decimals."""
    return "mAP " + " ".join(f"{level}={100.0 * maps[level]:.2f}" for level in LEVELS)
