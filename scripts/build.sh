#!/usr/bin/env bash
# Configures and builds cumnist into build/ (or $CUMNIST_BUILD_DIR). Extra arguments go to CMake's
# configure step, e.g. -DCUMNIST_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${CUMNIST_BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
