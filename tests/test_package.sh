#!/usr/bin/env bash
# scripts/package.sh on the build beside this test (--no-build): the package's --check passes (every
# library resolves inside it, to the system set or to the CUDA install), the launcher runs with an
# empty environment, the packaged test binary runs its command-line tests against the packaged
# cumnist (CUMNIST_EXE from env.sh), and a package missing one of its libraries fails the check
# naming it. Skipped (exit 77, with the reason) without patchelf.
# Usage: tests/test_package.sh CUMNIST_BINARY WORK_DIR
set -uo pipefail
bin="$1"
work="$2"
root="$(cd "$(dirname "$0")/.." && pwd)"
build_dir="$(cd "$(dirname "$bin")" && pwd)"
command -v patchelf >/dev/null || { echo "patchelf not installed (scripts/setup.sh installs it): skipped"; exit 77; }
fail() { echo "FAILED: $*" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"

"$root/scripts/package.sh" --no-build --build-dir "$build_dir" --out "$work" > "$work/package.log" 2>&1 ||
  { cat "$work/package.log"; fail "package.sh exited $?"; }
pkg="$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'cumnist-*-linux-x86_64' | head -1)"
[ -n "$pkg" ] || fail "no package folder in $work"
[ -s "$pkg.tar.gz" ] || fail "no $pkg.tar.gz"
grep -q "every library resolves inside the package" "$work/package.log" || fail "package.sh did not run the check"
for f in bin/cumnist bin/cumnist_tests lib/libdnnl.so.2 lib/libfmt.so.9 lib/libgomp.so.1 env.sh cumnist scripts/gpu_report.sh; do
  [ -e "$pkg/$f" ] || fail "the package lacks $f"
done
[ "$(patchelf --print-rpath "$pkg/bin/cumnist")" = '$ORIGIN/../lib' ] || fail "bin/cumnist's RUNPATH is $(patchelf --print-rpath "$pkg/bin/cumnist")"

# The archive unpacks to the same folder.
mkdir -p "$work/unpacked"
tar -C "$work/unpacked" -xzf "$pkg.tar.gz" || fail "the archive does not unpack"
upkg="$work/unpacked/$(basename "$pkg")"
"$root/scripts/package.sh" --check "$upkg" > "$work/check.log" 2>&1 || { cat "$work/check.log"; fail "--check failed on the unpacked package"; }

# The launcher with nothing in the environment.
version="$(env -i PATH=/usr/bin:/bin "$upkg/cumnist" --version 2>&1)" || fail "the launcher failed: $version"
[ "$version" = "$("$bin" --version)" ] || fail "the launcher printed '$version'"

# The packaged test binary, its command-line tests running the packaged cumnist.
out="$(cd "$work" && env -i PATH=/usr/bin:/bin HOME="$HOME" bash -c ". '$upkg/env.sh' && echo \"exe=\$CUMNIST_EXE\" && '$upkg/bin/cumnist_tests' --gtest_filter='ThreadsFlag.*:Reference.Gemm*'" 2>&1)" ||
  { echo "$out"; fail "the packaged test binary failed"; }
grep -q "^exe=$upkg/bin/cumnist$" <<< "$out" || { echo "$out"; fail "env.sh did not set CUMNIST_EXE to the packaged cumnist"; }
grep -q "\[  PASSED  \] [1-9]" <<< "$out" || { echo "$out"; fail "no packaged test passed"; }

# A library missing from the package: the check names it.
cp -a "$upkg" "$work/broken"
rm "$work/broken/lib/libfmt.so.9"
if "$root/scripts/package.sh" --check "$work/broken" > "$work/broken.log" 2>&1; then
  cat "$work/broken.log"; fail "--check passed a package without libfmt.so.9"
fi
grep -q "libfmt.so.9 .*OUTSIDE THE PACKAGE" "$work/broken.log" || { cat "$work/broken.log"; fail "--check did not name libfmt.so.9"; }
echo "package: $(basename "$pkg") ($(du -h "$pkg.tar.gz" | cut -f1)) passes its check, runs from an empty environment, and a missing library is caught"
