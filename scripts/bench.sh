#!/usr/bin/env bash
# make bench: weft against Docker's built-in drivers, side by side in one
# run, on this machine, by default on the current Docker engine (below),
# installs weft:latest, then
# - bridge: container-to-container TCP throughput and ping RTT, `docker run`
#   time, 50 parallel `docker run -d`, and the plugin's memory with 500
#   endpoints;
# - macvlan: the same throughput, RTT and `docker run` time, both drivers in
#   bridge mode on one parent, a veth pair wfbmv0/wfbmv1 made for the run;
# - tuning (weft only): how close rate.egress/rate.ingress come to the asked
#   rate (iperf3 both ways at 10, 100 and 1000 mbit), and `docker run` time on
#   a plain weft bridge network against one with rate limits and a sysctl;
# then writes docs/benchmarks.md. Everything it creates is named wfbench-*
# (networks, containers) or wfbmv* (the veth) and removed on exit, also on
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# The e2e suite's lock: its harness starts and stops the dockerd this uses.
exec 9>/run/weft-e2e.lock
flock 9

plugin=weft:latest
img=weft-test/busybox
# BENCH_OUT: where to write the results (docs/benchmarks.md by default).
out=${BENCH_OUT:-docs/benchmarks.md}
declare -A net=([builtin]=wfbench-builtin [weft]=wfbench-weft)
declare -A mvnet=([builtin]=wfbench-mv-builtin [weft]=wfbench-mv-weft)
mvparent=wfbmv0 mvpeer=wfbmv1 # interface names: at most 15 characters
memnet=wfbench-weftmem
ratenet=wfbench-rate rates="10mbit 100mbit 1000mbit" # rates: in mbit
declare -A tunnet=([plain]=wfbench-tun-plain [tuned]=wfbench-tun-tuned)
tun_opts=(-o rate.egress=100mbit -o rate.ingress=100mbit -o sysctl.net.ipv4.tcp_keepalive_time=600)
thr_reps=3 rtt_reps=3 run_reps=10 par_reps=2 par_n=50 mem_eps=500

tmp=$(mktemp -d /tmp/wfbench.XXXXXX)
started_dockerd=0
sock=
t_start=$(date +%s)

say() { printf '\033[1m[bench %s]\033[0m %s\n' "$(date +%T)" "$*"; }
die() { echo "bench: $*" >&2; exit 1; }
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
cpid() { docker inspect -f '{{.State.Pid}}' "$1"; }
cip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }

ep_call() { # ep_call Create|Delete JSON: one NetworkDriver call on weft's socket
  local code
  code=$(curl -sS -o "$tmp/resp" -w '%{http_code}' --unix-socket "$sock" \
    -H 'Content-Type: application/json' -d "$2" "http://x/NetworkDriver.$1Endpoint") || return 1
  [ "$code" = 200 ] || { echo "NetworkDriver.$1Endpoint: HTTP $code $(cat "$tmp/resp")" >&2; return 1; }
}

cleanup() {
  local rc=$? f c
  set +e
  trap - EXIT INT TERM
  wait 2>/dev/null # parallel docker runs still under way
  for f in "$tmp"/iperf3-*.pid; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  if [ -n "$sock" ] && [ -s "$tmp/eps" ]; then
    while read -r f; do ep_call Delete "{\"NetworkID\":\"$memnet_id\",\"EndpointID\":\"$f\"}" 2>/dev/null; done <"$tmp/eps"
  fi
  c=$(docker ps -a --format '{{.Names}}' 2>/dev/null | grep '^wfbench-')
  # shellcheck disable=SC2086
  [ -n "$c" ] && docker rm -f $c >/dev/null
  for f in "${net[@]}" "${mvnet[@]}" "$memnet" "$ratenet" "${tunnet[@]}"; do docker network rm "$f" >/dev/null 2>&1; done
  ip link del "$mvparent" 2>/dev/null # takes its peer with it
  ip link del "$mvpeer" 2>/dev/null
  rm -rf "$tmp"
  [ "$started_dockerd" = 1 ] && scripts/e2e-env.sh down
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Machine, dockerd, plugin -------------------------------------------------
# Against the current engine by default (BENCH_ENGINE=debian for Debian's
# 20.10; BENCH_FIREWALL=nftables for Docker's nftables backend), started
# for the run and stopped after it; a dockerd that already answers is used
# as it is.
if timeout 5 docker version >/dev/null 2>&1; then
  say "using the dockerd that is running (Docker $(docker version -f '{{.Server.Version}}'))"
  scripts/e2e-env.sh up
else
  say "starting Docker (${BENCH_ENGINE:-current}, ${BENCH_FIREWALL:-iptables} firewall) for the run"
  scripts/e2e-env.sh start "${BENCH_ENGINE:-current}" "${BENCH_FIREWALL:-iptables}"
  started_dockerd=1
fi
command -v curl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
say "building and installing $plugin (make -s install)"
# The commit the plugin is built from (the tree may move during the run).
build_commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (work tree had uncommitted changes)')
make -s install

# Leftovers of an interrupted earlier run.
c=$(docker ps -a --format '{{.Names}}' | grep '^wfbench-' || true)
# shellcheck disable=SC2086
[ -z "$c" ] || docker rm -f $c >/dev/null
for n in "${net[@]}" "${mvnet[@]}" "$memnet" "$ratenet" "${tunnet[@]}"; do docker network rm "$n" >/dev/null 2>&1 || true; done
ip link del "$mvparent" 2>/dev/null || true
ip link del "$mvpeer" 2>/dev/null || true

# 2. Networks ------------------------------------------------------------------
say "creating ${net[builtin]} (bridge) and ${net[weft]} (weft)"
docker network create -d bridge --subnet 10.210.0.0/24 "${net[builtin]}" >/dev/null
docker network create -d "$plugin" --ipam-driver "$plugin" --subnet 10.211.0.0/24 "${net[weft]}" >/dev/null

# 3e. Plugin memory, first, while the plugin is freshly started -----------------
plugin_id=$(docker plugin inspect -f '{{.Id}}' "$plugin")
sock=/run/docker/plugins/$plugin_id/weft.sock
[ -S "$sock" ] || die "no plugin socket at $sock"
weft_pid=
for p in $(pgrep -x weft || true); do
  [ "$(tr '\0' ' ' <"/proc/$p/cmdline")" = "/weft " ] || continue
  pp=$(awk '/^PPid:/ { print $2 }' "/proc/$p/status")
  grep -qa -- "$plugin_id" "/proc/$pp/cmdline" && weft_pid=$p
done
[ -n "$weft_pid" ] || die "cannot find the /weft process of plugin $plugin_id"
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$weft_pid/status"; } # KiB

say "plugin memory: $mem_eps endpoints through $sock (pid $weft_pid)"
docker network create -d "$plugin" --ipam-driver "$plugin" --subnet 10.212.0.0/16 "$memnet" >/dev/null
memnet_id=$(docker network inspect -f '{{.Id}}' "$memnet")
sleep 2
rss0=$(rss)
s=$(now)
for i in $(seq "$mem_eps"); do
  id=$(printf 'be7c%08x%052d' "$i" 0) # 64 hex digits; the first 12 (veth names) unique
  echo "$id" >>"$tmp/eps"
  ep_call Create "{\"NetworkID\":\"$memnet_id\",\"EndpointID\":\"$id\",\"Interface\":{\"Address\":\"10.212.$((i / 250)).$((i % 250 + 2))/16\",\"AddressIPv6\":\"\",\"MacAddress\":\"\"},\"Options\":{}}" ||
    die "creating endpoint $i failed"
done
mem_create_s=$(since "$s")
links=$(ip -br link | grep -c '^wfhbe7c' || true)
[ "$links" = "$mem_eps" ] || die "expected $mem_eps host veths wfhbe7c*, found $links"
sleep 2
rss500=$(rss)
s=$(now)
while read -r id; do
  ep_call Delete "{\"NetworkID\":\"$memnet_id\",\"EndpointID\":\"$id\"}" || die "deleting endpoint $id failed"
done <"$tmp/eps"
: >"$tmp/eps"
mem_delete_s=$(since "$s")
sleep 2
rss_after=$(rss)
docker network rm "$memnet" >/dev/null

# 3a/b. Throughput and RTT -----------------------------------------------------
# link_bench NETS P LABEL [CHECK]: two containers on each of the networks
# NETS[builtin] and NETS[weft] (NETS names an associative array); records the
# metrics "${P}thr" and "${P}rtt". Containers are named
# wfbench-${P}<driver>-srv/-cli. CHECK NETWORK PID... vets the containers.
link_bench() {
  local -n nets=$1
  local p=$2 label=$3 check=${4:-} k r bps v o
  local -A spid cpid_ ip
  for k in builtin weft; do
    docker run -d --name "wfbench-$p$k-srv" --network "${nets[$k]}" "$img" sleep 3600 >/dev/null
    docker run -d --name "wfbench-$p$k-cli" --network "${nets[$k]}" "$img" sleep 3600 >/dev/null
    spid[$k]=$(cpid "wfbench-$p$k-srv")
    cpid_[$k]=$(cpid "wfbench-$p$k-cli")
    ip[$k]=$(cip "wfbench-$p$k-srv")
    [ -z "$check" ] || "$check" "${nets[$k]}" "${spid[$k]}" "${cpid_[$k]}"
    nsenter -t "${spid[$k]}" -n iperf3 -s -D -I "$tmp/iperf3-$p$k.pid"
  done
  for k in builtin weft; do # untimed warm-up; also waits for the iperf3 server
    for _ in $(seq 20); do
      nsenter -t "${cpid_[$k]}" -n iperf3 -c "${ip[$k]}" -t 1 >/dev/null 2>&1 && break
      sleep 0.5
    done
    nsenter -t "${cpid_[$k]}" -n ping -c 3 -i 0.2 -q "${ip[$k]}" >/dev/null || die "ping on ${nets[$k]} failed"
  done

  say "TCP throughput ($label): iperf3 -t 5, $thr_reps repetitions"
  for r in $(seq "$thr_reps"); do
    for k in $(order "$r"); do
      bps=$(iperf_bps "${cpid_[$k]}" "${ip[$k]}")
      [ -n "$bps" ] || die "iperf3 on ${nets[$k]} gave no result"
      v=$(awk -v b="$bps" 'BEGIN { printf "%.2f", b / 1e9 }')
      add "${p}thr" "$k" "$v"
      echo "  rep $r $k: $v Gbit/s"
    done
  done

  say "ping RTT ($label): 200 pings at 5 ms, $rtt_reps repetitions"
  for r in $(seq "$rtt_reps"); do
    for k in $(order "$r"); do
      o=$(nsenter -t "${cpid_[$k]}" -n ping -c 200 -i 0.005 -q "${ip[$k]}")
      grep -q ' 0% packet loss' <<<"$o" || echo "  warning: packet loss on ${nets[$k]}: $(grep 'packet loss' <<<"$o")"
      v=$(awk -F/ '/^rtt/ { printf "%.1f", $5 * 1000 }' <<<"$o")
      [ -n "$v" ] || die "no RTT from ping on ${nets[$k]}"
      add "${p}rtt" "$k" "$v"
      echo "  rep $r $k: $v us"
    done
  done
  for k in builtin weft; do
    kill "$(cat "$tmp/iperf3-$p$k.pid")" 2>/dev/null || true
    rm -f "$tmp/iperf3-$p$k.pid"
  done
  docker rm -f "wfbench-${p}builtin-srv" "wfbench-${p}builtin-cli" "wfbench-${p}weft-srv" "wfbench-${p}weft-cli" >/dev/null
}

# 3c. docker run --rm ... true ------------------------------------------------------
# run_bench NETS P LABEL [A B]: records the metric "${P}run" for the keys A and
# B of NETS (default builtin and weft).
run_bench() {
  local -n nets=$1
  local p=$2 label=$3 a=${4:-builtin} b=${5:-weft} k r s v
  say "docker run --rm true ($label): $run_reps repetitions"
  for k in $a $b; do docker run --rm --name "wfbench-${p}run-$k" --network "${nets[$k]}" "$img" true; done # warm-up
  for r in $(seq "$run_reps"); do
    for k in $(order "$r" "$a" "$b"); do
      s=$(now)
      docker run --rm --name "wfbench-${p}run-$k" --network "${nets[$k]}" "$img" true
      v=$(since "$s")
      add "${p}run" "$k" "$v"
      echo "  rep $r $k: $v s"
    done
  done
}

link_bench net "" bridge
run_bench net "" bridge

# 3d. 50 containers started in parallel ---------------------------------------------
say "$par_n parallel docker run -d: $par_reps repetitions"
for r in $(seq "$par_reps"); do
  for k in $(order "$r"); do
    pids=()
    s=$(now)
    for i in $(seq "$par_n"); do
      docker run -d --name "wfbench-par-$k-$i" --network "${net[$k]}" "$img" sleep 3600 >/dev/null 2>"$tmp/par-$i.err" &
      pids+=($!)
    done
    fail=0
    for p in "${pids[@]}"; do wait "$p" || fail=$((fail + 1)); done
    v=$(since "$s")
    [ "$fail" = 0 ] || die "$fail of $par_n docker runs on ${net[$k]} failed, e.g.: $(cat "$tmp"/par-*.err | head -3)"
    running=$(docker ps -q --filter "network=${net[$k]}" | wc -l)
    [ "$running" = "$par_n" ] || die "$running of $par_n containers running on ${net[$k]}"
    add par "$k" "$v"
    echo "  rep $r $k: $v s"
    # shellcheck disable=SC2046
    docker rm -f $(docker ps -a --format '{{.Names}}' | grep "^wfbench-par-$k-") >/dev/null
  done
done

# 4. macvlan on a veth parent ---------------------------------------------------
# Both drivers' networks hang on the same parent, the host end of a veth pair
# made here; its peer stays in the host namespace and only has to be up (a
# parent without carrier would leave the macvlans without carrier too).
# Unicast between containers on one macvlan network (bridge mode) is switched
# inside the macvlan layer and never crosses the veth.
say "creating veth $mvparent/$mvpeer, ${mvnet[builtin]} (macvlan) and ${mvnet[weft]} (weft macvlan) on $mvparent"
ip link add "$mvparent" type veth peer name "$mvpeer"
ip link set "$mvpeer" up
ip link set "$mvparent" up
docker network create -d macvlan -o parent="$mvparent" --subnet 10.213.0.0/24 "${mvnet[builtin]}" >/dev/null
docker network create -d "$plugin" -o type=macvlan -o parent="$mvparent" --ipam-driver "$plugin" --subnet 10.214.0.0/24 "${mvnet[weft]}" >/dev/null
mvparent_idx=$(cat "/sys/class/net/$mvparent/ifindex")
mv_check() { # mv_check NETWORK PID...: each container's eth0 is a bridge-mode macvlan on $mvparent
  local n=$1 pid l
  shift
  for pid in "$@"; do
    l=$(nsenter -t "$pid" -n ip -d -o link show eth0)
    grep -q "eth0@if$mvparent_idx:" <<<"$l" || die "on $n, eth0 is not on $mvparent (ifindex $mvparent_idx): $l"
    grep -q 'macvlan mode bridge' <<<"$l" || die "on $n, eth0 is not a bridge-mode macvlan: $l"
  done
}
link_bench mvnet mv- macvlan mv_check
run_bench mvnet mv- macvlan

# 5. Tuning (weft only) ---------------------------------------------------------
# 5a. Rate accuracy. An unshaped server and one client on a weft bridge network;
# the client starts on Docker's default bridge (an endpoint option can only be
# given with `docker network connect`, and a --network none container cannot
# be connected) and is connected to $ratenet with rate.egress=R and
# rate.ingress=R for each R in turn, disconnected in between. egress: the
# client sends; ingress: the server sends to it (iperf3 -R from the client).
say "creating $ratenet (weft) for the rate limits"
docker network create -d "$plugin" --ipam-driver "$plugin" --subnet 10.215.0.0/24 "$ratenet" >/dev/null
docker run -d --name wfbench-rate-srv --network "$ratenet" "$img" sleep 3600 >/dev/null
docker run -d --name wfbench-rate-cli "$img" sleep 3600 >/dev/null
rspid=$(cpid wfbench-rate-srv)
rcpid=$(cpid wfbench-rate-cli)
rsip=$(cip wfbench-rate-srv)
nsenter -t "$rspid" -n iperf3 -s -D -I "$tmp/iperf3-rate.pid"
rate_left= # IFBs still there after a disconnect
for rate in $rates; do
  docker network connect --driver-opt "rate.egress=$rate" --driver-opt "rate.ingress=$rate" "$ratenet" wfbench-rate-cli
  ep=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$ratenet\").EndpointID}}" wfbench-rate-cli)
  rcip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$ratenet\").IPAddress}}" wfbench-rate-cli)
  ifb=wfi${ep:0:12}
  ip link show "$ifb" >/dev/null 2>&1 || die "no IFB $ifb after connecting with rate $rate"
  # The server must be reached through the weft interface, not docker0.
  rt=$(nsenter -t "$rcpid" -n ip route get "$rsip")
  if ! grep -q "src $rcip\b" <<<"$rt" || grep -q ' via ' <<<"$rt"; then
    die "the client does not reach $rsip directly through $ratenet: $rt"
  fi
  for _ in $(seq 20); do # untimed warm-up; also waits for the iperf3 server
    nsenter -t "$rcpid" -n iperf3 -c "$rsip" -t 1 >/dev/null 2>&1 && break
    sleep 0.5
  done
  say "rate $rate: iperf3 -t 5 egress and ingress"
  for dir in egress ingress; do
    if [ "$dir" = egress ]; then bps=$(iperf_bps "$rcpid" "$rsip"); else bps=$(iperf_bps "$rcpid" "$rsip" -R); fi
    [ -n "$bps" ] || die "iperf3 at $rate ($dir) gave no result"
    v=$(awk -v b="$bps" 'BEGIN { printf "%.2f", b / 1e6 }')
    add "rate-$rate" "$dir" "$v"
    echo "  $rate $dir: $v Mbit/s ($(awk -v v="$v" -v r="${rate%mbit}" 'BEGIN { printf "%.3f", v / r }') of the asked rate)"
  done
  docker network disconnect "$ratenet" wfbench-rate-cli
  ! ip link show "$ifb" >/dev/null 2>&1 || rate_left="$rate_left $ifb"
done
kill "$(cat "$tmp/iperf3-rate.pid")" 2>/dev/null || true
rm -f "$tmp/iperf3-rate.pid"
docker rm -f wfbench-rate-srv wfbench-rate-cli >/dev/null
docker network rm "$ratenet" >/dev/null
[ -z "$rate_left" ] || echo "  warning: IFB left after disconnect:$rate_left"

# 5b. What tuning costs `docker run`: a plain weft bridge network against one
# with rate limits and a sysctl. First a check that the tuned network really
# tunes: the host veth gets its TBF and IFB, the sysctl shows up inside.
say "creating ${tunnet[plain]} (weft) and ${tunnet[tuned]} (weft, ${tun_opts[*]})"
docker network create -d "$plugin" --ipam-driver "$plugin" --subnet 10.216.0.0/24 "${tunnet[plain]}" >/dev/null
docker network create -d "$plugin" --ipam-driver "$plugin" --subnet 10.217.0.0/24 "${tun_opts[@]}" "${tunnet[tuned]}" >/dev/null
docker run -d --name wfbench-tun-check --network "${tunnet[tuned]}" "$img" sleep 3600 >/dev/null
ep=$(docker inspect -f "{{(index .NetworkSettings.Networks \"${tunnet[tuned]}\").EndpointID}}" wfbench-tun-check)
tc qdisc show dev "wfh${ep:0:12}" | grep -q 'tbf' || die "no TBF on wfh${ep:0:12} on ${tunnet[tuned]}"
tc qdisc show dev "wfi${ep:0:12}" | grep -q 'tbf' || die "no TBF on the IFB wfi${ep:0:12} on ${tunnet[tuned]}"
ka=
for _ in $(seq 20); do
  ka=$(nsenter -t "$(cpid wfbench-tun-check)" -n cat /proc/sys/net/ipv4/tcp_keepalive_time)
  [ "$ka" = 600 ] && break
  sleep 0.5
done
[ "$ka" = 600 ] || die "net.ipv4.tcp_keepalive_time is $ka inside a container on ${tunnet[tuned]}, not 600"
docker rm -f wfbench-tun-check >/dev/null
run_bench tunnet tun- "weft plain vs tuned" plain tuned
for n in "${tunnet[@]}"; do docker network rm "$n" >/dev/null; done

# 6. docs/benchmarks.md ---------------------------------------------------------
declare -A med
for m in thr rtt run par mv-thr mv-rtt mv-run; do
  for k in builtin weft; do
    # shellcheck disable=SC2086
    med[$m:$k]=$(median ${raw[$m:$k]})
  done
done
for k in plain tuned; do
  # shellcheck disable=SC2086
  med[tun-run:$k]=$(median ${raw[tun-run:$k]})
done
ratio() { awk -v a="${med[$1:weft]}" -v b="${med[$1:builtin]}" 'BEGIN { printf "%.2f", a / b }'; }
met() { # met METRIC ge|le
  awk -v r="$(ratio "$1")" -v d="$2" 'BEGIN { ok = (d == "ge") ? (r >= 1.0) : (r <= 1.0); print ok ? "yes" : "no" }'
}
row() { # row METRIC LABEL UNIT ge|le
  local t='<= 1.0'
  [ "$4" = ge ] && t='>= 1.0'
  printf '| %s | %s %s | %s %s | %s | %s | %s |\n' "$2" "${med[$1:builtin]}" "$3" "${med[$1:weft]}" "$3" "$(ratio "$1")" "$t" "$(met "$1" "$4")"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
took=$(($(date +%s) - t_start))
mkdir -p docs
{
  echo "# Benchmarks: weft vs Docker's built-in bridge, macvlan and overlay"
  echo
  # shellcheck disable=SC2016
  echo 'Run `make bench` (root; it prepares the machine like `make demo`, reinstalls'
  echo 'weft:latest, measures weft and the built-in driver side by side for each network'
  echo 'type, measures what weft'"'"'s tuning options do and cost, rewrites this file and'
  echo 'removes everything it created). It takes a few minutes. The swarm overlay section at'
  # shellcheck disable=SC2016
  echo 'the end comes from `make bench-swarm`.'
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $build_commit"
  echo "- machine: $(nproc) CPUs, kernel $(uname -r), Docker Engine $(docker version -f '{{.Server.Version}}') with its ${BENCH_FIREWALL:-iptables} firewall backend, $(iperf3 --version | head -1 | awk '{ print $1, $2 }')"
  echo "- the run took ${took} s"
  echo
  echo "## bridge"
  echo
  echo '| metric | Docker built-in bridge | weft bridge | ratio (weft/built-in) | target | met? |'
  echo '|---|---|---|---|---|---|'
  row thr "TCP throughput container to container, higher is better (iperf3 5 s, median of $thr_reps)" Gbit/s ge
  row rtt "ping RTT avg container to container (200 pings at 5 ms, median of $rtt_reps)" us le
  row run "\`docker run --rm --network N weft-test/busybox true\` wall time (median of $run_reps)" s le
  row par "$par_n \`docker run -d\` in parallel, wall time until all returned (median of $par_reps)" s le
  echo
  echo "weft plugin memory (VmRSS of the \`/weft\` process; Docker's built-in driver runs inside"
  echo "dockerd, so there is nothing to compare it with):"
  echo
  echo "- 0 endpoints (fresh plugin, an empty /16 weft network): $(mib "$rss0") MiB"
  echo "- $mem_eps endpoints (NetworkDriver.CreateEndpoint on the plugin socket; each one a real veth pair and a stored record): $(mib "$rss500") MiB, $(awk -v a="$rss0" -v b="$rss500" -v n="$mem_eps" 'BEGIN { printf "%.1f", (b - a) / n }') KiB per endpoint"
  echo "- after deleting them again: $(mib "$rss_after") MiB"
  echo
  echo "## macvlan on a veth parent"
  echo
  echo "Both networks in bridge mode on one parent, \`$mvparent\`: the host end of a veth pair the"
  echo "run creates (its peer \`$mvpeer\` stays in the host namespace, up, with no address)."
  echo "Built-in: \`docker network create -d macvlan -o parent=$mvparent --subnet 10.213.0.0/24\`;"
  echo "weft: \`docker network create -d $plugin -o type=macvlan -o parent=$mvparent --ipam-driver $plugin --subnet 10.214.0.0/24\`."
  echo
  echo '| metric | Docker built-in macvlan | weft macvlan | ratio (weft/built-in) | target | met? |'
  echo '|---|---|---|---|---|---|'
  row mv-thr "TCP throughput container to container, higher is better (iperf3 5 s, median of $thr_reps)" Gbit/s ge
  row mv-rtt "ping RTT avg container to container (200 pings at 5 ms, median of $rtt_reps)" us le
  row mv-run "\`docker run --rm --network N weft-test/busybox true\` wall time (median of $run_reps)" s le
  echo
  echo "## tuning"
  echo
  echo "weft only; Docker's built-in drivers have no such options."
  echo
  echo "Rate limits: an unshaped server and a client on one weft bridge network"
  echo "(\`docker network create -d $plugin --ipam-driver $plugin --subnet 10.215.0.0/24\`), the client connected"
  echo "with \`docker network connect --driver-opt rate.egress=R --driver-opt rate.ingress=R\` for each"
  echo "rate in turn (and disconnected in between). TCP throughput with iperf3 (5 s, one run each):"
  echo "egress = the client sends, ingress = the server sends to the client (\`iperf3 -R\` from the"
  echo "client). The limits count whole Ethernet frames, so TCP goodput is expected around 0.96 of"
  echo "the asked rate (1448 bytes of payload in a 1514-byte frame)."
  echo
  echo '| asked rate | direction | measured | measured/asked |'
  echo '|---|---|---|---|'
  for rate in $rates; do
    for dir in egress ingress; do
      v=${raw[rate-$rate:$dir]} d="$dir (client sends)"
      [ "$dir" = ingress ] && d="$dir (server sends to the client)"
      printf '| %s | %s | %s Mbit/s | %s |\n' "$rate" "$d" "$v" "$(awk -v v="$v" -v r="${rate%mbit}" 'BEGIN { printf "%.3f", v / r }')"
    done
  done
  echo
  echo "Cost on \`docker run\`: a plain weft bridge network against one created with"
  echo "\`${tun_opts[*]}\`, alternating as above."
  echo
  echo '| metric | weft bridge, plain | weft bridge, tuned | ratio (tuned/plain) |'
  echo '|---|---|---|---|'
  printf '| %s | %s s | %s s | %s |\n' "\`docker run --rm --network N weft-test/busybox true\` wall time (median of $run_reps)" \
    "${med[tun-run:plain]}" "${med[tun-run:tuned]}" "$(awk -v a="${med[tun-run:tuned]}" -v b="${med[tun-run:plain]}" 'BEGIN { printf "%.2f", a / b }')"
  echo
  echo "The rate limits are set up inside Join (a TBF on the host end of the veth, an IFB with a"
  echo "TBF for what leaves the container), so they are part of the \`docker run\` time. Sysctls"
  echo "(and offloads) are applied asynchronously after Join, once the container's namespace"
  echo "and interface exist, so they do not add to \`docker run\` time by design. Before timing,"
  echo "the run checks on one container of the tuned network that the TBFs are in place and that"
  echo "\`net.ipv4.tcp_keepalive_time\` reads 600 inside it."
  echo
  echo "## Notes"
  echo
  echo "- All figures come from one run on one machine and are noisy; absolute values drift"
  echo "  between runs and machines. Compare the ratios: both drivers were measured side by side"
  echo "  in the same run, alternating within each repetition (and which one goes first"
  echo "  alternates between repetitions)."
  echo "- Each network got one untimed warm-up first (iperf3 1 s, 3 pings, one \`docker run\`)."
  echo "  iperf3 and ping are the host's binaries run in the containers' network namespaces."
  echo "- macvlan: unicast between the two containers of a network is switched inside the macvlan"
  echo "  layer (bridge mode) and never crosses the veth; only broadcasts and multicasts (ARP, IPv6"
  echo "  DAD) also reach the peer. Before measuring, the run checks that every container's eth0 is"
  echo "  a bridge-mode macvlan on \`$mvparent\`."
  echo "- Creating the $mem_eps endpoints took ${mem_create_s} s and deleting them ${mem_delete_s} s"
  echo "  (one curl call each, so this includes curl's start-up)."
  echo "- Raw values per repetition, built-in / weft:"
  for m in thr:Gbit/s:throughput rtt:us:"ping RTT" run:s:"docker run" par:s:"$par_n parallel" \
    mv-thr:Gbit/s:"macvlan throughput" mv-rtt:us:"macvlan ping RTT" mv-run:s:"macvlan docker run"; do
    IFS=: read -r key unit label <<<"$m"
    echo "  - $label ($unit): ${raw[$key:builtin]} / ${raw[$key:weft]}"
  done
  echo "- Raw values, tuning:"
  for rate in $rates; do
    echo "  - rate $rate, egress / ingress (Mbit/s, one run each): ${raw[rate-$rate:egress]} / ${raw[rate-$rate:ingress]}"
  done
  echo "  - docker run (s), plain / tuned: ${raw[tun-run:plain]} / ${raw[tun-run:tuned]}"
  if [ -n "$rate_left" ]; then
    echo "- Left behind after \`docker network disconnect\` of the rate-limited client (the plugin"
    echo "  should have removed them):$rate_left"
  fi
} >"$tmp/benchmarks.md"
# The section scripts/bench-swarm.sh writes (make bench-swarm) stays.
if [ -f "$out" ] && grep -qxF '<!-- bench-swarm start -->' "$out"; then
  { echo; sed -n '/^<!-- bench-swarm start -->$/,/^<!-- bench-swarm end -->$/p' "$out"; } >>"$tmp/benchmarks.md"
fi
mv "$tmp/benchmarks.md" "$out"
say "wrote $out (run took ${took} s)"
cat "$out"
