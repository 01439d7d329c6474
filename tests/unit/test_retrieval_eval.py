"""The revisited Oxford/Paris evaluation: its layout read back, and mAP against values worked by hand."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import skimage.data as data
from PIL import Image, ImageEnhance

from simpool_serve.client import retrieval_eval as ev
from simpool_serve.service.engine.views import full_view


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def framed(img: Image.Image, pad: int = 60) -> Image.Image:
    """A query photo: the landmark with a white border, which its box cuts away."""
    canvas = Image.new("RGB", (img.width + 2 * pad, img.height + 2 * pad), (255, 255, 255))
    canvas.paste(img, (pad, pad))
    return canvas


# Database: 0-7; queries: the astronaut and the coffee cup, each framed. Ground truth in the benchmark's
# own form: plain lists of indices and a float box, as the distributed pickles hold them.
GND = [
    {"easy": [0, 4], "hard": [3], "junk": [2], "bbx": [60.0, 60.0, 572.0, 572.0]},
    {"easy": [1, 6], "hard": [7], "junk": [], "bbx": [60.4, 59.6, 660.0, 460.0]},
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small data set in the revisited layout, built from real photographs."""
    root = tmp_path_factory.mktemp("revisited")
    folder = root / "roxford5k"
    (folder / "jpg").mkdir(parents=True)
    astronaut, coffee = photo("astronaut"), photo("coffee")
    database = {
        "ast_small": astronaut.resize((400, 400)),
        "coffee": coffee,
        "ast_bright": ImageEnhance.Brightness(astronaut).enhance(1.3),
        "chelsea": photo("chelsea"),
        "ast_crop": astronaut.crop((40, 40, 472, 472)),
        "rocket": photo("rocket"),
        "coffee_small": coffee.resize((300, 200)),
        "ihc": photo("immunohistochemistry"),
    }
    queries = {"q_ast": framed(astronaut), "q_coffee": framed(coffee)}
    for name, img in {**database, **queries}.items():
        img.save(folder / "jpg" / f"{name}.jpg", quality=90)
    cfg = {"imlist": list(database), "qimlist": list(queries), "gnd": GND}
    (folder / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(cfg))
    return root


def descriptor(path: Path, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """A tiny stand-in for a model: the full view shrunk to 8×8, centred, unit length."""
    view = full_view(path.read_bytes(), 64, 10**9, region=box).pixels
    x = np.asarray(Image.fromarray(view).resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    x -= x.mean()
    return x / np.linalg.norm(x)


def test_compute_map_by_hand() -> None:
    # 6 database images, 2 queries; columns are each query's ranking, best first.
    ranks = np.array([[1, 5], [0, 2], [2, 0], [4, 1], [3, 3], [5, 4]])
    gnd = [{"easy": [0, 3], "hard": [4], "junk": [1]}, {"easy": [2], "hard": [], "junk": []}]
    # Query 0, easy: positives 0, 3; junk 1, 4. Ranked 1(j) 0 2 4(j) 3 → positives at 0 and 2 once junk
    # is removed: AP = (1 + 1)/2·½ + (½ + ⅔)/2·½ = 19/24.
    # medium: positives 0, 3, 4; junk 1 → at 0, 2, 3: (2/2 + (1/2 + 2/3)/2 + (2/3 + 3/4)/2) / 3 = 55/72.
    # hard: positive 4; junk 1, 0, 3 → at 1: (0 + 1/2)/2 = 1/4.
    # Query 1: positive 2 at 1 (easy and medium): (0 + 1/2)/2 = 1/4; no hard positive: left out.
    maps = ev.evaluate(ranks, [{k: np.array(v) for k, v in g.items()} for g in gnd])
    assert maps["easy"] == pytest.approx((19 / 24 + 1 / 4) / 2)
    assert maps["medium"] == pytest.approx((55 / 72 + 1 / 4) / 2)
    assert maps["hard"] == pytest.approx(1 / 4)
    assert ev.map_line(maps) == "mAP easy=52.08 medium=50.69 hard=25.00"
    _, aps = ev.compute_map(ranks, ev.level_gnd(gnd, "hard"))
    assert aps[0] == pytest.approx(0.25) and np.isnan(aps[1])


def test_levels_are_the_benchmarks() -> None:
    g = [{"easy": np.array([1]), "hard": np.array([2]), "junk": np.array([3])}]
    as_sets = {
        level: {key: set(v.tolist()) for key, v in ev.level_gnd(g, level)[0].items()} for level in ev.LEVELS
    }
    assert as_sets == {
        "easy": {"ok": {1}, "junk": {3, 2}},
        "medium": {"ok": {1, 2}, "junk": {3}},
        "hard": {"ok": {2}, "junk": {3, 1}},
    }


def test_rank_orders_by_similarity_with_stable_ties() -> None:
    database = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    assert ev.rank(database, np.array([[1.0, 0.0]]))[:, 0].tolist() == [0, 2, 3, 1]


@pytest.mark.parametrize("query_box", ["none", "crop"])
def test_small_benchmark_end_to_end(root: Path, query_box: str) -> None:
    ds = ev.load_dataset(root, "roxford5k")
    assert ds.images[:2] == ["ast_small", "coffee"] and ds.queries == ["q_ast", "q_coffee"]
    assert ds.image_path(1) == root / "roxford5k" / "jpg" / "coffee.jpg"
    assert ds.gnd[1]["hard"].tolist() == [7] and ds.gnd[1]["junk"].dtype == np.int64
    database = np.stack([descriptor(p) for p in ds.image_paths])
    boxes = [
        ds.query_box(i, Image.open(p).size) if query_box == "crop" else None
        for i, p in enumerate(ds.query_paths)
    ]
    queries = np.stack([descriptor(p, box) for p, box in zip(ds.query_paths, boxes, strict=True)])
    if query_box == "crop":  # cut to its box, the query is the database's copy of the photograph
        assert database[0] @ queries[0] > 0.99 and database[1] @ queries[1] > 0.99
    ranks = ev.rank(database, queries)
    # The rankings these descriptors give (ties only between images of the same kind):
    #   astronaut: copies 2 (junk), 0, 4 first in either order of 2 and 0; the cat 3 sixth (after 1 and 6);
    #   coffee: 6 and 1 first, then 3, 2, 4, 0; the micrograph 7 seventh.
    assert set(ranks[:3, 0].tolist()) == {0, 2, 4} and ranks[5, 0] == 3
    assert set(ranks[:2, 1].tolist()) == {1, 6} and ranks[6, 1] == 7
    # Astronaut. easy: positives 0, 4 first once junk 2 is removed: AP 1. medium: 0, 4, 3 at 0, 1, 4:
    # (1 + 1 + (2/4 + 3/5)/2) / 3 = 0.85. hard: 3 at 2 (junk 2, 0, 4 removed): (0 + 1/3)/2 = 1/6.
    # Coffee. easy: 1, 6 at 0, 1: AP 1. medium: 1, 6, 7 at 0, 1, 6: (1 + 1 + (2/6 + 3/7)/2) / 3 = 50/63.
    # hard: 7 at 4 (junk 1, 6 removed): (0 + 1/5)/2 = 1/10.
    maps = ev.evaluate(ranks, ds.gnd)
    assert maps["easy"] == pytest.approx(1.0)
    assert maps["medium"] == pytest.approx((0.85 + 50 / 63) / 2)
    assert maps["hard"] == pytest.approx((1 / 6 + 1 / 10) / 2)
    assert ev.map_line(maps) == "mAP easy=100.00 medium=82.18 hard=13.33"


def test_numpy_arrays_in_the_pickle_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "rparis6k"
    folder.mkdir()
    gnd = [
        {
            "easy": np.array([0]),
            "hard": np.array([], dtype=np.int64),
            "junk": np.array([1]),
            "bbx": np.zeros(4),
        }
    ]
    cfg = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": gnd}
    (folder / "gnd_rparis6k.pkl").write_bytes(pickle.dumps(cfg))
    ds = ev.load_dataset(tmp_path, "rparis6k", check_files=False)
    assert ds.gnd[0]["easy"].tolist() == [0] and ds.gnd[0]["bbx"].tolist() == [0.0] * 4


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("true",))


def test_bad_layouts_are_refused_clearly(tmp_path: Path, root: Path) -> None:
    with pytest.raises(ev.DatasetError, match="unknown dataset"):
        ev.load_dataset(root, "oxford5k")
    with pytest.raises(ev.DatasetError, match=r"gnd_rparis6k\.pkl is missing"):
        ev.load_dataset(root, "rparis6k")
    folder = tmp_path / "roxford5k"
    (folder / "jpg").mkdir(parents=True)
    pkl = folder / "gnd_roxford5k.pkl"
    pkl.write_bytes(
        pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "hard": [], "junk": []}]})
    )
    with pytest.raises(ev.DatasetError, match="2 images are missing"):
        ev.load_dataset(tmp_path, "roxford5k")
    pkl.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [3]}]}))
    with pytest.raises(ev.DatasetError, match="outside the 1 database images"):
        ev.load_dataset(tmp_path, "roxford5k", check_files=False)
    pkl.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": []}))
    with pytest.raises(ev.DatasetError, match="0 ground-truth entries for 1 queries"):
        ev.load_dataset(tmp_path, "roxford5k", check_files=False)
    pkl.write_bytes(pickle.dumps({"imlist": ["a"], "gnd": [_Exploit()]}))
    with pytest.raises(ev.DatasetError, match="not allowed"):
        ev.load_dataset(tmp_path, "roxford5k", check_files=False)


def test_query_box_stays_inside_the_image(root: Path) -> None:
    ds = ev.load_dataset(root, "roxford5k")
    ds.gnd[0]["bbx"] = np.array([-3.5, 10.0, 700.0, 500.0])
    assert ds.query_box(0, (632, 632)) == (0.0, 10.0, 632.0, 500.0)
