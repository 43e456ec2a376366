#!/usr/bin/env bash
# Builds the Debian package (target/debian/jobrunner_<version>_<arch>.deb): the
# release binary, stripped by cargo-deb (its line tables go to a separate
# jobrunner-dbgsym .ddeb), the bash, zsh and fish completions and the man pages,
# all generated from the CLI's own definitions into target/assets/ first.
# Needs cargo-deb: `cargo install cargo-deb`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

command -v cargo-deb >/dev/null || die "cargo-deb is not installed: cargo install cargo-deb"

step "cargo build --release"
cargo build --release
bin=${CARGO_TARGET_DIR:-target}/release/jobrunner

step "Generating completions and man pages into target/assets"
assets=target/assets
rm -rf "$assets"
mkdir -p "$assets/man"
"$bin" completions bash >"$assets/jobrunner.bash"
"$bin" completions zsh >"$assets/_jobrunner"
"$bin" completions fish >"$assets/jobrunner.fish"
"$bin" manpages "$assets/man"
gzip -9n "$assets"/man/*.1
note "$(find "$assets" -type f | wc -l) files"

step "cargo deb --no-build -p jobrunner-bin"
cargo deb --no-build -p jobrunner-bin
