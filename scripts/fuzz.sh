#!/usr/bin/env bash
# Usage: scripts/fuzz.sh [SECONDS]  (per target, default 60)
# Builds the libFuzzer targets in tests/fuzz with clang, ASan + UBSan and the CPU code (no CUDA)
# into build-fuzz/ (or $CUMNIST_FUZZ_BUILD_DIR), checks that every saved input in
# tests/fuzz/regressions/<target> still passes, then runs each target for SECONDS on a copy of its
# seed corpus (tests/fuzz/corpus/<target without "fuzz_">, with tests/fuzz/<same>.dict when there is
# one), leaving the committed corpus untouched.
# Prints how long each ran and how many inputs it executed; exits non-zero when a target finds a
# crash, leak, sanitizer report, timeout or out-of-memory input (saved under
# <build>/fuzz-runs/<target>/artifacts/, with the log alongside).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz: SECONDS must be a positive whole number, got '$seconds'" >&2
  exit 2
fi
build_dir="${CUMNIST_FUZZ_BUILD_DIR:-build-fuzz}"
scripts/setup.sh

targets=()
for src in tests/fuzz/fuzz_*.cpp; do
  targets+=("$(basename "$src" .cpp)")
done

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DCUMNIST_CUDA=OFF -DCUMNIST_FUZZ=ON -DCUMNIST_TESTS=OFF >/dev/null
cmake --build "$build_dir" -j "$(nproc)" --target "${targets[@]}"

# exitcode: as in scripts/sanitize.sh, a sanitizer report exits 86 (ASan, LeakSanitizer) or 87
# (UBSan; in the shared runtime possibly for every report), distinct from the target's own exits;
# any non-zero exit of a target fails this script.
export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1:exitcode=86${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87:suppressions=$root/tests/sanitizers/ubsan.supp${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# One process per target: this is a bounded CI run, not a campaign; OpenMP/BLAS stay single-threaded.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

failed=()
summary=()
for t in "${targets[@]}"; do
  bin="$build_dir/tests/fuzz/$t"
  name="${t#fuzz_}"
  work="$build_dir/fuzz-runs/$t"
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp tests/fuzz/corpus/"$name"/* "$work/corpus/"
  seeds=$(ls "$work/corpus" | wc -l)

  # Inputs that once crashed must keep passing (run once each, no fuzzing).
  regressions=(tests/fuzz/regressions/"$name"/*)
  if [ -e "${regressions[0]}" ]; then
    bad=0
    for input in "${regressions[@]}"; do
      log="$work/regression-$(basename "$input").log"
      if ! "$bin" -runs=1 "$input" >"$log" 2>&1; then
        echo "fuzz: $t: saved input $input fails again (log: $log):" >&2
        grep -aE '^fuzz_|runtime error|ERROR: |SUMMARY: |#[0-9]+ .* in cumnist::' "$log" | head -n 12 >&2
        bad=$((bad + 1))
      fi
    done
    if [ "$bad" -ne 0 ]; then
      failed+=("$t ($bad of ${#regressions[@]} regression inputs)")
    else
      echo "fuzz: $t: ${#regressions[@]} regression input(s) pass"
    fi
  fi

  echo "fuzz: $t: fuzzing for ${seconds}s from $seeds seed inputs (log: $work/fuzz.log)"
  dict=()
  if [ -f "tests/fuzz/$name.dict" ]; then dict=(-dict="tests/fuzz/$name.dict"); fi
  start=$SECONDS
  rc=0
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 "${dict[@]}" \
    -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/fuzz.log" 2>&1 || rc=$?
  elapsed=$((SECONDS - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/fuzz.log" | tail -n 1)
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$work/fuzz.log" | tail -n 1 || true)
  corpus_after=$(ls "$work/corpus" | wc -l)
  line="$t: ${execs:-?} executions in ${elapsed}s (${rate:-?}/s), corpus $seeds -> $corpus_after inputs"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz: $t FAILED (exit $rc): the end of its log:" >&2
    tail -n 80 "$work/fuzz.log" >&2
    echo "fuzz: $t: inputs that triggered it: $(ls "$work/artifacts" | tr '\n' ' ')" >&2
    failed+=("$t")
    line="$line: FAILED"
  else
    line="$line [libFuzzer: ${done_line:-no final line}]"
  fi
  summary+=("$line")
done

echo "fuzz: summary"
for line in "${summary[@]}"; do echo "  $line"; done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: findings in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: no findings"
