#!/usr/bin/env bash
# Regenerates the dashboard screenshots in docs/img/ from a real run: the
# browser test `every_page_fits_a_phone_screen_without_sideways_scrolling`
# starts a daemon on throwaway Postgres and Redis servers, runs a mix of jobs,
# logs in with an admin token in headless Chromium and saves each page, at a
# desktop and at a phone's width. Needs what scripts/test.sh installs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

packages=()
command -v chromium >/dev/null || packages+=(chromium)
command -v chromedriver >/dev/null || packages+=(chromium-driver)
if ((${#packages[@]} > 0)); then
    install_packages "${packages[@]}"
fi

mkdir -p docs/img
step "Running the dashboard in Chromium and saving docs/img/dashboard-*.png"
JOBRUNNER_SCREENSHOTS="$(pwd)/docs/img" cargo test --test integration -- --exact \
    dashboard::every_page_fits_a_phone_screen_without_sideways_scrolling
ls -l docs/img/dashboard-*.png
