#!/usr/bin/env bash
# Runs the end-to-end suite against real dockerds, one engine and firewall
# backend at a time, with weft installed as a managed plugin from this
# working tree, and removes what it made.
#
#   scripts/e2e.sh                       the whole matrix (scripts/engines.sh list)
#   scripts/e2e.sh current:nftables ...  only these ENGINE:FIREWALL entries
#   E2E_RUN=REGEX scripts/e2e.sh ...     only the tests go test -run REGEX selects
#
# The suite starts and owns each dockerd (scripts/e2e-env.sh start), so it
# can restart it. Runs take a lock: two of them never share a dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>/run/weft-e2e.lock
if ! flock -n 9; then
  echo "e2e: another e2e run holds /run/weft-e2e.lock; waiting"
  flock 9
fi
matrix=("$@")
[ ${#matrix[@]} -gt 0 ] || read -r -a matrix <<<"$(scripts/engines.sh list)"
export WEFT_E2E=1 WEFT_PLUGIN=${WEFT_PLUGIN:-weft:latest}
runargs=(-timeout 45m)
[ -n "${E2E_RUN:-}" ] && runargs+=(-run "$E2E_RUN")
trap 'make -s uninstall >/dev/null 2>&1 || true; scripts/e2e-env.sh down >/dev/null 2>&1 || true' EXIT
rc=0
summary=()
for entry in "${matrix[@]}"; do
  engine=${entry%%:*} fw=${entry#*:}
  t0=$SECONDS
  echo "=== e2e on engine $engine, firewall $fw"
  scripts/e2e-env.sh start "$engine" "$fw"
  make -s install
  set +e
  WEFT_ENGINE=$engine WEFT_FIREWALL=$fw scripts/run-suite.sh "e2e[$entry]" e2e "${runargs[@]}"
  r=$?
  set -e
  make -s uninstall >/dev/null 2>&1 || true
  scripts/e2e-env.sh down
  summary+=("e2e[$entry]: $([ $r -eq 0 ] && echo ok || echo FAILED) in $((SECONDS - t0)) s")
  [ $r -eq 0 ] || rc=1
done
printf '%s\n' "${summary[@]}"
exit "$rc"
