#!/bin/busybox sh
# The lab VM's init, run by busybox sh. Two stages in one file:
#   stage 1 (no argument; /init of the initramfs): load the 9p and overlay modules, mount the host's /
#     read-only over 9p under a tmpfs overlay, the run directory and the work tree over 9p, then
#     switch_root into the overlay with this script as stage 2;
#   stage 2 (argument "stage2"; PID 1 in the new root): the usual API filesystems, lo, module
#     directory, then the command (as root, in the checkout), its exit code to the run directory, and
#     power off.
# The run directory (9p tag "labrun", at /run/lab inside) holds `config` and `env` (shell assignments
# written by run.sh), `cmd` (the command as a bash script) and receives `exit-code` and `boot-seconds`.
# A later systemd boot (issue 5) only needs stage 1 plus `exec switch_root /newroot /lib/systemd/systemd`
# with a unit that runs /run/lab/cmd; stage 2 is the systemd-less stand-in for that.
set -u
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

fail() {
  echo "[lab-init] $*" > /dev/ttyS0 2>&1 || echo "[lab-init] $*" >&2
  [ -d /newroot/run/lab ] && echo 125 > /newroot/run/lab/exit-code 2>/dev/null
  [ -d /run/lab ] && echo 125 > /run/lab/exit-code 2>/dev/null
  ${bb:-/bin/busybox} sync
  ${bb:-/bin/busybox} poweroff -f
  sleep 10
  exit 1
}

# 9p over virtio: msize up to 512 KiB on these kernels; bigger messages mean fewer round trips.
P9="trans=virtio,version=9p2000.L,msize=512000"

stage1() {
  /bin/busybox --install -s /bin
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev
  for m in $(cat /modules/order); do
    insmod "/modules/$m" || fail "insmod $m failed"
  done
  mkdir -p /lower /rw /newroot
  # host root: read-only, aggressively cached (it does not change under a test run)
  mount -t 9p -o "$P9,ro,cache=loose" hostroot /lower || fail "mounting the host root over 9p failed"
  mount -t tmpfs -o mode=0755 tmpfs /rw
  mkdir -p /rw/upper /rw/work
  mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot ||
    fail "overlay over the host root failed"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
  mkdir -p /newroot/run/lab /newroot/run/.lab
  mount -t 9p -o "$P9" labrun /newroot/run/lab || fail "mounting the run directory failed"
  . /newroot/run/lab/config
  # the work tree, read-write; mmap caching keeps host and guest coherent for artifacts
  mkdir -p "/newroot$LAB_WORKTREE"
  mount -t 9p -o "$P9,cache=${LAB_WORK_CACHE:-mmap}" work "/newroot$LAB_WORKTREE" || fail "mounting the work tree failed"
  cp /bin/busybox /newroot/run/.lab/busybox
  cp /init /newroot/run/.lab/init
  umount /proc /sys /dev 2>/dev/null
  exec switch_root /newroot /run/.lab/busybox sh /run/.lab/init stage2
  fail "switch_root failed"
}

stage2() {
  bb=/run/.lab/busybox
  . /run/lab/config
  $bb mount -t proc -o nosuid,nodev,noexec proc /proc
  $bb mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
  $bb mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
  $bb mkdir -p /dev/pts /dev/shm
  $bb mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts /dev/pts
  $bb mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
  # A fresh /tmp, unless the work tree lives under /tmp (a CI clone often does): a tmpfs there would
  # hide it. The overlay root's /tmp is writable (tmpfs upper layer) either way.
  case "$LAB_WORKTREE" in
    /tmp | /tmp/*) ;;
    *) $bb mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp ;;
  esac
  $bb mount -t bpf -o mode=0700 bpf /sys/fs/bpf
  $bb mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
  $bb mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
  $bb mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
  $bb mkdir -p /run/netns /run/lock
  # the guest kernel's modules (depmod'ed by fetch.sh), for the kernel's own modprobe calls too
  $bb mkdir -p /lib/modules
  $bb mount --bind "$LAB_MODULES" /lib/modules || fail "binding $LAB_MODULES on /lib/modules failed"
  # iproute2/bpftool from backports over the host's (in the tmpfs upper layer: fast to exec, and found
  # by absolute paths such as /usr/sbin/bpftool too)
  for d in bin sbin usr/bin usr/sbin usr/lib usr/share/iproute2; do
    [ -d "$LAB_TOOLS/$d" ] || continue
    $bb mkdir -p "/$d" && $bb cp -af "$LAB_TOOLS/$d/." "/$d/" || fail "installing $LAB_TOOLS/$d failed"
  done
  $bb hostname "kitnet-lab"
  $bb ip link set lo up
  [ -x /sbin/modprobe ] && echo /sbin/modprobe > /proc/sys/kernel/modprobe
  # the command's output goes to the serial line: no CR/LF translation, no echo
  $bb stty -onlcr -echo < /dev/ttyS0 2>/dev/null
  echo "$($bb cut -d' ' -f1 /proc/uptime)" > /run/lab/boot-seconds

  $bb env -i /bin/bash -c '. /run/lab/env && exec /bin/bash /run/lab/cmd' < /dev/null > /dev/ttyS0 2>&1
  rc=$?
  echo "$rc" > /run/lab/exit-code
  $bb sync
  $bb poweroff -f
}

case "${1:-}" in
  stage2) stage2 ;;
  *) stage1 ;;
esac
