#!/usr/bin/env bash
# Builds the local test image weft-test/busybox (no registry needed):
# busybox-static with its applet links, plus a small web root for httpd.
set -euo pipefail
image=${1:-weft-test/busybox}
if docker image inspect "$image" >/dev/null 2>&1; then exit 0; fi
[ -x /bin/busybox ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,etc,tmp,www,proc,sys,dev}
cp /bin/busybox "$tmp/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -s busybox "$tmp/bin/$a"
done
echo "hello from weft" > "$tmp/www/index.html"
tar -C "$tmp" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$image" >/dev/null
echo "test-image: built $image"
