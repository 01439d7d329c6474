#!/bin/sh
# Grafana's entry point in the compose stack: never admin/admin.
#
# Grafana sets its admin password once, when it creates its database (the first start on an empty
# grafana-data volume). Unless GRAFANA_ADMIN_PASSWORD is set, a random password is made then, kept in
# $GF_PATHS_DATA/admin-password (readable by Grafana's user only) and written to the log; later starts
# reuse that file, so the log line and the file keep matching the database.
#   first-start.sh COMMAND...      (the image's own entry point, /run.sh)
set -eu
data=${GF_PATHS_DATA:-/var/lib/grafana}
file=$data/admin-password
user=${GF_SECURITY_ADMIN_USER:-admin}
if [ -n "${GRAFANA_ADMIN_PASSWORD:-}" ]; then
    password=$GRAFANA_ADMIN_PASSWORD
    echo "simpool: Grafana login: $user with the password of GRAFANA_ADMIN_PASSWORD"
else
    if [ ! -s "$file" ]; then
        (umask 077 && head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file" && echo >>"$file")
        echo "simpool: Grafana's admin password was generated on this first start"
    fi
    password=$(cat "$file")
    echo "simpool: Grafana login: $user / $password (kept in $file: docker compose exec grafana cat $file)"
fi
if [ "$password" = admin ]; then
    echo "simpool: refusing to start Grafana with the password 'admin'; set GRAFANA_ADMIN_PASSWORD to another" >&2
    exit 2
fi
GF_SECURITY_ADMIN_PASSWORD=$password
export GF_SECURITY_ADMIN_PASSWORD
unset GRAFANA_ADMIN_PASSWORD
exec "$@"
