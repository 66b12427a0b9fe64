#!/usr/bin/env bash
# Runs the end-to-end suite against a real dockerd with weft installed as a
# managed plugin from this working tree, then removes what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/e2e-env.sh up
make -s install
export WEFT_E2E=1 WEFT_PLUGIN=${WEFT_PLUGIN:-weft:latest}
set +e
scripts/run-suite.sh e2e e2e -timeout 45m
rc=$?
set -e
make -s uninstall >/dev/null 2>&1 || true
scripts/e2e-env.sh down
exit "$rc"
