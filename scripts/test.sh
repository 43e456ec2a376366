#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with warnings as errors, and all
# tests. Extra arguments go to `cargo test` (e.g. `scripts/test.sh redis_restart`).
#
# The integration tests start their own throwaway redis-server and Postgres, from
# the installed binaries, in a temporary directory on free ports. They need the
# binaries, not running services; this script installs the Debian packages when
# the binaries are missing (as root, or through sudo).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

step "Checking for the redis-server and Postgres binaries"
packages=()
command -v redis-server >/dev/null || packages+=(redis-server)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || packages+=(postgresql)
if ((${#packages[@]} > 0)); then
    command -v apt-get >/dev/null || die "install ${packages[*]} (this script knows only apt-get)"
    if [[ $EUID -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        die "install ${packages[*]}: run this as root once, or install them yourself"
    fi
    echo "    Installing ${packages[*]}"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}"
else
    echo "    Present"
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
