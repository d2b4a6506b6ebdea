#!/usr/bin/env bash
# ctest driver (write_failures): every file the built cumnist writes, on a full disk (CPU).
# A full disk is simulated without root by the file-size limit: under `ulimit -f N` (bash counts
# 1024-byte blocks) with SIGXFSZ ignored (an ignored signal stays ignored across exec), a write
# past N blocks fails with EFBIG ("File too large") just as one past the free space fails with
# ENOSPC. For train --save (last.safetensors), train --metrics-out, eval --json, eval
# --misclassified, show --out, bench --json and predict --save-preprocessed, the failing command
# must exit 1 with one error line naming the file and the reason, leave the good file written
# before it byte-identical, and leave no partial or temporary file behind; so must a report on
# standard output redirected to a file on the full disk. Also: a --save folder where nothing can
# be written fails before training; and a best.safetensors that cannot be replaced is reported and
# keeps the previous one. These are the cases run by default (CASES file-size: ctest's
# write_failures).
# CASES enospc (ctest's write_failures_enospc): a checkpoint save on a really full file system
# (ENOSPC), a small tmpfs mounted in a private user and mount namespace (unshare -rm); exits 77
# with the reason where an unprivileged user may not do that.
# The runs use the first 2000 training and 1000 test images of real MNIST, so the test takes
# seconds. Exits 77 (reported by ctest as skipped, with the reason) when MNIST is missing.
# Usage: tests/test_write_failures.sh CUMNIST_BINARY WORK_DIR [file-size|enospc]
set -euo pipefail
cumnist="$1"
work="$2"
cases="${3:-file-size}"
case "$cases" in
  file-size|enospc) ;;
  *) echo "usage: $0 CUMNIST_BINARY WORK_DIR [file-size|enospc]" >&2; exit 2 ;;
esac

source "$(dirname "${BASH_SOURCE[0]}")/require_mnist.sh"  # sets $data

rm -rf "$work"
mkdir -p "$work"
cd "$work"
fail() { echo "FAILED: $*"; exit 1; }

if [ "$cases" = enospc ]; then
  # Checked before anything is trained: without user namespaces the case cannot run.
  if ! reason="$(unshare -rm true 2>&1)"; then
    echo "SKIPPED: no unprivileged user and mount namespaces here (unshare -rm: ${reason:-failed}), so no tmpfs can be mounted"
    exit 77
  fi
else
  # The mechanism itself: a child process writing past the limit gets EFBIG, not SIGXFSZ.
  rc=0
  ( ulimit -f 1; trap '' XFSZ; exec head -c 5000 /dev/zero > cap-probe ) 2> /dev/null || rc=$?
  if [ "$rc" -eq 0 ] || [ "$(wc -c < cap-probe)" -ne 1024 ]; then
    echo "SKIPPED: the file-size limit (ulimit -f) does not stop writes here (exit $rc, $(wc -c < cap-probe) bytes written)"
    exit 77
  fi
fi

# A subset of MNIST: the first N items of each file, under an IDX header that says N.
be32() { printf "\\x$(printf %02x $(($1 >> 24 & 255)))\\x$(printf %02x $(($1 >> 16 & 255)))\\x$(printf %02x $(($1 >> 8 & 255)))\\x$(printf %02x $(($1 & 255)))"; }
subset() {  # subset FILE N: writes sub/mnist/FILE with the first N items
  local src="$data/mnist/$1" n="$2" header=8 item=1 reader=(cat)
  [ -e "$src" ] || { src="$src.gz"; reader=(gzip -dc); }
  case "$1" in *images*) header=16 item=784 ;; esac
  {
    if [ "$header" -eq 16 ]; then printf '\x00\x00\x08\x03'; else printf '\x00\x00\x08\x01'; fi
    be32 "$n"
    if [ "$header" -eq 16 ]; then be32 28; be32 28; fi
    "${reader[@]}" "$src" | tail -c +$((header + 1)) | head -c $((n * item)) || true
  } > "sub/mnist/$1"
}
mkdir -p sub/mnist
subset train-images-idx3-ubyte 2000
subset train-labels-idx1-ubyte 2000
subset t10k-images-idx3-ubyte 1000
subset t10k-labels-idx1-ubyte 1000
export OMP_NUM_THREADS=1
train=("$cumnist" train --device cpu --threads 1 --data sub --hidden 32 --epochs 1)
eval_=("$cumnist" eval --device cpu --threads 1 --data sub)
bench=("$cumnist" bench --device cpu --threads 1 --data sub --hidden 32 --batch-sizes 32 --warmup 1 --steps 2
       --eval-repeats 0 --gemm-size 0 --no-gemm-floor)

single_line() { [ "$(wc -l < err.log)" -eq 1 ] || fail "more than one line on stderr: $(cat err.log)"; }

# A really full file system (ENOSPC): a 400 KiB tmpfs holding a good last.safetensors (300 KB),
# mounted in a private user and mount namespace; saving the next checkpoint there must fail with
# one line and leave the old one byte-identical and no temporary file.
if [ "$cases" = enospc ]; then
  mkdir good tmpfs after
  "${train[@]}" --save good > good/train.log
  [ -s good/last.safetensors ] || fail "the unlimited run did not write good/last.safetensors"
  rc=0
  unshare -rm bash -c '
    set -eu
    mount -t tmpfs -o size=400k cumnist-full tmpfs 2> mount.log || exit 90
    cp good/last.safetensors tmpfs/ || exit 91
    rc=0
    "$@" --save tmpfs > out.log 2> err.log || rc=$?
    cp -a tmpfs/. after/
    exit "$rc"' bash "${train[@]}" || rc=$?
  if [ "$rc" -eq 90 ]; then
    echo "SKIPPED: a tmpfs cannot be mounted here (unshare -rm mount -t tmpfs: $(cat mount.log))"
    exit 77
  fi
  [ "$rc" -ne 91 ] || fail "the good last.safetensors does not fit on the 400 KiB tmpfs"
  [ "$rc" -eq 1 ] || fail "a save on a full tmpfs exited $rc, expected 1: $(cat err.log)"
  grep -qF "cumnist: error: cannot write checkpoint 'tmpfs/last.safetensors': No space left on device; the existing file is unchanged" err.log ||
    fail "a save on a full tmpfs: $(cat err.log)"
  single_line
  cmp -s good/last.safetensors after/last.safetensors || fail "the full tmpfs's last.safetensors changed"
  [ "$(ls -A after)" = "last.safetensors" ] || fail "the full tmpfs holds $(ls -A after)"
  echo "ok (tmpfs): $(cat err.log)"
  echo "OK"
  exit 0
fi

# The good files, written without a limit.
mkdir good
"${train[@]}" --save good --metrics-out good/metrics.jsonl > good/train.log
"${eval_[@]}" --model good/last.safetensors --json good/eval.json --misclassified good/wrong.png > good/eval.log
"$cumnist" show --data sub --seed 1 -n 1 --columns 1 --out good/show.png > good/show.log
"${bench[@]}" --json good/bench.json > good/bench.log 2>&1
"$cumnist" predict --model good/last.safetensors good/show.png --save-preprocessed good/seen.png > good/predict.log
for f in last.safetensors best.safetensors metrics.jsonl eval.json wrong.png show.png bench.json seen.png; do
  [ -s "good/$f" ] || fail "the unlimited run did not write good/$f"
done
echo "good files: $(cd good && ls | tr '\n' ' ')"

# limited KIB COMMAND...: runs COMMAND with every regular file it writes capped at KIB KiB; its
# stdout and stderr go through pipes (which the cap does not touch) to out.log and err.log. Sets rc.
limited() {
  local kib="$1"
  shift
  rc=0
  { ( ulimit -f "$kib"; trap '' XFSZ; exec "$@" 2>&3 3>&- ) | cat > out.log; } 3>&1 | cat > err.log || rc=$?
}

# expect_write_failure TARGET REASON GOOD KIB COMMAND...: TARGET holds a copy of GOOD; COMMAND,
# run under the cap, fails with exit 1 and one error line (the last line on stderr) naming TARGET
# and REASON; TARGET is still byte-identical to GOOD, and its folder holds no temporary file.
expect_write_failure() {
  local target="$1" reason="$2" good="$3" kib="$4"
  shift 4
  cp "$good" "$target"
  limited "$kib" "$@"
  [ "$rc" -eq 1 ] || fail "'$*' exited $rc under a $kib KiB cap, expected 1 (stderr: $(cat err.log))"
  [ "$(grep -c '^cumnist: error: ' err.log)" -eq 1 ] || fail "'$*': not exactly one error line: $(cat err.log)"
  local line
  line="$(tail -n 1 err.log)"
  case "$line" in "cumnist: error: "*) ;; *) fail "'$*': the error is not the last line on stderr: $(cat err.log)" ;; esac
  grep -qF -- "'$target'" <<< "$line" || fail "'$*': the error does not name '$target': $line"
  grep -qF -- "$reason" <<< "$line" || fail "'$*': the error does not give the reason '$reason': $line"
  cmp -s "$good" "$target" || fail "'$*': $target changed (a truncated file where a good one was)"
  if ls "$(dirname "$target")"/*.tmp 2> /dev/null; then fail "'$*': a temporary file was left behind"; fi
  echo "ok: $line"
}

# train --save: the checkpoint (300 KB) cannot be written past 100 KiB; the previous last and
# best survive byte-identical (best is only written after last).
mkdir full
cp good/best.safetensors full/best.safetensors
expect_write_failure full/last.safetensors "File too large" good/last.safetensors 100 "${train[@]}" --save full
single_line
cmp -s good/best.safetensors full/best.safetensors || fail "full/best.safetensors changed"
[ "$(ls -A full | tr '\n' ' ')" = "best.safetensors last.safetensors " ] || fail "unexpected files in full/: $(ls -a full)"
grep -qF "cannot write checkpoint 'full/last.safetensors': File too large; the existing file is unchanged" err.log ||
  fail "unexpected message: $(cat err.log)"

# train --save into a folder where not even the write test fits: refused before training.
limited 0 "${train[@]}" --save full
[ "$rc" -eq 1 ] && grep -qF "cumnist: error: --save: cannot write into folder 'full': File too large" err.log ||
  fail "--save on a full disk: exit $rc, $(cat err.log)"
grep -q "^Epoch" out.log && fail "--save on a full disk trained before failing"
echo "ok: $(cat err.log)"

# best.safetensors that cannot be replaced (a folder is in its place): reported after last is saved.
mkdir -p nobest/best.safetensors/keep
rc=0
"${train[@]}" --save nobest > out.log 2> err.log || rc=$?
[ "$rc" -eq 1 ] || fail "an unreplaceable best.safetensors: exit $rc, $(cat err.log)"
grep -qxF "cumnist: error: cannot write checkpoint 'nobest/best.safetensors': it is a folder" err.log ||
  fail "an unreplaceable best.safetensors: $(cat err.log)"
[ -s nobest/last.safetensors ] && [ -e nobest/best.safetensors/keep ] || fail "nobest/ holds $(ls -R nobest)"
if ls nobest/*.tmp 2> /dev/null; then fail "a temporary file was left behind in nobest/"; fi
echo "ok: $(cat err.log)"

# The other files: nothing at all can be written (cap 0), so each fails on its first byte.
expect_write_failure metrics.jsonl "File too large" good/metrics.jsonl 0 "${train[@]}" --metrics-out metrics.jsonl
single_line
grep -q "^Epoch 1/1" out.log || fail "--metrics-out was refused before training: $(cat err.log)"
expect_write_failure eval.json "File too large" good/eval.json 0 "${eval_[@]}" --model good/last.safetensors --json eval.json
single_line
expect_write_failure wrong.png "File too large" good/wrong.png 0 \
  "${eval_[@]}" --model good/last.safetensors --misclassified wrong.png
single_line
expect_write_failure show.png "File too large" good/show.png 0 "$cumnist" show --data sub --seed 1 -n 1 --columns 1 --out show.png
single_line
# bench reports its progress on stderr: the error is its last line.
expect_write_failure bench.json "File too large" good/bench.json 0 "${bench[@]}" --json bench.json
expect_write_failure seen.png "File too large" good/seen.png 0 \
  "$cumnist" predict --model good/last.safetensors good/show.png --save-preprocessed seen.png
single_line
if ls ./*.tmp 2> /dev/null; then fail "temporary files left behind"; fi

# Standard output redirected to a file on the full disk: the lost report is an error, not exit 0.
rc=0
( ulimit -f 0; trap '' XFSZ; exec "${eval_[@]}" --model good/last.safetensors > stdout.log ) 2>&1 | cat > err.log || rc=$?
[ "$rc" -eq 1 ] || fail "eval > full disk exited $rc, expected 1: $(cat err.log)"
grep -qxF "cumnist: error: cannot write to standard output: File too large" err.log || fail "eval > full disk: $(cat err.log)"
single_line
echo "ok: $(cat err.log)"

echo "OK"
