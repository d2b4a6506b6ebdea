# Sourced by the shell tests of the CLI. fail WHY: prints FAILED and exits 1.
# expect_error MESSAGE COMMAND...: the command fails with exit 1 and exactly one line on stderr
# that holds MESSAGE (out.log and err.log in the current folder keep what it printed).
fail() { echo "FAILED: $*"; exit 1; }
expect_error() {
  local message="$1" rc=0
  shift
  "$@" > out.log 2> err.log || rc=$?
  [ "$rc" -eq 1 ] || fail "'$*' exited $rc, expected 1 (stderr: $(cat err.log))"
  grep -qF -- "$message" err.log || fail "'$*': expected '$message' in: $(cat err.log)"
  [ "$(wc -l < err.log)" -eq 1 ] || fail "'$*': more than one line on stderr: $(cat err.log)"
  echo "ok: $(cat err.log)"
}
