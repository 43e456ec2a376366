#!/usr/bin/env bash
# Runs the jobrunner demo on a Debian machine, from nothing to a table of finished
# jobs: installs Redis and Postgres if their binaries are missing, starts them if
# nothing answers on 127.0.0.1:6379 / 127.0.0.1:5432, creates the `jobrunner`
# role and database, builds the release binary and runs `jobrunner demo`.
#
# Run it as root or with sudo: `sudo scripts/demo.sh`. It is safe to run again: a
# service that already answers is left alone, and the role and database are only
# created when absent. Set JOBRUNNER_DATABASE_URL (or JOBRUNNER_REDIS_URL) to use
# a Postgres (or Redis) of your own; the script then leaves the local one alone.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

# Privileged commands run directly as root, through sudo otherwise.
if [[ $EUID -eq 0 ]]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null; then
    as_root() { sudo "$@"; }
else
    die "run this as root or with sudo: sudo scripts/demo.sh"
fi

# Runs psql as the postgres superuser over the local socket (Debian's peer auth).
# From / so psql does not complain that it cannot enter the caller's directory.
pg_admin() {
    (cd / && as_root runuser -u postgres -- psql -X -q -t -A -v ON_ERROR_STOP=1 -d postgres "$@")
}

newest_pg_version() {
    local dir=$1
    [[ -d $dir ]] || return 0
    find "$dir" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1
}

have_systemd() { [[ -d /run/systemd/system ]]; }

db_url=${JOBRUNNER_DATABASE_URL:-postgres://jobrunner:jobrunner@127.0.0.1:5432/jobrunner}
local_pg=true
local_redis=true
[[ -n ${JOBRUNNER_DATABASE_URL:-} ]] && local_pg=false
[[ -n ${JOBRUNNER_REDIS_URL:-} ]] && local_redis=false

step "Checking for Redis and Postgres"
packages=()
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
    command -v apt-get >/dev/null || die "install ${packages[*]} (this script knows only apt-get)"
    note "Installing ${packages[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}"
else
    note "Binaries present"
fi

redis_up() { [[ $(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]; }
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }

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
        wait_for redis_up 10 || die "Redis did not answer on 127.0.0.1:6379 within 10s"
        note "Redis answers"
    fi
else
    step "Using the Redis at JOBRUNNER_REDIS_URL"
fi

if $local_pg; then
    step "Postgres on 127.0.0.1:5432"
    if pg_up; then
        note "Already running; leaving it alone"
    else
        if have_systemd; then
            note "Starting it with systemctl"
            as_root systemctl start postgresql
        else
            version=$(newest_pg_version /etc/postgresql)
            if [[ -z $version ]]; then
                version=$(newest_pg_version /usr/lib/postgresql)
                [[ -n $version ]] || die "no Postgres server found under /usr/lib/postgresql"
                note "Creating the Postgres $version cluster \"main\""
                as_root pg_createcluster "$version" main
            fi
            note "Starting the Postgres $version cluster \"main\" (no systemd here)"
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
        fi
        wait_for pg_up 30 || die "Postgres did not accept connections on 127.0.0.1:5432 within 30s"
        note "Postgres accepts connections"
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
then open a new shell (or run: . \"\$HOME/.cargo/env\") and run this script again.
Linking also needs a C compiler: apt-get install -y gcc"
fi
"${build[@]}" cargo build --release

step "Running the demo (jobrunner demo)"
JOBRUNNER_DATABASE_URL=$db_url "${CARGO_TARGET_DIR:-target}/release/jobrunner" demo

step "Done"
note "Next: scripts/test.sh runs every test; README.md shows how to enqueue from your code."
