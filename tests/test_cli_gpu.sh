#!/usr/bin/env bash
# ctest driver (cli_gpu): the built cumnist's subcommands on the GPU, on real MNIST:
#  - train (2 epochs, --save), eval and predict of its checkpoint on the GPU, and bench --device gpu
#    printing the captured step's node count;
#  - a GPU checkpoint resumed on the CPU and a CPU checkpoint resumed on the GPU, each for one more
#    epoch: both finish, and a checkpoint evaluates to the same accuracy on both devices (to within
#    one image of the 10,000: the backends' rounding may tip a borderline image);
#  - eval and predict of the same checkpoint agree between devices.
# Exits 77 (skipped, with the reason) when no GPU is usable or MNIST is missing, unless
# CUMNIST_REQUIRE_GPU=1, where a missing GPU fails.
# Usage: tests/test_cli_gpu.sh CUMNIST_BINARY WORK_DIR
set -euo pipefail
cumnist="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
work="$2"

source "$(dirname "${BASH_SOURCE[0]}")/require_mnist.sh"  # sets $data
source "$(dirname "${BASH_SOURCE[0]}")/expect_error.sh"  # fail, expect_error

rm -rf "$work"
mkdir -p "$work"
cd "$work"

[ -x "$cumnist" ] || fail "$cumnist is not an executable"
# Is a GPU usable? One training step on the GPU answers it, with the reason when not; any other
# failure is one.
if ! probe=$("$cumnist" bench --device gpu --data "$data" --batch-sizes 32 --gpu-steps 1 --steps 1 2>&1); then
  reason=$(printf '%s\n' "$probe" | grep -m1 'no usable GPU') ||
    fail "bench --device gpu failed for another reason than a missing GPU: $(printf '%s\n' "$probe" | tail -3)"
  if [ "${CUMNIST_REQUIRE_GPU:-0}" = 1 ]; then
    fail "CUMNIST_REQUIRE_GPU=1 but the GPU is not usable: $reason"
  fi
  # A GPU that is there but unusable (no code for its architecture, a broken driver) is a broken
  # build or installation, not a machine without a GPU (as the GoogleTest cases treat it).
  if [ -e /dev/nvidia0 ] || nvidia-smi -L > /dev/null 2>&1; then
    fail "a GPU is present but this build cannot use it: $reason"
  fi
  echo "SKIPPED: $reason"
  exit 77
fi

train=("$cumnist" train --data "$data" --hidden 64)

# Train on the GPU and save; the per-epoch lines are printed.
"${train[@]}" --device gpu --epochs 2 --save gpu > train-gpu.log 2>&1 || { cat train-gpu.log; fail "train --device gpu failed"; }
grep -q '^Epoch 2/2' train-gpu.log || fail "train --device gpu printed no second epoch: $(tail -3 train-gpu.log)"
[ -f gpu/last.safetensors ] || fail "train --device gpu --save gpu wrote no gpu/last.safetensors"

# The number of test images `eval` classifies correctly ("Test loss L, accuracy A (C of N correct)").
correct_of() {
  grep -m1 -oE '\(([0-9]+) of [0-9]+ correct\)' "$1" | grep -m1 -oE '[0-9]+' | head -1
}
for d in gpu cpu; do
  "$cumnist" eval --device "$d" --data "$data" --model gpu/last.safetensors > "eval-$d.log" 2>&1 ||
    { cat "eval-$d.log"; fail "eval --device $d of the GPU checkpoint failed"; }
done
c_gpu=$(correct_of eval-gpu.log) || fail "eval --device gpu printed no count: $(cat eval-gpu.log)"
c_cpu=$(correct_of eval-cpu.log) || fail "eval --device cpu printed no count: $(cat eval-cpu.log)"
[ -n "$c_gpu" ] && [ -n "$c_cpu" ] || fail "eval printed no count of correct images"
diff=$((c_gpu - c_cpu))
[ "${diff#-}" -le 1 ] || fail "the GPU checkpoint classifies $c_gpu test images correctly on the GPU, $c_cpu on the CPU"

# predict on both devices: the same top class for every picture.
"$cumnist" show --data "$data" --split test --count 1 --seed 7 --out digit.png > show.log 2>&1 ||
  { cat show.log; fail "show failed"; }
for d in gpu cpu; do
  "$cumnist" predict --device "$d" --model gpu/last.safetensors --json digit.png > "predict-$d.json" 2> "predict-$d.err" ||
    { cat "predict-$d.err"; fail "predict --device $d failed"; }
done
top() { grep -oE '"class": *[0-9]+' "$1" | head -1; }
[ -n "$(top predict-gpu.json)" ] || fail "predict --device gpu printed no class: $(cat predict-gpu.json)"
[ "$(top predict-gpu.json)" = "$(top predict-cpu.json)" ] ||
  fail "predict: the GPU says $(top predict-gpu.json), the CPU $(top predict-cpu.json)"

# Resume across devices: a GPU checkpoint for one more epoch on the CPU, a CPU one on the GPU.
cp -r gpu to-cpu
"${train[@]}" --device cpu --resume to-cpu/last.safetensors --epochs 3 > resume-cpu.log 2>&1 ||
  { cat resume-cpu.log; fail "a GPU checkpoint did not resume on the CPU"; }
grep -q '^Epoch 3/3' resume-cpu.log || fail "the CPU resume of a GPU checkpoint ran no third epoch"
! grep -q '^Epoch [12]/3' resume-cpu.log || fail "the CPU resume of a GPU checkpoint trained from the start again"
"${train[@]}" --device cpu --epochs 1 --save cpu > train-cpu.log 2>&1 || { cat train-cpu.log; fail "train --device cpu failed"; }
"${train[@]}" --device gpu --resume cpu/last.safetensors --epochs 2 > resume-gpu.log 2>&1 ||
  { cat resume-gpu.log; fail "a CPU checkpoint did not resume on the GPU"; }
grep -q '^Epoch 2/2' resume-gpu.log || fail "the GPU resume of a CPU checkpoint ran no second epoch"
! grep -q '^Epoch 1/2' resume-gpu.log || fail "the GPU resume of a CPU checkpoint trained from the start again"

# bench on the GPU prints the captured step's node count.
"$cumnist" bench --device gpu --data "$data" --batch-sizes 32 --gpu-steps 200 > bench.log 2>&1 ||
  { cat bench.log; fail "bench --device gpu failed"; }
grep -qE '^CUDA Graph: [0-9]+ nodes per training step' bench.log ||
  fail "bench --device gpu printed no node count: $(tail -5 bench.log)"

echo "cli_gpu: train, eval, predict, bench and resume across devices on the GPU passed"
