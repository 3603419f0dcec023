# A PostgreSQL server of its own, for the tests (.ci/run) and the benchmark
# suite (bench/run), which source this file and call start_postgres:
# Debian's package (installed if missing, without its default cluster), a
# temporary data directory, a free loopback port, trust authentication on
# 127.0.0.1 only; stopped when the calling script ends (an EXIT trap).
# Exports BATON_TEST_POSTGRES (a database `baton_test`) and
# BATON_PG_ADMIN (the server's own database `postgres`, for tools that
# create a database of their own), and sets PG_BIN (its programs).
# As root, PostgreSQL runs as the `postgres` user (or `baton-pg`, made for
# this): it refuses to run as root.

start_postgres() {
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$PG_BIN" ] && ! command -v initdb >/dev/null; then
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    [ -n "$PG_BIN" ] || PG_BIN=$(dirname "$(command -v initdb)")
    PG_DIR=$(mktemp -d)
    PG_AS=()
    if [ "$(id -u)" = 0 ]; then
        local user=postgres
        id -u "$user" >/dev/null 2>&1 || { user=baton-pg; id -u "$user" >/dev/null 2>&1 || useradd -r -M "$user"; }
        chown "$user" "$PG_DIR"
        PG_AS=(runuser -u "$user" --)
    fi
    PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U baton >"$PG_DIR/initdb.log"
    trap stop_postgres EXIT
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -o "-h 127.0.0.1 -p $PG_PORT -k $PG_DIR" \
        -l "$PG_DIR/log" -w start >/dev/null
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U baton baton_test
    export BATON_TEST_POSTGRES="postgres://baton@127.0.0.1:$PG_PORT/baton_test"
    export BATON_PG_ADMIN="postgres://baton@127.0.0.1:$PG_PORT/postgres"
    echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT ($PG_DIR)"
}

stop_postgres() {
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
}
