#!/usr/bin/env bash
# Prepares a Debian machine (root) for `make compose-test`; each step is skipped when already done.
#   - apt: podman, runc, netavark + aardvark-dns (networks with DNS) + iptables, mmdebstrap,
#     docker-compose (1.29, Debian's)
#   - /etc/containers/containers.conf: runc (crun fails on cgroups v1 "hybrid" hosts) and rlimits of
#     1024 (runc cannot set the default, higher ones there). Written only when absent; an existing
#     one is left alone and the same settings go to a drop-in beside it.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "compose-test setup: needs root" >&2; exit 1; }

need=()
for pair in podman:podman runc:runc mmdebstrap:mmdebstrap docker-compose:docker-compose iptables:iptables \
    /usr/lib/podman/netavark:netavark /usr/lib/podman/aardvark-dns:aardvark-dns; do
    tool=${pair%%:*}
    command -v "$tool" >/dev/null || [ -x "$tool" ] || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

settings='# For SimPool Serve'"'"'s compose-test (deploy/compose-test/setup.sh): this host'"'"'s cgroups need
# runc, and containers do not start with rlimits above 1024 there.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"'
conf=/etc/containers/containers.conf
if [ ! -e "$conf" ]; then
    mkdir -p /etc/containers
    printf '%s\n' "$settings" >"$conf"
elif ! grep -q '^runtime *= *"runc"' "$conf"; then
    mkdir -p /etc/containers/containers.conf.d
    printf '%s\n' "$settings" >/etc/containers/containers.conf.d/50-simpool-compose-test.conf
fi
