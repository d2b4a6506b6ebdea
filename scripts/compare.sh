#!/usr/bin/env bash
# cumnist against PyTorch on this machine's CPU, side by side: runs `cumnist bench --device cpu`
# and scripts/bench_pytorch.py with the same model, batch sizes, steps and threads, then prints
# samples/s per batch size and their ratio. Installs python3-torch (large) when it is missing.
# Usage: scripts/compare.sh [--model mlp|cnn|LAYERS] [--batch-sizes 32,128,256,1024] [--steps N]
#                           [--warmup N] [--threads N] [--out DIR]
#   --model: as cumnist's (default mlp, 784-512-256-10); both JSON results are kept in DIR
#   (default build/compare).
set -euo pipefail
cd "$(dirname "$0")/.."

model=mlp
batch_sizes=32,128,256,1024
steps=1000
warmup=20
threads=0
build_dir="${CUMNIST_BUILD_DIR:-build}"
out_dir="$build_dir/compare"
while [ $# -gt 0 ]; do
  case "$1" in
    --model|--batch-sizes|--steps|--warmup|--threads|--out)
      [ $# -ge 2 ] || { echo "compare: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --model) model="$2" ;;
        --batch-sizes) batch_sizes="$2" ;;
        --steps) steps="$2" ;;
        --warmup) warmup="$2" ;;
        --threads) threads="$2" ;;
        --out) out_dir="$2" ;;
      esac
      shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# Debian's python3-torch is installed for the system interpreter, not for a pyenv/venv one.
python=/usr/bin/python3
[ -x "$python" ] || python="$(command -v python3)"
if ! "$python" -c 'import torch, numpy' 2>/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "compare: installing python3-torch and python3-numpy (Debian packages; a large download)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    python3-torch python3-numpy >/dev/null
fi

if [ ! -x "$build_dir/cumnist" ]; then
  scripts/build.sh
fi
scripts/fetch_data.sh mnist >/dev/null

mkdir -p "$out_dir"
common=(--model "$model" --batch-sizes "$batch_sizes" --steps "$steps" --warmup "$warmup" --threads "$threads")

echo "== cumnist =="
"$build_dir/cumnist" bench --device cpu "${common[@]}" --json "$out_dir/cumnist.json"
echo
echo "== PyTorch =="
# bench_pytorch.py picks PyTorch's OpenMP wait policy for the BLAS torch loads (PASSIVE with a
# pthreads OpenBLAS, else libgomp's default) unless OMP_WAIT_POLICY is already set here.
"$python" scripts/bench_pytorch.py "${common[@]}" --json "$out_dir/pytorch.json"
echo

"$python" - "$out_dir/cumnist.json" "$out_dir/pytorch.json" <<'EOF'
import json, sys
ours, peer = (json.load(open(path)) for path in sys.argv[1:3])
theirs = {r["batch"]: r for r in peer["training"]}
m = ours["machine"]
print(f"cumnist vs PyTorch {peer['torch_version']}, CPU training, {ours['steps']} steps after "
      f"{ours['warmup']} warm-up; "
      f"{m['cpu']}, {m['threads']} threads; PyTorch OMP_WAIT_POLICY={peer['omp_wait_policy'] or 'default'}")
def model(r):
    return r.get("model", "?") + (f" ({r['parameters']:,} parameters)" if "parameters" in r else "")
print(f"model: {model(ours)}")
if model(peer) != model(ours):
    print(f"warning: the two runs trained different models: cumnist {model(ours)}, PyTorch {model(peer)}")
print(f"{'batch':>6} | {'cumnist samples/s':>17} | {'PyTorch samples/s':>17} | {'ratio':>6}")
print(f"{'-' * 6}-+-{'-' * 17}-+-{'-' * 17}-+-{'-' * 6}")
for r in ours["training"]:
    p = theirs.get(r["batch"])
    if p is None:
        continue
    print(f"{r['batch']:>6} | {r['samples_per_second']:>17,.0f} | {p['samples_per_second']:>17,.0f} | "
          f"{r['samples_per_second'] / p['samples_per_second']:>5.2f}x")
if ours["inference"] and peer["inference"]:
    a, b = ours["inference"][0], peer["inference"][0]
    print(f"{'infer':>6} | {a['samples_per_second']:>17,.0f} | {b['samples_per_second']:>17,.0f} | "
          f"{a['samples_per_second'] / b['samples_per_second']:>5.2f}x")
busy = ours["machine"].get("cpu_busy_start")  # measured before either run, over half a second
if busy is not None and busy > 0.25:
    print(f"warning: the machine was busy ({100 * busy:.0f} % of its {m['cores']} cores used by other processes "
          "before the runs): the numbers are low and the ratio is not representative")
print("(ratio > 1: cumnist is faster; infer: the test set in batches of "
      f"{ours['inference'][0]['batch'] if ours['inference'] else '-'}, forward only)")
EOF
