#!/usr/bin/env bash
# `make compose-test`: the repository's Dockerfile and docker-compose.yml, built and run for real with
# podman (Docker API) and docker-compose, on a machine without Docker Engine or an image registry.
#
#   1. base images: stand-ins from Debian's archive (base-images.sh), kept in podman's storage
#   2. models exported on the host (resnet18, vit_tiny; random weights), given to the build as the
#      `models` build context, so the image holds them as a production image does
#   3. the runtime-cpu image, built from ./Dockerfile; the host's trust store is bind-mounted into
#      the build's RUN steps (a TLS-intercepting proxy), never copied into a layer
#   4. the stack of ./docker-compose.yml (cpu profile: two replicas, nginx, Prometheus; no Grafana),
#      published on loopback only, checked by check.py, brought down, nothing left behind
#
# The built image and the base images stay in podman's storage: the next run's build cache.
# SIMPOOL_VENV_BIN: bin/ of the project's venv (default .venv/bin), for simpool-export and check.py.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/deploy/compose-test
cd "$repo"
bin=${SIMPOOL_VENV_BIN:-$repo/.venv/bin}  # the project installed, with httpx
export COMPOSE_PROJECT_NAME=simpool-compose-test
export COMPOSE_PROFILES=cpu
export SIMPOOL_IMAGE_TAG=compose-test
image=localhost/simpool-serve:$SIMPOOL_IMAGE_TAG-cpu
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
compose() { docker-compose --ansi never "$@"; }

# Whatever happens, nothing the test started outlives it: the stack, its volumes and network, and
# the API service. Labels find what compose made even when compose itself failed half-way.
cleanup() {
    local rc=$?
    set +e
    local label=label=com.docker.compose.project=$COMPOSE_PROJECT_NAME
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
for spec in resnet18_simpool=resnet18 vit_tiny_simpool=vit_tiny_patch16_224; do
    name=${spec%%=*}
    if [ ! -f "$models/$name/manifest.json" ]; then
        "$bin/simpool-export" --arch "${spec#*=}" --random-init --seed 0 --name "$name" \
            --out "$models/$name" >"$state/export-$name.log" 2>&1 || { cat "$state/export-$name.log"; exit 1; }
    fi
done

step "image $image (target runtime-cpu of ./Dockerfile)"
# --format docker: the OCI format has no HEALTHCHECK. The bind mount exists during RUN steps only.
podman build --quiet --format docker --target runtime-cpu \
    --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" \
    --build-context models="$models" \
    "${trust[@]}" \
    --tag "$image" . >"$state/build.log" 2>&1 || { cat "$state/build.log"; exit 1; }
"$here/image-facts.sh" "$image" "$PYTHON_IMAGE"

step "runtime-gpu"
cuda_image=$(sed -n 's/^ARG CUDA_IMAGE=//p' Dockerfile)
if podman image exists "$cuda_image" || timeout 60 podman pull --quiet "docker.io/$cuda_image" >"$state/pull.log" 2>&1; then
    podman build --quiet --format docker --target runtime-gpu --build-context models="$models" \
        "${trust[@]}" \
        --tag "localhost/simpool-serve:$SIMPOOL_IMAGE_TAG-gpu" . >"$state/build-gpu.log" 2>&1 ||
        { cat "$state/build-gpu.log"; exit 1; }
    "$here/image-facts.sh" "localhost/simpool-serve:$SIMPOOL_IMAGE_TAG-gpu" "$cuda_image"
else
    echo "  skipped: its base $cuda_image is not in podman's storage and cannot be pulled here:"
    sed 's/^/    /' "$state/pull.log" | tail -n 2
fi

step "the stack: docker-compose $(docker-compose version --short) through podman $(podman version --format '{{.Client.Version}}')'s Docker API"
podman system service --time=0 "unix://$state/podman.sock" >"$state/service.log" 2>&1 &
service_pid=$!
export DOCKER_HOST=unix://$state/podman.sock
for _ in $(seq 100); do [ -S "$state/podman.sock" ] && break; sleep 0.1; done
read -r lb_port prom_port < <("$bin/python" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
# Only loopback: the published ports bind 127.0.0.1.
export SIMPOOL_PORT=127.0.0.1:$lb_port PROMETHEUS_PORT=127.0.0.1:$prom_port
export SIMPOOL_NGINX_IMAGE=$NGINX_IMAGE SIMPOOL_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
export SIMPOOL_DEFAULT_MODEL=resnet18_simpool
# Batches of up to 8: each model is warmed at every batch size it may run, which at the stack's default
# of 32 takes minutes on 2 shared cores (two replicas, two models each).
export SIMPOOL_MAX_BATCH_SIZE=8
# Grafana is left out by naming the other services (its image has no Debian stand-in).
compose up --detach --no-build --scale simpool-cpu=2 simpool-cpu lb prometheus

step "checks through nginx on 127.0.0.1:$lb_port, Prometheus on 127.0.0.1:$prom_port"
"$bin/python" "$here/check.py" --lb "http://127.0.0.1:$lb_port" --prometheus "http://127.0.0.1:$prom_port" \
    --project "$COMPOSE_PROJECT_NAME" --replicas simpool-cpu

step "down: no container, volume or network left"
compose down --volumes --remove-orphans --timeout 30
label=label=com.docker.compose.project=$COMPOSE_PROJECT_NAME
left="$(podman ps -aq --filter "$label")$(podman volume ls -q --filter "$label")$(podman network ls -q --filter "$label")"
[ -z "$left" ] || die "left behind after down: $left"
echo "  none left"
