#!/usr/bin/env bash
# ctest driver (cli_checkpoints): the checkpoint flags of the built cumnist on real MNIST (CPU).
#  - `train --epochs 2 --save A` and `train --epochs 1 --save B` + `train --resume B/last.safetensors
#    --epochs 2 --save B` write bit-identical tensors (parameters and Adam state);
#  - SIGTERM in the middle of an epoch stops after the step in flight with exit 143 and saves; the
#    resumed run (saving to the same folder by default) ends bit-identical to an uninterrupted one;
#  - a contradicting flag on --resume, a finished run, a corrupt --model and an unusable --save
#    folder each fail with one clear message and a non-zero exit.
# Exits 77 (reported by ctest as skipped, with the reason) when MNIST is missing.
# Usage: tests/test_cli_checkpoints.sh CUMNIST_BINARY WORK_DIR
set -euo pipefail
cumnist="$1"
work="$2"

source "$(dirname "${BASH_SOURCE[0]}")/require_mnist.sh"  # sets $data

rm -rf "$work"
mkdir -p "$work"
cd "$work"
base=("$cumnist" train --device cpu --data "$data")
train=("${base[@]}" --hidden 32)
fail() { echo "FAILED: $*"; exit 1; }

# The tensor bytes of a checkpoint: everything after the 8-byte length and the JSON header (the
# header itself differs between runs: it records timings).
tensors() {
  local n
  n=$(od -An -t u8 -N8 "$1" | tr -d ' ')
  tail -c +$((9 + n)) "$1"
}

"${train[@]}" --epochs 2 --save straight > straight.log
"${train[@]}" --epochs 1 --save split > split1.log
"${base[@]}" --resume split/last.safetensors --epochs 2 --save split > split2.log
grep -q "resumed    from split/last.safetensors: epoch 1 done (1875 steps), continuing with epoch 2" split2.log ||
  fail "the resumed run does not say where it continues: $(cat split2.log)"
cmp <(tensors straight/last.safetensors) <(tensors split/last.safetensors) ||
  fail "2 epochs straight and 1 + 1 resumed give different tensors"
echo "exact resume: 2 epochs == 1 epoch + resumed epoch, tensors bit-identical ($(tensors split/last.safetensors | wc -c) bytes)"
[ -e straight/best.safetensors ] || fail "no best.safetensors"
if ls straight/*.tmp split/*.tmp 2>/dev/null; then fail "temporary files left behind"; fi

# expect_error MESSAGE COMMAND...: the command fails (exit 1) with MESSAGE on stderr.
expect_error() {
  local message="$1" rc=0
  shift
  "$@" > out.log 2> err.log || rc=$?
  [ "$rc" -eq 1 ] || fail "'$*' exited $rc, expected 1 (stderr: $(cat err.log))"
  grep -qF -- "$message" err.log || fail "'$*': expected '$message' in: $(cat err.log)"
  [ "$(wc -l < err.log)" -eq 1 ] || fail "'$*': more than one line on stderr: $(cat err.log)"
  echo "ok: $(cat err.log)"
}
expect_error "--hidden 64 contradicts the checkpoint, which has hidden 32" \
  "${base[@]}" --resume split/last.safetensors --hidden 64 --epochs 3
expect_error "--seed 1 contradicts the checkpoint, which has seed 42" \
  "${base[@]}" --resume split/last.safetensors --seed 1 --epochs 3
expect_error "the checkpoint has finished epoch 2 of 2; pass --epochs N with N > 2" \
  "${base[@]}" --resume split/last.safetensors
head -c 20000 split/last.safetensors > truncated.safetensors
expect_error "checkpoint 'truncated.safetensors': tensor" "$cumnist" eval --device cpu --model truncated.safetensors
expect_error "the file is truncated" "$cumnist" eval --device cpu --model truncated.safetensors
expect_error "is a folder, expected a .safetensors file" "$cumnist" eval --device cpu --model split
touch a-file
expect_error "--save: cannot create folder 'a-file/run': Not a directory" "${train[@]}" --epochs 1 --save a-file/run
# eval --misclassified writes a PNG grid of the test images the model gets wrong.
"$cumnist" eval --device cpu --data "$data" --model straight/best.safetensors --misclassified wrong.png > eval.log
grep -q "^Wrote wrong.png" eval.log || fail "eval --misclassified did not report the picture: $(cat eval.log)"
[ "$(head -c 8 wrong.png | od -An -t x1 | tr -d ' ')" = "89504e470d0a1a0a" ] || fail "wrong.png is not a PNG"
echo "eval --misclassified: $(grep '^Wrote' eval.log)"

# Interruption inside an epoch (the default model: an epoch takes seconds, not milliseconds).
"${base[@]}" --epochs 1 --save whole > whole.log
"${base[@]}" --epochs 1 --save cut > cut.log 2>&1 &
pid=$!
for _ in $(seq 1 600); do grep -q "^Epoch 1/1" cut.log && break; sleep 0.1; done
sleep 1
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" -eq 143 ] || fail "SIGTERM during training exited $rc, expected 143: $(cat cut.log)"
grep -q "Interrupted by SIGTERM in epoch 1 after step" cut.log || fail "no interruption message: $(cat cut.log)"
grep -q "Saved cut/last.safetensors" cut.log || fail "the interrupted run did not save: $(cat cut.log)"
echo "interrupted: $(grep Interrupted cut.log)"
"${base[@]}" --resume cut/last.safetensors > resumed.log
grep -q "continuing with epoch 1 at step" resumed.log || fail "the resumed run does not say where it continues"
cmp <(tensors whole/last.safetensors) <(tensors cut/last.safetensors) ||
  fail "an interrupted and resumed epoch differs from an uninterrupted one"
echo "exact resume after SIGTERM: tensors bit-identical"
if ls whole/*.tmp cut/*.tmp 2>/dev/null; then fail "temporary files left behind"; fi
echo "OK"
