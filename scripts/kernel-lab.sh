#!/usr/bin/env bash
# make test-kernel: runs the kernellab tests inside Debian's kernel under
# qemu, for what this machine's kernel lacks (ipvlan, 802.1q, dummy,
# kernel WireGuard). The kernel package is downloaded and unpacked
# into build/kernel-lab (the host's /boot is not touched); an initramfs holds
# busybox, the needed modules, the static weft binary and the static test
# binary; results come back on the serial console.
set -euo pipefail
cd "$(dirname "$0")/.."
lab=build/kernel-lab
mkdir -p "$lab"
modules=(ipvlan macvlan 8021q dummy veth wireguard tun vxlan sch_tbf ifb sch_ingress cls_u32 act_mirred)

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  echo "kernel-lab: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Debian's current kernel package, unpacked once.
if ! ls "$lab"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); fi
  echo "kernel-lab: fetching $pkg"
  rm -rf "$lab/debs" "$lab/kernel" && mkdir -p "$lab/debs" "$lab/kernel"
  (cd "$lab/debs" && apt-get download -qq "$pkg" 2>/dev/null)
  dpkg -x "$lab"/debs/*.deb "$lab/kernel"
fi
kver=$(ls "$lab/kernel/lib/modules")
vmlinuz="$lab/kernel/boot/vmlinuz-$kver"
[ -f "$lab/kernel/lib/modules/$kver/modules.dep" ] || depmod -b "$lab/kernel" "$kver"

# Static binaries: the plugin and the tests.
CGO_ENABLED=0 go build -tags nosystemd -o "$lab/weft" ./plugin
CGO_ENABLED=0 go test -tags nosystemd -c -o "$lab/lab.test" ./kernellab

root="$lab/initramfs"
rm -rf "$root" && mkdir -p "$root"/{bin,proc,sys,dev,run,tmp,var,lib/modules}
ln -s ../run "$root/var/run"
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
cp "$lab/weft" "$root/weft" && cp "$lab/lab.test" "$root/lab.test"
# Modules with their dependencies, in load order.
: >"$root/modules.order"
for m in "${modules[@]}"; do
  modprobe -d "$lab/kernel" -S "$kver" --show-depends "$m" | awk '$1=="insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  cp "$ko" "$root/lib/modules/"
  basename "$ko" >>"$root/modules.order"
done
cat >"$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "KLAB: insmod $m failed"; done
ip link set lo up
echo "KLAB: booted $(uname -r)"
cd /tmp
WEFT_KERNEL_LAB=1 /lab.test -test.v -test.timeout 300s
rc=$?
if [ $rc -eq 0 ]; then echo "KLAB-RESULT: PASS"; else echo "KLAB-RESULT: FAIL (exit $rc)"; fi
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$lab/initramfs.gz"

echo "kernel-lab: booting $kver under qemu"
log="$lab/console.log"
boot() { # the whole lab takes well under a minute; 300 s means it hangs
  timeout 300 qemu-system-x86_64 -m 1024 -smp 2 -nographic -no-reboot \
    -kernel "$vmlinuz" -initrd "$lab/initramfs.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3" >"$log" 2>&1
}
set +e
# Plain emulation (TCG): KVM under nested virtualisation hangs or aborts on
# these machines, and the lab is about correctness, not speed.
boot
qrc=$?
set -e
# The tests' own output, without the kernel's.
grep -E '^(=== RUN|--- (PASS|FAIL|SKIP)|    |PASS|FAIL|ok|KLAB)' "$log" | grep -v '^=== RUN' || true
if grep -q '^KLAB-RESULT: PASS' "$log"; then
  n=$(grep -c -- '^--- PASS' "$log")
  echo "kernel-lab: $n tests passed in Debian's kernel $kver"
  exit 0
fi
# Not anchored: the console puts terminal escapes before the first line.
if ! grep -q 'KLAB: booted' "$log"; then
  echo "kernel-lab: FAILED: the VM did not boot (qemu exit $qrc); end of console:" >&2
  tail -30 "$log" >&2
else
  echo "kernel-lab: FAILED (qemu exit $qrc); full console in $log" >&2
fi
exit 1
