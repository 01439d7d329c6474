"""Attention map → object box: where the model looked, as a rectangle on the original photograph.

SimPool's attention concentrates on the object, so the cells that hold most of its mass, taken as one
connected blob, outline it. Pure numpy (no scipy in the service): grids are at most a few thousand
cells, so a breadth-first search costs well under a millisecond.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from simpool_serve.service.engine.preprocess import Geometry

DEFAULT_BOX_MASS = 0.6
_EPS = 1e-9


def top_mass_mask(attention: np.ndarray, mass: float) -> np.ndarray:
    """The fewest cells, strongest first, whose attention adds up to at least `mass` of the total.

    Ties are taken in raster order, so the answer does not depend on the sort's whims. A map without
    positive mass (never produced by a softmax, but cheap to guard) selects every cell.
    """
    att = np.asarray(attention, dtype=np.float64)
    flat = np.where(att.ravel() > 0, att.ravel(), 0.0)  # NaN and negatives count as no mass
    total = flat.sum()
    if not total > 0:
        return np.ones(att.shape, dtype=bool)
    order = np.argsort(-flat, kind="stable")
    cumulative = np.cumsum(flat[order])
    count = int(np.searchsorted(cumulative, mass * total * (1 - _EPS), side="left")) + 1
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[: min(count, flat.size)]] = True
    return mask.reshape(att.shape)


@functools.lru_cache(maxsize=16)
def _neighbours(h: int, w: int) -> tuple[tuple[int, ...], ...]:
    """For each cell of an h×w grid (flat index), its 8-connected neighbours; one table per grid shape."""
    return tuple(
        tuple(
            rr * w + cc
            for rr in (r - 1, r, r + 1)
            for cc in (c - 1, c, c + 1)
            if 0 <= rr < h and 0 <= cc < w and (rr, cc) != (r, c)
        )
        for r in range(h)
        for c in range(w)
    )


def components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """The 8-connected regions of `mask` (on a coarse grid, 7×7 for a ResNet, an object's cells often
    touch only at a corner), each a list of (row, col), in raster order of their first cell."""
    h, w = mask.shape
    neighbours = _neighbours(h, w)
    # Plain lists and a neighbour table: numpy's per-element indexing would cost several times more.
    free = mask.ravel().tolist()
    regions: list[list[tuple[int, int]]] = []
    for start in np.flatnonzero(mask).tolist():
        if not free[start]:
            continue
        free[start] = False
        queue, cells = [start], []
        for i in queue:  # grows while it is read: breadth first
            cells.append(divmod(i, w))
            for j in neighbours[i]:
                if free[j]:
                    free[j] = False
                    queue.append(j)
        regions.append(cells)
    return regions


def grid_box(attention: np.ndarray, mass: float = DEFAULT_BOX_MASS) -> tuple[int, int, int, int]:
    """(first row, first col, last row, last col), inclusive, of the region the box is drawn around.

    Of the connected regions in the top `mass`, the one holding the most attention wins (then the one
    with more cells, then the first in raster order): the object, not a stray bright cell.
    """
    att = np.asarray(attention, dtype=np.float64)
    regions = components(top_mass_mask(att, mass))
    values, w = att.ravel().tolist(), att.shape[1]

    def weight(cells: list[tuple[int, int]]) -> tuple[float, int]:
        return sum(values[r * w + c] for r, c in cells), len(cells)

    best = max(regions, key=weight) if len(regions) > 1 else regions[0]  # max keeps the first of equals
    rows = [r for r, _ in best]
    cols = [c for _, c in best]
    return min(rows), min(cols), max(rows), max(cols)


def image_box(cells: tuple[int, int, int, int], grid: tuple[int, int], geo: Geometry) -> list[int]:
    """Grid cells → [x0, y0, x1, y1] in the upright original's pixels (x1, y1 exclusive, as Pillow's crop).

    The feature grid tiles the model's centre crop evenly; the crop's place on the original is `geo`.
    The box is widened to whole pixels and clipped to the photograph (a padded crop extends past it).
    """
    r0, c0, r1, c1 = cells
    h, w = grid
    left, top, right, bottom = geo.crop
    cw, ch = (right - left) / w, (bottom - top) / h
    x0, x1 = left + c0 * cw, left + (c1 + 1) * cw
    y0, y1 = top + r0 * ch, top + (r1 + 1) * ch
    x0i = min(geo.width, max(0, math.floor(x0 + 1e-6)))
    y0i = min(geo.height, max(0, math.floor(y0 + 1e-6)))
    x1i = min(geo.width, max(x0i, math.ceil(x1 - 1e-6)))
    y1i = min(geo.height, max(y0i, math.ceil(y1 - 1e-6)))
    return [x0i, y0i, x1i, y1i]


def attention_box(attention: np.ndarray, geo: Geometry, mass: float = DEFAULT_BOX_MASS) -> list[int]:
    """The box around the attention's main region, in the original photograph's pixels."""
    att = np.asarray(attention)
    return image_box(grid_box(att, mass), (att.shape[0], att.shape[1]), geo)


def boxes(
    maps: list[np.ndarray | None], geometries: list[Geometry | None], mass: float
) -> list[list[int] | None]:
    """One box per image, `None` where the image was skipped."""
    return [
        None if m is None or g is None else attention_box(m, g, mass)
        for m, g in zip(maps, geometries, strict=True)
    ]
