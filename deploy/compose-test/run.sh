#!/usr/bin/env bash
# `make compose-test`: the repository's Dockerfile and docker-compose.yml, built and run for real with
# podman (Docker API) and docker-compose, on a machine without Docker Engine or an image registry.
#
#   1. base images: stand-ins from Debian's archive (base-images.sh), kept in podman's storage
#   2. the default models (resnet50_simpool, vit_small_simpool; random weights, as `make models`)
#      exported on the host, given to the build as the `models` build context (the export stage
#      needs PyTorch's wheel index, which this machine cannot reach)
#   3. the runtime-cpu image, built from ./Dockerfile under the name docker-compose.yml gives it
#      (simpool-serve:latest-cpu), so that `up` finds it instead of building it; the host's trust
#      store is bind-mounted into the build's RUN steps (a TLS-intercepting proxy), never a layer
#   4. the user's plain command, `docker-compose up` (detached), naming the services only to leave
#      out Grafana, with only the stand-in image variables set: the API on 0.0.0.0:8000 behind nginx,
#      Prometheus on 127.0.0.1:9090; check.py sends /embed and the rest through nginx
#   5. a second replica (--scale simpool=2) to check the drain on SIGTERM; down, nothing left behind
#
# The built image and the base images stay in podman's storage: the next run's build cache; the image a
# build replaces is removed.
# Ports 8000 and 9090 of this machine must be free (the stack publishes its defaults).
# SIMPOOL_VENV_BIN: bin/ of the project's venv (default .venv/bin), for simpool-export and check.py.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/deploy/compose-test
cd "$repo"
bin=${SIMPOOL_VENV_BIN:-$repo/.venv/bin}  # the project installed, with httpx
# The project name compose takes from the folder (docker-compose 1.29's rule), for the cleanup.
project=$(basename "$repo" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-')
image=localhost/simpool-serve:latest-cpu
models=$repo/build/compose-test/models
# The host's trust store, for pip behind a TLS-intercepting proxy (mounted only where it exists).
trust_store=${SIMPOOL_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
trust=()
[ -f "$trust_store" ] && trust=(--volume "$trust_store:/etc/ssl/certs/ca-certificates.crt:ro")
t0=$SECONDS

step() { printf '\ncompose-test [%4d s] %s\n' "$((SECONDS - t0))" "$*"; }
die() { echo "compose-test: $*" >&2; exit 1; }

for tool in podman docker-compose mmdebstrap; do
    command -v "$tool" >/dev/null || die "$tool is not installed (.ci/run installs it: apt-get install podman runc mmdebstrap docker-compose)"
done
[ "$(id -u)" = 0 ] || die "needs root (rootful podman: this kernel's cgroups v1 leave rootless containers no limits)"

state=$(mktemp -d "${TMPDIR:-/tmp}/simpool-compose-test.XXXXXX")
service_pid=
# Compose sees no COMPOSE_*, SIMPOOL_*, PROMETHEUS_* or GRAFANA_* setting of the caller's, only the
# stand-in images (SIMPOOL_NGINX_IMAGE, SIMPOOL_PROMETHEUS_IMAGE): the stack runs on the file's defaults.
compose() {
    local drop=() var
    for var in $(compgen -e); do
        case $var in
            SIMPOOL_NGINX_IMAGE | SIMPOOL_PROMETHEUS_IMAGE | SIMPOOL_PYTHON_IMAGE) ;;
            COMPOSE_* | SIMPOOL_* | PROMETHEUS_* | GRAFANA_*) drop+=(-u "$var") ;;
        esac
    done
    env "${drop[@]}" docker-compose "$@"
}

# Whatever happens, nothing the test started outlives it: the stack, its volumes and network, and
# the API service. Labels find what compose made even when compose itself failed half-way.
cleanup() {
    local rc=$?
    set +e
    local label=label=com.docker.compose.project=$project
    if ((rc != 0)); then
        podman ps -a --filter "$label" --format '{{.Names}}  {{.Status}}' | while read -r name status; do
            printf '\n--- %s (%s): last log lines\n' "$name" "$status" >&2
            podman logs --tail 25 "$name" >&2 2>&1
        done
    fi
    if [ -n "$service_pid" ]; then
        compose down --volumes --remove-orphans --timeout 20 >"$state/down.log" 2>&1
        kill "$service_pid" 2>/dev/null
        wait "$service_pid" 2>/dev/null
    fi
    podman ps -aq --filter "$label" | xargs -r podman rm -f -t 5 >/dev/null
    podman volume ls -q --filter "$label" | xargs -r podman volume rm -f >/dev/null
    podman network ls -q --filter "$label" | xargs -r podman network rm -f >/dev/null
    rm -rf "$state"
    ((rc == 0)) && step "passed" || echo "compose-test: FAILED (exit $rc)" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "base images (made only when missing from podman's storage)"
eval "$("$here/base-images.sh")"
podman images --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' --filter reference='localhost/simpool-compose-test/*'

step "models exported on the host into $models"
for spec in resnet50_simpool=resnet50 vit_small_simpool=vit_small_patch16_224; do
    name=${spec%%=*}
    if [ ! -f "$models/$name/manifest.json" ]; then
        "$bin/simpool-export" --arch "${spec#*=}" --random-init --seed 0 --name "$name" \
            --out "$models/$name" >"$state/export-$name.log" 2>&1 || { cat "$state/export-$name.log"; exit 1; }
    fi
done

step "image $image (target runtime-cpu of ./Dockerfile)"
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
# --format docker: the OCI format has no HEALTHCHECK. The bind mount exists during RUN steps only.
podman build --quiet --format docker --target runtime-cpu \
    --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" \
    --build-context models="$models" \
    "${trust[@]}" \
    --tag "$image" . >"$state/build.log" 2>&1 || { cat "$state/build.log"; exit 1; }
"$here/image-facts.sh" "$image" "$PYTHON_IMAGE"
# The image this build replaced would stay untagged (0.7 GB a run, kept by every run): removed. The new
# image's layers stay as the next run's cache.
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || echo "  the previous $image ($previous) is still in use; kept"
fi

step "runtime-gpu"
cuda_image=$(sed -n 's/^ARG CUDA_IMAGE=//p' Dockerfile)
if podman image exists "$cuda_image" || timeout 60 podman pull --quiet "docker.io/$cuda_image" >"$state/pull.log" 2>&1; then
    podman build --quiet --format docker --target runtime-gpu --build-context models="$models" \
        "${trust[@]}" \
        --tag "localhost/simpool-serve:latest-gpu" . >"$state/build-gpu.log" 2>&1 ||
        { cat "$state/build-gpu.log"; exit 1; }
    "$here/image-facts.sh" "localhost/simpool-serve:latest-gpu" "$cuda_image"
else
    echo "  skipped: its base $cuda_image is not in podman's storage and cannot be pulled here:"
    sed 's/^/    /' "$state/pull.log" | tail -n 2
fi

for port in 8000 9090; do
    ! "$bin/python" -c "import socket, sys; socket.create_connection(('127.0.0.1', $port), timeout=1)" 2>/dev/null ||
        die "port $port is in use on this machine: the stack publishes the API on 8000 and Prometheus on 9090"
done

step "the stack: docker-compose $(docker-compose version --short) through podman $(podman version --format '{{.Client.Version}}')'s Docker API"
podman system service --time=0 "unix://$state/podman.sock" >"$state/service.log" 2>&1 &
service_pid=$!
export DOCKER_HOST=unix://$state/podman.sock
for _ in $(seq 100); do [ -S "$state/podman.sock" ] && break; sleep 0.1; done
# Only the stand-in images are set; Grafana is left out by naming the other services (its image has
# no Debian stand-in).
export SIMPOOL_NGINX_IMAGE=$NGINX_IMAGE SIMPOOL_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
compose up --detach simpool lb prometheus

step "checks through nginx on :8000, Prometheus on 127.0.0.1:9090 (one replica)"
"$bin/python" "$here/check.py" --project "$project" --replicas 1

step "a second replica (--scale simpool=2): requests spread, and the drain on SIGTERM"
compose up --detach --scale simpool=2 simpool
"$bin/python" "$here/check.py" --project "$project" --replicas 2 --sigterm

step "down: no container, volume or network left"
compose down --volumes --remove-orphans --timeout 30
label=label=com.docker.compose.project=$project
left="$(podman ps -aq --filter "$label")$(podman volume ls -q --filter "$label")$(podman network ls -q --filter "$label")"
[ -z "$left" ] || die "left behind after down: $left"
echo "  none left"
