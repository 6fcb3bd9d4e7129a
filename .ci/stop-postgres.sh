#!/usr/bin/env bash
# Stop the PostgreSQL that start-postgres.sh started in DIR and remove its files.
set -uo pipefail
DATA=${1:?usage: stop-postgres.sh DIR}
[ -f "$DATA/postmaster.pid" ] || { rm -rf "$DATA"; exit 0; }
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
runuser -u postgres -- "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >&2
rm -rf "$DATA"
