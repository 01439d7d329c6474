#!/bin/sh
# Exports the models named in $MODELS into OUT_DIR (one sub-folder per model), at image build time.
#
#   MODELS="NAME=ARCH[=CHECKPOINT] ..."  space-separated; CHECKPOINT is a URL, an absolute path,
#                                         or a path relative to $CHECKPOINT_DIR (default /checkpoints).
#                                         Without one: random weights, seed 0 (as `make models`).
#   EXPORT_ARGS="..."                     extra simpool-export flags for every model (e.g. --fp16).
#   SIMPOOL_EXPORT=...                    the exporter to run (default: simpool-export on PATH).
#
#   export-models OUT_DIR
set -eu
set -f  # no globbing: entries and URLs may hold * or ?

out=${1:?usage: export-models OUT_DIR}
exporter=${SIMPOOL_EXPORT:-simpool-export}
ckpt_dir=${CHECKPOINT_DIR:-/checkpoints}
[ -n "${MODELS:-}" ] || { echo "export-models: MODELS is empty" >&2; exit 2; }

mkdir -p "$out"
for spec in $MODELS; do
    # NAME=ARCH=CHECKPOINT: everything after the second '=' is the checkpoint (URLs may hold '=').
    name=${spec%%=*}
    rest=${spec#*=}
    arch=${rest%%=*}
    ckpt=
    [ "$rest" != "$arch" ] && ckpt=${rest#*=}
    if [ -z "$name" ] || [ -z "$arch" ] || [ "$name" = "$spec" ]; then
        echo "export-models: bad entry '$spec' (want NAME=ARCH[=CHECKPOINT])" >&2
        exit 2
    fi
    case "$ckpt" in
        "") weights="--random-init --seed 0" ;;
        *://* | /*) weights="--checkpoint $ckpt" ;;
        *) weights="--checkpoint $ckpt_dir/$ckpt" ;;
    esac
    echo "export-models: $name <- $arch ${ckpt:-(random weights, seed 0)}"
    # Word splitting of $weights and $EXPORT_ARGS is intended: they hold several flags.
    # shellcheck disable=SC2086
    "$exporter" --arch "$arch" --name "$name" --out "$out/$name" $weights ${EXPORT_ARGS:-}
done
