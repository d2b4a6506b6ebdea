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
source "$(dirname "${BASH_SOURCE[0]}")/expect_error.sh"  # fail, expect_error

rm -rf "$work"
mkdir -p "$work"
cd "$work"
base=("$cumnist" train --device cpu --data "$data")
train=("${base[@]}" --hidden 32)

# The tensor bytes of a checkpoint: everything after the 8-byte length and the JSON header (the
# header itself differs between runs: it records timings). Returns non-zero, with the reason on
# stderr, for a missing or unreadable file or one with no bytes after its header.
tensors() {
  local file="$1" n size
  if [ ! -f "$file" ] || [ ! -r "$file" ]; then echo "tensors: '$file' is not a readable file" >&2; return 1; fi
  n=$(od -An -t u8 -N8 "$file" | tr -d ' ') || { echo "tensors: cannot read '$file'" >&2; return 1; }
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "tensors: '$file' has no 8-byte header length" >&2; return 1; }
  size=$(wc -c < "$file") || return 1
  if [ "$size" -le $((8 + n)) ]; then
    echo "tensors: '$file' holds $size bytes: nothing after its $n-byte header" >&2
    return 1
  fi
  tail -c +$((9 + n)) "$file"
}

# same_tensors A B WHAT: checkpoints A and B hold byte-identical tensors. Each side is extracted
# to a file first and must succeed with a non-empty result, so that two missing or unreadable
# checkpoints (two empty outputs) cannot compare equal. Sets $tensor_bytes.
same_tensors() {
  local a="$1" b="$2" what="$3" file side=0
  for file in "$a" "$b"; do
    side=$((side + 1))
    tensors "$file" > "tensors.$side" || fail "$what: cannot extract the tensors of '$file'"
    [ -s "tensors.$side" ] || fail "$what: '$file' gave no tensor bytes"
  done
  cmp tensors.1 tensors.2 || fail "$what: '$a' and '$b' hold different tensors"
  tensor_bytes=$(wc -c < tensors.1)
  rm -f tensors.1 tensors.2
}

"${train[@]}" --epochs 2 --save straight > straight.log
"${train[@]}" --epochs 1 --save split > split1.log
"${base[@]}" --resume split/last.safetensors --epochs 2 --save split > split2.log
grep -q "resumed    from split/last.safetensors: epoch 1 done (1875 steps), continuing with epoch 2" split2.log ||
  fail "the resumed run does not say where it continues: $(cat split2.log)"
same_tensors straight/last.safetensors split/last.safetensors "2 epochs straight against 1 + 1 resumed"
echo "exact resume: 2 epochs == 1 epoch + resumed epoch, tensors bit-identical ($tensor_bytes bytes)"
[ -e straight/best.safetensors ] || fail "no best.safetensors"
if ls straight/*.tmp split/*.tmp 2>/dev/null; then fail "temporary files left behind"; fi

# --validation-split: 10 % held out (54,000 training images: 1,688 steps), per-epoch numbers and
# best.safetensors on validation, the test set once at the end; a resumed run keeps the split.
"${train[@]}" --epochs 2 --validation-split 0.1 --save vstraight --metrics-out vstraight.jsonl > vstraight.log
grep -q "^  validation 6000 images (10 % of the training set, stratified by class, seed 42)" vstraight.log ||
  fail "no validation line: $(cat vstraight.log)"
grep -q "^1688/1688 " vstraight.log || fail "the training set is not 54000 images: $(cat vstraight.log)"
grep -q "^Done: 2 epochs in .*; best validation accuracy" vstraight.log || fail "no best validation accuracy: $(cat vstraight.log)"
grep -q "^Test (evaluated once, after the last epoch): loss [0-9.]* - accuracy 0\.9[0-9]* on 10000 images" vstraight.log ||
  fail "no final test evaluation: $(cat vstraight.log)"
[ "$(grep -c '"validation_accuracy"' vstraight.jsonl)" -eq 2 ] && ! grep -q '"test_accuracy"' vstraight.jsonl ||
  fail "the metrics do not say they are validation numbers: $(cat vstraight.jsonl)"
"${train[@]}" --epochs 1 --validation-split 0.1 --save vsplit > vsplit1.log
"${base[@]}" --resume vsplit/last.safetensors --epochs 2 > vsplit2.log
grep -q "^  validation 6000 images" vsplit2.log || fail "the resumed run lost its validation split: $(cat vsplit2.log)"
same_tensors vstraight/last.safetensors vsplit/last.safetensors "2 epochs with a validation split against 1 + 1 resumed"
echo "exact resume with --validation-split 0.1: tensors bit-identical ($tensor_bytes bytes)"

# A learning-rate schedule: the rate of each epoch in its line and its metrics, kept across resume.
sched=(--lr-schedule step --lr-step-epochs 1 --lr-gamma 0.5)
"${train[@]}" --epochs 3 "${sched[@]}" --save sstraight --metrics-out sstraight.jsonl > sstraight.log
grep -q "^  optimizer  adam .*, learning rate step (x0.5 every epoch)" sstraight.log || fail "no schedule line: $(cat sstraight.log)"
[ "$(grep -o ' - lr: [0-9.e-]*' sstraight.log | tr '\n' ' ')" = " - lr: 0.001  - lr: 0.0005  - lr: 0.00025 " ] ||
  fail "the epochs' rates are not 1e-3, 5e-4, 2.5e-4: $(grep -o ' - lr: [0-9.e-]*' sstraight.log)"
[ "$(grep -c '"lr":' sstraight.jsonl)" -eq 3 ] && grep -q '"lr":0.00025' sstraight.jsonl ||
  fail "the metrics do not carry the rate: $(cat sstraight.jsonl)"
"${train[@]}" --epochs 1 "${sched[@]}" --save ssplit > ssplit1.log
"${base[@]}" --resume ssplit/last.safetensors --epochs 3 > ssplit2.log
grep -q " - lr: 0.00025" ssplit2.log || fail "the resumed run lost its schedule: $(cat ssplit2.log)"
same_tensors sstraight/last.safetensors ssplit/last.safetensors "3 epochs of a step schedule against 1 + 2 resumed"
echo "exact resume with a step schedule: tensors bit-identical ($tensor_bytes bytes)"

expect_error "--hidden 64 contradicts the checkpoint, which has the model 784-32-10 relu, dropout 0.2" \
  "${base[@]}" --resume split/last.safetensors --hidden 64 --epochs 3
expect_error "--model cnn contradicts the checkpoint, which has the model 784-32-10 relu, dropout 0.2" \
  "${base[@]}" --resume split/last.safetensors --model cnn --epochs 3
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
expect_error "--lr-schedule plateau watches the validation loss: give --validation-split F too" "${train[@]}" --lr-schedule plateau
expect_error "--early-stopping watches the validation loss" "${train[@]}" --early-stopping 3
expect_error "--lr-gamma applies to --lr-schedule step or plateau only; the schedule is constant" "${train[@]}" --lr-gamma 0.5
expect_error "--lr-warmup-epochs 3 leaves no epoch of the 3 for the cosine" "${train[@]}" --epochs 3 --lr-schedule cosine --lr-warmup-epochs 3
expect_error "--resume 'sstraight/last.safetensors': --lr-schedule cosine (falling towards x0) contradicts the checkpoint, which has the learning-rate schedule step (x0.5 every epoch)" \
  "${base[@]}" --resume sstraight/last.safetensors --epochs 4 --lr-schedule cosine
# eval --misclassified writes a PNG grid of the test images the model gets wrong.
"$cumnist" eval --device cpu --data "$data" --model straight/best.safetensors --misclassified wrong.png > eval.log
grep -q "^Wrote wrong.png" eval.log || fail "eval --misclassified did not report the picture: $(cat eval.log)"
[ "$(head -c 8 wrong.png | od -An -t x1 | tr -d ' ')" = "89504e470d0a1a0a" ] || fail "wrong.png is not a PNG"
echo "eval --misclassified: $(grep '^Wrote' eval.log)"
# --data as users type it: the folder that itself holds the IDX files is accepted; a file is named.
"$cumnist" eval --device cpu --data "$data/mnist" --model straight/best.safetensors > eval-folder.log
grep -qF "from $data/mnist" eval-folder.log || fail "eval --data DATA/mnist did not read DATA/mnist: $(cat eval-folder.log)"
"$cumnist" eval --device cpu --data "$data" --model straight/best.safetensors > eval-parent.log
[ "$(grep '^Test loss' eval-folder.log)" = "$(grep '^Test loss' eval-parent.log)" ] && grep -q "(10000 of 10000\|of 10000 correct)" eval-folder.log ||
  fail "eval of DATA/mnist and of DATA differ: $(grep '^Test' eval-folder.log eval-parent.log)"
expect_error "--data 'a-file' is not a folder" "$cumnist" eval --device cpu --data a-file --model straight/best.safetensors
expect_error "does not exist" "$cumnist" eval --device cpu --data no-such-folder --model straight/best.safetensors

# A sweep stopped by SIGINT in a trial continues, when run again, with that trial: each trial is
# recorded once, and none is run twice. In this process (the default), as child processes
# (--isolate), and two trials at a time (--parallel 2: the signal stops both running trials).
echo '{"hidden": ["64", "512", "128"], "lr": [0.001]}' > space.json  # trial 2 takes seconds: the signal lands in it
for mode in "" "--isolate" "--parallel 2" "--parallel 2 --isolate"; do
  out="sweep${mode// /}"
  # shellcheck disable=SC2206  # $mode is meant to split into its words
  sweep=("$cumnist" sweep --space space.json --data "$data" --epochs 2 --device cpu --threads 1 --out "$out" $mode)
  "${sweep[@]}" > sweep1.log 2>&1 &
  pid=$!
  # The signal once trials 1 and 2 are both training (trial 1 may have finished; trial 2 takes seconds).
  for _ in $(seq 1 600); do
    grep -qs "^Epoch 1/2" "$out/trial-0000/train.log" && grep -qs "^Epoch 1/2" "$out/trial-0001/train.log" && break
    sleep 0.1
  done
  kill -INT "$pid"  # (as Ctrl-C would; the shell started it with SIGINT ignored, which the sweep overrides)
  rc=0
  wait "$pid" || rc=$?
  [ "$rc" -eq 130 ] || fail "sweep $mode: SIGINT exited $rc, expected 130: $(cat sweep1.log)"
  grep -q "^Interrupted in trial 2; run the same command again to continue." sweep1.log ||
    fail "sweep $mode: no interruption line: $(cat sweep1.log)"
  recorded=0
  [ ! -f "$out/trials.jsonl" ] || recorded=$(wc -l < "$out/trials.jsonl")
  if [ -z "$mode" ] || [ "$mode" = "--isolate" ]; then
    [ "$recorded" -eq 1 ] || fail "sweep $mode: the interrupted sweep recorded $recorded trials, expected 1"
  else
    [ "$recorded" -le 1 ] || fail "sweep $mode: the interrupted sweep recorded $recorded trials, expected at most trial 1"
  fi
  before=$(grep -o '"trial":[0-9]*' "$out/trials.jsonl" 2>/dev/null || true)
  # Every trial running at the signal got it (in process: the stop flag; --isolate: the forwarded
  # signal) and saved; the one that had finished was recorded.
  for k in 0 1; do
    if ! printf '%s\n' "$before" | grep -qx "\"trial\":$k"; then
      grep -q "^Interrupted by SIGINT in epoch" "$out/trial-000$k/train.log" ||
        fail "sweep $mode: trial $((k + 1)) was neither recorded nor interrupted: $(cat "$out/trial-000$k/train.log")"
      [ -s "$out/trial-000$k/last.safetensors" ] || fail "sweep $mode: interrupted trial $((k + 1)) saved no checkpoint"
    fi
  done
  "${sweep[@]}" > sweep2.log 2>&1 || fail "sweep $mode: the resumed sweep failed: $(cat sweep2.log)"
  for k in 1 2 3; do
    ran=$(grep -c "^Trial $k/3" sweep2.log || true)
    expected=1
    if printf '%s\n' "$before" | grep -qx "\"trial\":$((k - 1))"; then expected=0; fi
    [ "$ran" -eq "$expected" ] || fail "sweep $mode: trial $k ran $ran times on resume, expected $expected: $(cat sweep2.log)"
  done
  [ "$(grep -c '"status":"done"' "$out/trials.jsonl")" -eq 3 ] || fail "sweep $mode: trials.jsonl: $(cat "$out/trials.jsonl")"
  grep -q "^Its test set result (evaluated once, after the selection): Test loss" sweep2.log ||
    fail "sweep $mode: no test result: $(cat sweep2.log)"
  echo "sweep ${mode:-in process} resumed after SIGINT: $(grep '^Best:' sweep2.log)"
done

# Interruption inside an epoch: a model and thread count that make an epoch take seconds (~8 s
# here), so that the signal a second after the epoch starts lands inside it on any machine.
slow=(--hidden 1024,1024 --threads 1)
"${base[@]}" "${slow[@]}" --epochs 1 --save whole > whole.log
"${base[@]}" "${slow[@]}" --epochs 1 --save cut > cut.log 2>&1 &
pid=$!
for _ in $(seq 1 600); do grep -q "^Epoch 1/1" cut.log && break; sleep 0.1; done
sleep 1
# No thread that computes may take the signal: a handler's frame written below the stack pointer of
# a oneDNN kernel that has pointed it into a heap workspace corrupts the heap. Every thread of the
# run (main, the loader's, OpenMP's) has SIGINT and SIGTERM blocked, but the one that takes them in
# sigwait() (which shows them unblocked while it waits).
threads=0 receivers=0
for task in /proc/"$pid"/task/*; do
  blocked=$(sed -n 's/^SigBlk:[[:space:]]*//p' "$task/status" 2>/dev/null) || continue
  [ -n "$blocked" ] || continue  # a thread that has just exited
  if [ "$(cat "$task/comm" 2>/dev/null)" = cumnist-signals ]; then
    receivers=$((receivers + 1))
    continue
  fi
  threads=$((threads + 1))
  (( (16#$blocked & 16#4002) == 16#4002 )) || fail "thread $task has SIGINT or SIGTERM unblocked (SigBlk $blocked)"
done
[ "$receivers" -eq 1 ] || fail "the training run has $receivers signal threads, expected 1"
[ "$threads" -ge 1 ] || fail "found no thread of the training run but the signal thread"
echo "signals: blocked in all $threads computing threads of the training run, taken by its signal thread"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" -eq 143 ] || fail "SIGTERM during training exited $rc, expected 143: $(cat cut.log)"
grep -q "Interrupted by SIGTERM in epoch 1 after step" cut.log || fail "no interruption message: $(cat cut.log)"
grep -q "Saved cut/last.safetensors" cut.log || fail "the interrupted run did not save: $(cat cut.log)"
echo "interrupted: $(grep Interrupted cut.log)"
done_steps=$(sed -n 's/.*after step \([0-9]*\) of 1875.*/\1/p' cut.log)
[ -n "$done_steps" ] || fail "no step count in the interruption message: $(cat cut.log)"
"${base[@]}" --threads 1 --resume cut/last.safetensors --metrics-out resumed.jsonl > resumed.log
grep -q "continuing with epoch 1 at step $((done_steps + 1))" resumed.log ||
  fail "the resumed run does not say where it continues: $(cat resumed.log)"
# The epoch's line and metrics say they cover only the steps run after the resume.
grep -q "^1875/1875 .* (steps $((done_steps + 1))-1875 only: resumed inside the epoch)$" resumed.log ||
  fail "the resumed epoch's line does not say which steps it covers: $(cat resumed.log)"
grep -q "\"first_step\":$((done_steps + 1)),.*\"steps\":$((1875 - done_steps))\|\"steps\":$((1875 - done_steps)).*\"first_step\":$((done_steps + 1))" resumed.jsonl ||
  fail "the resumed epoch's metrics do not say which steps they cover: $(cat resumed.jsonl)"
same_tensors whole/last.safetensors cut/last.safetensors "an interrupted and resumed epoch against an uninterrupted one"
echo "exact resume after SIGTERM: tensors bit-identical ($tensor_bytes bytes)"
if ls whole/*.tmp cut/*.tmp 2>/dev/null; then fail "temporary files left behind"; fi
echo "OK"
