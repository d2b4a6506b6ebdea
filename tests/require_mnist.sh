# Sourced by the shell tests that need real MNIST: sets $data to the data folder, or exits 77
# (ctest's SKIP_RETURN_CODE for these tests) with the reason when a file is missing.
data="${CUMNIST_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/cumnist}"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [ ! -e "$data/mnist/$f" ] && [ ! -e "$data/mnist/$f.gz" ]; then
    echo "SKIPPED: real MNIST is needed ($data/mnist/$f missing; run scripts/fetch_data.sh mnist)"
    exit 77
  fi
done
