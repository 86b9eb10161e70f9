# Start a throwaway local PostgreSQL server for the tests of `pelk search --storage postgresql://...`.
#
# Sourced by .ci/run (`source .ci/postgres.sh`): installs Debian's postgresql if its server binaries
# are missing, creates a cluster in a temporary directory, starts it on a free loopback port,
# creates the database `pelk_test`, exports PELK_TEST_POSTGRES_URL and stops the server on exit.
# Local trust authentication: the server listens on 127.0.0.1 only and lives as long as the run.

pelk_pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$pelk_pg_bin" ] || [ ! -x "$pelk_pg_bin/initdb" ]; then
    echo "postgres.sh: installing the PostgreSQL server (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pelk_pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
fi

# The server refuses to run as root: run it as the `postgres` account the package creates.
pelk_pg_as() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pelk_pg_dir="$(mktemp -d /tmp/pelk-postgres.XXXXXX)"
if [ "$(id -u)" = 0 ]; then chown postgres: "$pelk_pg_dir"; fi
pelk_pg_port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

pelk_pg_as "$pelk_pg_bin/initdb" -D "$pelk_pg_dir/data" -U pelk -A trust --no-sync >/dev/null
pelk_pg_as "$pelk_pg_bin/pg_ctl" -D "$pelk_pg_dir/data" -l "$pelk_pg_dir/server.log" -w \
    -o "-p $pelk_pg_port -k $pelk_pg_dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
pelk_pg_as "$pelk_pg_bin/createdb" -h 127.0.0.1 -p "$pelk_pg_port" -U pelk pelk_test

pelk_pg_stop() {
    pelk_pg_as "$pelk_pg_bin/pg_ctl" -D "$pelk_pg_dir/data" -m immediate stop >/dev/null 2>&1
    rm -rf "$pelk_pg_dir"
}
trap pelk_pg_stop EXIT

export PELK_TEST_POSTGRES_URL="postgresql://pelk@127.0.0.1:$pelk_pg_port/pelk_test"
echo "postgres.sh: PostgreSQL on $PELK_TEST_POSTGRES_URL"
