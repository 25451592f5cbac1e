#!/usr/bin/env bash
# The lab's guest VM: an initramfs for the running kernel with static busybox, iproute2, ISC dhclient
# (Debian 12's busybox has no udhcpc6), virtio_net and what it needs, and guest-init.sh as /init. The
# guest configures its network only by DHCPv4 (udhcpc), router advertisements (the kernel) and DHCPv6
# (dhclient -6), then serves HTTP on ports 80 and 81.
# usage: build-initramfs.sh OUT.cpio.gz      (on a lab host, as root)
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
kver=$(uname -r)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,usr/sbin,sbin,proc,sys,dev,tmp,run,etc,modules,var/lib/dhcp,www}
place() { # FROM TO: a file and the shared libraries it needs
  mkdir -p "$(dirname "$root$2")"
  cp -L "$1" "$root$2"
  # (a static binary has none: ldd then fails and grep finds nothing)
  local lib
  for lib in $(ldd "$1" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*' || true); do
    [ -e "$root$lib" ] || { mkdir -p "$(dirname "$root$lib")"; cp -L "$lib" "$root$lib"; }
  done
}
place /bin/busybox /bin/busybox
place /usr/sbin/ip /usr/sbin/ip
place /sbin/dhclient /sbin/dhclient
for m in $(modprobe --show-depends virtio_net | awk '/^insmod/ {print $2}'); do
  name=$(basename "$m"); name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
  case "$m" in
    *.xz) xz -dc "$m" > "$root/modules/$name" ;;
    *.zst) zstd -qdc "$m" > "$root/modules/$name" ;;
    *.gz) gzip -dc "$m" > "$root/modules/$name" ;;
    *) cp "$m" "$root/modules/$name" ;;
  esac
  echo "$name" >> "$root/modules/order"
done
touch "$root/modules/order"
install -m 0755 "$here/guest-init.sh" "$root/init"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"
echo "build-initramfs.sh: $out for $kver ($(du -h "$out" | cut -f1))"
