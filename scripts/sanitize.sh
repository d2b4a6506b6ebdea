#!/usr/bin/env bash
# Builds the CPU code (library, CLI, tests; no CUDA) with AddressSanitizer + UndefinedBehaviorSanitizer
# into build-asan/ (or $CUMNIST_ASAN_BUILD_DIR) and runs the test suite under them with ctest, except
# the long EndToEnd test. Any sanitizer report aborts the test that triggered it; exits non-zero on
# any failure. Extra arguments go to ctest (e.g. -R Idx). Uses $CXX when set (default: the system c++).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
build_dir="${CUMNIST_ASAN_BUILD_DIR:-build-asan}"
scripts/setup.sh

# Also in effect while building: gtest_discover_tests runs the instrumented test binary.
# exitcode: a sanitizer report exits 86 (ASan, LeakSanitizer) or 87 (UBSan), never 1, the status of
# every handled error of the CLI, which the tests expect exactly: a report after an expected error
# message fails the test instead of passing for it. (In this build both sanitizers share one
# runtime, where the value parsed last, UBSan's, may apply to every report; either way not 1, 2,
# 77, 130 or 143.)
export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1:abort_on_error=0:exitcode=86${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87:suppressions=$root/tests/sanitizers/ubsan.supp${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCUMNIST_CUDA=OFF -DCUMNIST_SANITIZE=ON >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" -E 'EndToEnd' "$@"
echo "sanitize: the test suite passed under AddressSanitizer + UndefinedBehaviorSanitizer"
