#!/usr/bin/env bash
# ctest driver (onnx_export): trains three small models for one epoch on real MNIST with the built
# cumnist (the default MLP; a CNN; a model with every layer kind: a strided SAME convolution with
# asymmetric padding, tanh, max pooling, a valid convolution, sigmoid, flatten, dropout, dense,
# relu), exports each with `cumnist export --softmax`, and checks each file with an independent
# stack: onnx.checker.check_model(full_check=True) (Debian's python3-onnx), its metadata, and
# OpenCV's DNN module (python3-opencv, cv2.dnn.readNetFromONNX) on the whole MNIST test set against
# `cumnist eval --logits`: the same prediction on every image, the logits within
# 1e-4 + 1e-4·|z| (float32 with another summation order: the differences measured here are a few
# 1e-6), the probabilities the softmax of the logits. A prediction may differ only where cumnist's
# top two logits lie within that tolerance of each other. Then the export's refusals. Exits 77
# (skipped, with the reason) without MNIST, python3-onnx or python3-opencv, or in a build without
# ONNX export.
# Usage: tests/test_onnx_export.sh CUMNIST_BINARY WORK_DIR
set -euo pipefail
cumnist="$1"
work="$2"

source "$(dirname "${BASH_SOURCE[0]}")/require_mnist.sh"  # sets $data
source "$(dirname "${BASH_SOURCE[0]}")/expect_error.sh"  # fail, expect_error

python=""
for candidate in "${PYTHON:-}" python3 /usr/bin/python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
    "$candidate" -c "import numpy, onnx, cv2" 2>/dev/null; then
    python="$candidate"
    break
  fi
done
if [ -z "$python" ]; then
  echo "SKIPPED: no python3 with numpy, onnx and cv2 found (install python3-onnx and python3-opencv: scripts/setup.sh)"
  exit 77
fi

rm -rf "$work"
mkdir -p "$work"
cd "$work"

# Without ONNX support the command says what to install, and the test has nothing to check.
"$cumnist" export --help > /dev/null
touch probe.safetensors
rc=0
"$cumnist" export --model probe.safetensors --onnx probe.onnx > probe.out 2> probe.err || rc=$?
if grep -q "has no ONNX export" probe.err; then
  echo "SKIPPED: $(cat probe.err)"
  exit 77
fi

# check NAME CHECKPOINT ARCHITECTURE: export, then the checker, the metadata and OpenCV against eval.
check() {
  local name="$1" ckpt="$2" architecture="$3"
  echo "== $name"
  "$cumnist" export --model "$ckpt" --onnx "$name.onnx" --softmax | tee "$name.export.log"
  grep -q "^Wrote $name.onnx (.* bytes, ONNX opset 13)" "$name.export.log" || fail "$name: no 'Wrote' line"
  "$cumnist" eval --device cpu --model "$ckpt" --data "$data" --logits "$name.logits.npy" --json "$name.eval.json" \
    > "$name.eval.log"
  "$python" - "$name.onnx" "$name.logits.npy" "$name.eval.json" "$data/mnist" "$architecture" <<'PY'
import gzip, json, os, sys
import cv2, numpy as np, onnx

path, logits_path, eval_path, folder, architecture = sys.argv[1:6]
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
assert model.opset_import[0].version == 13, model.opset_import
meta = {p.key: p.value for p in model.metadata_props}
assert meta["architecture"] == architecture, meta["architecture"]
assert meta["dataset"] == "mnist" and meta["epochs"] == "1", meta
assert json.loads(meta["class_names"]) == [str(k) for k in range(10)], meta["class_names"]
evaluation = json.load(open(eval_path))
assert abs(float(meta["test_accuracy"]) - evaluation["accuracy"]) <= 5e-5, (meta["test_accuracy"], evaluation["accuracy"])
graph = model.graph
dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
assert graph.input[0].name == "input" and dims == ["N", 1, 28, 28], dims
assert [o.name for o in graph.output] == ["logits", "probabilities"], [o.name for o in graph.output]
assert not any(n.op_type == "Dropout" for n in graph.node), "dropout is the identity at inference"
if architecture.startswith("conv4k3s2same"):  # TensorFlow's SAME: the extra row and column at the end
    pads = [list(a.ints) for a in graph.node[0].attribute if a.name == "pads"]
    assert pads == [[0, 0, 1, 1]], pads

def idx(name):
    for candidate in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.exists(candidate):
            opener = gzip.open if candidate.endswith(".gz") else open
            with opener(candidate, "rb") as f:
                return f.read()
    sys.exit(f"FAILED: no {name} in {folder}")

images = np.frombuffer(idx("t10k-images-idx3-ubyte")[16:], np.uint8).reshape(-1, 1, 28, 28).astype(np.float32) / 255
labels = np.frombuffer(idx("t10k-labels-idx1-ubyte")[8:], np.uint8)
net = cv2.dnn.readNetFromONNX(path)
outs = []
for first in range(0, len(images), 1000):  # the symbolic batch dimension, in batches of 1000
    net.setInput(images[first:first + 1000])
    outs.append(net.forward(["logits", "probabilities"]))
z_cv = np.concatenate([o[0] for o in outs])
p_cv = np.concatenate([o[1] for o in outs])
z = np.load(logits_path)
assert z.shape == z_cv.shape == (10000, 10), (z.shape, z_cv.shape)
tolerance = 1e-4 + 1e-4 * np.abs(z)
diff = np.abs(z_cv - z)
assert (diff <= tolerance).all(), f"logits differ by up to {diff.max():.3g} (image {diff.max(1).argmax()})"
pred, pred_cv = z.argmax(1), z_cv.argmax(1)
assert (pred == np.array(evaluation["predictions"])).all(), "eval --logits and eval --json disagree"
top2 = np.sort(z, 1)
near_tie = top2[:, -1] - top2[:, -2] <= 2 * tolerance.max(1)
differ = pred != pred_cv
assert not (differ & ~near_tie).any(), f"predictions differ with a clear margin on {int((differ & ~near_tie).sum())} images"
softmax = np.exp(z_cv - z_cv.max(1, keepdims=True))
softmax /= softmax.sum(1, keepdims=True)
assert np.abs(p_cv - softmax).max() <= 1e-5, np.abs(p_cv - softmax).max()
accuracy = float((pred_cv == labels).mean())
print(f"OpenCV {cv2.__version__}: {10000 - int(differ.sum())} of 10000 predictions as cumnist eval "
      f"({int(differ.sum())} differ, near ties only); logits within {diff.max():.2g} "
      f"(tolerance 1e-4 + 1e-4|z|); accuracy {accuracy:.4f}, cumnist {evaluation['accuracy']:.4f}")
PY
}

"$cumnist" train --device cpu --epochs 1 --save mlp --data "$data" > mlp-train.log
check mlp mlp/last.safetensors "dense512,relu,dropout0.2,dense256,relu,dropout0.2,dense10"

cnn=conv8k3same,relu,pool2,conv16k3,relu,pool2,flatten,dropout0.25,dense10
"$cumnist" train --device cpu --threads 1 --model "$cnn" --epochs 1 --save cnn --data "$data" > cnn-train.log
check cnn cnn/last.safetensors "$cnn"

# 28x28 -> conv4k3s2same (pads 0 top/left, 1 bottom/right) 4x14x14 -> pool2 4x7x7 -> conv6k3 6x5x5
every=conv4k3s2same,tanh,pool2,conv6k3,sigmoid,flatten,dropout0.1,dense32,relu,dense10
"$cumnist" train --device cpu --threads 1 --model "$every" --epochs 1 --save every --data "$data" > every-train.log
check every every/last.safetensors "$every"

# Refusals: one line, exit 1, nothing written.
cp mlp/last.safetensors keep.safetensors
expect_error "is the file given as --model" "$cumnist" export --model keep.safetensors --onnx keep.safetensors
cmp keep.safetensors mlp/last.safetensors || fail "export --onnx over its --model changed the checkpoint"
mkdir -p folder.onnx
expect_error "is a folder" "$cumnist" export --model keep.safetensors --onnx folder.onnx
expect_error "no-such.safetensors" "$cumnist" export --model no-such.safetensors --onnx x.onnx
[ ! -e x.onnx ] || fail "a failed export left x.onnx"
if ls ./*.tmp 2>/dev/null; then fail "temporary files left behind"; fi
echo "OK"
