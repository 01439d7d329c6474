"""Build a FAISS index from a `simpool-embed` Parquet file.

    python build_index.py embeddings.parquet --out index/

Writes `index/index.faiss` (exact inner product over L2-normalised vectors, i.e. cosine
similarity) and `index/index.json` (model, fingerprint, and the path of each vector).
The fingerprint travels with the index so that a query made with a different model,
or with different preprocessing, is refused instead of silently returning nonsense.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq


def load_vectors(parquet: Path) -> tuple[np.ndarray, list[str], str, str]:
    """Embeddings [N, D] float32, their paths, model and fingerprint; failed rows are left out."""
    table = pq.read_table(parquet, columns=["path", "model", "fingerprint", "embedding", "error"])
    table = table.filter(pc.is_null(table.column("error")))
    fingerprints = set(table.column("fingerprint").to_pylist())
    if len(fingerprints) > 1:
        raise SystemExit(
            f"{parquet} mixes fingerprints {sorted(fingerprints)}: the model changed part-way;"
            " run simpool-embed again so every row comes from the current model"
        )
    if table.num_rows == 0:
        raise SystemExit(f"{parquet} has no embeddings")
    # The list column is one flat float32 buffer underneath: no per-row Python conversion.
    column = table.column("embedding").combine_chunks()
    dim = len(column[0])
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    faiss.normalize_L2(vectors)  # already unit length; cheap insurance against hand-made files
    return vectors, table.column("path").to_pylist(), table.column("model")[0].as_py(), fingerprints.pop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("parquet", type=Path, help="output of simpool-embed")
    p.add_argument("--out", type=Path, required=True, help="folder for index.faiss and index.json")
    args = p.parse_args(argv)

    vectors, paths, model, fingerprint = load_vectors(args.parquet)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    args.out.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(args.out / "index.faiss"))
    meta = {
        "model": model,
        "fingerprint": fingerprint,
        "dim": int(vectors.shape[1]),
        "count": len(paths),
        "paths": paths,
        "source": str(args.parquet),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (args.out / "index.json").write_text(json.dumps(meta, indent=1))
    print(f"indexed {len(paths)} images ({model}, dim {vectors.shape[1]}, fingerprint {fingerprint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
