#!/usr/bin/env bash
# ctest driver (python_checkpoint_reader): trains small models for one epoch on real MNIST with the
# built cumnist, saves them, and checks that scripts/load_checkpoint.py (numpy alone) predicts the
# same test labels as `cumnist eval` (identical, or differing only where the top two logits are
# within 1e-4) with the same accuracy and loss, and names the model on its first line. The models:
# the MLP (--hidden 64); the same weights with the metadata format version 1 wrote (the MLP as
# inputs, hidden, classes, activation, dropout); a small CNN (a SAME-padded convolution, max
# pooling, a strided valid convolution, flatten, dropout). And the reader's refusals: a layer of an
# unknown type, a missing tensor and a tensor of the wrong shape each exit 1 with one line saying
# so. Exits 77 (reported by ctest as skipped, with the reason) when MNIST or numpy is missing.
# Usage: tests/test_load_checkpoint.sh CUMNIST_BINARY WORK_DIR
set -euo pipefail
cumnist="$1"
work="$2"
root="$(cd "$(dirname "$0")/.." && pwd)"

source "$(dirname "${BASH_SOURCE[0]}")/require_mnist.sh"  # sets $data

python=""
for candidate in "${PYTHON:-}" python3 /usr/bin/python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import numpy" 2>/dev/null; then
    python="$candidate"
    break
  fi
done
if [ -z "$python" ]; then
  echo "SKIPPED: no python3 with numpy found (install python3-numpy, or set PYTHON)"
  exit 77
fi

rm -rf "$work"
mkdir -p "$work"

# compare NAME CHECKPOINT DESCRIPTION: `cumnist eval` and load_checkpoint.py agree on CHECKPOINT (the
# same predictions but for near ties, the same accuracy and loss), and the script's first line
# names the model as DESCRIPTION.
compare() {
  local name="$1" ckpt="$2" description="$3"
  echo "== $name"
  "$cumnist" eval --device cpu --model "$ckpt" --data "$data" --json "$work/$name.eval.json" > "$work/$name.eval.log"
  "$python" "$root/scripts/load_checkpoint.py" "$ckpt" --data "$data" --json "$work/$name.python.json" \
    > "$work/$name.python.log"
  cat "$work/$name.python.log"
  grep -qxF "$ckpt: $description, epoch 1" "$work/$name.python.log" ||
    { echo "FAILED: $name: load_checkpoint.py's first line is not '$ckpt: $description, epoch 1'"; exit 1; }
  "$python" - "$work/$name.eval.json" "$work/$name.python.json" <<'EOF'
import json, sys
cumnist, numpy_run = (json.load(open(p)) for p in sys.argv[1:3])
a, b, gap = cumnist["predictions"], numpy_run["predictions"], numpy_run["top2_gap"]
assert len(a) == len(b) == 10000, (len(a), len(b))
differ = [i for i in range(len(a)) if a[i] != b[i]]
near_ties = [i for i in differ if gap[i] <= 1e-4]
print(f"predictions: {len(a) - len(differ)} of {len(a)} identical; {len(differ)} differ, {len(near_ties)} of them near ties")
print(f"accuracy: cumnist {cumnist['accuracy']:.4f}, numpy {numpy_run['accuracy']:.4f}; "
      f"loss: cumnist {cumnist['loss']:.6f}, numpy {numpy_run['loss']:.6f}")
bad = [i for i in differ if gap[i] > 1e-4]
if bad:
    sys.exit(f"FAILED: {len(bad)} predictions differ with a clear top-2 margin, e.g. sample {bad[0]}: "
             f"cumnist {a[bad[0]]}, numpy {b[bad[0]]}, gap {gap[bad[0]]}")
if abs(cumnist["accuracy"] - numpy_run["accuracy"]) > len(differ) / len(a) + 1e-12:
    sys.exit("FAILED: accuracies differ by more than the differing predictions explain")
if abs(cumnist["loss"] - numpy_run["loss"]) > 1e-5 * (1 + cumnist["loss"]):
    sys.exit("FAILED: the test losses differ by more than 1e-5 (float32 logits, different summation order)")
print("OK")
EOF
}

# rewrite IN OUT CODE: OUT is IN with its safetensors header edited by the Python CODE, which
# changes `header` (the parsed JSON: tensor entries and __metadata__); the tensor data is kept.
rewrite() {
  "$python" - "$1" "$2" "$3" <<'EOF'
import json, struct, sys
src, dst, code = sys.argv[1:4]
data = open(src, "rb").read()
(n,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + n])
exec(code)
text = json.dumps(header).encode()
open(dst, "wb").write(struct.pack("<Q", len(text)) + text + data[8 + n:])
EOF
}

# rejects NAME CHECKPOINT MESSAGE: load_checkpoint.py exits 1 with one line on stderr holding MESSAGE.
rejects() {
  local rc=0
  "$python" "$root/scripts/load_checkpoint.py" "$2" --data "$data" > "$work/$1.out" 2> "$work/$1.err" || rc=$?
  [ "$rc" -eq 1 ] && [ "$(wc -l < "$work/$1.err")" -eq 1 ] && grep -qF "$3" "$work/$1.err" ||
    { echo "FAILED: $1: exit $rc, expected 1 and one line holding '$3': $(cat "$work/$1.out" "$work/$1.err")"; exit 1; }
  echo "ok: $1: $(cat "$work/$1.err")"
}

"$cumnist" train --device cpu --hidden 64 --epochs 1 --save "$work/ckpt" --data "$data" > "$work/train.log"
tail -n 2 "$work/train.log"
compare mlp "$work/ckpt/last.safetensors" "784-64-10 relu, dropout 0.2"

# The same weights under the metadata format version 1 wrote: the MLP's sizes, no layer list.
rewrite "$work/ckpt/last.safetensors" "$work/v1.safetensors" '
meta = header["__metadata__"]
meta["format_version"] = "1"
meta["model"] = json.dumps({"inputs": 784, "hidden": [64], "classes": 10, "activation": "relu", "dropout": 0.2})'
compare v1 "$work/v1.safetensors" "784-64-10 relu, dropout 0.2"

# 1x28x28 -> conv4k3same 4x28x28 -> pool2 4x14x14 -> conv8k3s2 (valid) 8x6x6 -> 288 -> dense10
cnn=conv4k3same,relu,pool2,conv8k3s2,relu,flatten,dropout0.25,dense10
# One thread: a few seconds; two threads on a machine whose other core is busy took 40 s here.
"$cumnist" train --device cpu --threads 1 --model "$cnn" --epochs 1 --save "$work/cnn" --data "$data" > "$work/cnn-train.log"
tail -n 2 "$work/cnn-train.log"
compare cnn "$work/cnn/last.safetensors" "$cnn"

# What the reader refuses, and says why.
rewrite "$work/cnn/last.safetensors" "$work/unknown-layer.safetensors" '
model = json.loads(header["__metadata__"]["model"])
model["layers"][2] = {"type": "avgpool2d", "pool": [2, 2], "stride": [2, 2]}
header["__metadata__"]["model"] = json.dumps(model)'
rejects unknown-layer "$work/unknown-layer.safetensors" 'layer 3 has unknown type "avgpool2d"'
rewrite "$work/cnn/last.safetensors" "$work/missing-tensor.safetensors" 'del header["layers.1.bias"]'
rejects missing-tensor "$work/missing-tensor.safetensors" "tensor layers.1.bias is missing"
rewrite "$work/cnn/last.safetensors" "$work/wrong-shape.safetensors" 'header["layers.2.weight"]["shape"] = [20, 144]'
rejects wrong-shape "$work/wrong-shape.safetensors" "tensor layers.2.weight has shape (20, 144), expected (10, 288)"
echo "OK"
