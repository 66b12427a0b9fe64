#!/usr/bin/env bash
# Prepares this machine for the end-to-end tests and the demo, and starts
# and stops the dockerd the e2e suite owns.
#
#   scripts/e2e-env.sh deps                   install the packages only
#   scripts/e2e-env.sh up                     for the demo: start Debian's dockerd if none
#                                             answers (idempotent), build the test image
#   scripts/e2e-env.sh start ENGINE FIREWALL  for the suite: reset the host firewall to a
#                                             fresh host's, start ENGINE's dockerd (debian,
#                                             current; see scripts/engines.sh) with firewall
#                                             backend FIREWALL (iptables, nftables), build
#                                             the test image; fails if a dockerd the suite
#                                             did not start is running
#   scripts/e2e-env.sh down                   stop the dockerd that up/start started, if any
#
# The suite's dockerd is described in /run/weft-e2e/dockerd.{pid,env,args}
# so that TestDockerdRestart can restart exactly the same daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
state=/run/weft-e2e
mkdir -p "$state"

need_pkgs() {
  local missing=()
  command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
  [ -x /usr/sbin/xtables-nft-multi ] || missing+=(iptables)
  command -v nft >/dev/null || missing+=(nftables)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  command -v iperf3 >/dev/null || missing+=(iperf3)
  command -v ping >/dev/null || missing+=(iputils-ping)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v tcpdump >/dev/null || missing+=(tcpdump)
  command -v ethtool >/dev/null || missing+=(ethtool)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "e2e-env: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

docker_ok() { timeout 5 docker version >/dev/null 2>&1; }

wait_docker() {
  for _ in $(seq 120); do docker_ok && return 0; sleep 0.5; done
  tail -30 "$state/dockerd.log"
  echo "e2e-env: dockerd did not start" >&2
  exit 1
}

# reset_firewall puts the host's firewall back to what a fresh host has
# before Docker first starts: no Docker chains or tables (of either
# iptables backend or of Docker's nftables backend), FORWARD policy ACCEPT,
# IP forwarding off. Each engine then sets up its own, as it would on a
# user's host, and nothing one engine left steers the next one's results.
reset_firewall() {
  local fam t
  for fam in iptables ip6tables; do
    for v in nft legacy; do
      command -v "$fam-$v" >/dev/null || continue
      for t in filter nat raw mangle; do
        "$fam-$v" -t "$t" -F 2>/dev/null || true
        "$fam-$v" -t "$t" -X 2>/dev/null || true
      done
      "$fam-$v" -P FORWARD ACCEPT 2>/dev/null || true
    done
  done
  for t in "ip docker-bridges" "ip6 docker-bridges"; do
    nft delete table $t 2>/dev/null || true
  done
  sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0 >/dev/null 2>&1 || true
}

up() {
  need_pkgs
  # A systemd host has / shared; without it new sandbox mounts do not
  # propagate into the plugin (see docs).
  mount --make-rshared / 2>/dev/null || true
  if ! docker_ok; then
    echo "e2e-env: starting dockerd (log: $state/dockerd.log)"
    start_dockerd "" /var/lib/docker
  fi
  scripts/test-image.sh
}

# start_dockerd BINDIR DATAROOT [ARGS...]
start_dockerd() {
  local bindir=$1 dataroot=$2
  shift 2
  local path=$PATH
  [ -n "$bindir" ] && path=$bindir:$PATH
  printf '%s\n' "$path" >"$state/dockerd.env"
  printf '%s\n' --data-root "$dataroot" "$@" >"$state/dockerd.args"
  mapfile -t args <"$state/dockerd.args"
  PATH=$path setsid dockerd "${args[@]}" >>"$state/dockerd.log" 2>&1 </dev/null &
  echo $! >"$state/dockerd.pid"
  wait_docker
}

start() {
  local engine=${1:?engine} fw=${2:?firewall backend}
  need_pkgs
  if docker_ok || pgrep -x dockerd >/dev/null; then
    if [ -f "$state/dockerd.pid" ] && kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null; then
      down
    else
      echo "e2e-env: a dockerd the suite did not start is running (pid $(pgrep -x dockerd | head -1)); stop it first: the suite starts each engine itself and restarts it" >&2
      exit 1
    fi
  fi
  local bindir args=()
  if [ "$engine" != debian ]; then
    scripts/engines.sh build "$engine"
  fi
  bindir=$(scripts/engines.sh bindir "$engine")
  case "$fw" in
    iptables) ;;
    nftables)
      [ "$engine" = debian ] && { echo "e2e-env: Docker 20.10 has no nftables backend" >&2; exit 2; }
      args+=(--firewall-backend=nftables)
      ;;
    *) echo "e2e-env: unknown firewall backend $fw" >&2; exit 2 ;;
  esac
  mount --make-rshared / 2>/dev/null || true
  reset_firewall
  if [ "$fw" = nftables ]; then
    # Docker does not enable IP forwarding with its nftables backend: the
    # admin does, as its documentation asks.
    sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 >/dev/null
  fi
  : >"$state/dockerd.log"
  echo "e2e-env: starting dockerd ($engine, $fw; log: $state/dockerd.log)"
  start_dockerd "$bindir" "/var/lib/weft-e2e/docker-$engine" "${args[@]}"
  echo "e2e-env: $(docker version -f 'Docker {{.Server.Version}}') with $(docker info -f '{{with .FirewallBackend}}{{.Driver}}{{else}}iptables{{end}}' 2>/dev/null || echo iptables) firewall"
  scripts/test-image.sh
}

down() {
  if [ -f "$state/dockerd.pid" ]; then
    pid=$(cat "$state/dockerd.pid")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$state/dockerd.pid" "$state/dockerd.env" "$state/dockerd.args"
    echo "e2e-env: stopped the dockerd it had started"
  fi
}

case "${1:-up}" in
  deps) need_pkgs ;;
  up) up ;;
  start) shift; start "$@" ;;
  down) down ;;
  *) echo "usage: $0 deps|up|start ENGINE FIREWALL|down" >&2; exit 2 ;;
esac
