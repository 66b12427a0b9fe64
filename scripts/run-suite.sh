#!/usr/bin/env bash
# run-suite.sh NAME DIR [go test args...]: runs one end-to-end suite with
# -v and fails it if no test ran, or, under CI, if any test skipped: a
# suite that skipped everything is a failure, not a pass.
set -uo pipefail
name=$1 dir=$2
shift 2
log=$(mktemp)
(cd "$dir" && go test -count=1 -v "$@" .) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
passed=$(grep -c -- '^--- PASS' "$log" || true)
skipped=$(grep -c -- '^--- SKIP' "$log" || true)
rm -f "$log"
echo "$name: $passed top-level tests passed, $skipped skipped"
if [ "$rc" -eq 0 ] && [ "$passed" -eq 0 ]; then
  echo "$name: no test ran" >&2
  rc=1
fi
if [ "${CI:-}" = true ] && [ "$skipped" -gt 0 ]; then
  echo "$name: tests skipped under CI, where all must run" >&2
  rc=1
fi
exit "$rc"
