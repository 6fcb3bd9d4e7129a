#!/usr/bin/env bash
# Start a throw-away PostgreSQL on 127.0.0.1 (installing Debian's package if missing) and print
# its SQLAlchemy URL. Needs root (apt-get, runuser), as on CI; on a laptop point
# OCEANML_TEST_PG_URL at any PostgreSQL instead (the tests make and drop databases of their own).
# The cluster lives in $OCEANML_PG_DATA (a new temporary folder if unset); stop it with
# `bash .ci/stop-postgres.sh DIR`. Any step that fails ends the script non-zero with the reason.
set -euo pipefail
fail() { echo "start-postgres: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (apt-get, runuser); point OCEANML_TEST_PG_URL at a server instead"
PORT=${OCEANML_TEST_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  timeout 300 apt-get update -qq >&2 || fail "apt-get update failed or took over 5 minutes"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq postgresql >&2 \
    || fail "apt-get install postgresql failed"
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$BIN/pg_ctl" ] || fail "no pg_ctl under /usr/lib/postgresql after the install"
DATA=${OCEANML_PG_DATA:-$(mktemp -d /tmp/oceanml-pg.XXXXXX)}
mkdir -p "$DATA"
chown postgres "$DATA"
runuser -u postgres -- "$BIN/initdb" -D "$DATA" -A trust -U postgres >&2 || fail "initdb failed"
runuser -u postgres -- "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 30 \
  -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1" start >&2 \
  || { tail -20 "$DATA/server.log" >&2 || true; fail "the server did not start (its log above)"; }
runuser -u postgres -- "$BIN/createdb" -h 127.0.0.1 -p "$PORT" oceanml_test >&2 \
  || fail "createdb failed"
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/oceanml_test"
