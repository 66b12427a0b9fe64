#!/usr/bin/env bash
# Builds the plugin's rootfs: the static weft binary plus the iptables
# binaries (both the nft and the legacy backend, weft picks the one the host's
# Docker uses at start), their shared libraries and xtables extensions, all
# taken from Debian's iptables package.
set -euo pipefail
bin=${1:?usage: build-rootfs.sh WEFT_BINARY ROOTFS_DIR}
root=${2:?usage: build-rootfs.sh WEFT_BINARY ROOTFS_DIR}

if ! [ -x /usr/sbin/xtables-nft-multi ] || ! [ -x /usr/sbin/xtables-legacy-multi ]; then
  echo "build-rootfs: installing Debian's iptables package"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null
fi

rm -rf "$root"
mkdir -p "$root"/{usr/sbin,etc,run,proc,sys,dev,tmp,var/lib/weft}
install -m 0755 "$bin" "$root/weft"

# Mirror the host's merged-/usr layout (lib -> usr/lib ...): libxtables looks
# for its extensions under the path it was built with.
for d in lib lib64 bin sbin; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$root/$d"; fi
done
copy() { # copy a file to its real directory, dereferencing the file itself
  local f=$1 d
  d=$(cd "$(dirname "$f")" && pwd -P)
  mkdir -p "$root$d"
  cp -L "$f" "$root$d/$(basename "$f")"
}
for b in xtables-nft-multi xtables-legacy-multi; do
  copy /usr/sbin/$b
  ldd /usr/sbin/$b | awk '/=>/ {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    [ -n "$lib" ] && copy "$lib"
  done
done
# Extensions (conntrack, addrtype, MASQUERADE, DNAT...) are loaded at run time.
xt=$(cd "$(dirname "$(ldd /usr/sbin/xtables-legacy-multi | awk '/libxtables/ {print $3}')")" && pwd -P)/xtables
mkdir -p "$root$xt" && cp -a "$xt"/. "$root$xt"/
for lib in $(ls "$xt"/*.so); do
  ldd "$lib" | awk '/=>/ {print $3}' | while read -r l; do [ -e "$root$l" ] || copy "$l"; done
done
for fam in iptables ip6tables; do
  for suffix in "" -save -restore; do
    ln -sf xtables-nft-multi "$root/usr/sbin/$fam-nft$suffix"
    ln -sf xtables-legacy-multi "$root/usr/sbin/$fam-legacy$suffix"
  done
done
[ -f /etc/protocols ] && cp /etc/protocols "$root/etc/protocols"
echo "build-rootfs: $(du -sh "$root" | cut -f1) in $root"
