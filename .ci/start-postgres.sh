#!/usr/bin/env bash
# Start a throw-away PostgreSQL on 127.0.0.1 (installing Debian's package if missing) and print
# its SQLAlchemy URL. Needs root (apt-get, runuser), as on CI; on a laptop point
# OCEANML_TEST_PG_URL at any PostgreSQL instead.
set -euo pipefail
PORT=${OCEANML_TEST_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
DATA=$(mktemp -d /tmp/oceanml-pg.XXXXXX)
chown postgres "$DATA"
runuser -u postgres -- "$BIN/initdb" -D "$DATA" -A trust -U postgres >&2
runuser -u postgres -- "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
  -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1" start >&2
runuser -u postgres -- "$BIN/createdb" -h 127.0.0.1 -p "$PORT" oceanml_test >&2
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/oceanml_test"
