#!/usr/bin/env bash
# The test command: installs what is missing, builds (with the CUDA backend when nvcc is found),
# fetches MNIST and Fashion-MNIST for the real-data tests, and runs the whole suite with ctest
# (which fails when it finds no tests). GPU tests run when a GPU is present and are reported as
# skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
scripts/fetch_data.sh all
ctest --test-dir "${CUMNIST_BUILD_DIR:-build}" --no-tests=error --output-on-failure -j "$(nproc)" "$@"
