#!/usr/bin/env bash
# Installs what cumnist needs to build, test and fetch its data, from Debian packages.
# Idempotent: installs only what is missing, and says what it does. Uses sudo when not root.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git ca-certificates
  libfmt-dev libgtest-dev libdnnl-dev libcli11-dev nlohmann-json3-dev zlib1g-dev libstb-dev
  npm dataset-fashion-mnist python3 python3-numpy
  python3-matplotlib  # scripts/plot_metrics.py
  python3-torch  # scripts/bench_pytorch.py and compare.sh (the PyTorch comparison) and their tests
  libopenblas0-openmp  # PyTorch's BLAS for its dense layers (without it Debian's torch uses the slow reference BLAS)
  libonnx-dev libprotobuf-dev  # cumnist export (ONNX)
  python3-onnx python3-opencv  # tests/test_onnx_export.sh: the ONNX checker and OpenCV's DNN module
  patchelf  # scripts/package.sh: the portable package's $ORIGIN-relative library paths
  clang libclang-rt-14-dev libomp-dev llvm  # scripts/fuzz.sh: libFuzzer + sanitizer runtimes, OpenMP for clang, llvm-symbolizer
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# npm may come from elsewhere (a nodejs install): then the package is not needed.
if command -v npm >/dev/null 2>&1; then
  missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | sed '/^$/d'))

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
else
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "setup: installed ${#missing[@]} package(s)"
fi

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: CUDA toolkit found: the CUDA backend will be built"
else
  echo "setup: no CUDA toolkit (nvcc) found: building the CPU backend only"
fi
