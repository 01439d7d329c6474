#!/usr/bin/env bash
# Checks and reports what a runtime image holds: a non-root user, no torch or timm, no compilers.
#   image-facts.sh IMAGE BASE_IMAGE
set -euo pipefail
image=$1 base=$2
size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
user=$(podman image inspect --format '{{.Config.User}}' "$image")
echo "  $image: $((size / 1000000)) MB ($((base_size / 1000000)) MB of it the base $base), user $user"
[[ "${user%%:*}" =~ ^[0-9]+$ && "${user%%:*}" != 0 ]] || { echo "  runs as '$user', not a numeric non-root user" >&2; exit 1; }
podman run --rm --network none --entrypoint python "$image" -c '
import importlib.util, os, shutil, sys
assert os.getuid() != 0, "root"
found = [m for m in ("torch", "timm", "onnx", "pyarrow") if importlib.util.find_spec(m)]
assert not found, f"export or simpool-embed packages in the runtime image: {found}"
compilers = [c for c in ("cc", "gcc", "g++", "c++", "clang", "tcc", "nvcc") if shutil.which(c)]
assert not compilers, f"compilers in the runtime image: {compilers}"
import onnxruntime, simpool_serve.service, sysconfig
models = sorted(os.listdir(os.environ["SIMPOOL_MODEL_DIR"]))
def du(top):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(top) for f in fs) // 1000000
site, model_mb = sysconfig.get_paths()["purelib"], du(os.environ["SIMPOOL_MODEL_DIR"])
print(f"  uid {os.getuid()}, no torch/timm/onnx/pyarrow, no compiler; onnxruntime {onnxruntime.__version__}")
print(f"  Python packages {du(site)} MB ({site}); models {model_mb} MB: {models}")
'
