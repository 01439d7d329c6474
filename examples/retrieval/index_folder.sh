#!/usr/bin/env bash
# Index a folder of images end to end: embed (resumable), then build the FAISS index.
#   examples/retrieval/index_folder.sh PHOTOS_DIR WORK_DIR [simpool-embed options, e.g. --url URL | --local DIR]
# Re-running it embeds only new or changed photos (or everything, after a model change).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 SOURCE_DIR WORK_DIR [simpool-embed options]" >&2
    exit 2
fi
src=$1 work=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
# The venv that has simpool-embed also has the python that runs build_index.py: $SIMPOOL_BIN, else the
# one on PATH (an activated venv), else the repository's .venv (what `make install` creates).
if [ -n "${SIMPOOL_BIN:-}" ]; then
    bin=$SIMPOOL_BIN
elif command -v simpool-embed >/dev/null; then
    bin=$(dirname "$(command -v simpool-embed)")
else
    bin=$here/../../.venv/bin
fi
if [ ! -x "$bin/simpool-embed" ]; then
    echo "$0: no simpool-embed in $bin: run \`make install\` first, or set SIMPOOL_BIN to the venv's bin" >&2
    exit 2
fi
mkdir -p "$work"
status=0
# The whole photograph at its aspect ratio (--view full), as retrieval describes it; the centre crop
# would drop the borders of every non-square photo. Options given after WORK_DIR come later and win.
"$bin/simpool-embed" "$src" --out "$work/embeddings.parquet" --view full "$@" || status=$?
if [ "$status" -gt 1 ]; then
    exit "$status"  # could not run at all; exit 1 (some images failed) still gives a usable index
fi
"$bin/python" "$here/build_index.py" "$work/embeddings.parquet" --out "$work/index"
exit "$status"
