#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with warnings as errors, and all
# tests. Extra arguments go to `cargo test` (e.g. `scripts/test.sh redis_restart`).
#
# The integration tests start their own throwaway redis-server and Postgres, from
# the installed binaries, in a temporary directory on free ports. They need the
# binaries, not running services. This script installs the Debian packages it
# needs when they are missing (as root, or through sudo): gcc, libc6-dev and make
# for the build, redis-server, redis-tools and postgresql for the tests, procps for
# kill/pgrep, chromium and chromium-driver for the dashboard's browser tests,
# python3 and python3-venv for the Python suites.
#
# After cargo test, the Python suites (clients/python/tests: the client package
# and arq 0.28's own client against a real `jobrunner run`) run in a virtualenv
# outside the repository, ${XDG_CACHE_HOME:-~/.cache}/jobrunner-test-venv, with
# arq, pytest and the database and Redis drivers from PyPI. They are skipped when
# arguments filter the Rust tests.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

step "Checking for the build tools and the redis-server and Postgres binaries"
mapfile -t packages < <(build_packages)
command -v redis-server >/dev/null || packages+=(redis-server)
# The cluster and Sentinel tests form their topologies with redis-cli.
command -v redis-cli >/dev/null || packages+=(redis-tools)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || packages+=(postgresql)
# The tests signal and look for processes with kill(1) and pgrep(1).
{ type -P kill && type -P pgrep; } >/dev/null || packages+=(procps)
# The dashboard's browser tests drive a headless Chromium through chromedriver.
command -v chromium >/dev/null || packages+=(chromium)
command -v chromedriver >/dev/null || packages+=(chromium-driver)
if (($# == 0)); then
    # The Python suites: an interpreter with venv and pip (Debian splits them).
    if ! command -v python3 >/dev/null; then
        packages+=(python3 python3-venv)
    elif ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        packages+=(python3-venv)
    fi
fi
if ((${#packages[@]} > 0)); then
    install_packages "${packages[@]}"
else
    note "Present"
fi

# A rustup install that is not on the PATH yet (fresh shell, CI image).
if ! command -v cargo >/dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null ||
    die "cargo is not installed: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y"
if ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1; then
    command -v rustup >/dev/null || die "cargo fmt and cargo clippy are needed (rustfmt and clippy)"
    step "Adding the rustfmt and clippy components"
    rustup component add rustfmt clippy
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --all-targets $*"
cargo test --all-targets "$@"

if (($# > 0)); then
    step "Python suites skipped (arguments filter the Rust tests)"
    exit 0
fi

step "Python suites (clients/python/tests) against target/debug/jobrunner"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/jobrunner-test-venv"
if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    'arq==0.28.*' pytest redis 'psycopg[binary]' asyncpg 'sqlalchemy[asyncio]'
# Built from a copy, so the build leaves nothing in the repository.
client_copy=$(mktemp -d)
trap 'rm -rf "$client_copy"' EXIT
cp -r clients/python/. "$client_copy"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$client_copy"
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir="$PWD/$target_dir"
JOBRUNNER_BIN="$target_dir/debug/jobrunner" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests
