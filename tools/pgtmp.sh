#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests and benches: initdb in DIR, a
# unix socket in DIR (no TCP unless PORT is given), trust auth for user easel.
# Run as root (CI containers), the server runs as the `postgres` system user
# (initdb refuses root). fsync stays off unless EASEL_PG_FSYNC=on: commits
# still reach the OS before they are acknowledged, so a server killed with
# `stop DIR immediate` loses nothing; only a power loss could.
#   tools/pgtmp.sh bin                 the server's bin dir (exit 3: no PostgreSQL)
#   tools/pgtmp.sh start DIR [PORT]    init (once) and start; prints the URL
#   tools/pgtmp.sh stop DIR [fast|immediate]
#   tools/pgtmp.sh url DIR             the URL of database postgres
#   tools/pgtmp.sh createdb DIR NAME   a fresh, empty database NAME; prints its URL
set -euo pipefail

bindir() {
  if [ -n "${EASEL_PG_BIN:-}" ] && [ -x "$EASEL_PG_BIN/initdb" ]; then echo "$EASEL_PG_BIN"; return; fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) /usr/local/pgsql/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return; }
  return 3
}

# as_pg CMD...: runs CMD as the server's user (postgres when we are root)
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url_of() { echo "postgresql:///postgres?host=$1&user=easel"; }

cmd=${1:-}
case "$cmd" in
  bin) bindir || { echo "no PostgreSQL server (initdb) installed" >&2; exit 3; } ;;
  start)
    dir=${2:?DIR}; port=${3:-}
    bin=$(bindir) || { echo "no PostgreSQL server (initdb) installed" >&2; exit 3; }
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown postgres "$dir" # (its parents must let postgres in)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_pg "$bin/initdb" -D "$dir/data" -A trust -U easel -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    listen="''"; [ -z "$port" ] || listen=127.0.0.1
    opts="-k $dir -c listen_addresses=$listen -c fsync=${EASEL_PG_FSYNC:-off} -c max_connections=300"
    opts="$opts -c shared_buffers=32MB -c log_min_messages=warning"
    [ -z "$port" ] || opts="$opts -p $port"
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$opts" start >/dev/null ||
      { tail -n 20 "$dir/server.log" >&2; exit 1; }
    if [ -n "$port" ]; then echo "postgresql://easel@127.0.0.1:$port/postgres"; else url_of "$dir"; fi
    ;;
  stop)
    dir=${2:?DIR}; mode=${3:-fast}
    bin=$(bindir) || exit 3
    as_pg "$bin/pg_ctl" -D "$dir/data" -m "$mode" -w -t 60 stop >/dev/null 2>&1 || true
    ;;
  url) url_of "${2:?DIR}" ;;
  createdb)
    dir=${2:?DIR}; name=${3:?NAME}
    bin=$(bindir) || exit 3
    "$bin/psql" -X -q -v ON_ERROR_STOP=1 "$(url_of "$dir")" \
      -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" -c "CREATE DATABASE \"$name\"" >/dev/null
    echo "postgresql:///$name?host=$dir&user=easel"
    ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
