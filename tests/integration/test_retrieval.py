"""examples/retrieval end to end on real photographs: simpool-embed → FAISS → query, via a real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import BIN, REPO_ROOT, Server

EXAMPLE = REPO_ROOT / "examples" / "retrieval"
# More of scikit-image's photographs (shipped with it, no download), beside the shared fixture's.
EXTRA = ("brick", "clock", "coins", "grass", "gravel", "hubble_deep_field", "moon", "retina")


def run(*cmd: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def collection(photos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder of photos, and a folder of their re-encoded (JPEG q80), 90%-size copies."""
    import skimage.data as data

    src, copies = tmp_path_factory.mktemp("collection"), tmp_path_factory.mktemp("copies")
    for name, path in photos.items():
        shutil.copy(path, src / name)
    for name in EXTRA:
        Image.fromarray(getattr(data, name)()).convert("RGB").save(src / f"{name}.jpg", quality=92)
    for path in src.iterdir():
        img = Image.open(path).convert("RGB")
        img = img.resize((round(img.width * 0.9), round(img.height * 0.9)), Image.Resampling.BICUBIC)
        img.save(copies / f"{path.name}.copy.jpg", quality=80)
    return src, copies


def assert_finds_originals(results: dict[str, list[dict]], originals: list[Path], copies: Path) -> None:
    """Each original finds itself first (cosine 1); each near-duplicate copy finds its original in its top k.
    Shared by the file index and the LanceDB table: both searches must answer the same."""
    for path in originals:
        top = results[str(path)]
        assert top[0]["path"] == path.name, (path.name, top)
        assert top[0]["score"] == pytest.approx(1.0, abs=1e-4)
    for path in copies.iterdir():
        original = path.name.removesuffix(".copy.jpg")
        assert original in [hit["path"] for hit in results[str(path)]], (original, results[str(path)])


def test_photos_find_themselves_and_their_copies(
    server: Server, model_repo: Path, collection: tuple[Path, Path], tmp_path: Path
) -> None:
    src, copies = collection
    work = tmp_path / "work"
    proc = run(
        "bash", EXAMPLE / "index_folder.sh", src, work, "--url", server.url, env={"SIMPOOL_BIN": str(BIN)}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    originals = sorted(src.iterdir())
    assert f"indexed {len(originals)} images" in proc.stdout
    meta = json.loads((work / "index" / "index.json").read_text())
    assert meta["model"] == "resnet18" and meta["fingerprint"]

    queries = originals + sorted(copies.iterdir())
    query = [BIN / "python", EXAMPLE / "query.py", work / "index"]
    proc = run(*query, *queries, "-k", "3", "--url", server.url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert_finds_originals(json.loads(proc.stdout)["results"], originals, copies)
    crop = run(*query, originals[0], "--view", "crop", "--url", server.url)
    assert crop.returncode != 0 and "fingerprint" in crop.stderr

    # The human-readable form, with the query embedded in-process: same fingerprint, same answer.
    proc = run(*query, originals[0], "--local", model_repo)
    assert proc.returncode == 0, proc.stderr
    assert f"1. 1.0000  {originals[0].name}" in proc.stdout, proc.stdout


def test_query_refuses_an_index_from_another_model(
    server: Server, collection: tuple[Path, Path], tmp_path: Path
) -> None:
    src, _ = collection
    embeddings = tmp_path / "emb.parquet"
    assert (
        run(
            BIN / "simpool-embed", src, "--out", embeddings, "--url", server.url, "--model", "vit_tiny"
        ).returncode
        == 0
    )
    assert (
        run(BIN / "python", EXAMPLE / "build_index.py", embeddings, "--out", tmp_path / "idx").returncode == 0
    )
    meta_path = tmp_path / "idx" / "index.json"
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"] = "0" * 16  # as if the model had been re-exported since the index was built
    meta_path.write_text(json.dumps(meta))
    proc = run(
        BIN / "python", EXAMPLE / "query.py", tmp_path / "idx", next(src.iterdir()), "--url", server.url
    )
    assert proc.returncode == 3 and "re-run simpool-embed" in proc.stderr


def test_near_duplicates_through_lancedb(
    server: Server, model_repo: Path, collection: tuple[Path, Path], tmp_path: Path
) -> None:
    """The same collection, embedded by the Ray job into shards (full-view descriptors), searched in a
    real LanceDB table with queries embedded by the service; a query of another view is refused."""
    pytest.importorskip("lancedb")
    pytest.importorskip("ray.data")
    src, copies = collection
    shards, db = tmp_path / "shards", str(tmp_path / "db")
    embed = [BIN / "simpool-embed", src, "--out", shards, "--engine", "ray", "--local", model_repo]
    proc = run(*embed, "--model", "resnet18", "--view", "full", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    proc = run(BIN / "python", EXAMPLE / "lancedb_index.py", shards, "--db", db)
    originals = sorted(src.iterdir())
    assert proc.returncode == 0 and f"indexed {len(originals)} images" in proc.stdout, proc.stderr

    query = [BIN / "python", EXAMPLE / "lancedb_query.py", db]
    proc = run(*query, *originals, *sorted(copies.iterdir()), "-k", "3", "--url", server.url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert_finds_originals(json.loads(proc.stdout)["results"], originals, copies)
    crop = run(*query, originals[0], "--view", "crop", "--url", server.url)
    assert crop.returncode != 0 and "fingerprint" in crop.stderr

    proc = run(*query, originals[0], "--local", model_repo)  # in-process query: the same answer
    assert proc.returncode == 0 and f"1. 1.0000  {originals[0].name}" in proc.stdout, proc.stderr

    # A table whose vectors came from another fingerprint refuses the query, naming both.
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    stale = tmp_path / "stale.parquet"
    table = pq.read_table(next(shards.glob("part-*.parquet")))
    pq.write_table(
        table.set_column(3, "fingerprint", pc.if_else(True, "0" * 16, table["fingerprint"])), stale
    )
    assert run(BIN / "python", EXAMPLE / "lancedb_index.py", stale, "--db", db).returncode == 0
    proc = run(*query, originals[0], "--url", server.url)
    assert proc.returncode == 3 and "0" * 16 in proc.stderr and "re-run simpool-embed" in proc.stderr
