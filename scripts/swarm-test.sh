#!/usr/bin/env bash
# make test-swarm: builds the plugin, starts the swarm lab (three dockerd
# hosts in network namespaces, weft-swarm:latest with SCOPE=global on each),
# runs ./swarmtest against it, tears the lab down and checks that nothing of
# it is left on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s plugin-dir >/dev/null
scripts/swarm-lab.sh down >/dev/null 2>&1 || true
trap 'scripts/swarm-lab.sh down >/dev/null 2>&1 || true' EXIT
scripts/swarm-lab.sh up build/plugin
set +e
WEFT_SWARM=1 scripts/run-suite.sh swarm swarmtest -timeout 20m
rc=$?
set -e
scripts/swarm-lab.sh down
trap - EXIT
left=$( (ip -o link show; ip netns list) | grep -E 'wfsw' || true)
if [ -n "$left" ]; then echo "swarm: the lab left behind: $left" >&2; rc=1; fi
exit "$rc"
