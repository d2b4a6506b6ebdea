#!/usr/bin/env bash
# Builds the portable package: a .tar.gz that runs cumnist, its test binary and scripts/gpu_report.sh
# on an x86-64 Linux with an NVIDIA driver (>= 580) and the CUDA 13 cuBLAS libraries, and nothing
# else of ours: no compiler, no Debian packages, no network.
#
#   scripts/package.sh [--arch LIST] [--build-dir DIR] [--no-build] [--out DIR]
#   scripts/package.sh --check PACKAGE_DIR
#
# --arch: CMAKE_CUDA_ARCHITECTURES for the package's build (default 90, H100/H200; a list such as
#   "80-real;90" works); the CPU code is built for x86-64 in general (CUMNIST_NATIVE=OFF).
# --build-dir: where to configure and build (default build-package-sm<arch>); --no-build packages
#   what is there (any build folder with cumnist and tests/cumnist_tests).
# --out: where the folder and the .tar.gz go (default: dist/).
# --check: lists every shared library the package's executables and libraries need and where each
#   resolves with the package's paths and nothing else; exits 1 when one resolves outside the
#   package and the allowed system set (the C library, libm, libdl, libpthread, librt, the loader,
#   the NVIDIA driver's libcuda) other than the cuBLAS libraries, which env.sh finds at run time.
#
# Layout: bin/cumnist and bin/cumnist_tests (RUNPATH $ORIGIN/../lib), lib/ (every non-system
# library they need, libcudart included; not cuBLAS and cuDNN, hundreds of MB, which CUDA and
# PyTorch installs have; libcudnn.so.9 also loads its engine libraries from its own folder at run
# time), scripts/, env.sh (finds cuBLAS and cuDNN and says where, sets LD_LIBRARY_PATH and CUMNIST_EXE),
# cumnist (a launcher: env.sh, then bin/cumnist).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

# Libraries every target machine provides, and those the package leaves to the CUDA install.
system_re='^(linux-vdso\.so|ld-linux-x86-64\.so|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libcuda\.so)'
runtime_re='^(libcublas\.so|libcublasLt\.so|libcudnn\.so)'

check_package() {
  local pkg="$1" bad=0 file lib target
  [ -d "$pkg/bin" ] && [ -d "$pkg/lib" ] || { echo "package: $pkg is not a package folder (no bin/ and lib/)" >&2; return 1; }
  echo "package: libraries needed by $pkg (resolved with its own paths only):"
  for file in "$pkg"/bin/* "$pkg"/lib/*.so*; do
    [ -f "$file" ] && [ ! -L "$file" ] || continue
    head -c 4 "$file" | grep -q 'ELF' || continue
    # Only the package's RUNPATH and the system's default paths: no LD_LIBRARY_PATH.
    while read -r lib target; do
      [ -n "$lib" ] || continue
      lib="${lib##*/}"  # the loader is listed by its path
      if [[ "$lib" =~ $system_re ]]; then
        printf '  %-28s %-22s system: %s\n' "$(basename "$file")" "$lib" "${target:-(vdso)}"
      elif [[ "$lib" =~ $runtime_re ]]; then
        printf '  %-28s %-22s CUDA install (env.sh finds it): %s\n' "$(basename "$file")" "$lib" "${target:-not here}"
      elif [ -n "$target" ] && [ "$(realpath "$target")" = "$(realpath "$pkg/lib/$lib" 2>/dev/null || true)" ]; then
        printf '  %-28s %-22s package: lib/%s\n' "$(basename "$file")" "$lib" "$lib"
      else
        printf '  %-28s %-22s OUTSIDE THE PACKAGE: %s\n' "$(basename "$file")" "$lib" "${target:-not found}"
        bad=1
      fi
    done < <(env -u LD_LIBRARY_PATH ldd "$file" 2>/dev/null |
             awk '/=>/ {t = ($3 == "not") ? "" : $3; print $1, t; next} /ld-linux|vdso/ {print $1, $1}')
  done
  if [ $bad -ne 0 ]; then echo "package: some libraries resolve outside the package (above)" >&2; return 1; fi
  echo "package: every library resolves inside the package, to the system set, or to the CUDA install"
}

arch=90
build_dir=""
build=1
out_dir="$root/dist"
while [ $# -gt 0 ]; do
  case "$1" in
    --check) [ $# -ge 2 ] || { echo "package: --check needs a folder" >&2; exit 2; }; check_package "$2"; exit $? ;;
    --arch) [ $# -ge 2 ] || { echo "package: --arch needs a value" >&2; exit 2; }; arch="$2"; shift 2 ;;
    --build-dir) [ $# -ge 2 ] || { echo "package: --build-dir needs a folder" >&2; exit 2; }; build_dir="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --out) [ $# -ge 2 ] || { echo "package: --out needs a folder" >&2; exit 2; }; out_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
command -v patchelf >/dev/null || { echo "package: patchelf is needed (scripts/setup.sh installs it)" >&2; exit 1; }
build_dir="${build_dir:-$root/build-package-sm${arch//[^0-9]/}}"

if [ $build -eq 1 ]; then
  echo "package: building in $build_dir for CUDA architectures $arch (portable x86-64 CPU code)"
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCUMNIST_CUDA=ON -DCUMNIST_NATIVE=OFF \
        "-DCMAKE_CUDA_ARCHITECTURES=$arch" >/dev/null
  cmake --build "$build_dir" -j "$(nproc)" --target cumnist cumnist_tests
fi
for exe in "$build_dir/cumnist" "$build_dir/tests/cumnist_tests"; do
  [ -x "$exe" ] || { echo "package: $exe not found (build first, or drop --no-build)" >&2; exit 1; }
done

if [ $build -eq 0 ]; then  # the architectures that build was configured with
  arch="$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$build_dir/CMakeCache.txt" 2>/dev/null || true)"
fi
case "$arch" in
  "") if [[ "$(ldd "$build_dir/cumnist")" == *libcudart* ]]; then gpu_tag="cuda"; else gpu_tag="cpu"; fi ;;
  *\;*) gpu_tag="multiarch" ;;
  *) gpu_tag="sm${arch//[^0-9]/}" ;;
esac
version="$("$build_dir/cumnist" --version | awk '{print $2}')"
name="cumnist-${version}-${gpu_tag}-linux-x86_64"
pkg="$out_dir/$name"
rm -rf "$pkg"
mkdir -p "$pkg/bin" "$pkg/lib" "$pkg/scripts"
cp "$build_dir/cumnist" "$build_dir/tests/cumnist_tests" "$pkg/bin/"
cp "$root"/scripts/*.sh "$root"/scripts/*.py "$pkg/scripts/"
cp "$root/README.md" "$pkg/"

# Every library the executables need, transitively (ldd lists them all), but the system set and
# cuBLAS: copied under its soname, then pointed at its neighbours.
for exe in "$pkg/bin/cumnist" "$pkg/bin/cumnist_tests"; do
  ldd "$exe" | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r lib path; do
  if [[ "$lib" =~ $system_re ]] || [[ "$lib" =~ $runtime_re ]]; then continue; fi
  cp -L "$path" "$pkg/lib/$lib"
done
for exe in "$pkg"/bin/*; do patchelf --set-rpath '$ORIGIN/../lib' "$exe"; done
for lib in "$pkg"/lib/*; do chmod u+w "$lib"; patchelf --set-rpath '$ORIGIN' "$lib"; done

cat > "$pkg/env.sh" <<'ENV'
# Source this (". env.sh") before running bin/cumnist or bin/cumnist_tests by hand; the cumnist
# launcher beside it does so. Finds the CUDA 13 cuBLAS libraries (not in the package) in the usual
# places and says which it uses; sets CUMNIST_EXE for the test binary's command-line tests.
cumnist_pkg="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export CUMNIST_EXE="$cumnist_pkg/bin/cumnist"
# Where the CUDA 13 libraries usually are: a toolkit, the distribution, conda, PyTorch's nvidia wheels.
cumnist_dirs="${CUDA_HOME:+$CUDA_HOME/lib64} ${CUDA_PATH:+$CUDA_PATH/lib64} /usr/local/cuda/lib64
  /usr/local/cuda/targets/x86_64-linux/lib $(echo /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/targets/x86_64-linux/lib)
  /usr/lib/x86_64-linux-gnu /usr/lib64 /opt/conda/lib
  $(python3 -c 'import site, glob; print(" ".join(d for p in site.getsitepackages() for d in glob.glob(p + "/nvidia/*/lib") + glob.glob(p + "/nvidia/cu13/lib")))' 2>/dev/null)"
cumnist_find() {  # the first folder holding every file named
  local d f
  for d in $cumnist_dirs; do
    for f in "$@"; do [ -e "$d/$f" ] || continue 2; done
    echo "$d"
    return 0
  done
  return 1
}
cumnist_cublas="$(cumnist_find libcublas.so.13 libcublasLt.so.13 || true)"
cumnist_cudnn="$(cumnist_find libcudnn.so.9 libcudnn_cnn.so.9 libcudnn_engines_precompiled.so.9 || true)"
# The package's own libraries first (LD_LIBRARY_PATH outranks the executables' RUNPATH), then
# cuBLAS and cuDNN.
export LD_LIBRARY_PATH="$cumnist_pkg/lib${cumnist_cublas:+:$cumnist_cublas}${cumnist_cudnn:+:$cumnist_cudnn}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -n "$cumnist_cublas" ]; then
  [ -n "${CUMNIST_QUIET:-}" ] || echo "cumnist: cuBLAS 13 from $cumnist_cublas" >&2
else
  echo "cumnist: no CUDA 13 cuBLAS (libcublas.so.13 and libcublasLt.so.13) in the usual places; set CUDA_HOME, or LD_LIBRARY_PATH to their folder" >&2
fi
if [ -n "$cumnist_cudnn" ]; then
  [ -n "${CUMNIST_QUIET:-}" ] || echo "cumnist: cuDNN 9 from $cumnist_cudnn" >&2
else
  echo "cumnist: no cuDNN 9 (libcudnn.so.9 with its engine libraries) in the usual places; convolutions will fail on the GPU: set LD_LIBRARY_PATH to its folder" >&2
fi
ENV
cat > "$pkg/cumnist" <<'LAUNCH'
#!/usr/bin/env bash
# cumnist from the portable package: finds the CUDA libraries (env.sh), then runs bin/cumnist.
CUMNIST_QUIET=1
. "$(dirname "$(readlink -f "$0")")/env.sh"
exec "$(dirname "$(readlink -f "$0")")/bin/cumnist" "$@"
LAUNCH
chmod +x "$pkg/cumnist"

check_package "$pkg"
tar -C "$out_dir" -czf "$out_dir/$name.tar.gz" "$name"
echo "package: $out_dir/$name.tar.gz ($(du -h "$out_dir/$name.tar.gz" | cut -f1); unpacked $(du -sh "$pkg" | cut -f1))"
