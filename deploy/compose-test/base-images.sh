#!/usr/bin/env bash
# Stand-in base images for `make compose-test` on a machine that reaches Debian's archive but no
# image registry: each is a Debian bookworm root filesystem (mmdebstrap) imported into podman's
# storage, made only when missing there, so later runs reuse it.
#
#   python      for the Dockerfile's PYTHON_IMAGE: python3 in a venv on PATH with pip, like the
#               official python image (which has no PEP 668 marker); groupadd/useradd
#   nginx       Debian's nginx, with the official image's template and local-resolver entry point
#   prometheus  Debian's Prometheus, run as nobody from /prometheus as the official image does
# Grafana has no Debian package: the compose-test starts the stack without it.
#
#   base-images.sh                 prints "NAME=IMAGE" for each, building those that are missing
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=${SIMPOOL_BASE_PREFIX:-localhost/simpool-compose-test}
suite=bookworm
work=$(mktemp -d "${TMPDIR:-/var/tmp}/simpool-base.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Documentation, manuals and translations: not needed to run anything, a third of the size.
slim=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')

# make_image IMAGE PACKAGES [mmdebstrap options...] -- [podman import --change values...]
make_image() {
    local image=$1 packages=$2
    shift 2
    local opts=() changes=()
    while (($#)) && [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    for c in "$@"; do changes+=(--change "$c"); done
    if podman image exists "$image"; then
        return
    fi
    echo "base-images: making $image (mmdebstrap $suite: $packages)" >&2
    local start=$SECONDS
    mmdebstrap --quiet --variant=minbase --include="$packages" "${slim[@]}" "${opts[@]}" \
        "$suite" "$work/rootfs.tar"
    podman import --quiet "${changes[@]}" \
        --change "LABEL org.opencontainers.image.description=stand-in base image for make compose-test" \
        "$work/rootfs.tar" "$image" >/dev/null
    rm -f "$work/rootfs.tar"
    echo "base-images: $image made in $((SECONDS - start)) s" >&2
}

path=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# PIP_CERT: pip (23.0 here) reads its own CA bundle unless told; the build mounts the host's trust
# store over the system one, which this points pip at. The file itself is never part of an image.
make_image "$prefix/python:$suite" python3,python3-venv,ca-certificates,passwd \
    --customize-hook='chroot "$1" python3 -m venv /opt/python' \
    -- "ENV PATH=$path" "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" 'CMD ["python3"]'

# Tagged with the entry point's hash: a changed script makes a new image.
entry_hash=$(sha256sum "$here/nginx-entrypoint.sh" | cut -c1-8)
make_image "$prefix/nginx:$suite-$entry_hash" nginx,wget,gettext-base \
    --customize-hook='rm -f "$1"/etc/nginx/sites-enabled/default; mkdir -p "$1"/etc/nginx/templates' \
    --customize-hook='ln -sf /dev/stdout "$1"/var/log/nginx/access.log; ln -sf /dev/stderr "$1"/var/log/nginx/error.log' \
    --customize-hook="copy-in $here/nginx-entrypoint.sh /usr/local/bin" \
    -- 'ENTRYPOINT ["/usr/local/bin/nginx-entrypoint.sh"]' 'CMD ["nginx", "-g", "daemon off;"]' \
    'STOPSIGNAL SIGQUIT' 'EXPOSE 80'

make_image "$prefix/prometheus:$suite" prometheus,wget \
    --customize-hook='mkdir -p "$1"/prometheus && chown nobody:nogroup "$1"/prometheus' \
    -- 'USER nobody' 'WORKDIR /prometheus' 'VOLUME /prometheus' 'EXPOSE 9090' \
    'ENTRYPOINT ["/usr/bin/prometheus"]' \
    'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'

echo "PYTHON_IMAGE=$prefix/python:$suite"
echo "NGINX_IMAGE=$prefix/nginx:$suite-$entry_hash"
echo "PROMETHEUS_IMAGE=$prefix/prometheus:$suite"
