#!/usr/bin/env bash
# A throw-away PostgreSQL server for the distributed rank-search test (tests/lrf/search/test_distributed.py).
#
#   eval "$(scripts/test_postgres.sh start)"   # prints export lines: NPUQ_TEST_POSTGRES_URL, NPUQ_TEST_POSTGRES_DIR
#   scripts/test_postgres.sh stop "$NPUQ_TEST_POSTGRES_DIR"
#
# The server runs from a fresh data folder under /tmp on a free port of 127.0.0.1, with fsync off and trust
# authentication (it holds test studies only). PostgreSQL refuses to run as root, so as root the server runs
# as the `postgres` user that Debian's package creates. With NPUQ_INSTALL_POSTGRES=1 and root, a missing
# server is installed with apt-get first. Exit status 3: no server binaries.
set -euo pipefail
action="${1:-}"

find_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$action" in
  start)
    bin="$(find_bin)"
    if [ -z "$bin" ] && [ "${NPUQ_INSTALL_POSTGRES:-0}" = 1 ] && [ "$(id -u)" = 0 ]; then
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      bin="$(find_bin)"
    fi
    if [ -z "$bin" ]; then
      echo "no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)" >&2
      exit 3
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
      echo "running as root but there is no 'postgres' user to run the server as" >&2
      exit 3
    fi
    dir="$(mktemp -d /tmp/npuq-postgres.XXXXXX)"
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-F -h 127.0.0.1 -p $port -k $dir -c max_connections=60" start >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
      -c "CREATE USER npuq PASSWORD 'npuq'" -c "CREATE DATABASE npuq_test OWNER npuq" >/dev/null
    echo "export NPUQ_TEST_POSTGRES_URL=postgresql://npuq:npuq@127.0.0.1:$port/npuq_test"
    echo "export NPUQ_TEST_POSTGRES_DIR=$dir"
    ;;
  stop)
    dir="${2:?usage: test_postgres.sh stop DIR}"
    case "$dir" in /tmp/npuq-postgres.*) ;; *) echo "not a folder made by test_postgres.sh: $dir" >&2; exit 2 ;; esac
    bin="$(find_bin)"
    if [ -n "$bin" ] && [ -d "$dir/data" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start | stop DIR" >&2
    exit 2
    ;;
esac
