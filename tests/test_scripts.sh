#!/usr/bin/env bash
# ctest driver (scripts_plot, scripts_bench_pytorch, scripts_compare): the Python and shell
# tools in scripts/, each run at least once on small inputs, checked on what they print and write.
#  plot           scripts/plot_metrics.py on a tiny metrics.jsonl written here (an epoch written
#                 twice, as by a resumed run), and on two files together: the PNGs are written,
#                 with the size the figure and --dpi give, and the summary line counts the epochs;
#                 a file that is not JSON lines fails with exit 1 and one message. Needs matplotlib.
#  bench_pytorch  scripts/bench_pytorch.py, batch 32, 5 timed steps: its table and JSON; then
#                 --model with a tiny CNN layer string (3 steps): its header names the layers, the
#                 JSON counts its parameters and FLOPs as cumnist; the MLP's layer string is
#                 described as the MLP; a model it cannot build exits 1 with the reason. Needs
#                 real MNIST and torch + numpy.
#  compare        scripts/compare.sh --batch-sizes 32 --steps 5 --warmup 1 --threads 1 with the
#                 given binary, for the MLP and with --model a tiny CNN: both runs trained the
#                 same model, and the side-by-side table matches the two JSON files it keeps.
#                 Needs real MNIST (the files fetch_data.sh pins) and torch + numpy for the
#                 interpreter compare.sh picks; never installs anything (stand-ins for apt-get,
#                 sudo and npm on PATH fail the test if compare.sh calls them).
#  all (default)  the three in turn.
# Exits 77 (reported by ctest as skipped, with the reason) when a part cannot run for want of what
# it needs.
# Usage: tests/test_scripts.sh CUMNIST_BINARY WORK_DIR [plot|bench_pytorch|compare|all]
set -euo pipefail
cumnist="$1"
work="$2"
part="${3:-all}"
case "$part" in
  plot|bench_pytorch|compare|all) ;;
  *) echo "usage: $0 CUMNIST_BINARY WORK_DIR [plot|bench_pytorch|compare|all]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "$cumnist" in /*) ;; *) cumnist="$(pwd)/$cumnist" ;; esac

rm -rf "$work"
mkdir -p "$work"
cd "$work"
fail() { echo "FAILED: $*"; exit 1; }
skip() { echo "SKIPPED: $*"; exit 77; }

# python_with MODULES...: the first of /usr/bin/python3 and python3 that imports MODULES (the scripts
# are written for Debian's /usr/bin/python3, whose python3-* packages a pyenv/venv one lacks).
python_with() {
  local candidate imports
  imports="import $(IFS=,; echo "$*")"
  for candidate in /usr/bin/python3 python3; do
    if command -v "$candidate" > /dev/null 2>&1 && "$candidate" -c "$imports" 2> /dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}
# png_size FILE: "WIDTHxHEIGHT" from the PNG's IHDR, or fails when FILE is not a PNG.
png_size() {
  [ "$(head -c 8 "$1" | od -An -t x1 | tr -d ' \n')" = "89504e470d0a1a0a" ] || return 1
  echo "$(od -An -t u1 -j 16 -N 8 "$1" | awk '{ printf "%dx%d", $1 * 16777216 + $2 * 65536 + $3 * 256 + $4, $5 * 16777216 + $6 * 65536 + $7 * 256 + $8 }')"
}

part_plot() {
  local python size
  python="$(python_with matplotlib)" || skip "plot: no python3 with matplotlib (install Debian's python3-matplotlib: scripts/setup.sh)"
  mkdir plot
  # Epoch 2 twice (a resumed run): the last line wins, so 3 epochs, the best test accuracy in epoch 3.
  cat > plot/run.jsonl <<'EOF'
{"epoch": 1, "train_loss": 0.45, "train_accuracy": 0.87, "test_loss": 0.30, "test_accuracy": 0.910, "seconds": 1.5}
{"epoch": 2, "train_loss": 0.99, "train_accuracy": 0.10, "test_loss": 0.99, "test_accuracy": 0.100, "seconds": 1.4}
{"epoch": 2, "train_loss": 0.25, "train_accuracy": 0.93, "test_loss": 0.20, "test_accuracy": 0.940, "seconds": 1.4}

{"epoch": 3, "train_loss": 0.15, "train_accuracy": 0.96, "test_loss": 0.12, "test_accuracy": 0.9625, "seconds": 1.4}
EOF
  printf '%s\n' '{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "test_loss": 0.4, "test_accuracy": 0.85}' \
    '{"epoch": 2, "train_loss": 0.3, "train_accuracy": 0.9, "test_loss": 0.3, "test_accuracy": 0.90}' > plot/other.jsonl

  # One file, the default output name (run.png beside it), the default 120 dpi: 11 x 4.2 inches.
  "$python" "$root/scripts/plot_metrics.py" plot/run.jsonl > plot/out.log 2> plot/err.log ||
    fail "plot_metrics.py plot/run.jsonl exited $?: $(cat plot/err.log)"
  grep -qxF "Wrote plot/run.png: 3 epochs from 1 file(s); last test accuracy 0.9625" plot/out.log ||
    fail "plot_metrics.py: unexpected output: $(cat plot/out.log)"
  [ -s plot/run.png ] || fail "plot_metrics.py did not write plot/run.png"
  size="$(png_size plot/run.png)" || fail "plot/run.png is not a PNG"
  [ "$size" = "1320x504" ] || fail "plot/run.png is $size, expected 1320x504 (11 x 4.2 inches at 120 dpi)"
  echo "ok: $(cat plot/out.log) ($size, $(wc -c < plot/run.png) bytes)"

  # Two files together, -o, --title and --dpi.
  "$python" "$root/scripts/plot_metrics.py" plot/run.jsonl plot/other.jsonl -o plot/both.png --title "two runs" --dpi 50 \
    > plot/out.log 2> plot/err.log || fail "plot_metrics.py with two files exited $?: $(cat plot/err.log)"
  grep -qxF "Wrote plot/both.png: 5 epochs from 2 file(s); last test accuracy 0.9625" plot/out.log ||
    fail "plot_metrics.py with two files: unexpected output: $(cat plot/out.log)"
  size="$(png_size plot/both.png)" || fail "plot/both.png is not a PNG"
  [ "$size" = "550x210" ] || fail "plot/both.png is $size, expected 550x210 (11 x 4.2 inches at 50 dpi)"
  echo "ok: $(cat plot/out.log) ($size)"

  # A run with --validation-split: its numbers are the validation set's, and say so.
  printf '%s\n' '{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "validation_loss": 0.4, "validation_accuracy": 0.85}' \
    '{"epoch": 2, "train_loss": 0.3, "train_accuracy": 0.9, "validation_loss": 0.3, "validation_accuracy": 0.905}' > plot/val.jsonl
  "$python" "$root/scripts/plot_metrics.py" plot/val.jsonl > plot/out.log 2> plot/err.log ||
    fail "plot_metrics.py plot/val.jsonl exited $?: $(cat plot/err.log)"
  grep -qxF "Wrote plot/val.png: 2 epochs from 1 file(s); last validation accuracy 0.9050" plot/out.log ||
    fail "plot_metrics.py on validation metrics: unexpected output: $(cat plot/out.log)"
  echo "ok: $(cat plot/out.log)"

  # plot_sweep.py on a sweep folder: two rungs, a failed trial, a numeric and a categorical axis.
  mkdir -p plot/sweep
  printf '%s\n' \
    '{"trial": 0, "dir": "d/0", "status": "done", "rung": 0, "best_validation_accuracy": 0.91, "flags": {"lr": "0.1", "optimizer": "sgd"}}' \
    '{"trial": 1, "dir": "d/1", "status": "done", "rung": 0, "best_validation_accuracy": 0.95, "flags": {"lr": "0.001", "optimizer": "adam"}}' \
    '{"trial": 2, "dir": "d/2", "status": "failed", "rung": 0, "flags": {"lr": "-1", "optimizer": "adam"}}' \
    '{"trial": 1, "dir": "d/1", "status": "done", "rung": 1, "best_validation_accuracy": 0.97, "flags": {"lr": "0.001", "optimizer": "adam"}}' \
    > plot/sweep/trials.jsonl
  "$python" "$root/scripts/plot_sweep.py" plot/sweep > plot/out.log 2> plot/err.log ||
    fail "plot_sweep.py plot/sweep exited $?: $(cat plot/err.log)"
  grep -qxF "Wrote plot/sweep/sweep.png: 3 trials, 2 hyperparameters; best validation accuracy 0.9700" plot/out.log ||
    fail "plot_sweep.py: unexpected output: $(cat plot/out.log)"
  png_size plot/sweep/sweep.png > /dev/null || fail "plot/sweep/sweep.png is not a PNG"
  echo "ok: $(cat plot/out.log)"
  rc=0
  "$python" "$root/scripts/plot_sweep.py" plot > plot/out.log 2> plot/err.log || rc=$?
  [ "$rc" -eq 1 ] && grep -qxF "plot_sweep: error: no trials*.jsonl in plot" plot/err.log ||
    fail "plot_sweep.py on a folder without results: exit $rc, $(cat plot/err.log)"

  # Not the file cumnist writes: exit 1, one message, no picture.
  echo "epoch,loss" > plot/bad.jsonl
  local rc=0
  "$python" "$root/scripts/plot_metrics.py" plot/bad.jsonl -o plot/bad.png > plot/out.log 2> plot/err.log || rc=$?
  [ "$rc" -eq 1 ] || fail "plot_metrics.py on a CSV file exited $rc, expected 1: $(cat plot/out.log plot/err.log)"
  grep -qxF "plot_metrics: error: 'plot/bad.jsonl' line 1: not JSON (Expecting value); expected the file cumnist train --metrics-out writes" plot/err.log ||
    fail "plot_metrics.py on a CSV file: unexpected message: $(cat plot/err.log)"
  [ "$(wc -l < plot/err.log)" -eq 1 ] || fail "plot_metrics.py on a CSV file: more than one line: $(cat plot/err.log)"
  [ ! -e plot/bad.png ] || fail "plot_metrics.py on a CSV file wrote plot/bad.png"
  echo "ok: $(cat plot/err.log)"
}

# Real MNIST for the benchmarks: sets $data, or skips with require_mnist.sh's reason.
need_mnist() {
  local out rc=0
  out="$(source "$root/tests/require_mnist.sh" && printf '%s' "$data")" || rc=$?
  if [ "$rc" -ne 0 ]; then echo "$out"; exit 77; fi
  data="$out"
}

part_bench_pytorch() {
  local python
  python="$(python_with torch numpy)" || skip "bench_pytorch: no python3 that imports torch and numpy (Debian's python3-torch, python3-numpy)"
  need_mnist
  mkdir bench
  "$python" "$root/scripts/bench_pytorch.py" --batch-sizes 32 --steps 5 --warmup 1 --threads 1 --eval-repeats 1 \
    --data "$data" --json bench/pytorch.json > bench/out.log 2> bench/err.log ||
    fail "bench_pytorch.py exited $?: $(cat bench/out.log bench/err.log)"
  cat bench/out.log
  grep -q "^PyTorch [^ ]* bench: 784-512-256-10 relu, dropout 0.2, Adam; mnist from $data/mnist$" bench/out.log ||
    fail "bench_pytorch.py: no or wrong first line"
  grep -q "^  1 warm-up, then 5 timed steps per batch size; .*, 1 threads (of [0-9]* cores), OMP_WAIT_POLICY=" bench/out.log ||
    fail "bench_pytorch.py: no or wrong configuration line"
  grep -qxF "Training (5 timed steps after 1 warm-up)" bench/out.log || fail "bench_pytorch.py: no training table"
  grep -Eq '^cpu +32 +[0-9,]+ +[0-9]+\.[0-9]{3} +[0-9]+\.[0-9]{3} +[0-9]+\.[0-9]{2} +[0-9]+\.[0-9]$' bench/out.log ||
    fail "bench_pytorch.py: no batch-32 row in the training table"
  grep -Eq '^Inference \(the 10000 test images in batches of 1000, 1 passes\): [0-9,]+ samples/s, [0-9.]+ GFLOP/s$' bench/out.log ||
    fail "bench_pytorch.py: no inference line"
  grep -Eq '^\[1/1\] cpu  batch    32: +[0-9,]+ samples/s' bench/err.log || fail "bench_pytorch.py: no progress line: $(cat bench/err.log)"
  grep -qxF "Wrote bench/pytorch.json" bench/err.log || fail "bench_pytorch.py did not report the JSON file: $(cat bench/err.log)"
  "$python" - bench/pytorch.json <<'EOF' || fail "bench/pytorch.json does not hold the expected results"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["tool"] == "pytorch" and r["dataset"] == "mnist", r
assert r["steps"] == 5 and r["warmup"] == 1 and r["machine"]["threads"] == 1, r
assert [t["batch"] for t in r["training"]] == [32], r["training"]
t = r["training"][0]
assert t["steps"] == 5 and t["seconds"] > 0 and t["samples_per_second"] > 0, t
assert abs(t["samples_per_second"] - 5 * 32 / t["seconds"]) < 1e-6 * t["samples_per_second"], t
# 6 * (784*512 + 512*256 + 256*10) - 2 * 784*512, times the batch
assert t["flops_per_step"] == 32 * (6 * (784 * 512 + 512 * 256 + 256 * 10) - 2 * 784 * 512), t
i = r["inference"]
assert len(i) == 1 and i[0]["samples"] == 10000 and i[0]["batch"] == 1000 and i[0]["repeats"] == 1, i
print(f"ok: bench_pytorch.py: batch 32 at {t['samples_per_second']:,.0f} samples/s, PyTorch {r['torch_version']}")
EOF

  # A bad argument: exit 1 and the message.
  local rc=0
  "$python" "$root/scripts/bench_pytorch.py" --batch-sizes 32,x --data "$data" > bench/out.log 2> bench/err.log || rc=$?
  [ "$rc" -eq 1 ] && grep -qxF "bench_pytorch: --batch-sizes: '32,x' is not a comma-separated list of sizes" bench/err.log ||
    fail "bench_pytorch.py --batch-sizes 32,x: exit $rc, $(cat bench/err.log)"
  echo "ok: $(cat bench/err.log)"

  # A tiny CNN from a layer string: conv4k2same pads SAME_UPPER asymmetrically (0 before, 1 after),
  # 1x28x28 -> 4x28x28 -> pool2 4x14x14 -> 784 -> dense10. Its header names the layers; the JSON
  # counts its parameters and FLOPs as cumnist does.
  local cnn=conv4k2same,relu,pool2,flatten,dropout0.25,dense10
  "$python" "$root/scripts/bench_pytorch.py" --model "$cnn" --batch-sizes 32 --steps 3 --warmup 1 --threads 1 \
    --eval-repeats 1 --data "$data" --json bench/cnn.json > bench/cnn.log 2> bench/cnn.err ||
    fail "bench_pytorch.py --model $cnn exited $?: $(cat bench/cnn.log bench/cnn.err)"
  cat bench/cnn.log
  grep -q "^PyTorch [^ ]* bench: $cnn, Adam; mnist from $data/mnist$" bench/cnn.log ||
    fail "bench_pytorch.py --model $cnn: no or wrong first line"
  grep -qxF "Training (3 timed steps after 1 warm-up)" bench/cnn.log || fail "bench_pytorch.py --model $cnn: no training table"
  grep -Eq '^cpu +32 +[0-9,]+ +[0-9]+\.[0-9]{3} ' bench/cnn.log || fail "bench_pytorch.py --model $cnn: no batch-32 row"
  grep -Eq '^Inference \(the 10000 test images in batches of 1000, 1 passes\): [0-9,]+ samples/s' bench/cnn.log ||
    fail "bench_pytorch.py --model $cnn: no inference line"
  "$python" - bench/cnn.json "$cnn" <<'EOF' || fail "bench/cnn.json does not hold the expected results"
import json, sys
r, cnn = json.load(open(sys.argv[1])), sys.argv[2]
assert r["model"] == cnn and r["layers"] == cnn, (r["model"], r["layers"])
# conv 4·(1·2·2) + 4, dense 10·784 + 10
assert r["parameters"] == 4 * 4 + 4 + 10 * 784 + 10, r["parameters"]
t = r["training"][0]
assert t["batch"] == 32 and t["steps"] == 3 and t["samples_per_second"] > 0, t
conv, dense = 28 * 28 * 4 * 1 * 2 * 2, 4 * 14 * 14 * 10  # multiply-adds per image
assert t["flops_per_step"] == 32 * (6 * (conv + dense) - 2 * conv), t
print(f"ok: bench_pytorch.py --model {cnn}: {r['parameters']} parameters, batch 32 at {t['samples_per_second']:,.0f} samples/s")
EOF
  # The MLP as a layer string is described as the MLP, as cumnist does.
  "$python" "$root/scripts/bench_pytorch.py" --model dense512,relu,dropout0.2,dense256,relu,dropout0.2,dense10 \
    --batch-sizes 32 --steps 1 --warmup 0 --threads 1 --eval-repeats 0 --data "$data" > bench/out.log 2> bench/err.log ||
    fail "bench_pytorch.py with the MLP's layer string exited $?: $(cat bench/out.log bench/err.log)"
  grep -q "^PyTorch [^ ]* bench: 784-512-256-10 relu, dropout 0.2, Adam; " bench/out.log ||
    fail "bench_pytorch.py with the MLP's layer string: no or wrong first line: $(head -n 1 bench/out.log)"
  echo "ok: $(head -n 1 bench/out.log)"

  # Models it cannot build: exit 1 and the reason.
  rc=0
  "$python" "$root/scripts/bench_pytorch.py" --model conv4k3,relu,dense10 --data "$data" > bench/out.log 2> bench/err.log || rc=$?
  [ "$rc" -eq 1 ] && grep -qxF "bench_pytorch: --model: layer 3 'dense10': dense after a 4x26x26 spatial output needs 'flatten' before it" bench/err.log ||
    fail "bench_pytorch.py --model conv4k3,relu,dense10: exit $rc, $(cat bench/err.log)"
  echo "ok: $(cat bench/err.log)"
  rc=0
  "$python" "$root/scripts/bench_pytorch.py" --model conv4,flatten,dense10 --data "$data" > bench/out.log 2> bench/err.log || rc=$?
  [ "$rc" -eq 1 ] && grep -q "^bench_pytorch: --model: 'conv4': expected conv<filters>k<kernel>" bench/err.log ||
    fail "bench_pytorch.py --model conv4,flatten,dense10: exit $rc, $(cat bench/err.log)"
  echo "ok: $(cat bench/err.log)"
}

part_compare() {
  # The interpreter compare.sh picks, and the check it makes before installing python3-torch.
  local python=/usr/bin/python3 name sha
  [ -x "$python" ] || python="$(command -v python3)" || skip "compare: no python3"
  "$python" -c 'import torch, numpy' 2> /dev/null ||
    skip "compare: $python cannot import torch and numpy, and compare.sh would install python3-torch (not in a test)"
  [ -x "$cumnist" ] || fail "compare: $cumnist is not an executable"
  need_mnist
  # compare.sh runs scripts/fetch_data.sh mnist, which downloads unless the files verify: a data
  # folder of links to the real files, checked against the SHA-256 fetch_data.sh pins.
  mkdir -p compare-data/mnist compare-build guard
  while read -r name sha; do
    [ -f "$data/mnist/$name" ] && [ "$(sha256sum "$data/mnist/$name" | cut -d' ' -f1)" = "$sha" ] ||
      skip "compare: $data/mnist/$name is not the file fetch_data.sh pins, and compare.sh would download MNIST"
    ln -s "$data/mnist/$name" "compare-data/mnist/$name"
  done < <(sed -n 's/^  \[\([a-z0-9-]*-ubyte\)\]=\([0-9a-f]\{64\}\)$/\1 \2/p' "$root/scripts/fetch_data.sh")
  [ "$(ls compare-data/mnist | wc -l)" -eq 4 ] || fail "compare: expected the 4 MNIST SHA-256 in fetch_data.sh"
  # compare.sh runs $CUMNIST_BUILD_DIR/cumnist (and builds when it is missing: it is not).
  ln -s "$cumnist" compare-build/cumnist
  for tool in apt-get sudo npm; do
    printf '#!/bin/sh\necho "compare.sh ran %s $*" >> "%s/guard.log"\nexit 97\n' "$tool" "$work" > "guard/$tool"
    chmod +x "guard/$tool"
  done
  # The MLP (the default model), then a tiny CNN from a layer string passed to both benchmarks.
  compare_run compare "784-512-256-10 relu, dropout 0.2 (535,818 parameters)"
  compare_run compare-cnn "conv4k2same,relu,pool2,flatten,dropout0.25,dense10 (7,870 parameters)" \
    --model conv4k2same,relu,pool2,flatten,dropout0.25,dense10
}

# compare_run NAME MODEL [ARGS...]: compare.sh ARGS --batch-sizes 32 --steps 5 --warmup 1 --threads 1
# --out NAME (output in NAME.log, NAME.err), with the stand-ins part_compare set up; checks its
# summary, that both runs trained MODEL ("model: MODEL" and no warning) and that the table's rows
# are the two JSON files' numbers.
compare_run() {
  local name="$1" model="$2" rc=0
  shift 2
  CUMNIST_BUILD_DIR="$work/compare-build" CUMNIST_DATA="$work/compare-data" PATH="$work/guard:$PATH" \
    "$root/scripts/compare.sh" "$@" --batch-sizes 32 --steps 5 --warmup 1 --threads 1 --out "$work/$name" \
    > "$name.log" 2> "$name.err" || rc=$?
  [ ! -e guard.log ] || fail "compare.sh tried to install or download: $(cat guard.log)"
  [ "$rc" -eq 0 ] || fail "compare.sh $* exited $rc: $(tail -n 20 "$name.log" "$name.err")"
  sed -n '/^cumnist vs PyTorch/,$p' "$name.log"
  grep -qxF "== cumnist ==" "$name.log" && grep -qxF "== PyTorch ==" "$name.log" || fail "compare.sh $*: no section headers"
  [ -s "$name/cumnist.json" ] && [ -s "$name/pytorch.json" ] || fail "compare.sh $* did not keep both JSON files: $(ls "$name")"
  grep -q "^cumnist vs PyTorch [^ ]*, CPU training, 5 steps after 1 warm-up; .*, 1 threads; PyTorch OMP_WAIT_POLICY=" "$name.log" ||
    fail "compare.sh $*: no or wrong summary line"
  grep -qxF "model: $model" "$name.log" || fail "compare.sh $*: no line 'model: $model'"
  ! grep -q "^warning: the two runs trained different models" "$name.log" || fail "compare.sh $*: $(grep '^warning: the two' "$name.log")"
  grep -qxF " batch | cumnist samples/s | PyTorch samples/s |  ratio" "$name.log" || fail "compare.sh $*: no table header"
  # The table's rows are the two JSON files' numbers.
  "$python" - "$name/cumnist.json" "$name/pytorch.json" "$name.log" <<'EOF' || fail "compare.sh $*: the table does not match its JSON files"
import json, sys
ours, peer = (json.load(open(p)) for p in sys.argv[1:3])
lines = open(sys.argv[3]).read().splitlines()
assert ours["steps"] == peer["steps"] == 5 and ours["warmup"] == peer["warmup"] == 1, (ours["steps"], peer["steps"])
assert [r["batch"] for r in ours["training"]] == [32] == [r["batch"] for r in peer["training"]]
assert ours["model"] == peer["model"] and ours["parameters"] == peer["parameters"], (ours["model"], peer["model"])
a, b = ours["training"][0]["samples_per_second"], peer["training"][0]["samples_per_second"]
assert a > 0 and b > 0
assert ours["training"][0]["flops_per_step"] == peer["training"][0]["flops_per_step"], "the FLOP counts differ"
row = f"{32:>6} | {a:>17,.0f} | {b:>17,.0f} | {a / b:>5.2f}x"
assert row in lines, f"no row {row!r}"
ai, bi = ours["inference"][0]["samples_per_second"], peer["inference"][0]["samples_per_second"]
infer = f"{'infer':>6} | {ai:>17,.0f} | {bi:>17,.0f} | {ai / bi:>5.2f}x"
assert infer in lines, f"no row {infer!r}"
print(f"ok: compare.sh: {ours['model']}: batch 32 cumnist {a:,.0f} vs PyTorch {b:,.0f} samples/s ({a / b:.2f}x)")
EOF
}

if [ "$part" != all ]; then
  "part_$part"
  echo "OK"
  exit 0
fi
skipped=()
passed=()
for p in plot bench_pytorch compare; do
  set +e
  (set -e; "part_$p")
  rc=$?
  set -e
  case "$rc" in
    0) passed+=("$p") ;;
    77) skipped+=("$p") ;;
    *) exit "$rc" ;;
  esac
done
if [ ${#skipped[@]} -ne 0 ]; then
  echo "SKIPPED: ${skipped[*]} (passed: ${passed[*]:-none})"
  exit 77
fi
echo "OK"
