#!/usr/bin/env bash
# One command that proves cumnist's GPU path on a machine with an NVIDIA GPU, and still finishes
# cleanly on one without (the GPU sections are then SKIPPED, with the reason, and the CPU test
# cases and the CPU bench run instead). Writes one folder: report.md, summary.txt, and the raw
# output of every section (01-machine.txt, 01-nvidia-smi.txt, 02-versions.txt, ...).
#
# Usage: scripts/gpu_report.sh [--out DIR] [--data DIR] [--bin DIR] [--quick]
#   --out DIR   the report folder (default: gpu-report-<UTC timestamp> in the current folder)
#   --data DIR  the data folder holding mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
#               (default: $CUMNIST_DATA, else $XDG_CACHE_HOME/cumnist, else ~/.cache/cumnist)
#   --bin DIR   the folder holding the cumnist and cumnist_tests executables (default: <pkg>/bin
#               in a portable package, else ${CUMNIST_BUILD_DIR:-build}/cumnist and
#               ${CUMNIST_BUILD_DIR:-build}/tests/cumnist_tests in the source tree)
#   --quick     fewer bench steps and 2 training epochs instead of 20 (for tests)
#
# Sections, in order, each under a timeout and never stopping the run: 1 machine, 2 versions
# (driver / CUDA runtime / cuBLAS / cuDNN found and linked), 3 GPU test cases
# (CUMNIST_REQUIRE_GPU=1; without a GPU: the whole test binary as "CPU test cases"), 4 cumnist
# selftest, 5 cumnist bench, 6 the default training run on the GPU, 7 PyTorch on the GPU, 8 a
# small sweep one trial at a time and four at a time on the GPU.
# A GPU that nvidia-smi lists but cumnist cannot use (no driver for its runtime, a CPU-only build)
# is not "no GPU": the GPU sections then run and FAIL with cumnist's reason.
# The whole run stays within $CUMNIST_REPORT_BUDGET_S seconds (default 470): a section that would
# overrun gets the time that is left and FAILs when it runs out.
# Exit status: 0 when no section FAILED (SKIPPED is fine), 1 otherwise, 2 for bad usage, 130/143
# when interrupted (the report is still written).
set -uo pipefail
shopt -s lastpipe   # `... | key_lines` adds to the section's key lines in this shell

usage() { sed -n '7,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
usage_error() { echo "gpu_report: $1 (see --help)" >&2; exit 2; }

out_dir=""
data_dir=""
bin_dir=""
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out|--data|--bin)
      if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "$1 needs a folder"; fi
      case "$1" in --out) out_dir="$2" ;; --data) data_dir="$2" ;; --bin) bin_dir="$2" ;; esac
      shift 2 ;;
    --out=*|--data=*|--bin=*)
      value="${1#*=}"
      [ -n "$value" ] || usage_error "${1%%=*} needs a folder"
      case "$1" in --out=*) out_dir="$value" ;; --data=*) data_dir="$value" ;; --bin=*) bin_dir="$value" ;; esac
      shift ;;
    --quick) quick=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

script_path="$(readlink -f "${BASH_SOURCE[0]}" 2>/dev/null || echo "${BASH_SOURCE[0]}")"   # through symlinks
script_dir="$(cd "$(dirname "$script_path")" && pwd)"
root="$(cd "$script_dir/.." && pwd)"   # the package or the repository

# --- where the binaries are ------------------------------------------------------------------------
is_package=0
[ -e "$root/bin/cumnist" ] && is_package=1
if [ -n "$bin_dir" ]; then
  bin_dir="$(abspath "$bin_dir")"
  cumnist_bin="$bin_dir/cumnist"
  tests_bin="$bin_dir/cumnist_tests"
  # --bin build (a build folder) holds the tests in tests/.
  if [ ! -e "$tests_bin" ] && [ -e "$bin_dir/tests/cumnist_tests" ]; then tests_bin="$bin_dir/tests/cumnist_tests"; fi
  layout="binaries from --bin $bin_dir"
elif [ "$is_package" = 1 ]; then
  bin_dir="$root/bin"
  cumnist_bin="$bin_dir/cumnist"
  tests_bin="$bin_dir/cumnist_tests"
  layout="portable package $root"
else
  build_dir="${CUMNIST_BUILD_DIR:-build}"
  case "$build_dir" in /*) ;; *) build_dir="$root/$build_dir" ;; esac
  bin_dir="$build_dir"
  cumnist_bin="$build_dir/cumnist"
  tests_bin="$build_dir/tests/cumnist_tests"
  layout="source tree $root, build folder $build_dir"
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/gpu_report.XXXXXX")" || { echo "gpu_report: mktemp failed" >&2; exit 2; }
trap 'rm -rf "$scratch"' EXIT

# A package's env.sh finds the CUDA libraries and sets LD_LIBRARY_PATH (and CUMNIST_EXE) for the
# binaries in its bin/ (sourced here, with its messages kept for the versions section); the
# package's launcher <pkg>/cumnist is preferred for running cumnist from that bin/.
env_note=""
if [ "$is_package" = 1 ] && [ -f "$root/env.sh" ]; then
  saved_options="$(set +o)"
  set +eu
  # shellcheck disable=SC1091
  if source "$root/env.sh" >"$scratch/env.out" 2>&1; then env_note="sourced $root/env.sh"
  else env_note="sourcing $root/env.sh failed (exit $?)"; fi
  eval "$saved_options"
  if [ -s "$scratch/env.out" ]; then env_note="$env_note: $(tr '\n' ' ' <"$scratch/env.out" | sed 's/ *$//')"; fi
fi
cumnist_cmd="$cumnist_bin"
if [ "$is_package" = 1 ] && [ -f "$root/cumnist" ] && [ -x "$root/cumnist" ] &&
   [ "$(cd "$bin_dir" 2>/dev/null && pwd -P)" = "$(cd "$root/bin" && pwd -P)" ]; then
  cumnist_cmd="$root/cumnist"
fi
export CUMNIST_EXE="$cumnist_cmd"   # the cumnist that the test binary's command-line cases run

data_dir="${data_dir:-${CUMNIST_DATA:-${XDG_CACHE_HOME:-${HOME:-.}/.cache}/cumnist}}"
data_dir="$(abspath "$data_dir")"

out_dir="${out_dir:-gpu-report-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out_dir" || { echo "gpu_report: cannot create the report folder '$out_dir'" >&2; exit 2; }
out_dir="$(cd "$out_dir" && pwd)"

python=""
for candidate in "${PYTHON:-}" python3 /usr/bin/python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import json' 2>/dev/null; then
    python="$(command -v "$candidate")"
    break
  fi
done

have_timeout=0
command -v timeout >/dev/null 2>&1 && have_timeout=1

# --- time, commands, sections ---------------------------------------------------------------------
now_ms() { date +%s%3N; }
fmt_ms() { printf '%d.%d s' "$(($1 / 1000))" "$((($1 % 1000) / 100))"; }
budget_s="${CUMNIST_REPORT_BUDGET_S:-470}"
case "$budget_s" in ''|*[!0-9]*) budget_s=470 ;; esac
start_ms="$(now_ms)"
deadline_ms=$((start_ms + budget_s * 1000))
started_utc="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"

CHILD=""
INTERRUPTED=""
on_signal() {
  INTERRUPTED="$1"
  if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2>/dev/null; fi
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

# describe_rc RC LIMIT: what an exit status means, for the report.
describe_rc() {
  case "$1" in
    0) echo "exit 0" ;;
    124) echo "timed out after ${2:-?}s" ;;
    126) echo "exit 126: not executable" ;;
    127) echo "exit 127: not found, or a shared library is missing" ;;
    130) echo "interrupted (SIGINT)" ;;
    132) echo "illegal instruction (SIGILL): built for another CPU (-march=native?)" ;;
    134) echo "aborted (SIGABRT)" ;;
    135) echo "bus error (SIGBUS)" ;;
    136) echo "floating-point exception (SIGFPE)" ;;
    137) echo "killed (SIGKILL: after its timeout, or out of memory)" ;;
    139) echo "segmentation fault (SIGSEGV)" ;;
    143) echo "terminated (SIGTERM)" ;;
    999) echo "not run: the report's time budget (${budget_s}s) is spent" ;;
    998) echo "not run: interrupted" ;;
    *) if [ "$1" -gt 128 ]; then echo "killed by signal $(($1 - 128))"; else echo "exit $1"; fi ;;
  esac
}

# run_cmd LIMIT_S FILE CMD...: runs CMD with stdin from /dev/null, stdout and stderr appended to
# FILE, under a timeout of LIMIT_S seconds (less when the run's budget has less left). Sets RC (999
# when there was no time left to run it) and RC_TEXT; returns RC.
run_cmd() {
  local limit="$1" file="$2" t0 t1 left
  shift 2
  RC=0
  if [ -n "$INTERRUPTED" ]; then RC=998; RC_TEXT="$(describe_rc 998)"; return 1; fi
  left=$(((deadline_ms - $(now_ms)) / 1000 - 3))
  [ "$left" -lt "$limit" ] && limit="$left"
  if [ "$limit" -lt 3 ]; then
    RC=999
    RC_TEXT="$(describe_rc 999)"
    printf '$ %s\n[%s]\n\n' "$*" "$RC_TEXT" >>"$file"
    return 1
  fi
  { printf '$'; for arg in "$@"; do
      if [[ "$arg" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then printf ' %s' "$arg"; else printf " '%s'" "${arg//\'/\'\\\'\'}"; fi
    done; printf '\n'; } >>"$file"
  t0="$(now_ms)"
  if [ "$have_timeout" = 1 ]; then
    timeout -k 10 "$limit" "$@" >>"$file" 2>&1 </dev/null &
  else
    "$@" >>"$file" 2>&1 </dev/null &
  fi
  CHILD=$!
  wait "$CHILD"
  RC=$?
  # A trapped signal interrupts wait: the command was told to stop; collect its real status.
  while [ -n "$INTERRUPTED" ] && kill -0 "$CHILD" 2>/dev/null; do wait "$CHILD"; RC=$?; done
  CHILD=""
  t1="$(now_ms)"
  RC_TEXT="$(describe_rc "$RC" "$limit")"
  printf '[%s; ran %s]\n\n' "$RC_TEXT" "$(fmt_ms $((t1 - t0)))" >>"$file"
  return "$RC"
}

S_COUNT=0
declare -a S_ID S_TITLE S_STATUS S_MS S_NOTE S_FILES S_KEYS
SEC_T0=0
SEC_FILE=""
SEC_FILES=""
SEC_KEYS=""
# begin SECTION_ID TITLE RAW_FILE: starts a section and its raw file.
begin() {
  SEC_ID="$1"
  SEC_TITLE="$2"
  SEC_FILE="$out_dir/$3"
  SEC_FILES="$3"
  SEC_KEYS=""
  SEC_T0="$(now_ms)"
  printf '# cumnist GPU report, section %s: %s\n# started %s\n\n' "$SEC_ID" "$SEC_TITLE" \
    "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" >"$SEC_FILE"
  echo "[$SEC_ID] $SEC_TITLE ..." >&2
}
also_file() { SEC_FILES="$SEC_FILES, $1"; }
key() { SEC_KEYS+="$*"$'\n'; }
key_lines() { local l; while IFS= read -r l; do SEC_KEYS+="$l"$'\n'; done; }
# finish STATUS NOTE: ends the section (STATUS: PASS, FAIL or SKIPPED).
finish() {
  local status="$1" note="$2" ms
  ms=$(($(now_ms) - SEC_T0))
  if [ -n "$INTERRUPTED" ] && [ "$status" = PASS ]; then status=FAIL; note="interrupted; $note"; fi
  S_ID[S_COUNT]="$SEC_ID"
  S_TITLE[S_COUNT]="$SEC_TITLE"
  S_STATUS[S_COUNT]="$status"
  S_MS[S_COUNT]="$ms"
  S_NOTE[S_COUNT]="$note"
  S_FILES[S_COUNT]="$SEC_FILES"
  S_KEYS[S_COUNT]="$SEC_KEYS"
  S_COUNT=$((S_COUNT + 1))
  printf '\n# %s: %s\n' "$status" "$note" >>"$SEC_FILE"
  echo "[$SEC_ID] $status ($(fmt_ms "$ms")): $note" >&2
}
# skip_section ID TITLE RAW_FILE REASON
skip_section() {
  begin "$1" "$2" "$3"
  echo "SKIPPED: $4" >>"$SEC_FILE"
  finish SKIPPED "$4"
}

# first_match REGEX FILE: the first line of FILE matching the extended REGEX (or nothing).
first_match() { grep -E -m1 -- "$1" "$2" 2>/dev/null; }
last_match() { grep -E -- "$1" "$2" 2>/dev/null | tail -n 1; }

# error_line FILE: ": <the first error line>" of a command's output in FILE, or nothing.
error_line() {
  local l
  l="$(grep -v '^\$ \|^# ' "$1" 2>/dev/null | grep -m1 -iE 'error|Traceback|not found' | cut -c1-300)"
  [ -n "$l" ] && printf ': %s' "$l"
}

mnist_missing() {
  local f
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ ! -e "$data_dir/mnist/$f" ] && [ ! -e "$data_dir/mnist/$f.gz" ]; then echo "$f"; return 0; fi
  done
  return 1
}
no_data_note="MNIST not found in $data_dir: run scripts/fetch_data.sh"

if [ "$quick" = 1 ]; then
  mode="quick"
  bench_args=(--steps 50 --gpu-steps 200 --warmup 10 --batch-sizes "32,256" --eval-repeats 1)
  torch_args=(--steps 200 --warmup 10 --batch-sizes "32,256" --eval-repeats 1)
  epochs=2
  min_accuracy=0.95
else
  mode="default"
  bench_args=()   # cumnist's defaults: 1000 CPU / 2000 GPU timed steps at batch 32,128,256,1024
  torch_args=(--steps 2000)
  epochs=20
  min_accuracy=0.975
fi

echo "gpu_report: $mode run, $layout; report in $out_dir" >&2

# --- 1. machine -----------------------------------------------------------------------------------
gpu_listed=0       # nvidia-smi -L (or the driver's /proc entry) names a GPU
gpu_name=""
gpu_cc=""
smi_state=""
begin 1 "machine" 01-machine.txt
run_cmd 30 "$SEC_FILE" uname -a
key "uname: $(uname -a 2>/dev/null)"
cpu_model="$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
[ -n "$cpu_model" ] || cpu_model="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)"
[ -n "$cpu_model" ] || cpu_model="unknown"
cores="$(nproc 2>/dev/null || echo '?')"
mem_total="$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null)"
os_name="$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null)"
{
  echo "CPU model: $cpu_model"
  echo "nproc: $cores"
  echo "memory: ${mem_total:-unknown}"
  echo "OS: ${os_name:-unknown}"
  echo
} >>"$SEC_FILE"
run_cmd 30 "$SEC_FILE" lscpu
if command -v free >/dev/null 2>&1; then run_cmd 30 "$SEC_FILE" free -h; fi
key "CPU: $cpu_model, nproc $cores, memory ${mem_total:-unknown}, ${os_name:-unknown OS}"
also_file 01-nvidia-smi.txt
smi_file="$out_dir/01-nvidia-smi.txt"
: >"$smi_file"
if command -v nvidia-smi >/dev/null 2>&1; then
  run_cmd 60 "$smi_file" nvidia-smi
  run_cmd 30 "$smi_file" nvidia-smi -L
  smi_rc="$RC"
  if [ "$smi_rc" = 0 ] && grep -q '^GPU [0-9]' "$smi_file"; then
    gpu_listed=1
    smi_state="nvidia-smi lists $(grep -c '^GPU [0-9]' "$smi_file") GPU(s)"
    grep '^GPU [0-9]' "$smi_file" | key_lines
  else
    smi_state="nvidia-smi -L lists no GPU ($(describe_rc "$smi_rc" 30)): $(grep -v '^\$\|^\[' "$smi_file" | grep -v '^$' | tail -n 1)"
    key "$smi_state"
  fi
  # compute_cap needs a recent driver: without it, ask for the rest.
  csv_file="$scratch/query-cc.csv"
  : >"$csv_file"
  with_cc=1
  if ! run_cmd 30 "$csv_file" nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv; then
    cat "$csv_file" >>"$smi_file"
    csv_file="$scratch/query.csv"
    : >"$csv_file"
    with_cc=0
    run_cmd 30 "$csv_file" nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  fi
  cat "$csv_file" >>"$smi_file"
  if [ "$RC" = 0 ]; then
    grep -v '^\$\|^\[\|^$' "$csv_file" | key_lines
    csv_row="$(grep -v '^\$\|^\[\|^$' "$csv_file" | sed -n 2p)"
    gpu_name="$(printf '%s' "$csv_row" | cut -d, -f1 | sed 's/^ *//; s/ *$//')"
    [ "$with_cc" = 1 ] && gpu_cc="$(printf '%s' "$csv_row" | cut -d, -f2 | tr -d ' ')"
  fi
else
  smi_state="nvidia-smi not found"
  echo "nvidia-smi not found" >>"$smi_file"
  key "nvidia-smi not found"
fi
if [ "$gpu_listed" = 0 ] && compgen -G '/proc/driver/nvidia/gpus/*' >/dev/null 2>&1; then
  gpu_listed=1
  smi_state="$smi_state; /proc/driver/nvidia/gpus lists a GPU"
fi
if [ -r /proc/driver/nvidia/version ]; then
  { echo "\$ cat /proc/driver/nvidia/version"; cat /proc/driver/nvidia/version; echo; } >>"$smi_file"
fi
finish PASS "$cpu_model, $cores cores, ${mem_total:-unknown memory}; $smi_state"

# --- 2. versions ----------------------------------------------------------------------------------
gpu_usable=""      # yes / no / unknown, as cumnist sees it
gpu_reason=""
begin 2 "versions" 02-versions.txt
also_file 02-selftest-probe.txt
probe_file="$out_dir/02-selftest-probe.txt"
: >"$probe_file"
{
  echo "binaries: $layout"
  echo "cumnist: $cumnist_bin$([ "$cumnist_cmd" != "$cumnist_bin" ] && echo " (run through the launcher $cumnist_cmd)")"
  echo "test binary: $tests_bin"
  [ -n "$env_note" ] && echo "environment: $env_note"
  [ "$have_timeout" = 1 ] || echo "timeout not found: the sections run without a time limit"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  echo
} >>"$SEC_FILE"
[ -n "$env_note" ] && key "environment: $env_note"
v_status=PASS
v_note=""
if [ ! -e "$cumnist_bin" ]; then
  v_status=FAIL
  v_note="cumnist not found at $cumnist_bin (build it with scripts/build.sh, or pass --bin DIR)"
  echo "$v_note" >>"$SEC_FILE"
  key "$v_note"
  gpu_usable=unknown
  gpu_reason="cumnist not found at $cumnist_bin"
else
  if run_cmd 30 "$SEC_FILE" "$cumnist_cmd" --version; then
    version_line="$(grep -A1 -- '--version$' "$SEC_FILE" | tail -n 1)"
    key "version: $version_line"
    v_note="$version_line"
  else
    v_status=FAIL
    v_note="cumnist --version: $RC_TEXT"
    key "cumnist --version: $RC_TEXT: $(grep -A3 -- '--version$' "$SEC_FILE" | sed -n 2p)"
  fi
  # cumnist selftest names the GPU on its first line, or says why none is usable.
  run_cmd 120 "$probe_file" "$cumnist_cmd" selftest
  probe_rc="$RC"
  probe_first="$(grep -v '^\$ \|^\[\|^$' "$probe_file" | head -n 1)"
  echo "cumnist selftest (first line; the whole run in 02-selftest-probe.txt, exit $probe_rc): $probe_first" >>"$SEC_FILE"
  key "cumnist selftest: $probe_first"
  if grep -q 'needs a usable GPU: ' "$probe_file"; then
    gpu_usable=no
    gpu_reason="$(sed -n 's/.*needs a usable GPU: //p' "$probe_file" | head -n 1)"
  elif grep -q '^cumnist selftest on ' "$probe_file"; then
    gpu_usable=yes
    [ -n "$gpu_name" ] || gpu_name="$(sed -n 's/^cumnist selftest on //p' "$probe_file" | head -n 1)"
  else
    gpu_usable=unknown
    gpu_reason="cumnist selftest did not say ($(describe_rc "$probe_rc" 120)): $probe_first"
  fi
  echo >>"$SEC_FILE"

  # Libraries: linked against (NEEDED), resolved (ldd), and known to the loader (ldconfig -p).
  if command -v readelf >/dev/null 2>&1; then
    needed="$(readelf -d "$cumnist_bin" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | grep -E 'cuda|cublas|cudnn')"
    { echo "linked against (NEEDED): ${needed:-no CUDA library (a build without the CUDA backend?)}" | tr '\n' ' '; echo; } >>"$SEC_FILE"
    key "linked against: $(echo "${needed:-no CUDA library}" | tr '\n' ' ')"
  fi
  ldd_file="$scratch/ldd.txt"
  : >"$ldd_file"
  run_cmd 30 "$ldd_file" ldd "$cumnist_bin"
  {
    echo "\$ ldd $cumnist_bin | grep -E 'cuda|cublas|cudnn|not found'"
    grep -E 'cuda|cublas|cudnn|not found' "$ldd_file" | grep -v '^\$' || echo "(none)"
    echo
  } >>"$SEC_FILE"
  resolved=()
  while IFS= read -r lib; do
    [ -n "$lib" ] || continue
    resolved+=("$lib")
    echo "  $lib -> $(readlink -f "$lib" 2>/dev/null)" >>"$SEC_FILE"
    key "resolves: $lib$([ "$(readlink -f "$lib" 2>/dev/null)" != "$lib" ] && echo " -> $(readlink -f "$lib" 2>/dev/null)")"
  done < <(grep -E 'cuda|cublas|cudnn' "$ldd_file" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p')
  unresolved="$(grep 'not found' "$ldd_file" | sed 's/^[[:space:]]*//' | tr '\n' ';')"
  if [ -n "$unresolved" ]; then
    key "unresolved: $unresolved"
    if [ "$cumnist_cmd" = "$cumnist_bin" ]; then
      v_status=FAIL
      v_note="$v_note; unresolved libraries: $unresolved"
    else
      v_note="$v_note; unresolved without the launcher: $unresolved"
    fi
  fi
  echo >>"$SEC_FILE"
  if command -v ldconfig >/dev/null 2>&1 || [ -x /sbin/ldconfig ]; then
    ldconfig_bin="$(command -v ldconfig 2>/dev/null || echo /sbin/ldconfig)"
    {
      echo "\$ ldconfig -p | grep -E 'libcuda\\.so|libcudart|libcublas|libcublasLt|libcudnn'"
      "$ldconfig_bin" -p 2>/dev/null | grep -E 'libcuda\.so|libcudart|libcublas|libcublasLt|libcudnn' || echo "(none)"
      echo
    } >>"$SEC_FILE"
    ldconfig_cudnn="$("$ldconfig_bin" -p 2>/dev/null | grep -E 'libcudnn\.so' | head -n 1 | sed 's/.*=> //')"
  else
    ldconfig_cudnn=""
    echo "ldconfig not found" >>"$SEC_FILE"
  fi

  # The versions the libraries themselves report (ctypes; loading them needs no GPU).
  if [ -n "$python" ]; then
    probe_libs=("${resolved[@]}")
    if [ -n "$ldconfig_cudnn" ] && ! printf '%s\n' "${resolved[@]}" | grep -q libcudnn; then probe_libs+=("$ldconfig_cudnn"); fi
    lib_versions_file="$scratch/libversions.txt"
    : >"$lib_versions_file"
    cat >"$scratch/libversions.py" <<'EOF'
import ctypes, os, sys

def dotted(v, big):  # 13010 -> 13.1 (CUDA); 130100 -> 13.1.0 (cuBLASLt, cuDNN 9)
    return f"{v // 1000}.{v % 1000 // 10}" if not big else f"{v // 10000}.{v // 100 % 100}.{v % 100}"

def report(path):
    name = os.path.basename(path)
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        return f"cannot load ({e})"
    v = ctypes.c_int()
    if name.startswith("libcudart"):
        out = []
        if lib.cudaRuntimeGetVersion(ctypes.byref(v)) == 0:
            out.append(f"CUDA runtime {dotted(v.value, False)}")
        if lib.cudaDriverGetVersion(ctypes.byref(v)) == 0:
            out.append(f"driver supports CUDA {dotted(v.value, False)}" if v.value else "no CUDA driver found")
        return ", ".join(out) or "no version call answered"
    if name.startswith("libcublasLt"):
        lib.cublasLtGetVersion.restype = ctypes.c_size_t
        return f"cuBLASLt {dotted(lib.cublasLtGetVersion(), True)}"
    if name.startswith("libcublas"):
        parts = []
        for t in range(3):
            if lib.cublasGetProperty(t, ctypes.byref(v)) != 0:
                return "cublasGetProperty failed"
            parts.append(str(v.value))
        return "cuBLAS " + ".".join(parts)
    if name.startswith("libcudnn"):
        lib.cudnnGetVersion.restype = ctypes.c_size_t
        c = lib.cudnnGetVersion()
        s = dotted(c, True) if c >= 90000 else f"{c // 1000}.{c % 1000 // 100}.{c % 100}"
        return f"cuDNN {s}"
    return "unknown library"

for path in sys.argv[1:]:
    print(f"{os.path.basename(path)}: {report(path)}")
try:
    cuda = ctypes.CDLL("libcuda.so.1")
    v = ctypes.c_int()
    rc = cuda.cuDriverGetVersion(ctypes.byref(v))
    print(f"libcuda.so.1 (the driver): " + (f"supports CUDA {v.value // 1000}.{v.value % 1000 // 10}" if rc == 0 else f"cuDriverGetVersion failed ({rc})"))
except OSError as e:
    print(f"libcuda.so.1 (the driver): not loadable ({e})")
EOF
    run_cmd 60 "$lib_versions_file" "$python" "$scratch/libversions.py" ${probe_libs[@]+"${probe_libs[@]}"}
    grep -v '^\$ \|^\[\|^$' "$lib_versions_file" | key_lines
    lib_summary="$(grep -E '^libcudart[^:]*: |^libcublas\.[^:]*: ' "$lib_versions_file" | sed 's/^[^:]*: //' | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
    [ -n "$lib_summary" ] && v_note="$v_note; $lib_summary"
    { echo "versions the libraries report:"; cat "$lib_versions_file"; } >>"$SEC_FILE"
  fi
  printf '%s\n' "${resolved[@]}" | grep -q libcudnn || key "cuDNN: not linked by cumnist${ldconfig_cudnn:+ (on the system: $ldconfig_cudnn)}"

  # The driver (nvidia-smi's header names the driver and the newest CUDA it supports).
  smi_header="$(grep -m1 'Driver Version' "$smi_file" 2>/dev/null | tr -s ' ' | sed 's/^| *//; s/ *|$//')"
  [ -n "$smi_header" ] && key "nvidia-smi: $smi_header"
  if [ -r /proc/driver/nvidia/version ]; then key "driver: $(head -n 1 /proc/driver/nvidia/version)"; fi

  # What the build was compiled with, where the build folder tells (source tree).
  cuda_compiler="$(sed -n 's/^set(CMAKE_CUDA_COMPILER_VERSION "\(.*\)")/\1/p' "$bin_dir"/CMakeFiles/*/CMakeCUDACompiler.cmake 2>/dev/null | head -n 1)"
  archs="$(grep -h '^CUDA_FLAGS' "$bin_dir/CMakeFiles/cumnist_core.dir/flags.make" 2>/dev/null | grep -o 'code=\[[^]]*\]' | tr -d '[]' | sed 's/code=//' | tr '\n' ',' | sed 's/,$//')"
  if [ -n "$cuda_compiler" ] || [ -n "$archs" ]; then
    key "built with nvcc ${cuda_compiler:-?} for ${archs:-?}"
    echo "build folder: nvcc ${cuda_compiler:-?}, code for ${archs:-?}" >>"$SEC_FILE"
  fi
  if command -v cuobjdump >/dev/null 2>&1; then
    run_cmd 60 "$SEC_FILE" cuobjdump --list-elf --list-ptx "$cumnist_bin"
    embedded="$(grep -oE 'sm_[0-9]+[a-z]?|compute_[0-9]+[a-z]?' "$SEC_FILE" | sort -u | tr '\n' ' ')"
    [ -n "$embedded" ] && key "cuobjdump: code for $embedded"
    [ -n "$archs" ] || archs="$embedded"
  fi
  if [ -n "$gpu_cc" ] && [ -n "$archs" ]; then
    sm="sm_${gpu_cc/./}"
    cc_num="${gpu_cc/./}"
    # SASS for X.y runs on X.z with z >= y (not the "a"/"f" variants); PTX for N runs on N or newer.
    compatible_sass="$(printf '%s' "$archs" | grep -oE 'sm_[0-9]+\b' | sed 's/sm_//' |
                       awk -v cc="$cc_num" 'int($1 / 10) == int(cc / 10) && $1 % 10 <= cc % 10 {print "sm_" $1}' |
                       sort -u | tr '\n' ' ')"
    usable_ptx="$(printf '%s' "$archs" | grep -oE 'compute_[0-9]+\b' | sed 's/compute_//' |
                  awk -v cc="$cc_num" '$1 + 0 <= cc + 0 {print "compute_" $1}' | sort -u | tr '\n' ' ')"
    if printf '%s' "$archs" | grep -qw "$sm"; then
      key "the GPU (compute capability $gpu_cc) has SASS in the build ($sm)"
    elif [ -n "$compatible_sass" ]; then
      key "the GPU (compute capability $gpu_cc) runs the build's SASS for ${compatible_sass% } (no $sm)"
    elif [ -n "$usable_ptx" ]; then
      key "no SASS for this GPU ($sm) in the build: the driver JIT-compiles its PTX ${usable_ptx% }"
    else
      key "no SASS for this GPU ($sm) and no PTX it can run: the GPU code will not load"
    fi
  fi
fi
finish "$v_status" "${v_note:-versions collected}"

# --- which GPU sections run -----------------------------------------------------------------------
# A usable GPU: run them. None listed and none usable: skip them with the reason. Listed but not
# usable by cumnist: run them, so that they fail with cumnist's reason instead of hiding it.
gpu_run=0
gpu_skip_reason=""
if [ "$gpu_usable" = yes ]; then
  gpu_run=1
  gpu_header="${gpu_name:-a usable GPU}"
elif [ "$gpu_listed" = 1 ]; then
  gpu_run=1
  gpu_header="${gpu_name:-a GPU} is present ($smi_state) but cumnist cannot use it: ${gpu_reason:-unknown reason}"
elif [ "$gpu_usable" = no ]; then
  gpu_skip_reason="no usable GPU: ${gpu_reason:-unknown}${smi_state:+ ($smi_state)}"
  gpu_header="$gpu_skip_reason"
else
  gpu_skip_reason="no usable GPU: ${smi_state:-none listed}; cumnist could not be asked: ${gpu_reason:-unknown}"
  gpu_header="$gpu_skip_reason"
fi
echo "gpu_report: GPU: $gpu_header" >&2

# test_counts JSON TXT: "N tests: P passed, F failed, S skipped" (+ failing names); falls back
# to gtest's summary lines in TXT.
test_counts() {
  local json="$1" txt="$2"
  if [ -n "$python" ] && [ -s "$json" ]; then
    "$python" - "$json" <<'EOF' && return 0
import json, sys
d = json.load(open(sys.argv[1]))
passed = failed = skipped = 0
failing = []
first_message = ""
for suite in d.get("testsuites", []):
    for t in suite.get("testsuite", []):
        name = f"{suite['name']}.{t['name']}"
        if t.get("failures"):
            failed += 1
            failing.append(name)
            if not first_message:
                text = " ".join(l.strip() for l in t["failures"][0].get("failure", "").splitlines()[:3])
                first_message = f"first failure, {name}: {text[:300]}"
        elif t.get("result") == "SKIPPED" or t.get("skipped"):
            skipped += 1
        else:
            passed += 1
total = passed + failed + skipped
line = f"{total} tests: {passed} passed, {failed} failed, {skipped} skipped"
print(line)
if first_message:
    print(first_message)
for name in failing[:20]:
    print(f"FAILED {name}")
if len(failing) > 20:
    print(f"... and {len(failing) - 20} more")
EOF
  fi
  local ran passed failed skipped
  ran="$(sed -n 's/^\[==========\] \([0-9]*\) tests\{0,1\} from .* ran\..*/\1/p' "$txt" | tail -n 1)"
  passed="$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\{0,1\}\..*/\1/p' "$txt" | tail -n 1)"
  failed="$(sed -n 's/^\[  FAILED  \] \([0-9]*\) tests\{0,1\}, listed below.*/\1/p' "$txt" | tail -n 1)"
  skipped="$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) tests\{0,1\}, listed below.*/\1/p' "$txt" | tail -n 1)"
  if [ -z "$ran" ]; then echo "no test results (the test binary wrote no summary)"; return 1; fi
  echo "${ran} tests: ${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
  grep '^\[  FAILED  \] [A-Za-z]' "$txt" | grep -v ' tests\{0,1\}, listed below' | sed 's/^\[  FAILED  \] /FAILED /' | head -n 20
}

# run_tests ID TITLE RAW JSON ENV... -- GTEST_ARGS...: one run of the test binary as a section.
run_tests() {
  local id="$1" title="$2" raw="$3" json="$4" counts first status note
  shift 4
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  begin "$id" "$title" "$raw"
  also_file "$json"
  rm -f "$out_dir/$json"
  if [ ! -e "$tests_bin" ]; then
    echo "test binary not found: $tests_bin" >>"$SEC_FILE"
    finish FAIL "test binary not found: $tests_bin"
    return
  fi
  run_cmd 240 "$SEC_FILE" env "${envs[@]}" CUMNIST_DATA="$data_dir" "$tests_bin" "$@" \
    --gtest_output="json:$out_dir/$json"
  local rc="$RC" rc_text="$RC_TEXT"
  counts="$(test_counts "$out_dir/$json" "$SEC_FILE")"
  first="$(printf '%s\n' "$counts" | head -n 1)"
  printf '%s\n' "$counts" | key_lines
  if grep -q 'error while loading shared libraries' "$SEC_FILE"; then key "$(grep -m1 'error while loading shared libraries' "$SEC_FILE")"; fi
  # A crash or a timeout leaves no summary: name the case that was running.
  if [ "$rc" != 0 ] && ! grep -q '^\[==========\] .* ran\.' "$SEC_FILE"; then
    last_run="$(grep '^\[ RUN      \] ' "$SEC_FILE" | tail -n 1 | sed 's/^\[ RUN      \] //')"
    [ -n "$last_run" ] && key "running when it stopped ($rc_text): $last_run"
  fi
  if [ "$rc" = 0 ] && printf '%s' "$first" | grep -q '^[1-9][0-9]* tests: .* 0 failed'; then
    status=PASS
    note="$first"
  else
    status=FAIL
    note="$first ($rc_text)"
  fi
  finish "$status" "$note"
}

# --- 3. GPU test cases ----------------------------------------------------------------------------
gpu_filter='*Cuda*:*cuda*:*Gpu*:*GPU*:TrainerParity.*:Selftest*:CheckpointDevices.*'
if [ "$gpu_run" = 1 ]; then
  run_tests 3 "GPU test cases" 03-gpu-tests.txt gpu-tests.json CUMNIST_REQUIRE_GPU=1 -- \
    --gtest_filter="$gpu_filter"
else
  skip_section 3 "GPU test cases" 03-gpu-tests.txt "$gpu_skip_reason"
  # Instead, the whole test binary once, as a machine without a GPU runs it (GPU cases skip).
  run_tests 3b "CPU test cases" 03b-cpu-tests.txt cpu-tests.json -u CUMNIST_REQUIRE_GPU --
fi

# --- 4. selftest ----------------------------------------------------------------------------------
if [ "$gpu_run" = 1 ]; then
  begin 4 "selftest" 04-selftest.txt
  if [ ! -e "$cumnist_bin" ]; then
    finish FAIL "cumnist not found at $cumnist_bin"
  else
    run_cmd 180 "$SEC_FILE" "$cumnist_cmd" selftest
    rc="$RC"; rc_text="$RC_TEXT"
    first_match '^cumnist selftest on |needs a usable GPU' "$SEC_FILE" | key_lines
    grep -E '^[A-Za-z].* FAIL ' "$SEC_FILE" | head -n 20 | key_lines
    checks="$(last_match '^[0-9]+ of [0-9]+ checks passed' "$SEC_FILE")"
    [ -n "$checks" ] && key "$checks"
    if [ "$rc" = 0 ]; then finish PASS "${checks:-exit 0}"
    else finish FAIL "${checks:+$checks; }$rc_text$(grep -q 'needs a usable GPU' "$SEC_FILE" && echo ": no usable GPU: ${gpu_reason}")"; fi
  fi
else
  skip_section 4 "selftest" 04-selftest.txt "$gpu_skip_reason"
fi

# The sections that train: when MNIST or the cumnist binary is missing, finish the section as FAIL
# saying which, and return 0; return 1 when both are there.
inputs_missing() {
  local missing
  if missing="$(mnist_missing)"; then
    echo "$no_data_note ($missing missing)" >>"$SEC_FILE"
    finish FAIL "$no_data_note"
    return 0
  fi
  if [ ! -e "$cumnist_bin" ]; then
    finish FAIL "cumnist not found at $cumnist_bin"
    return 0
  fi
  return 1
}

# --- 5. bench -------------------------------------------------------------------------------------
graph_line=""
bench_device=cpu
[ "$gpu_run" = 1 ] && bench_device=all
begin 5 "bench ($bench_device)" 05-bench.txt
also_file bench.json
rm -f "$out_dir/bench.json"
if ! inputs_missing; then
  run_cmd 240 "$SEC_FILE" "$cumnist_cmd" bench --device "$bench_device" --data "$data_dir" \
    ${bench_args[@]+"${bench_args[@]}"} --json "$out_dir/bench.json"
  rc="$RC"; rc_text="$RC_TEXT"
  grep -E '^(No usable GPU|  cpu|  gpu|Training \(|device |cpu |cuda |gpu |Inference \(|CUDA Graph: )' "$SEC_FILE" | key_lines
  graph_line="$(first_match '^CUDA Graph: [0-9]+ nodes per training step' "$SEC_FILE")"
  gpu_rows="$(grep -cE '^(cuda|gpu) +[0-9]+ ' "$SEC_FILE")"
  cpu_rows="$(grep -cE '^cpu +[0-9]+ ' "$SEC_FILE")"
  rates() {  # rates DEVICE_REGEX: "32: 41,545, 256: 69,173" (training samples/s by batch size)
    grep -E "^($1) +[0-9]+ " "$SEC_FILE" | awk '{printf "%s%s: %s", sep, $2, $3; sep=", "}'
  }
  note="$cpu_rows CPU and $gpu_rows GPU training configurations"
  [ "$gpu_rows" != 0 ] && note="$note; GPU samples/s by batch: $(rates 'cuda|gpu')"
  [ "$cpu_rows" != 0 ] && note="$note; CPU samples/s by batch: $(rates cpu)"
  note="$note${graph_line:+; $graph_line}"
  if [ "$rc" != 0 ]; then
    finish FAIL "$rc_text$(error_line "$SEC_FILE")"
  elif [ "$gpu_run" = 1 ] && [ "$gpu_rows" = 0 ]; then
    finish FAIL "bench --device all measured no GPU configuration; $note"
  elif [ "$cpu_rows" = 0 ]; then
    finish FAIL "bench printed no CPU training rows"
  else
    finish PASS "$note"
  fi
fi

# --- 6. training on the GPU -----------------------------------------------------------------------
train_facts=""
if [ "$gpu_run" = 1 ]; then
  begin 6 "GPU training ($epochs epochs)" 06-train.txt
  also_file metrics.jsonl
  rm -f "$out_dir/metrics.jsonl"
  if ! inputs_missing; then
    run_cmd 240 "$SEC_FILE" "$cumnist_cmd" train --device gpu --epochs "$epochs" --data "$data_dir" \
      --metrics-out "$out_dir/metrics.jsonl"
    rc="$RC"; rc_text="$RC_TEXT"
    first_match '^cumnist: training on ' "$SEC_FILE" | key_lines
    grep -E '^  (schedule|placement) ' "$SEC_FILE" | key_lines
    epoch_lines="$(grep -E '^[0-9]+/[0-9]+ \[' "$SEC_FILE")"
    [ -n "$epoch_lines" ] && { printf '%s\n' "$epoch_lines" | head -n 1; [ "$(printf '%s\n' "$epoch_lines" | wc -l)" -gt 1 ] && printf '%s\n' "$epoch_lines" | tail -n 1; } | key_lines
    done_line="$(last_match '^Done: ' "$SEC_FILE")"
    train_graph="$(last_match '^CUDA Graph: ' "$SEC_FILE")"
    [ -n "$done_line" ] && key "$done_line"
    [ -n "$train_graph" ] && key "$train_graph"
    final_acc="$(printf '%s\n' "$epoch_lines" | tail -n 1 | sed -n 's/.*val_accuracy: \([0-9.]*\).*/\1/p')"
    total_time="$(printf '%s' "$done_line" | sed -n 's/^Done: .* in \([^;]*\);.*/\1/p')"
    best="$(printf '%s' "$done_line" | sed -n 's/.*best test accuracy \(.*\)$/\1/p')"
    [ -n "$done_line" ] && train_facts="final test accuracy ${final_acc:-?}, best ${best:-?}, total ${total_time:-?}"
    if [ "$rc" != 0 ]; then
      finish FAIL "$rc_text$(error_line "$SEC_FILE")"
    elif [ -z "$done_line" ]; then
      finish FAIL "no 'Done:' line"
    elif [ -z "$final_acc" ] || ! awk -v a="$final_acc" -v m="$min_accuracy" 'BEGIN { exit !(a >= m) }'; then
      finish FAIL "$train_facts: the final test accuracy is below the expected $min_accuracy after $epochs epochs"
    else
      finish PASS "$train_facts"
    fi
  fi
else
  skip_section 6 "GPU training ($epochs epochs)" 06-train.txt "$gpu_skip_reason (not training $epochs epochs on the CPU)"
fi

# --- 7. PyTorch on the GPU ------------------------------------------------------------------------
begin 7 "PyTorch on the GPU" 07-pytorch.txt
bench_py="$root/scripts/bench_pytorch.py"
torch_python=""
torch_info=""
tried=" "
for candidate in "${PYTHON:-}" /usr/bin/python3 python3; do
  if [ -z "$candidate" ] || ! command -v "$candidate" >/dev/null 2>&1; then continue; fi
  resolved_python="$(command -v "$candidate")"
  case "$tried" in *" $resolved_python "*) continue ;; esac
  tried="$tried$resolved_python "
  if run_cmd 120 "$SEC_FILE" "$resolved_python" -c \
      'import numpy, torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuda_available", torch.cuda.is_available())'; then
    torch_python="$resolved_python"
    torch_info="$(grep '^torch .* cuda_available ' "$SEC_FILE" | tail -n 1)"
    break
  fi
  [ "$RC" -ge 998 ] && break
done
torch_reason=""
torch_status=SKIPPED
if [ -z "$torch_python" ] && [ "$RC" -ge 998 ]; then
  torch_reason="$RC_TEXT"
  torch_status=FAIL
elif [ -z "$torch_python" ]; then
  torch_reason="PyTorch not installed (no python3 that imports torch and numpy)"
elif ! printf '%s' "$torch_info" | grep -q 'cuda_available True'; then
  torch_reason="PyTorch $(printf '%s' "$torch_info" | awk '{print $2 " (CUDA " $4 ")"}') in $torch_python: torch.cuda.is_available() is False"
elif [ ! -f "$bench_py" ]; then
  torch_reason="$bench_py not found"
fi
if [ -n "$torch_reason" ]; then
  echo "$torch_status: $torch_reason" >>"$SEC_FILE"
  finish "$torch_status" "$torch_reason"
else
  key "$torch_info ($torch_python)"
  run_cmd 60 "$SEC_FILE" "$torch_python" "$bench_py" --help
  device_value=""
  if grep -q -- '--device' "$SEC_FILE"; then
    device_value=cuda
    if grep -A2 -- '--device' "$SEC_FILE" | grep -q '{[^}]*gpu[^}]*}' && ! grep -A2 -- '--device' "$SEC_FILE" | grep -q '{[^}]*cuda[^}]*}'; then
      device_value=gpu
    fi
  fi
  if [ -z "$device_value" ]; then
    echo "SKIPPED: bench_pytorch.py has no GPU mode (no --device option)" >>"$SEC_FILE"
    finish SKIPPED "bench_pytorch.py has no GPU mode (no --device option)"
  elif missing="$(mnist_missing)"; then
    echo "$no_data_note ($missing missing)" >>"$SEC_FILE"
    finish FAIL "$no_data_note"
  else
    rm -f "$out_dir/pytorch.json"
    also_file pytorch.json
    run_cmd 180 "$SEC_FILE" "$torch_python" "$bench_py" --device "$device_value" --data "$data_dir" \
      ${torch_args[@]+"${torch_args[@]}"} --json "$out_dir/pytorch.json"
    rc="$RC"; rc_text="$RC_TEXT"
    grep -E '^(PyTorch |device |cuda |gpu |cpu |Inference )' "$SEC_FILE" | key_lines
    if [ -n "$python" ] && [ -s "$out_dir/pytorch.json" ] && [ -s "$out_dir/bench.json" ]; then
      "$python" - "$out_dir/bench.json" "$out_dir/pytorch.json" >>"$SEC_FILE" 2>&1 <<'EOF'
import json, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
gpu = {r["batch"]: r["samples_per_second"] for r in ours.get("training", []) if r.get("device") != "cpu"}
torch_rows = {r["batch"]: r["samples_per_second"] for r in theirs.get("training", [])}
print("\nside by side (training samples/s on the GPU)")
print(" batch | cumnist samples/s | PyTorch samples/s |  ratio")
for b in sorted(set(gpu) | set(torch_rows)):
    c, t = gpu.get(b), torch_rows.get(b)
    ratio = f"{c / t:.2f}x" if c and t else "-"
    print(f" {b:>5} | {c:>17,.0f} | {t:>17,.0f} | {ratio:>6}" if c and t else f" {b:>5} | {c or '-':>17} | {t or '-':>17} | {ratio:>6}")
EOF
      sed -n '/^side by side/,$p' "$SEC_FILE" | grep -v '^\[' | key_lines
    fi
    ratios="$(sed -n '/^side by side/,$p' "$SEC_FILE" | awk -F'|' '$1 ~ /^ *[0-9]+ *$/ {gsub(/ /, ""); printf "%s%s: %s", sep, $1, $4; sep=", "}')"
    if [ "$rc" = 0 ]; then finish PASS "$(printf '%s' "$torch_info" | awk '{print $1, $2}') on the GPU (--device $device_value)${ratios:+; cumnist/PyTorch samples/s by batch: $ratios}"
    else finish FAIL "$rc_text$(error_line "$SEC_FILE")"; fi
  fi
fi

# --- 8. sweep trials at once on the GPU -----------------------------------------------------------
# Eight small trials of 2 epochs, one at a time and then four at a time (each on its own CUDA
# stream, in one process): the wall times say what concurrency gains on this GPU, and the two
# ranked tables must be the same (each trial computes alike beside others).
if [ "$gpu_run" = 1 ]; then
  begin 8 "concurrent sweep trials" 08-sweep.txt
  if ! inputs_missing; then
    sweep_args=(sweep --param 'hidden=16|32|64|128' --param 'lr=0.001,0.003' --epochs 2 --device gpu --data "$data_dir")
    declare -A sweep_ms sweep_rc
    for k in 1 4; do
      t0="$(now_ms)"
      run_cmd 120 "$SEC_FILE.$k" "$cumnist_cmd" "${sweep_args[@]}" --parallel "$k" --out "$scratch/sweep-$k"
      sweep_rc[$k]="$RC"
      sweep_ms[$k]=$(($(now_ms) - t0))
      cat "$SEC_FILE.$k" >>"$SEC_FILE"
      grep -E '^  trials ' "$SEC_FILE.$k" | key_lines
    done
    table() { grep -E '^ +[0-9]+ +[0-9]+ +[0-9.]+ +[0-9]+ ' "$1"; }
    gain="1 at a time $(fmt_ms "${sweep_ms[1]}"), 4 at a time $(fmt_ms "${sweep_ms[4]}")"
    [ "${sweep_ms[4]}" -gt 0 ] && gain="$gain ($(awk -v a="${sweep_ms[1]}" -v b="${sweep_ms[4]}" 'BEGIN { printf "%.2fx", a / b }'))"
    key "8 trials of 2 epochs: $gain"
    if [ "${sweep_rc[1]}" != 0 ] || [ "${sweep_rc[4]}" != 0 ]; then
      finish FAIL "sweep exit statuses ${sweep_rc[1]} (1 at a time) and ${sweep_rc[4]} (4 at a time)$(error_line "$SEC_FILE")"
    elif [ -z "$(table "$SEC_FILE.1")" ] || [ "$(table "$SEC_FILE.1")" != "$(table "$SEC_FILE.4")" ]; then
      finish FAIL "the ranked tables of the two sweeps differ (a trial computed differently beside others); $gain"
    else
      finish PASS "8 trials of 2 epochs: $gain; the same ranking both ways"
    fi
    rm -f "$SEC_FILE.1" "$SEC_FILE.4"
  fi
else
  skip_section 8 "concurrent sweep trials" 08-sweep.txt "$gpu_skip_reason"
fi

# --- report.md and summary.txt --------------------------------------------------------------------
total_ms=$(($(now_ms) - start_ms))
passed=() failed=() skipped=()
for ((i = 0; i < S_COUNT; i++)); do
  label="${S_ID[i]} ${S_TITLE[i]}"
  case "${S_STATUS[i]}" in
    PASS) passed+=("$label") ;;
    FAIL) failed+=("$label") ;;
    *) skipped+=("$label") ;;
  esac
done
join() { local IFS=";"; local s="$*"; printf '%s' "${s//;/, }"; }
host="$(hostname 2>/dev/null || uname -n)"
{
  echo "cumnist GPU report: $out_dir ($mode run, $(fmt_ms "$total_ms"))"
  echo "date: $started_utc; host: $host; GPU: $gpu_header"
  for ((i = 0; i < S_COUNT; i++)); do
    printf '%-8s %-4s %-26s %9s  %s\n' "${S_STATUS[i]}" "${S_ID[i]}" "${S_TITLE[i]}" "$(fmt_ms "${S_MS[i]}")" "${S_NOTE[i]}"
  done
  [ -n "$graph_line" ] && echo "bench: $graph_line"
  [ -n "$train_facts" ] && echo "GPU training: $train_facts"
  echo "passed: ${#passed[@]}; failed: ${#failed[@]}; skipped: ${#skipped[@]}"
  echo "FAILED: $( [ ${#failed[@]} -gt 0 ] && join "${failed[@]}" || echo none)"
  echo "SKIPPED: $( [ ${#skipped[@]} -gt 0 ] && join "${skipped[@]}" || echo none)"
  [ -n "$INTERRUPTED" ] && echo "INTERRUPTED by SIG$INTERRUPTED: the sections after it did not run"
} >"$out_dir/summary.txt"

{
  echo "# cumnist GPU report"
  echo
  echo "- date: $started_utc ($mode run, $(fmt_ms "$total_ms") in all)"
  echo "- host: $host"
  echo "- GPU: $gpu_header"
  echo "- CPU: $cpu_model, $cores cores, ${mem_total:-unknown memory}"
  echo "- binaries: $layout"
  echo "- data: $data_dir"
  echo
  for ((i = 0; i < S_COUNT; i++)); do
    echo "## ${S_ID[i]}. ${S_TITLE[i]}"
    echo
    echo "**${S_STATUS[i]}** in $(fmt_ms "${S_MS[i]}") (raw output: ${S_FILES[i]}): ${S_NOTE[i]}"
    echo
    if [ -n "${S_KEYS[i]}" ]; then
      echo '```text'
      printf '%s' "${S_KEYS[i]}"
      echo '```'
      echo
    fi
  done
  echo "## Summary"
  echo
  for ((i = 0; i < S_COUNT; i++)); do echo "- ${S_STATUS[i]}: ${S_ID[i]} ${S_TITLE[i]}: ${S_NOTE[i]}"; done
  [ -n "$graph_line" ] && echo "- bench: $graph_line"
  [ -n "$train_facts" ] && echo "- GPU training: $train_facts"
  echo
  echo "Passed: ${#passed[@]}, failed: ${#failed[@]}, skipped: ${#skipped[@]}."
  [ ${#failed[@]} -gt 0 ] && echo "Failed: $(join "${failed[@]}")."
  [ ${#skipped[@]} -gt 0 ] && echo "Skipped: $(join "${skipped[@]}")."
  [ -n "$INTERRUPTED" ] && echo "Interrupted by SIG$INTERRUPTED."
} >"$out_dir/report.md"

echo "report: $out_dir/report.md"
cat "$out_dir/summary.txt"
case "$INTERRUPTED" in INT) exit 130 ;; TERM) exit 143 ;; esac
[ ${#failed[@]} -eq 0 ]
