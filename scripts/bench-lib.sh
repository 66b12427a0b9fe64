# shellcheck shell=bash
# Shared by scripts/bench.sh and scripts/bench-swarm.sh (sourced): timing,
# medians, the alternating order of the two sides, iperf3, raw values.

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# The two sides alternate within each repetition, and which goes first
# alternates between repetitions (A B, B A, A B, ...). order R [A B]; the
# sides default to builtin and weft.
order() { local a=${2:-builtin} b=${3:-weft}; if (($1 % 2)); then echo "$a $b"; else echo "$b $a"; fi; }
# iperf_bps PID IP [ARG...]: iperf3 -t 5 from the network namespace of PID to
# the server at IP; prints the receiver's bits per second.
iperf_bps() {
  local pid=$1 ip=$2 bps
  shift 2
  # An iperf3 server takes one test at a time and may still be closing the
  # previous one ("the server is busy"): try again a few times.
  for _ in 1 2 3 4 5; do
    bps=$(nsenter -t "$pid" -n iperf3 -c "$ip" -t 5 -J "$@" |
      awk '/"sum_received"/ { f = 1 } f && /"bits_per_second"/ { gsub(/[^0-9.e+]/, "", $2); print $2; exit }')
    [ -n "$bps" ] && { echo "$bps"; return 0; }
    sleep 1
  done
  return 0
}
# Raw per-repetition values, "metric:side" -> "v1 v2 ...".
declare -A raw
add() { raw[$1:$2]="${raw[$1:$2]:-}${raw[$1:$2]:+ }$3"; }
