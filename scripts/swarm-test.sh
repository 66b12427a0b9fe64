#!/usr/bin/env bash
# make test-swarm: builds the plugin, starts the swarm lab (three dockerd
# hosts in network namespaces, weft-swarm:latest with SCOPE=global on each),
# runs ./swarmtest against it, tears the lab down and checks that nothing of
# it is left on the host; once per engine.
#
#   scripts/swarm-test.sh                  every engine (debian, current)
#   scripts/swarm-test.sh current ...      only these engines
#   SWARM_RUN=REGEX scripts/swarm-test.sh  only the tests go test -run REGEX selects
set -euo pipefail
cd "$(dirname "$0")/.."
# The e2e suite's lock: its harness resets the host firewall and refuses
# to run beside dockerds it did not start, such as the lab's.
exec 9>/run/weft-e2e.lock
if ! flock -n 9; then
  echo "swarm: an e2e run holds /run/weft-e2e.lock; waiting"
  flock 9
fi
engines=("$@")
[ ${#engines[@]} -gt 0 ] || engines=(debian current)
make -s plugin-dir >/dev/null
runargs=(-timeout 20m)
[ -n "${SWARM_RUN:-}" ] && runargs+=(-run "$SWARM_RUN")
trap 'scripts/swarm-lab.sh down >/dev/null 2>&1 || true' EXIT
rc=0
summary=()
for engine in "${engines[@]}"; do
  export WEFT_ENGINE=$engine
  t0=$SECONDS
  echo "=== swarm on engine $engine"
  scripts/swarm-lab.sh down >/dev/null 2>&1 || true
  scripts/swarm-lab.sh up build/plugin
  set +e
  WEFT_SWARM=1 scripts/run-suite.sh "swarm[$engine]" swarmtest "${runargs[@]}"
  r=$?
  set -e
  scripts/swarm-lab.sh down
  left=$( (ip -o link show; ip netns list) | grep -E 'wfsw' || true)
  if [ -n "$left" ]; then echo "swarm[$engine]: the lab left behind: $left" >&2; r=1; fi
  summary+=("swarm[$engine]: $([ $r -eq 0 ] && echo ok || echo FAILED) in $((SECONDS - t0)) s")
  [ $r -eq 0 ] || rc=1
done
trap - EXIT
printf '%s\n' "${summary[@]}"
exit "$rc"
