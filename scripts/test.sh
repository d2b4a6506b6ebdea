#!/usr/bin/env bash
# The test command: installs what is missing, builds (with the CUDA backend when nvcc is found),
# fetches MNIST for the end-to-end test, and runs the whole suite with ctest. GPU tests run when a
# GPU is present and are reported as skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
scripts/fetch_data.sh mnist
ctest --test-dir "${CUMNIST_BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" "$@"
