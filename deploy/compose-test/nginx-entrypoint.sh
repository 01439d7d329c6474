#!/bin/sh
# Entry point of the stand-in nginx image (base-images.sh): does at start what the official nginx
# image's entry point does for the compose file, and nothing else:
#   /docker-entrypoint.d/*.envsh (executable)  sourced, so that the variables they export reach...
#   /etc/nginx/templates/*.template           ...written to /etc/nginx/conf.d/*, ${VAR} of each
#                                              variable set in the environment filled in
set -eu
for script in /docker-entrypoint.d/*.envsh; do
    [ -f "$script" ] && [ -x "$script" ] && . "$script"
done
if [ -d /etc/nginx/templates ]; then
    # Only variables set in the environment are replaced: nginx's own $host, $scheme... stay.
    defined=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')
    for template in /etc/nginx/templates/*.template; do
        [ -f "$template" ] || continue
        out=/etc/nginx/conf.d/$(basename "$template" .template)
        envsubst "$defined" <"$template" >"$out"
    done
fi
exec "$@"
