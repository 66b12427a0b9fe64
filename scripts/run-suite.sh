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
# A top-level skip whose reason starts with "[engine]" says the engine under
# test lacks the feature (e.g. Docker 20.10 has no IPv6-only networks): the
# test runs on the engines that have it. Any other skip is a failure in CI.
# go test -v prints a test's skip reason as the line just before "--- SKIP".
other=$(awk '/^--- SKIP/ { if (prev !~ /: \[engine\] /) print $3 } { prev = $0 }' "$log")
rm -f "$log"
echo "$name: $passed top-level tests passed, $skipped skipped"
if [ "$rc" -eq 0 ] && [ "$passed" -eq 0 ]; then
  echo "$name: no test ran" >&2
  rc=1
fi
if [ "${CI:-}" = true ] && [ -n "$other" ]; then
  echo "$name: tests skipped under CI, where all must run (only [engine] skips are allowed):" $other >&2
  rc=1
fi
exit "$rc"
