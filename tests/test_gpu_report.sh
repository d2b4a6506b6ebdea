#!/usr/bin/env bash
# ctest driver (gpu_report): scripts/gpu_report.sh --quick with the built cumnist and cumnist_tests
# (found through a --bin folder of symlinks to them), checked on the folder it writes and its exit
# status. Without a usable GPU: exit 0, report.md and summary.txt written, the machine section
# there, the GPU sections (GPU test cases, selftest, GPU training) SKIPPED with "no usable GPU",
# PyTorch SKIPPED, and the CPU test cases and the CPU bench PASS. With a usable GPU: exit 0 and
# every GPU section PASS. Then a run with a --bin that lacks cumnist_tests and a data folder
# without MNIST: exit 1, the test binary's path and "MNIST not found in <dir>" named as FAILs.
# Exits 77 (reported by ctest as skipped, with the reason) when real MNIST is missing.
# Usage: tests/test_gpu_report.sh CUMNIST_BINARY WORK_DIR
set -euo pipefail
cumnist="$1"
work="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "$cumnist" in /*) ;; *) cumnist="$(pwd)/$cumnist" ;; esac
case "$work" in /*) ;; *) work="$(pwd)/$work" ;; esac

source "$(dirname "${BASH_SOURCE[0]}")/require_mnist.sh"  # sets $data

tests_bin="$(dirname "$cumnist")/tests/cumnist_tests"
fail() { echo "FAILED: $*"; exit 1; }
[ -x "$cumnist" ] || fail "cumnist not found at $cumnist"
[ -x "$tests_bin" ] || fail "the test binary not found at $tests_bin"

rm -rf "$work"
mkdir -p "$work/bin" "$work/bin-without-tests" "$work/no-data"
ln -s "$cumnist" "$work/bin/cumnist"
ln -s "$tests_bin" "$work/bin/cumnist_tests"
ln -s "$cumnist" "$work/bin-without-tests/cumnist"

errors=0
check() {  # check DESCRIPTION COMMAND...: runs COMMAND, counts a failure with DESCRIPTION
  local what="$1"
  shift
  if "$@"; then echo "ok: $what"; else echo "NOT OK: $what"; errors=$((errors + 1)); fi
}
has() { grep -Eq -- "$1" "$2"; }   # has EXTENDED_REGEX FILE
nonempty() { local f; for f in "$@"; do [ -s "$f" ] || { echo "  (empty or missing: $f)"; return 1; }; done; }
lines_are() { [ -s "$2" ] && [ "$(wc -l <"$2")" = "$1" ]; }   # lines_are N FILE

# --- the quick run, as a user runs it (from another folder, the data folder given) -----------------
report="$work/report"
start=$(date +%s)
set +e
(cd "$work" && env -u CUMNIST_REQUIRE_GPU "$root/scripts/gpu_report.sh" --quick --out "$report" --bin "$work/bin" \
  --data "$data" >"$work/stdout.txt" 2>"$work/stderr.txt")
rc=$?
set -e
echo "gpu_report.sh --quick: exit $rc after $(($(date +%s) - start)) s"
summary="$report/summary.txt"
check "exit 0" [ "$rc" = 0 ]
check "report.md written" [ -s "$report/report.md" ]
check "summary.txt written" [ -s "$summary" ]
check "stdout names the report" has "^report: $report/report.md\$" "$work/stdout.txt"
check "stdout holds the summary" has '^passed: [0-9]+; failed: 0; skipped: [0-9]+$' "$work/stdout.txt"
check "the machine section" has '^PASS +1 +machine ' "$summary"
check "the machine section's raw output" has '^\$ uname -a' "$report/01-machine.txt"
check "report.md has the machine section" has '^## 1\. machine$' "$report/report.md"
check "the versions section" has '^PASS +2 +versions ' "$summary"
check "nothing FAILED" has '^FAILED: none$' "$summary"
check "the raw output of every section" nonempty "$report"/01-machine.txt "$report"/01-nvidia-smi.txt \
  "$report"/02-versions.txt "$report"/03-gpu-tests.txt "$report"/04-selftest.txt "$report"/05-bench.txt \
  "$report"/06-train.txt "$report"/07-pytorch.txt "$report"/08-sweep.txt
check "bench.json written" [ -s "$report/bench.json" ]
if has '^date: .*; GPU: no usable GPU: ' "$summary"; then
  echo "(no usable GPU here: checking the GPU-less report)"
  for section in '3 +GPU test cases' '4 +selftest' '6 +GPU training' '8 +concurrent sweep trials'; do
    check "$section: SKIPPED with no usable GPU" has "^SKIPPED +$section .*no usable GPU: " "$summary"
  done
  check "PyTorch on the GPU: SKIPPED" has '^SKIPPED +7 +PyTorch on the GPU ' "$summary"
  check "the CPU test cases: PASS, with counts" has '^PASS +3b +CPU test cases .* [1-9][0-9]* tests: [0-9]+ passed, 0 failed' "$summary"
  check "the CPU bench: PASS" has '^PASS +5 +bench \(cpu\) .*[1-9][0-9]* CPU ' "$summary"
  check "cpu-tests.json written" [ -s "$report/cpu-tests.json" ]
  check "report.md names the reason in its header" has '^- GPU: no usable GPU: ' "$report/report.md"
  check "report.md marks the GPU test cases SKIPPED" has '^\*\*SKIPPED\*\* .*no usable GPU' "$report/report.md"
  check "no training on the CPU" [ ! -e "$report/metrics.jsonl" ]
else
  echo "(a usable GPU here: checking the GPU report)"
  for section in '3 +GPU test cases' '4 +selftest' '5 +bench \(all\)' '6 +GPU training' '8 +concurrent sweep trials'; do
    check "$section: PASS" has "^PASS +$section " "$summary"
  done
  check "the sweep's gain in the summary" has '8 trials of 2 epochs: 1 at a time .*, 4 at a time ' "$summary"
  check "the CUDA Graph's node count in the summary" has '^bench: CUDA Graph: [0-9]+ nodes per training step' "$summary"
  check "the training run's accuracy in the summary" has '^GPU training: final test accuracy 0\.9' "$summary"
  check "metrics.jsonl: one line per epoch" lines_are 2 "$report/metrics.jsonl"
fi

# --- missing test binary and missing data: FAILs that name what is missing -------------------------
bad="$work/report-missing"
set +e
env -u CUMNIST_REQUIRE_GPU "$root/scripts/gpu_report.sh" --quick --out "$bad" --bin "$work/bin-without-tests" \
  --data "$work/no-data" >"$work/stdout-missing.txt" 2>&1
rc=$?
set -e
check "missing pieces: exit 1" [ "$rc" = 1 ]
check "missing pieces: the test binary's path named" \
  has "^FAIL +3b? +(CPU|GPU) test cases .*test binary not found: $work/bin-without-tests/cumnist_tests" "$bad/summary.txt"
check "missing pieces: the bench names the data folder" \
  has "^FAIL +5 +bench .*MNIST not found in $work/no-data: run scripts/fetch_data.sh" "$bad/summary.txt"
check "missing pieces: the sections still ran" has '^PASS +1 +machine ' "$bad/summary.txt"

if [ "$errors" -gt 0 ]; then
  echo "--- $summary"
  cat "$summary" 2>/dev/null || true
  echo "--- stderr"
  tail -n 20 "$work/stderr.txt" 2>/dev/null || true
  fail "$errors check(s) of scripts/gpu_report.sh failed"
fi
echo "OK"
