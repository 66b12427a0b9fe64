#!/usr/bin/env bash
# make bench-swarm: weft's swarm overlay against Docker's built-in overlay
# and against a bare wireguard-go tunnel, side by side in one run, between
# two hosts of a swarm lab of its own (scripts/swarm-lab.sh with
# WEFT_SWARM_LAB=bn: namespaces wfbn-h1 (manager) and wfbn-h2, bridge wfbnbr,
# underlay 198.19.9.0/24; the plugin installed on both as weft-swarm:latest):
# - weft overlay vs built-in overlay: TCP throughput and ping RTT from a
#   container on host 2 to one on host 1; `docker service create` with
#   $svc_n replicas and `docker service scale` to twice that, until all tasks
#   are Running;
# - weft encrypted overlay (container to container, as above) vs a bare
#   wireguard-go tunnel between the same two host namespaces (device
#   wfbwg1/wfbwg2, UDP 51899, 10.250.0.1-2/24), throughput and RTT;
# then rewrites its own section of docs/benchmarks.md, between the
# bench-swarm markers, and leaves the rest of the file as it is. The lab, the
# tunnel and everything else it made are removed on exit, also on failure.
#
# BENCH_PLUGIN_DIR: the plugin directory to install (default build/plugin,
# which `make bench-swarm` builds first).
set -euo pipefail
cd "$(dirname "$0")/.."

plugin_dir=${BENCH_PLUGIN_DIR:-build/plugin}
export WEFT_SWARM_LAB=bn WEFT_SWARM_NET=198.19.9 WEFT_SWARM_HOSTS=2
lab=scripts/swarm-lab.sh
underlay=$WEFT_SWARM_NET
plugin=weft-swarm:latest
out=docs/benchmarks.md
mark_start='<!-- bench-swarm start -->'
mark_end='<!-- bench-swarm end -->'
declare -A net=([builtin]=wfbs-builtin [weft]=wfbs-weft [enc]=wfbs-enc)
declare -A subnet=([builtin]=10.240.1.0/24 [weft]=10.240.2.0/24 [enc]=10.240.3.0/24)
declare -A svc=([builtin]=wfbs-svc-builtin [weft]=wfbs-svc-weft)
wgbin=build/wireguard-go
wgport=51899 wgnet=10.250.0 # not weft's: UDP 51830, wfwg0, fd77:7765:6677::/96
state=/run/wfbench-swarm    # the bare tunnel's pid files, kept across an interrupted run
thr_reps=3 rtt_reps=5 svc_reps=3 svc_n=6

tmp=$(mktemp -d /tmp/wfbench-swarm.XXXXXX)
t_start=$(date +%s)
lab_up=0

say() { printf '\033[1m[bench-swarm %s]\033[0m %s\n' "$(date +%T)" "$*"; }
die() { echo "bench-swarm: $*" >&2; exit 1; }
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

declare -A hpid # lab host -> its dockerd's pid (in the host's namespaces)
hd() {          # hd N ARGS...: the docker CLI on lab host N
  local n=$1
  shift
  nsenter -t "${hpid[$n]}" -m -n docker "$@"
}
hns() { echo "wf$WEFT_SWARM_LAB-h$1"; } # the network namespace of lab host N

# The bare tunnel: wireguard-go in the foreground in each host's namespace.
# Only processes recorded in $state and still named wireguard-go are ended.
stop_bare_wg() {
  local f p
  for f in "$state"/wg*.pid; do
    [ -s "$f" ] || continue
    p=$(cat "$f")
    if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = wireguard-go ]; then
      kill "$p" 2>/dev/null || true
      for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
  done
  rm -f /var/run/wireguard/wfbwg1.sock /var/run/wireguard/wfbwg2.sock
  rmdir /var/run/wireguard 2>/dev/null || true # wireguard-go makes it; only if nothing else is in it
  rmdir "$state" 2>/dev/null || true
}

cleanup() {
  local rc=$? f
  set +e
  trap - EXIT INT TERM
  for f in "$tmp"/iperf3-*.pid; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  stop_bare_wg
  [ "$lab_up" = 1 ] && "$lab" down >/dev/null 2>&1
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Tools, a clean slate, the lab -------------------------------------------
say "tools: wireguard-tools, iperf3; $wgbin from go.mod's golang.zx2c4.com/wireguard"
missing=()
command -v wg >/dev/null || missing+=(wireguard-tools)
command -v iperf3 >/dev/null || missing+=(iperf3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench-swarm: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p build
go build -o "$wgbin" golang.zx2c4.com/wireguard || die "cannot build wireguard-go from the module in go.mod"
if [ ! -f "$plugin_dir/config.json" ] || [ ! -d "$plugin_dir/rootfs" ]; then
  die "no plugin directory at $plugin_dir (make plugin-dir, or set BENCH_PLUGIN_DIR)"
fi
# The commit the plugin is built from (the tree may move during the run).
build_commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (work tree had uncommitted changes)')
plugin_note=
[ "$(realpath "$plugin_dir")" = "$(realpath build/plugin 2>/dev/null || true)" ] || plugin_note="; the plugin: $plugin_dir, built before the run"

# Leftovers of an interrupted earlier run.
stop_bare_wg
"$lab" down >/dev/null 2>&1 || true
mkdir -p "$state"

say "starting the lab ($lab up $plugin_dir, WEFT_SWARM_LAB=$WEFT_SWARM_LAB, 2 hosts)"
lab_up=1
"$lab" up "$plugin_dir"
for n in 1 2; do hpid[$n]=$("$lab" pid "$n"); done
img=$(hd 1 image inspect -f '{{.Id}}' weft-test/busybox)
docker_version=$(hd 1 version -f '{{.Server.Version}}')

# Docker's encrypted overlay is IPsec ESP (xfrm) in the kernel: one transport
# mode state shows whether this kernel has it.
esp_err=$(ip -n "$(hns 1)" xfrm state add src "$underlay.1" dst "$underlay.2" proto esp spi 0x5eed reqid 1 mode transport \
  enc 'cbc(aes)' 0x000102030405060708090a0b0c0d0e0f auth 'hmac(sha256)' 0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f 2>&1) &&
  esp_err=
ip -n "$(hns 1)" xfrm state flush 2>/dev/null || true

# 2. Networks --------------------------------------------------------------------
say "creating ${net[builtin]} (overlay), ${net[weft]} (weft overlay), ${net[enc]} (weft overlay, encrypted)"
hd 1 network create -d overlay --attachable --subnet "${subnet[builtin]}" "${net[builtin]}" >/dev/null
hd 1 network create -d "$plugin" --ipam-driver "$plugin" --scope swarm -o type=overlay --attachable --subnet "${subnet[weft]}" "${net[weft]}" >/dev/null
hd 1 network create -d "$plugin" --ipam-driver "$plugin" --scope swarm -o type=overlay -o encrypted --attachable --subnet "${subnet[enc]}" "${net[enc]}" >/dev/null

# 3. Services: create and scale ---------------------------------------------------
# Nothing else is attached to the networks yet, so each service also brings
# its network up on the worker (and removing it takes the network down there).
running() { # running SERVICE: how many of its tasks are Running
  hd 1 service ps --filter desired-state=running --format '{{.CurrentState}}' "$1" 2>/dev/null | grep -c '^Running' || true
}
wait_running() { # wait_running SERVICE N
  local end=$((SECONDS + 180))
  while [ "$(running "$1")" -lt "$2" ]; do
    if [ "$SECONDS" -ge "$end" ]; then
      hd 1 service ps --no-trunc "$1" >&2 || true
      die "service $1: fewer than $2 tasks Running after 3 minutes"
    fi
    sleep 0.05
  done
}
svc_failed() { # svc_failed SERVICE: tasks that ended in an error (rejected, failed)
  hd 1 service ps --filter desired-state=shutdown --format '{{.CurrentState}} {{.Error}}' "$1" 2>/dev/null | grep -c -v -e '^Shutdown' -e '^Complete' || true
}
svc_rm() { # svc_rm SERVICE: remove it and wait until its containers are gone on both hosts
  local end=$((SECONDS + 120)) n
  hd 1 service rm "$1" >/dev/null
  for n in 1 2; do
    while [ -n "$(hd "$n" ps -aq --filter "label=com.docker.swarm.service.name=$1")" ]; do
      [ "$SECONDS" -lt "$end" ] || die "service $1: containers still on host $n 2 minutes after docker service rm"
      sleep 0.2
    done
  done
}
svc_failures=
svc_round() { # svc_round KEY [RECORD]: create, scale, remove one service on net[KEY]
  local k=$1 rec=${2:-} s v c f
  s=$(now)
  hd 1 service create -d -q --name "${svc[$k]}" --replicas "$svc_n" --network "${net[$k]}" \
    --stop-signal KILL --no-resolve-image "$img" sleep 3600 >/dev/null
  wait_running "${svc[$k]}" "$svc_n"
  c=$(since "$s")
  s=$(now)
  hd 1 service scale -d "${svc[$k]}=$((2 * svc_n))" >/dev/null
  wait_running "${svc[$k]}" $((2 * svc_n))
  v=$(since "$s")
  f=$(svc_failed "${svc[$k]}")
  [ "$f" = 0 ] || svc_failures="$svc_failures ${net[$k]}:$f"
  # Where the tasks ran: both hosts, or the comparison is not between two hosts.
  hd 1 service ps --filter desired-state=running --format '{{.Node}}' "${svc[$k]}" | sort -u | wc -l >"$tmp/nodes"
  [ "$(cat "$tmp/nodes")" = 2 ] || die "service ${svc[$k]}: tasks on $(cat "$tmp/nodes") host(s), expected both"
  svc_rm "${svc[$k]}"
  if [ -n "$rec" ]; then
    add svc-create "$k" "$c"
    add svc-scale "$k" "$v"
    if [ "$f" = 0 ]; then f=; else f=", $f task(s) failed"; fi
    echo "  rep $rec $k: create $c s, scale $v s$f"
  fi
}
say "services: warm-up (untimed), then $svc_reps repetitions of create $svc_n replicas and scale to $((2 * svc_n))"
for k in builtin weft; do svc_round "$k"; done
for r in $(seq "$svc_reps"); do
  for k in $(order "$r"); do svc_round "$k" "$r"; done
done

# 4. Containers on the overlays: servers on host 1, clients on host 2 -----------
declare -A spid cpid_ sip
run_on() { # run_on HOST NAME NETWORK: a sleeping container; network creation in swarm is asynchronous
  for _ in $(seq 10); do
    hd "$1" run -d --name "$2" --network "$3" "$img" sleep 3600 >/dev/null 2>"$tmp/run.err" && return 0
    hd "$1" rm -f "$2" >/dev/null 2>&1 || true
    sleep 1
  done
  die "docker run --network $3 on host $1 failed: $(cat "$tmp/run.err")"
}
# mtu_of PID IFACE: the MTU of IFACE in the network namespace of PID (not from
# /sys, which shows the namespace that mounted it).
mtu_of() { nsenter -t "$1" -n ip -o link show dev "$2" | sed -E 's/.* mtu ([0-9]+) .*/\1/'; }
declare -A mtu
for k in builtin weft enc; do
  run_on 1 "${net[$k]}-srv" "${net[$k]}"
  run_on 2 "${net[$k]}-cli" "${net[$k]}"
  spid[$k]=$(hd 1 inspect -f '{{.State.Pid}}' "${net[$k]}-srv")
  cpid_[$k]=$(hd 2 inspect -f '{{.State.Pid}}' "${net[$k]}-cli")
  sip[$k]=$(hd 1 inspect -f "{{(index .NetworkSettings.Networks \"${net[$k]}\").IPAddress}}" "${net[$k]}-srv")
  # The server must be reached directly on the overlay (not through docker_gwbridge).
  rt=$(nsenter -t "${cpid_[$k]}" -n ip -o route get "${sip[$k]}")
  ! grep -q ' via ' <<<"$rt" || die "the client on ${net[$k]} reaches ${sip[$k]} through a gateway: $rt"
  dev=$(awk '{ for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1) }' <<<"$rt")
  mtu[$k]=$(mtu_of "${cpid_[$k]}" "$dev")
  nsenter -t "${spid[$k]}" -n iperf3 -s -D -I "$tmp/iperf3-$k.pid"
done
mtu[underlay]=$(mtu_of "${hpid[1]}" eth0)
ip -n "$(hns 1)" link show wfwg0 >/dev/null 2>&1 || die "no WireGuard device wfwg0 on host 1 with ${net[enc]} in use"
mtu[wfwg0]=$(mtu_of "${hpid[1]}" wfwg0)
enc_backend=$(grep -ho 'encryption tunnel up.*backend=\\"[^\\]*' "/var/lib/weft-$WEFT_SWARM_LAB/h1/dockerd.log" | tail -1 | sed 's/.*backend=\\"//')

# 5. The bare wireguard-go tunnel between the two host namespaces ------------------
# Same MTU as weft's wfwg0, so both tunnels send UDP packets of the same size.
say "bare tunnel: $wgbin in $(hns 1) and $(hns 2), wfbwg1/wfbwg2, UDP $wgport, $wgnet.1-2/24, MTU ${mtu[wfwg0]}"
for n in 1 2; do
  (umask 077 && wg genkey >"$tmp/wg$n.key")
  wg pubkey <"$tmp/wg$n.key" >"$tmp/wg$n.pub"
  # -f: stay in the foreground, so the pid recorded is wireguard-go's.
  ip netns exec "$(hns "$n")" "$wgbin" -f "wfbwg$n" >"$tmp/wg$n.log" 2>&1 &
  echo $! >"$state/wg$n.pid"
done
for n in 1 2; do
  for _ in $(seq 50); do [ -S "/var/run/wireguard/wfbwg$n.sock" ] && break; sleep 0.1; done
  o=$((3 - n))
  ip netns exec "$(hns "$n")" wg set "wfbwg$n" listen-port "$wgport" private-key "$tmp/wg$n.key" \
    peer "$(cat "$tmp/wg$o.pub")" endpoint "$underlay.$o:$wgport" allowed-ips "$wgnet.$o/32" ||
    die "configuring wfbwg$n failed: $(cat "$tmp/wg$n.log")"
  ip -n "$(hns "$n")" addr add "$wgnet.$n/24" dev "wfbwg$n"
  ip -n "$(hns "$n")" link set "wfbwg$n" mtu "${mtu[wfwg0]}" up
done
mtu[wg]=$(mtu_of "${hpid[1]}" wfbwg1)
# The bare tunnel's ends are the hosts themselves: dockerd's pid stands for
# the namespace.
spid[wg]=${hpid[1]} cpid_[wg]=${hpid[2]} sip[wg]=$wgnet.1
nsenter -t "${spid[wg]}" -n iperf3 -s -B "$wgnet.1" -D -I "$tmp/iperf3-wg.pid"
net[wg]="bare tunnel wfbwg"

# 6. Throughput and RTT ---------------------------------------------------------------
wg_rx() { nsenter -t "${hpid[1]}" -n cat /proc/net/dev | awk -F'[: ]+' '$2 == "wfwg0" { print $3 }'; } # bytes wfwg0 received on host 1
say "warm-up (untimed): iperf3 1 s and pings on each path"
for k in builtin weft enc wg; do
  before=$(wg_rx)
  ok=0
  for _ in $(seq 30); do
    nsenter -t "${cpid_[$k]}" -n ping -c 1 -W 1 -q "${sip[$k]}" >/dev/null 2>&1 && { ok=1; break; }
  done
  [ "$ok" = 1 ] || die "no ping from host 2 to ${sip[$k]} on ${net[$k]}"
  for _ in $(seq 20); do
    nsenter -t "${cpid_[$k]}" -n iperf3 -c "${sip[$k]}" -t 1 >/dev/null 2>&1 && break
    sleep 0.5
  done
  # The encrypted overlay's traffic must cross weft's WireGuard device.
  if [ "$k" = enc ]; then
    [ $(($(wg_rx) - before)) -gt 1000000 ] || die "the traffic on ${net[enc]} did not go through wfwg0"
  fi
done

# link_bench A B LABEL: throughput and RTT of paths A and B, alternating.
link_bench() {
  local a=$1 b=$2 label=$3 r k bps v o
  say "TCP throughput ($label): iperf3 -t 5 from host 2 to host 1, $thr_reps repetitions"
  for r in $(seq "$thr_reps"); do
    for k in $(order "$r" "$a" "$b"); do
      bps=$(iperf_bps "${cpid_[$k]}" "${sip[$k]}")
      [ -n "$bps" ] || die "iperf3 on ${net[$k]} gave no result"
      v=$(awk -v b="$bps" 'BEGIN { printf "%.2f", b / 1e9 }')
      add thr "$k" "$v"
      echo "  rep $r $k: $v Gbit/s"
    done
  done
  say "ping RTT ($label): 200 pings at 5 ms from host 2 to host 1, $rtt_reps repetitions"
  for r in $(seq "$rtt_reps"); do
    for k in $(order "$r" "$a" "$b"); do
      o=$(nsenter -t "${cpid_[$k]}" -n ping -c 200 -i 0.005 -q "${sip[$k]}")
      grep -q ' 0% packet loss' <<<"$o" || echo "  warning: packet loss on ${net[$k]}: $(grep 'packet loss' <<<"$o")"
      v=$(awk -F/ '/^rtt/ { printf "%.1f", $5 * 1000 }' <<<"$o")
      [ -n "$v" ] || die "no RTT from ping on ${net[$k]}"
      add rtt "$k" "$v"
      echo "  rep $r $k: $v us"
    done
  done
}
link_bench builtin weft "built-in overlay vs weft overlay"
link_bench wg enc "bare wireguard-go vs weft encrypted overlay"

# What the plugin logged at warning level or above during the run.
for n in 1 2; do
  grep 'plugin=' "/var/lib/weft-$WEFT_SWARM_LAB/h$n/dockerd.log" | grep -E 'level=(warning|error|fatal)' |
    sed "s/^/h$n: /" >>"$tmp/plugin-warn" || true
done
plugin_warn=$(wc -l <"$tmp/plugin-warn")

# 7. Tear down now (the trap would too), so the run can check nothing is left ------
for f in "$tmp"/iperf3-*.pid; do
  if [ -s "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  rm -f "$f"
done
stop_bare_wg
"$lab" down >/dev/null
lab_up=0
left=$( (ip -o link show; ip netns list) | grep -E "wf$WEFT_SWARM_LAB|wfbwg" || true)
[ -z "$left" ] || die "the lab left behind: $left"

# 8. docs/benchmarks.md: this section only ----------------------------------------------
declare -A med
for m in thr rtt; do
  for k in builtin weft enc wg; do
    # shellcheck disable=SC2086
    med[$m:$k]=$(median ${raw[$m:$k]})
  done
done
for m in svc-create svc-scale; do
  for k in builtin weft; do
    # shellcheck disable=SC2086
    med[$m:$k]=$(median ${raw[$m:$k]})
  done
done
ratio() { awk -v a="${med[$1:$2]}" -v b="${med[$1:$3]}" 'BEGIN { printf "%.2f", a / b }'; } # ratio METRIC A B: A/B
# row METRIC A B LABEL UNIT ge|le TARGET: A is weft's side, B the reference.
row() {
  local r t d
  r=$(ratio "$1" "$2" "$3")
  t=$(awk -v r="$r" -v d="$6" -v x="$7" 'BEGIN { ok = (d == "ge") ? (r >= x) : (r <= x); print ok ? "yes" : "no" }')
  [ "$6" = ge ] && d='>=' || d='<='
  printf '| %s | %s %s | %s %s | %s | %s %s | %s |\n' "$4" "${med[$1:$3]}" "$5" "${med[$1:$2]}" "$5" "$r" "$d" "$7" "$t"
}
took=$(($(date +%s) - t_start))
{
  echo "$mark_start"
  echo "## swarm: overlay networks between two hosts"
  echo
  # shellcheck disable=SC2016
  echo 'Run `make bench-swarm` (root; it builds the plugin, starts a two-host swarm lab of its own'
  echo "(\`scripts/swarm-lab.sh\` with WEFT_SWARM_LAB=$WEFT_SWARM_LAB: dockerd hosts in the namespaces \`$(hns 1)\` (manager) and"
  echo "\`$(hns 2)\`, underlay $underlay.0/24 on the bridge \`wf${WEFT_SWARM_LAB}br\`, the plugin installed on both as $plugin),"
  # shellcheck disable=SC2016
  echo 'measures side by side, rewrites only this section of the file and removes the lab).'
  # shellcheck disable=SC2016
  echo '`make bench` rewrites the rest of the file and keeps this section.'
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $build_commit$plugin_note"
  echo "- machine: $(nproc) CPUs, kernel $(uname -r), Docker Engine $docker_version in each lab host, $(iperf3 --version | head -1 | awk '{ print $1, $2 }'), $("$wgbin" --version | head -1)"
  echo "- the run took ${took} s"
  echo
  echo "### weft overlay vs Docker's built-in overlay"
  echo
  echo "Built-in: \`docker network create -d overlay --attachable --subnet ${subnet[builtin]}\`; weft:"
  echo "\`docker network create -d $plugin --ipam-driver $plugin --scope swarm -o type=overlay --attachable --subnet ${subnet[weft]}\`."
  echo "Throughput and RTT from a container on host 2 to one on host 1 (\`docker run -d --network N\` on each host)."
  echo
  echo '| metric | Docker built-in overlay | weft overlay | ratio (weft/built-in) | target | met? |'
  echo '|---|---|---|---|---|---|'
  row thr weft builtin "TCP throughput, higher is better (iperf3 5 s, median of $thr_reps)" Gbit/s ge 1.0
  row rtt weft builtin "ping RTT avg (200 pings at 5 ms, median of $rtt_reps)" us le 1.0
  row svc-create weft builtin "\`docker service create --replicas $svc_n\` until all $svc_n tasks Running (median of $svc_reps)" s le 1.0
  row svc-scale weft builtin "\`docker service scale\` $svc_n -> $((2 * svc_n)) until all Running (median of $svc_reps)" s le 1.0
  echo
  echo "### weft encrypted overlay vs a bare wireguard-go tunnel"
  echo
  echo "weft: \`docker network create ... -o type=overlay -o encrypted --attachable --subnet ${subnet[enc]}\`, container on"
  echo "host 2 to container on host 1; its tunnel backend here: ${enc_backend:-unknown} (this kernel has no"
  echo "WireGuard module). Bare: \`$wgbin\` (built from the golang.zx2c4.com/wireguard in go.mod,"
  echo "the code weft embeds), device wfbwg1 in \`$(hns 1)\` and wfbwg2 in \`$(hns 2)\`, set up with \`wg\`, UDP $wgport,"
  echo "$wgnet.1-2/24; iperf3 and ping between the two host namespaces themselves. The target: the"
  echo "overlay (veth, policy routing into the tunnel) should cost little on top of the cipher, >= 0.8 of the bare"
  echo "tunnel's throughput (for RTT, the same 0.8 as <= 1.25 times the bare tunnel's)."
  echo
  echo '| metric | bare wireguard-go tunnel | weft encrypted overlay | ratio (weft/bare) | target | met? |'
  echo '|---|---|---|---|---|---|'
  row thr enc wg "TCP throughput, higher is better (iperf3 5 s, median of $thr_reps)" Gbit/s ge 0.8
  row rtt enc wg "ping RTT avg (200 pings at 5 ms, median of $rtt_reps)" us le 1.25
  echo
  echo "For information, what encryption costs weft's overlay (the encrypted and the plain overlay were"
  echo "measured in the same run, but in different pairs, so not alternating with each other):"
  echo
  echo '| metric | weft overlay | weft encrypted overlay | ratio (encrypted/plain) |'
  echo '|---|---|---|---|'
  printf '| %s | %s Gbit/s | %s Gbit/s | %s |\n' "TCP throughput (median of $thr_reps)" "${med[thr:weft]}" "${med[thr:enc]}" "$(ratio thr enc weft)"
  printf '| %s | %s us | %s us | %s |\n' "ping RTT avg (median of $rtt_reps)" "${med[rtt:weft]}" "${med[rtt:enc]}" "$(ratio rtt enc weft)"
  echo
  echo "### MTUs"
  echo
  echo '| path | MTU |'
  echo '|---|---|'
  echo "| underlay (each host's eth0) | ${mtu[underlay]} |"
  echo "| built-in overlay, container interface | ${mtu[builtin]} |"
  echo "| weft overlay, container interface | ${mtu[weft]} |"
  echo "| weft encrypted overlay, container interface (routed into WireGuard, no VXLAN) | ${mtu[enc]} |"
  echo "| weft's WireGuard device wfwg0 | ${mtu[wfwg0]} |"
  echo "| bare tunnel wfbwg1/wfbwg2 (set to wfwg0's, so both tunnels send UDP packets of the same size) | ${mtu[wg]} |"
  echo
  echo "### Notes"
  echo
  echo "- Docker's own encrypted overlay (\`-d overlay -o encrypted\`) cannot run on this kernel: it is"
  echo "  IPsec ESP in the kernel's xfrm, and the kernel has no ESP (an ESP transport state in a lab"
  if [ -n "$esp_err" ]; then
    echo "  host: \`ip xfrm state add ... proto esp ...\` says \"$esp_err\"). So there is no built-in row"
  else
    echo "  host could be added this time, so check the kernel again). So there is no built-in row"
  fi
  echo "  for the encrypted case; the bare wireguard-go tunnel is the reference instead."
  echo "- All figures come from one run on one machine, with both lab hosts sharing its CPUs, and are"
  echo "  noisy; compare the ratios: both sides of each table were measured side by side in the same"
  echo "  run, alternating within each repetition (and which one goes first alternates between"
  echo "  repetitions). Each path got one untimed warm-up first (1 s of iperf3, pings)."
  echo "- iperf3 and ping are this machine's binaries run in the containers' (or, for the bare tunnel,"
  echo "  the hosts') network namespaces."
  echo "- Services: \`docker service create -d --replicas $svc_n --network N --stop-signal KILL --no-resolve-image IMAGE-ID sleep 3600\`"
  echo "  on the manager, timed until \`docker service ps\` shows all tasks Running (polled every ~0.1 s),"
  echo "  then \`docker service scale -d\` likewise, then \`docker service rm\` and a wait until the"
  echo "  containers are gone on both hosts. Tasks land on both hosts. Nothing else is attached to the"
  echo "  networks during this part, so each create also brings its network up on the worker. One"
  echo "  untimed round per driver first."
  if [ -n "$svc_failures" ]; then
    echo "- Service tasks that ended in an error (rejected or failed, swarm rescheduled them), per network:$svc_failures"
  fi
  echo "- Raw values per repetition:"
  echo "  - throughput (Gbit/s), built-in / weft: ${raw[thr:builtin]} / ${raw[thr:weft]}"
  echo "  - ping RTT (us), built-in / weft: ${raw[rtt:builtin]} / ${raw[rtt:weft]}"
  echo "  - service create (s), built-in / weft: ${raw[svc-create:builtin]} / ${raw[svc-create:weft]}"
  echo "  - service scale (s), built-in / weft: ${raw[svc-scale:builtin]} / ${raw[svc-scale:weft]}"
  echo "  - throughput (Gbit/s), bare wireguard-go / weft encrypted: ${raw[thr:wg]} / ${raw[thr:enc]}"
  echo "  - ping RTT (us), bare wireguard-go / weft encrypted: ${raw[rtt:wg]} / ${raw[rtt:enc]}"
  echo "- The plugin logged $plugin_warn line(s) at warning level or above during the run."
  echo "$mark_end"
} >"$tmp/section.md"

# Keep everything outside the markers; the section goes where it was, or at
# the end.
if [ -f "$out" ] && grep -qxF "$mark_start" "$out"; then
  awk -v s="$mark_start" -v e="$mark_end" -v f="$tmp/section.md" '
    $0 == s { while ((getline l < f) > 0) print l; skip = 1; next }
    skip && $0 == e { skip = 0; next }
    !skip' "$out" >"$tmp/benchmarks.md"
else
  { [ ! -s "$out" ] || { cat "$out" && echo; }; cat "$tmp/section.md"; } >"$tmp/benchmarks.md"
fi
mkdir -p docs
cat "$tmp/benchmarks.md" >"$out"
say "wrote the bench-swarm section of $out (run took ${took} s)"
sed -n "/^$mark_start\$/,/^$mark_end\$/p" "$out"
if [ "$plugin_warn" -gt 0 ]; then
  say "the plugin's warnings and errors during the run:"
  cut -c1-400 "$tmp/plugin-warn"
fi
