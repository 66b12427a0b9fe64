#!/usr/bin/env bash
# Prepares this machine for the end-to-end tests and the demo: installs what
# is missing (docker.io, iptables, busybox-static, iperf3, ping), makes / a
# shared mount (as on a systemd host: the plugin must see container
# namespaces), starts a dockerd if none answers, and builds the test image.
#
#   scripts/e2e-env.sh deps   install the packages only
#   scripts/e2e-env.sh up     prepare (idempotent); says so when it starts dockerd
#   scripts/e2e-env.sh down   stop the dockerd that "up" started, if any
set -euo pipefail
state=/run/weft-e2e
mkdir -p "$state"

need_pkgs() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  [ -x /usr/sbin/xtables-nft-multi ] || missing+=(iptables)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  command -v iperf3 >/dev/null || missing+=(iperf3)
  command -v ping >/dev/null || missing+=(iputils-ping)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "e2e-env: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

docker_ok() { timeout 5 docker version >/dev/null 2>&1; }

up() {
  need_pkgs
  # A systemd host has / shared; without it new sandbox mounts do not
  # propagate into the plugin (see docs).
  mount --make-rshared / 2>/dev/null || true
  if ! docker_ok; then
    echo "e2e-env: starting dockerd (log: $state/dockerd.log)"
    setsid dockerd >"$state/dockerd.log" 2>&1 < /dev/null &
    echo $! >"$state/dockerd.pid"
    for _ in $(seq 60); do docker_ok && break; sleep 0.5; done
    docker_ok || { tail -20 "$state/dockerd.log"; echo "e2e-env: dockerd did not start" >&2; exit 1; }
  fi
  "$(dirname "$0")/test-image.sh"
}

down() {
  if [ -f "$state/dockerd.pid" ]; then
    pid=$(cat "$state/dockerd.pid")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$state/dockerd.pid"
    echo "e2e-env: stopped the dockerd it had started"
  fi
}

case "${1:-up}" in
  deps) need_pkgs ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 deps|up|down" >&2; exit 2 ;;
esac
