#!/usr/bin/env bash
# make demo: from a fresh machine to two containers talking over weft.
# Installs what is missing, starts a dockerd if none runs, installs weft as a
# managed plugin, creates a network, shows name resolution and a published
# port, then removes the demo's containers and network (weft stays installed).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }

net=weft-demo web=weft-demo-web port=18888
cleanup() {
  docker rm -f "$web" >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "Preparing this machine (packages, dockerd, test image)"
scripts/e2e-env.sh up
say "Building weft and installing it as the managed plugin weft:latest"
make -s install
run docker plugin ls
cleanup

say "A weft bridge network with weft's own IPAM"
run docker network create -d weft:latest --ipam-driver weft:latest "$net"
run docker network inspect -f 'subnet {{(index .IPAM.Config 0).Subnet}} gateway {{(index .IPAM.Config 0).Gateway}}' "$net"

say "A web server on it, with port $port published on the host"
run docker run -d --name "$web" --network "$net" -p "$port:80" weft-test/busybox httpd -f -p 80 -h /www

say "A second container reaches the first by name"
run docker run --rm --network "$net" weft-test/busybox ping -c 2 "$web"

say "The host fetches the published port"
for _ in $(seq 20); do
  if out=$(printf 'GET / HTTP/1.0\r\n\r\n' | busybox nc 127.0.0.1 "$port" 2>/dev/null) && [ -n "$out" ]; then break; fi
  sleep 0.25
done
printf '+ printf "GET / HTTP/1.0\\r\\n\\r\\n" | busybox nc 127.0.0.1 %s\n%s\n' "$port" "$out"
echo "$out" | grep -q "hello from weft" || { echo "demo: the published port did not answer" >&2; exit 1; }

say "Done: cleaning up the demo's containers and network (weft:latest stays installed)"
