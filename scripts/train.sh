#!/usr/bin/env bash
# From a fresh clone to a trained model: installs what is missing, builds, fetches MNIST, then
# runs `cumnist train` with the given arguments (defaults: the reference model, 20 epochs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
scripts/fetch_data.sh mnist
exec "${CUMNIST_BUILD_DIR:-build}/cumnist" train "$@"
