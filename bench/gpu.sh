#!/usr/bin/env bash
# The whole GPU measurement in one go (about 6 minutes on one GPU; each step is time-boxed so the
# total stays under 8): exports, model-only images/s at batch 1..256 (CUDA fp32, CUDA fp32 with
# I/O binding, CUDA fp16, TensorRT fp16), then the service under 32 and 128 clients (images/s, p99).
#
#   bash bench/gpu.sh                      # resnet50, random weights (speed does not depend on them)
#   ARCH=vit_small_patch16_224 bash bench/gpu.sh
#
# Needs the `gpu` and `export` extras (onnxruntime-gpu, torch) and `hey` for the service part
# (skipped, with a note, when it is missing). Results: $OUT (default /tmp/simpool-gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
ARCH=${ARCH:-resnet50}
OUT=${OUT:-/tmp/simpool-gpu}
REPO=$OUT/models
mkdir -p "$REPO"
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'

[ -f "$REPO/$ARCH/model.onnx" ] || timeout 150 "$BIN/simpool-export" --arch "$ARCH" --random-init --out "$REPO/$ARCH"
[ -f "$REPO/${ARCH}_fp16/model.onnx" ] || timeout 150 "$BIN/simpool-export" --arch "$ARCH" --random-init --fp16 --out "$REPO/${ARCH}_fp16"
echo "exports done at +$(( $(date +%s) - start ))s"

timeout 240 "$PY" bench/gpu.py --fp32 "$REPO/$ARCH" --fp16 "$REPO/${ARCH}_fp16" --seconds 1.0 \
    --json "$OUT/model_only.json" | tee "$OUT/model_only.txt"
echo "model-only done at +$(( $(date +%s) - start ))s"

if command -v hey >/dev/null; then
    # The fp16 folder is not served here: one model, so the batcher and decoders serve only it.
    mkdir -p "$OUT/serve" && ln -sfn "$REPO/$ARCH" "$OUT/serve/$ARCH"
    timeout 150 "$PY" bench/run.py --model-dir "$OUT/serve" --models "$ARCH" --provider CUDAExecutionProvider \
        --lanes 1 --threads 1 --concurrency 32,128 --rounds 1 --seconds 15 --offline-seconds 3 \
        --batch-sizes 32 --recheck-seconds 0 --lone-pairs 10 --json "$OUT/service.json" | tee "$OUT/service.txt"
else
    echo "hey not installed: service part skipped (apt-get install hey)"
fi
echo "total $(( $(date +%s) - start ))s"
