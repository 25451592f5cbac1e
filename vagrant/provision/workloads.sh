#!/usr/bin/env bash
# A lab host's workloads, in namespace `lab`: `client-HOST`, a network namespace (app=client), and
# `guest-HOST`, a real QEMU guest (kind: vm, app=guest) that configures itself by DHCP/RA and serves
# HTTP on 80 and 81. The guest runs as the transient unit kitnet-lab-guest (console in
# /var/log/kitnet-lab-guest.log). Idempotent; waits until the guest says KN-READY.
# usage: workloads.sh HOST     (as root, in the VM, after host.sh)
set -euo pipefail
host=$1
checkout=${KITNET_CHECKOUT:-/opt/kitnet}
timeout=${KITNET_LAB_GUEST_TIMEOUT:-900}
say() { printf '[workloads.sh %s] %s\n' "$host" "$*"; }
state=/var/lib/kitnet-lab
console=/var/log/kitnet-lab-guest.log
mkdir -p "$state"

exists() { kitnet workload ls -n lab -o json | jq -e --arg n "$1" 'any(.[]; .name == $n)' > /dev/null; }

ip netns list | grep -qw client || ip netns add client
if ! exists "client-$host"; then
  kitnet workload add "client-$host" -n lab --netns /var/run/netns/client -l app=client -l "host=$host"
fi

if ! exists "guest-$host"; then
  kitnet workload add "guest-$host" -n lab --kind vm -l app=guest -l "host=$host" -p http:80/TCP
fi
vm=$(kitnet workload ls -n lab -o json | jq -c --arg n "guest-$host" '.[] | select(.name == $n) | .vm')
netns=$(jq -r .netnsPath <<< "$vm")
netdev=$(jq -r .qemuNetdev <<< "$vm")

if [ ! -f "$state/guest.cpio.gz" ] || [ "$checkout/vagrant/guest/guest-init.sh" -nt "$state/guest.cpio.gz" ]; then
  bash "$checkout/vagrant/guest/build-initramfs.sh" "$state/guest.cpio.gz"
fi
if ! systemctl is-active -q kitnet-lab-guest; then
  systemctl reset-failed kitnet-lab-guest 2>/dev/null || true
  : > "$console"
  # no option ROM: iPXE would only cost boot time; TCG: this VM has no KVM of its own
  # shellcheck disable=SC2086
  # lowest CPU priority: the guest's emulation would otherwise starve the agent on this one-vCPU host
  systemd-run --unit kitnet-lab-guest --description "kitnet lab guest guest-$host" -p CPUWeight=1 -p Nice=19 \
    ip netns exec "$(basename "$netns")" qemu-system-x86_64 -accel tcg -M pc -cpu max -m 128 -smp 1 \
    -nodefaults -no-user-config -display none -serial "file:$console" \
    -kernel "/boot/vmlinuz-$(uname -r)" -initrd "$state/guest.cpio.gz" \
    -append "console=ttyS0 quiet panic=-1 rdinit=/init kn.name=guest-$host" \
    ${netdev/virtio-net-pci,/virtio-net-pci,romfile=,}
  say "guest-$host started (kitnet-lab-guest.service, console $console)"
fi

say "waiting for the guest to configure itself (up to ${timeout} s)"
deadline=$((SECONDS + timeout))
until grep -q '^KN-READY' "$console" 2>/dev/null; do
  if ((SECONDS > deadline)) || ! systemctl is-active -q kitnet-lab-guest; then
    say "the guest is not ready; its console:" >&2
    tail -n 30 "$console" >&2 || true
    exit 1
  fi
  sleep 3
done
grep '^KN-' "$console" | tr -d '\r'
kitnet workload ls -n lab
