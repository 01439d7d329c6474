"""Query a FAISS index built by `build_index.py` with one or more images.

    python query.py index/ photo.jpg [more.jpg ...] [-k 5] [--url URL | --local MODEL_DIR] [--json]

The query is embedded by the same model as the index (a running simpool-serve, or
in-process with --local) and must carry the same fingerprint: otherwise the scores
would compare vectors from different spaces, so the script refuses (exit 3).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import faiss
import numpy as np
from queries import add_arguments, embed_queries


def find_index(path: Path) -> Path | None:
    """The index folder itself, or the work folder index_folder.sh wrote it into (`WORK_DIR/index`)."""
    for folder in (path, path / "index"):
        if (folder / "index.json").is_file() and (folder / "index.faiss").is_file():
            return folder
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("index", type=Path, help="build_index.py's folder (or index_folder.sh's WORK_DIR)")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("-k", type=int, default=5, help="results per query (default 5)")
    add_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)

    folder = find_index(args.index)
    if folder is None:
        print(
            f"{p.prog}: error: no index in {args.index} (expected index.json + index.faiss, which "
            "build_index.py writes; index_folder.sh puts them in WORK_DIR/index)",
            file=sys.stderr,
        )
        return 2
    meta = json.loads((folder / "index.json").read_text())
    index = faiss.read_index(str(folder / "index.faiss"))
    queries, fingerprint = embed_queries(args.images, args, meta["model"])
    if fingerprint != meta["fingerprint"]:
        print(
            f"the index was built with fingerprint {meta['fingerprint']}, the model now answers"
            f" {fingerprint}: re-run simpool-embed and build_index.py",
            file=sys.stderr,
        )
        return 3
    scores, ids = index.search(np.ascontiguousarray(queries, np.float32), min(args.k, index.ntotal))
    results = {
        str(q): [
            {"rank": r + 1, "path": meta["paths"][i], "score": float(s)}
            for r, (i, s) in enumerate(zip(ids[n], scores[n], strict=True))
            if i >= 0
        ]
        for n, q in enumerate(args.images)
    }
    if args.json:
        print(json.dumps({"model": meta["model"], "fingerprint": fingerprint, "results": results}))
        return 0
    for query, hits in results.items():
        print(f"{query}  ({meta['model']})")
        for hit in hits:
            print(f"  {hit['rank']:>3}. {hit['score']:.4f}  {hit['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
