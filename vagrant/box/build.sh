#!/usr/bin/env bash
# Builds the Vagrant libvirt box kitnet/bookworm-612 from Debian packages, without downloading a box:
#   debootstrap bookworm into a folder; the bookworm-backports 6.12 kernel (netkit needs >= 6.7);
#   systemd, systemd-networkd, openssh-server, sudo, rsync, the vagrant user with Vagrant's insecure key;
#   what a kitnet host runs (libbpf1, libelf1, qemu-system-x86 and busybox-static for its guest VM,
#   iproute2) and etcd-server (off; the etcd node's provisioning turns it on); Node 20 copied from
#   this machine's installation (Debian 12 ships Node 18; the checkout's scripts expect the node on PATH).
# The disk needs no loop device or mount: a FAT /boot partition with syslinux (kernel, initrd) and an
# ext4 root made by `mkfs.ext4 -d` from the folder, assembled into one image with an MBR, converted to
# qcow2. metadata.json {provider: libvirt, format: qcow2, virtual_size}, a Vagrantfile, tar -> .box,
# `vagrant box add --name kitnet/bookworm-612`.
# Cached: a stamp with the hash of the inputs (this script, the package list, the node version) in
# $KITNET_BOX_CACHE (default .cache/vagrant-box in the checkout); a second run with the same inputs
# only checks that the box is added (well under a second). --force rebuilds.
# usage: vagrant/box/build.sh [--force]     (as root; Debian 12)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KITNET_BOX_CACHE:-$repo/.cache/vagrant-box}
mirror=${KITNET_BOX_MIRROR:-http://deb.debian.org/debian}
box_name=${KITNET_BOX_NAME:-kitnet/bookworm-612}
disk_gib=${KITNET_BOX_DISK_GIB:-8}
log() { printf '[box] %s\n' "$*" >&2; }
die() { printf '[box] error: %s\n' "$*" >&2; exit 1; }
force=0
[ "${1:-}" = --force ] && force=1

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot)"
packages_file=$here/packages.txt
# the package list without comments
mapfile -t packages < <(sed 's/#.*//; /^\s*$/d' "$packages_file" | tr -s ' \t' '\n' | sed '/^$/d')
node_bin=$(command -v node || true)
[ -n "$node_bin" ] || die "node is not on PATH: the box takes this machine's Node 20 (install nodejs 20 first)"
node_version=$("$node_bin" --version)
[[ "$node_version" == v2[0-9].* ]] || die "node $node_version: kitnet needs Node 20 or newer"

inputs_hash=$( { cat "$0" "$packages_file" "$here/Vagrantfile.box"; echo "$node_version $box_name $disk_gib"; } | sha256sum | cut -c1-16)
box_file=$cache/kitnet-bookworm-612-$inputs_hash.box
stamp=$cache/stamp
mkdir -p "$cache"
exec 9> "$cache/.lock"
flock 9

box_added() { vagrant box list 2>/dev/null | grep -q "^$box_name .*libvirt"; }

if ((force == 0)) && [ -f "$box_file" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs_hash" ]; then
  if box_added && [ "$(cat "$cache/added" 2>/dev/null)" = "$inputs_hash" ]; then
    log "box $box_name is current ($inputs_hash)"
    exit 0
  fi
else
  for t in debootstrap mkfs.ext4 mkfs.vfat mcopy syslinux sfdisk qemu-img; do
    command -v "$t" >/dev/null || die "$t is missing (apt-get install debootstrap e2fsprogs dosfstools mtools syslinux fdisk qemu-utils)"
  done
  [ -f /usr/lib/syslinux/mbr/mbr.bin ] || die "/usr/lib/syslinux/mbr/mbr.bin is missing (apt-get install syslinux-common)"
  work=$cache/work
  rootfs=$work/rootfs
  # a failed build leaves no mounts behind
  cleanup() {
    for m in dev/pts dev proc sys; do mountpoint -q "$rootfs/$m" 2>/dev/null && umount -l "$rootfs/$m"; done
    return 0
  }
  trap cleanup EXIT
  cleanup
  rm -rf "$work"
  mkdir -p "$rootfs"

  log "debootstrap bookworm ($mirror) into $rootfs"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)"; }

  cat > "$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $mirror bookworm-backports main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  mount --bind /dev "$rootfs/dev"
  mount --bind /dev/pts "$rootfs/dev/pts"
  mount -t proc proc "$rootfs/proc"
  mount -t sysfs sys "$rootfs/sys"
  in_root() { chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
  # no service starts inside the chroot
  printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
  chmod +x "$rootfs/usr/sbin/policy-rc.d"

  log "apt: ${#packages[@]} packages"
  in_root apt-get update -q > "$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; die "apt-get update failed"; }
  in_root apt-get install -y -q --no-install-recommends "${packages[@]}" >> "$work/apt.log" 2>&1 ||
    { tail -20 "$work/apt.log" >&2; die "apt-get install failed (log: $work/apt.log)"; }
  # systemd-resolved made /etc/resolv.conf a link to its stub, which does not run in the chroot
  rm -f "$rootfs/etc/resolv.conf"
  cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
  log "kernel: linux-image-amd64 from bookworm-backports"
  # the lab VM's download of the same kernel (test/lab/fetch.sh) saves 100 MB when the versions match
  # (apt checks the hash and downloads anything else)
  lab_debs=${KITNET_LAB_CACHE:-$repo/.cache/lab}/debs
  cp "$lab_debs"/linux-image-6.12.*_amd64.deb "$rootfs/var/cache/apt/archives/" 2>/dev/null || true
  in_root apt-get install -y -q --no-install-recommends -t bookworm-backports linux-image-amd64 >> "$work/apt.log" 2>&1 ||
    { tail -20 "$work/apt.log" >&2; die "kernel install failed (log: $work/apt.log)"; }
  kver=$(ls "$rootfs/lib/modules" | sort -V | tail -1)
  [[ "$kver" == 6.1[2-9]* || "$kver" == [7-9].* ]] || die "kernel $kver from backports is older than 6.12"
  grep -q '^CONFIG_NETKIT=y' "$rootfs/boot/config-$kver" || die "kernel $kver has no CONFIG_NETKIT=y"
  [ -f "$rootfs/boot/initrd.img-$kver" ] || die "no initrd for $kver (initramfs-tools in packages.txt?)"
  in_root apt-get clean

  log "node $node_version from $node_bin (with npm where dpkg lists it)"
  if dpkg -S "$node_bin" >/dev/null 2>&1 || dpkg -S "$(readlink -f "$node_bin")" >/dev/null 2>&1; then
    # the whole nodejs package's files (npm, headers), as on this machine
    dpkg -L nodejs | while read -r f; do
      if [ -f "$f" ] || [ -L "$f" ]; then printf '%s\0' "${f#/}"; fi
    done > "$work/node.files"
    tar -C / --null -T "$work/node.files" -cf - | tar -C "$rootfs" -xf -
  fi
  install -D -m 0755 "$(readlink -f "$node_bin")" "$rootfs/usr/bin/node"
  in_root node --version > /dev/null || die "node does not run in the box's userland"

  log "users, ssh, network, boot config"
  echo kitnet-box > "$rootfs/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 kitnet-box\n::1 localhost ip6-localhost ip6-loopback\n' > "$rootfs/etc/hosts"
  in_root useradd -m -s /bin/bash -G sudo vagrant
  echo 'vagrant:vagrant' | in_root chpasswd
  echo 'root:vagrant' | in_root chpasswd
  echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$rootfs/etc/sudoers.d/vagrant"
  chmod 0440 "$rootfs/etc/sudoers.d/vagrant"
  insecure_key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
  [ -n "$insecure_key" ] || die "Vagrant's insecure public key (keys/vagrant.pub of the vagrant package) not found"
  install -d -m 0700 "$rootfs/home/vagrant/.ssh"
  install -m 0600 "$insecure_key" "$rootfs/home/vagrant/.ssh/authorized_keys"
  in_root chown -R vagrant:vagrant /home/vagrant/.ssh
  # DNS lookups of the client address would stall logins when the VM has no resolver
  echo 'UseDNS no' > "$rootfs/etc/ssh/sshd_config.d/vagrant.conf"
  # every NIC by DHCP until Vagrant writes its own files for the private network (networkd: Vagrant's
  # Debian guest configures networks through it when the service is active)
  cat > "$rootfs/etc/systemd/network/99-dhcp.network" <<'EOF'
[Match]
Name=eth* en*

[Network]
DHCP=ipv4
IPv6AcceptRA=no

[DHCPv4]
ClientIdentifier=mac
EOF
  in_root systemctl enable systemd-networkd systemd-resolved ssh > /dev/null 2>&1 || in_root systemctl enable systemd-networkd ssh
  in_root systemctl disable etcd > /dev/null 2>&1 || true
  # ready quickly: nothing waits for every link to be configured
  in_root systemctl mask systemd-networkd-wait-online.service > /dev/null 2>&1 || true
  ln -sf /run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"
  cat > "$rootfs/etc/fstab" <<'EOF'
LABEL=kitnetroot / ext4 defaults,noatime 0 1
bpffs /sys/fs/bpf bpf defaults 0 0
EOF
  # ssh host keys are made at first boot, so that every VM has its own
  rm -f "$rootfs"/etc/ssh/ssh_host_*
  cat > "$rootfs/etc/systemd/system/ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
  in_root systemctl enable ssh-hostkeys.service > /dev/null
  # every VM its own machine-id at first boot: an empty /etc/machine-id, and no dbus copy for systemd to
  # take instead (it would make every VM's DHCP client id, and so its address, the same)
  : > "$rootfs/etc/machine-id"
  rm -f "$rootfs/var/lib/dbus/machine-id"
  ln -s /etc/machine-id "$rootfs/var/lib/dbus/machine-id"
  rm -f "$rootfs/usr/sbin/policy-rc.d"
  cp "$rootfs/boot/vmlinuz-$kver" "$work/vmlinuz"
  cp "$rootfs/boot/initrd.img-$kver" "$work/initrd.img"
  cleanup

  log "disk: FAT /boot (syslinux) + ext4 root, ${disk_gib} GiB"
  boot_mib=128
  root_mib=$((disk_gib * 1024 - boot_mib - 1))
  # the root file system straight from the folder: no mount, no loop device
  rm -f "$work/root.img"
  truncate -s "${root_mib}M" "$work/root.img"
  mkfs.ext4 -q -L kitnetroot -d "$rootfs" "$work/root.img"
  rm -f "$work/boot.img"
  truncate -s "${boot_mib}M" "$work/boot.img"
  mkfs.vfat -n KITBOOT "$work/boot.img" > /dev/null
  cat > "$work/syslinux.cfg" <<EOF
DEFAULT kitnet
TIMEOUT 0
PROMPT 0
LABEL kitnet
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=kitnetroot rw console=ttyS0,115200 console=tty0 net.ifnames=0 biosdevname=0 quiet
EOF
  MTOOLS_SKIP_CHECK=1 mcopy -i "$work/boot.img" "$work/vmlinuz" "$work/initrd.img" "$work/syslinux.cfg" ::/
  syslinux --install "$work/boot.img"
  rm -f "$work/disk.raw"
  truncate -s "${disk_gib}G" "$work/disk.raw"
  printf 'label: dos\nstart=1MiB, size=%dMiB, type=c, bootable\nstart=%dMiB, type=83\n' "$boot_mib" "$((boot_mib + 1))" |
    sfdisk -q "$work/disk.raw"
  dd if=/usr/lib/syslinux/mbr/mbr.bin of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none
  dd if="$work/boot.img" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$work/root.img" of="$work/disk.raw" bs=1M seek=$((boot_mib + 1)) conv=notrunc,sparse status=none
  qemu-img convert -c -O qcow2 "$work/disk.raw" "$work/box.img"

  log "box: metadata.json, Vagrantfile, tar"
  printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$disk_gib" > "$work/metadata.json"
  cp "$here/Vagrantfile.box" "$work/Vagrantfile"
  rm -f "$cache"/kitnet-bookworm-612-*.box
  tar -C "$work" -czf "$box_file.tmp" metadata.json Vagrantfile box.img
  mv "$box_file.tmp" "$box_file"
  echo "$inputs_hash" > "$stamp"
  echo "kernel=$kver node=$node_version" > "$cache/versions"
  # smoke.sh boots it once to see whether KVM really runs guests here
  cp "$work/vmlinuz" "$cache/vmlinuz"
  rm -rf "$work"
  trap - EXIT
  log "built $box_file ($(du -h "$box_file" | cut -f1); $(cat "$cache/versions"))"
fi

log "vagrant box add --name $box_name"
vagrant box add --force --name "$box_name" --provider libvirt "$box_file" >&2
# libvirt keeps a copy of the old volume in its pool; remove it so the next `vagrant up` uploads the new one
if command -v virsh > /dev/null; then
  for vol in $(virsh -c qemu:///system vol-list default 2>/dev/null | awk -v b="${box_name//\//-VAGRANTSLASH-}" 'index($1, b) == 1 {print $1}'); do
    virsh -c qemu:///system vol-delete --pool default "$vol" > /dev/null 2>&1 || true
  done
fi
echo "$inputs_hash" > "$cache/added"
log "box $box_name added ($inputs_hash)"
