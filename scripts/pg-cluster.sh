#!/usr/bin/env bash
# A throwaway PostgreSQL cluster: `start DIR [PORT] [name=value ...]`
# creates it (owned by the `postgres` user when run as root), starts it
# with those extra settings and prints its URL; `stop DIR` stops it. Uses
# the machine's newest PostgreSQL binaries (15 here). The tests pass
# fsync=off; benchmarks should not.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?directory}
port=${3:-55432}
shift $(( $# < 3 ? $# : 3 ))
extra=""
for kv in "$@"; do extra="$extra -c $kv"; done
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ]; then
  echo "pg-cluster.sh: no PostgreSQL binaries under /usr/lib/postgresql" >&2
  exit 1
fi
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$cmd" in
  start)
    if [ ! -f "$dir/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
      as_pg "$bin/initdb" -D "$dir" -U postgres -A trust -E UTF8 --no-instructions >/dev/null
    fi
    as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
      -o "-k $dir -p $port -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=128MB$extra" start >/dev/null
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    as_pg "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true
    ;;
  *) echo "usage: pg-cluster.sh start|stop DIR [PORT]" >&2; exit 2 ;;
esac
