#!/usr/bin/env bash
# A swarm of several Docker hosts on this one machine, for the multi-host
# tests: each host is a network namespace with its own dockerd (own data
# root, own /run, a sysfs of its namespace), joined to the others by a lab
# bridge on the host. Host 1 is the manager, the others are workers.
#
#   scripts/swarm-lab.sh up [PLUGIN_DIR]   start the hosts, form the swarm, build the test
#                                          image on each and, given a plugin directory,
#                                          install it on each as weft-swarm:latest (SCOPE=global)
#   scripts/swarm-lab.sh down              stop everything and remove what "up" made
#   scripts/swarm-lab.sh docker N ARGS...  run the docker CLI against host N
#   scripts/swarm-lab.sh pid N             the pid of host N's dockerd
#   scripts/swarm-lab.sh restart N         restart host N's dockerd
#
# Services should name the test image by ID (docker image inspect -f
# '{{.Id}}' weft-test/busybox) with --no-resolve-image: a name makes every
# node try to pull it first.
#
# WEFT_SWARM_LAB (default sw) names a lab, so two can run side by side (the
# benchmark uses its own): namespaces wf<LAB>-h<N>, bridge wf<LAB>br,
# /run/weft-<LAB>, /var/lib/weft-<LAB>. WEFT_SWARM_NET is its /24 underlay.
# WEFT_ENGINE (default debian) picks the Docker engine of every host, as
# named in scripts/engines.sh (current: built into build/ when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${WEFT_ENGINE:-debian}
bindir=$(scripts/engines.sh bindir "$engine")
[ -n "$bindir" ] && export PATH="$bindir:$PATH"
repo=$(pwd) # nsenter -m starts in the target's working directory
hosts=${WEFT_SWARM_HOSTS:-3}
lab=${WEFT_SWARM_LAB:-sw}
run=/run/weft-$lab
[ "$lab" = sw ] && run=/run/weft-swarm
data=/var/lib/weft-$lab
[ "$lab" = sw ] && data=/var/lib/weft-swarm
br=wf${lab}br
underlay=${WEFT_SWARM_NET:-198.19.7} # .1 .. .N are the hosts, .254 the lab bridge
plugin=weft-swarm:latest

ns() { echo "wf$lab-h$1"; }
pidof_host() { cat "$run/h$1.pid" 2>/dev/null; }
hdocker() { # hdocker N ARGS...: the docker CLI inside host N's namespaces
  local n=$1
  shift
  nsenter -t "$(pidof_host "$n")" -m -n docker "$@"
}

start_host() {
  local i=$1
  ip netns add "$(ns "$i")"
  ip link add "wf${lab}h$i" type veth peer name eth0 netns "$(ns "$i")"
  ip link set "wf${lab}h$i" master "$br" up
  ip -n "$(ns "$i")" link set lo up
  ip -n "$(ns "$i")" addr add "$underlay.$i/24" dev eth0
  ip -n "$(ns "$i")" link set eth0 up
  ip -n "$(ns "$i")" route add default via "$underlay.254"
  mkdir -p "$data/h$i/docker" "$data/h$i/state" "$run/cg-h$i"
  start_dockerd "$i"
}

start_dockerd() {
  local i=$1
  # dockerd needs the cgroup tree and a sysfs showing its own namespace;
  # `ip netns exec` would remount /sys and hide the cgroups.
  nsenter --net="/var/run/netns/$(ns "$i")" unshare -m -u --propagation private sh -c "
    hostname $(ns "$i") &&
    mount --rbind /sys/fs/cgroup $run/cg-h$i &&
    mount -t sysfs sysfs /sys &&
    mount --rbind $run/cg-h$i /sys/fs/cgroup &&
    mount -t tmpfs tmpfs /run && mount --make-rshared / &&
    exec dockerd --data-root $data/h$i/docker --pidfile /run/docker.pid" >>"$data/h$i/dockerd.log" 2>&1 </dev/null &
  echo $! >"$run/h$i.pid"
}

wait_docker() {
  local i=$1
  for _ in $(seq 120); do
    # The pid is unshare's until it execs dockerd.
    if [ "$(cat /proc/"$(pidof_host "$i")"/comm 2>/dev/null)" = dockerd ] && timeout 5 nsenter -t "$(pidof_host "$i")" -m -n docker version >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  tail -20 "$data/h$i/dockerd.log"
  echo "swarm-lab: dockerd of host $i did not start" >&2
  return 1
}

up() {
  scripts/e2e-env.sh deps
  [ "$engine" = debian ] || scripts/engines.sh build "$engine"
  mkdir -p "$run" "$data"
  if [ -f "$run/h1.pid" ]; then
    echo "swarm-lab: already up (run down first)" >&2
    exit 1
  fi
  ip link add "$br" type bridge
  ip addr add "$underlay.254/24" dev "$br"
  ip link set "$br" up
  # The host's dockerd sets FORWARD to DROP; the lab bridge carries the
  # hosts' traffic to each other.
  iptables -C FORWARD -i "$br" -o "$br" -j ACCEPT 2>/dev/null || iptables -I FORWARD -i "$br" -o "$br" -j ACCEPT
  for i in $(seq "$hosts"); do start_host "$i"; done
  for i in $(seq "$hosts"); do wait_docker "$i"; done
  hdocker 1 swarm init --advertise-addr "$underlay.1" >/dev/null
  token=$(hdocker 1 swarm join-token -q worker)
  for i in $(seq 2 "$hosts"); do
    for try in 1 2 3; do
      if hdocker "$i" swarm join --token "$token" "$underlay.1:2377" >/dev/null 2>&1; then break; fi
      [ "$try" = 3 ] && { echo "swarm-lab: host $i cannot join" >&2; exit 1; }
      sleep 2
    done
  done
  # One image, saved and loaded everywhere, so it has the same ID on every
  # host: services then name it by ID and no host tries a registry.
  nsenter -t "$(pidof_host 1)" -m -n "$repo/scripts/test-image.sh" >/dev/null
  hdocker 1 save weft-test/busybox >"$run/image.tar"
  for i in $(seq 2 "$hosts"); do hdocker "$i" load -q <"$run/image.tar" >/dev/null; done
  rm -f "$run/image.tar"
  if [ -n "${1:-}" ]; then
    dir=$(realpath "$1")
    for i in $(seq "$hosts"); do
      hdocker "$i" plugin create "$plugin" "$dir" >/dev/null
      hdocker "$i" plugin set "$plugin" SCOPE=global state.source="$data/h$i/state"
      hdocker "$i" plugin enable "$plugin" >/dev/null
    done
    # The scheduler places tasks only on nodes whose description lists the
    # plugin; workers report it a few seconds after it is enabled.
    for _ in $(seq 60); do
      have=$(hdocker 1 node inspect -f '{{range .Description.Engine.Plugins}}{{if eq .Name "'"$plugin"'"}}{{.Type}} {{end}}{{end}}' $(hdocker 1 node ls -q) | grep -c Network || true)
      [ "$have" = "$hosts" ] && break
      sleep 1
    done
    [ "$have" = "$hosts" ] || { echo "swarm-lab: only $have of $hosts nodes report $plugin" >&2; exit 1; }
  fi
  echo "swarm-lab: $hosts hosts up ($(hdocker 1 node ls -q | wc -l) swarm nodes, Docker $(hdocker 1 version -f '{{.Server.Version}}'))"
}

down() {
  for i in $(seq "$hosts"); do
    pid=$(pidof_host "$i" || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      # Remove containers first: dockerd's shutdown would stop them, but
      # removing them also releases their endpoints through the plugin.
      timeout 20 nsenter -t "$pid" -m -n sh -c 'docker rm -f $(docker ps -aq) ; docker swarm leave -f' >/dev/null 2>&1 || true
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    ip netns del "$(ns "$i")" 2>/dev/null || true
    ip link del "wf${lab}h$i" 2>/dev/null || true
    umount -l "$run/cg-h$i" 2>/dev/null || true
  done
  ip link del "$br" 2>/dev/null || true
  iptables -D FORWARD -i "$br" -o "$br" -j ACCEPT 2>/dev/null || true
  rm -rf "$run" "$data"
  echo "swarm-lab: down"
}

# restart N: stop host N's dockerd as a host shutdown would and start it
# again (its containers stop; swarm restarts its tasks).
restart() {
  local i=$1 pid
  pid=$(pidof_host "$i")
  kill "$pid"
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  umount -l "$run/cg-h$i" 2>/dev/null || true
  start_dockerd "$i"
  wait_docker "$i"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  restart) restart "$2" ;;
  down) down ;;
  docker) shift; hdocker "$@" ;;
  pid) pidof_host "$2" ;;
  *) echo "usage: $0 up [PLUGIN_DIR] | down | restart N | docker N ARGS... | pid N" >&2; exit 2 ;;
esac
