#!/usr/bin/env bash
# ctest driver (python_checkpoint_reader): trains a small model for one epoch on real MNIST with the
# built cumnist, saves it, and checks that scripts/load_checkpoint.py (numpy alone) predicts the
# same test labels as `cumnist eval` (identical, or differing only where the top two logits are
# within 1e-4) with the same accuracy and loss. Exits 77 (reported by ctest as skipped, with the
# reason) when MNIST or numpy is missing.
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
"$cumnist" train --device cpu --hidden 64 --epochs 1 --save "$work/ckpt" --data "$data" > "$work/train.log"
tail -n 2 "$work/train.log"
"$cumnist" eval --device cpu --model "$work/ckpt/last.safetensors" --data "$data" --json "$work/eval.json" > "$work/eval.log"
"$python" "$root/scripts/load_checkpoint.py" "$work/ckpt/last.safetensors" --data "$data" --json "$work/python.json"

"$python" - "$work/eval.json" "$work/python.json" <<'EOF'
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
