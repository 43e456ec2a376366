#!/usr/bin/env bash
# Runs the jobrunner demo on a Debian machine, from nothing to a table of finished
# jobs: installs the build tools (gcc, libc6-dev, make), Redis and Postgres if they are
# missing, starts Redis if nothing answers on 127.0.0.1:6379, starts the local
# Postgres cluster (Debian's `pg_lsclusters` says which one and on which port:
# 5432, or 5433 when something else held 5432 when the package was installed),
# creates the `jobrunner` role and database, builds the release binary and runs
# `jobrunner demo`.
#
# Run it as root or with sudo: `sudo scripts/demo.sh`. It is safe to run again: a
# service that already answers is left alone, and the role and database are only
# created when absent. Set JOBRUNNER_DATABASE_URL (or JOBRUNNER_REDIS_URL) to use
# a Postgres (or Redis) of your own; the script then leaves the local one alone.
# Whatever it started, it says so and how to stop it, on success and on failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# Privileged steps need root: refuse early rather than half-way through.
if [[ $EUID -ne 0 ]] && ! command -v sudo >/dev/null; then
    die "run this as root (su -c 'scripts/demo.sh'), or install sudo and run: sudo scripts/demo.sh"
fi

# What this run started, each with the command that stops it; printed at the end,
# and on failure too, so nothing is left running unexplained.
started=()
report_started() {
    local code=$?
    if ((${#started[@]} > 0)); then
        if ((code != 0)); then
            printf '\nThis run started these services before it failed; they are still running:\n' >&2
        else
            printf '\nThis run started these services; they keep running for the tour in README.md:\n'
        fi
        local line
        for line in "${started[@]}"; do
            if ((code != 0)); then printf '    %s\n' "$line" >&2; else printf '    %s\n' "$line"; fi
        done
    fi
}
trap report_started EXIT

# Runs psql as the postgres superuser over the local socket (Debian's peer auth).
# From / so psql does not complain that it cannot enter the caller's directory.
pg_admin() {
    (cd / && as_root runuser -u postgres -- psql -X -q -t -A -v ON_ERROR_STOP=1 \
        -p "$pg_port" -d postgres "$@")
}

newest_pg_version() {
    local dir=$1
    [[ -d $dir ]] || return 0
    find "$dir" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1
}

have_systemd() { [[ -d /run/systemd/system ]]; }

pg_port=5432
local_pg=true
local_redis=true
[[ -n ${JOBRUNNER_DATABASE_URL:-} ]] && local_pg=false
[[ -n ${JOBRUNNER_REDIS_URL:-} ]] && local_redis=false

step "Checking for the build tools, Redis and Postgres"
mapfile -t packages < <(build_packages)
if $local_redis && ! { command -v redis-server && command -v redis-cli; } >/dev/null; then
    packages+=(redis-server)
fi
if $local_pg && ! {
    command -v psql && command -v pg_isready && command -v pg_ctlcluster &&
        compgen -G '/usr/lib/postgresql/*/bin/postgres'
} >/dev/null; then
    packages+=(postgresql)
fi
if ((${#packages[@]} > 0)); then
    install_packages "${packages[@]}"
else
    note "Present"
fi
# A service the package install just started counts as started by this run.
installed=" ${packages[*]} "

redis_up() { [[ $(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]; }
pg_up() { pg_isready -q -h 127.0.0.1 -p "$pg_port"; }

# The local cluster Debian's packaging made: "VERSION NAME PORT STATUS LOGFILE" of
# the newest version's `main` cluster (or its first one). Installing `postgresql`
# creates it on 5432, or on the next free port when something else held 5432.
local_cluster() {
    pg_lsclusters --no-header 2>/dev/null |
        awk '{ print $1, $2, $3, $4, $7, ($2 == "main") ? 1 : 0 }' |
        sort -k1,1Vr -k6,6nr | head -n 1 | cut -d' ' -f1-5
}

# Who listens on a TCP port, for error messages (empty when ss is not there).
port_holder() {
    command -v ss >/dev/null || return 0
    as_root ss -H -ltnp "sport = :$1" 2>/dev/null | head -n 3
}

# Polls `check` for up to `seconds`; true as soon as it succeeds.
wait_for() {
    local check=$1 seconds=$2 i
    for ((i = 0; i < seconds * 5; i++)); do
        "$check" && return 0
        sleep 0.2
    done
    return 1
}

if $local_redis; then
    step "Redis on 127.0.0.1:6379"
    if redis_up; then
        note "Already running; leaving it alone"
        if [[ $installed == *" redis-server "* ]]; then
            started+=("Redis on 127.0.0.1:6379 (started by its package): stop it with  sudo service redis-server stop")
        fi
    else
        if have_systemd; then
            note "Starting it with systemctl"
            as_root systemctl start redis-server
        else
            note "Starting redis-server in the background (no systemd here)"
            as_root mkdir -p /var/lib/redis /var/log/redis
            as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
                --save "" --appendonly no --dir /var/lib/redis \
                --logfile /var/log/redis/jobrunner-demo.log
        fi
        if have_systemd; then
            started+=("Redis on 127.0.0.1:6379: stop it with  sudo systemctl stop redis-server")
        else
            started+=("Redis on 127.0.0.1:6379: stop it with  sudo redis-cli -p 6379 shutdown nosave")
        fi
        wait_for redis_up 10 || die "Redis did not answer on 127.0.0.1:6379 within 10s.
$(port_holder 6379)
Its log: /var/log/redis/ (redis-server.log, or jobrunner-demo.log without systemd).
If another program holds port 6379, stop it, or point the demo at a Redis of your
own with JOBRUNNER_REDIS_URL=redis://HOST:PORT"
        note "Redis answers"
    fi
else
    step "Using the Redis at JOBRUNNER_REDIS_URL"
fi

if $local_pg; then
    step "The local Postgres cluster"
    if [[ -z $(local_cluster) ]]; then
        version=$(newest_pg_version /usr/lib/postgresql)
        [[ -n $version ]] || die "no Postgres server found under /usr/lib/postgresql"
        note "Creating the Postgres $version cluster \"main\""
        as_root pg_createcluster "$version" main >/dev/null
    fi
    read -r version cluster pg_port state logfile <<<"$(local_cluster)"
    note "Cluster $version/$cluster, port $pg_port ($state)"
    if [[ $pg_port != 5432 ]]; then
        note "It is not on the default port 5432: Debian picked $pg_port because another"
        note "server held 5432 when the postgresql package was installed. The demo uses $pg_port."
    fi
    if [[ $state == online* ]] || pg_up; then
        note "Already running; leaving it alone"
        if [[ $installed == *" postgresql "* ]]; then
            started+=("Postgres $version/$cluster on port $pg_port (started by its package): stop it with  sudo pg_ctlcluster $version $cluster stop")
        fi
    else
        if have_systemd; then
            note "Starting it with systemctl"
            as_root systemctl start "postgresql@$version-$cluster"
            started+=("Postgres $version/$cluster on port $pg_port: stop it with  sudo systemctl stop postgresql@$version-$cluster")
        else
            note "Starting it with pg_ctlcluster (no systemd here)"
            started+=("Postgres $version/$cluster on port $pg_port: stop it with  sudo pg_ctlcluster $version $cluster stop")
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start ||
                die "Postgres $version/$cluster did not start; its log: $logfile
$(port_holder "$pg_port")
If another program holds port $pg_port, stop it or move the cluster to a free port
(sudo pg_conftool $version $cluster set port 5433), then run this script again.
Or point the demo at a Postgres of your own: JOBRUNNER_DATABASE_URL=postgres://..."
        fi
        wait_for pg_up 30 || die "Postgres $version/$cluster did not accept connections on 127.0.0.1:$pg_port within 30s; its log: $logfile"
        note "Postgres accepts connections on 127.0.0.1:$pg_port"
    fi

    step "Role and database \"jobrunner\""
    if [[ $(pg_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'jobrunner'") == 1 ]]; then
        note "Role exists"
    else
        pg_admin -c "CREATE ROLE jobrunner LOGIN CREATEDB PASSWORD 'jobrunner'"
        note "Created role jobrunner (password jobrunner)"
    fi
    if [[ $(pg_admin -c "SELECT 1 FROM pg_database WHERE datname = 'jobrunner'") == 1 ]]; then
        note "Database exists"
    else
        pg_admin -c "CREATE DATABASE jobrunner OWNER jobrunner"
        note "Created database jobrunner"
    fi
else
    step "Using the Postgres at JOBRUNNER_DATABASE_URL"
fi
db_url=${JOBRUNNER_DATABASE_URL:-postgres://jobrunner:jobrunner@127.0.0.1:$pg_port/jobrunner}

step "Building jobrunner (cargo build --release)"
# Under sudo, build as the owner of the checkout so target/ does not end up owned
# by root, with that user's rustup install on the PATH.
owner=$(stat -c %U "$repo")
if [[ $EUID -eq 0 && $owner != root ]]; then
    owner_home=$(getent passwd "$owner" | cut -d: -f6)
    build=(runuser -u "$owner" -- env "HOME=$owner_home" "PATH=$owner_home/.cargo/bin:$PATH")
else
    build=(env "PATH=$HOME/.cargo/bin:$PATH")
fi
if ! "${build[@]}" sh -c 'command -v cargo' >/dev/null; then
    die "cargo is not installed. Install Rust with rustup (Debian's own rustc is too old):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
then open a new shell (or run: . \"\$HOME/.cargo/env\") and run this script again."
fi
"${build[@]}" cargo build --release

step "Running the demo (jobrunner demo)"
JOBRUNNER_DATABASE_URL=$db_url "${CARGO_TARGET_DIR:-target}/release/jobrunner" demo

step "Done"
note "The database: $db_url"
note "Next: scripts/test.sh runs every test; README.md shows how to enqueue from your code."
