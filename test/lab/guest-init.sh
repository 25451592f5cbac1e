#!/bin/busybox sh
# The lab VM's init, run by busybox sh. Two stages in one file:
#   stage 1 (no argument; /init of the initramfs): load the 9p and overlay modules, mount the host's /
#     read-only over 9p under a tmpfs overlay, the run directory and the work tree over 9p, then
#     switch_root into the overlay with this script as stage 2, or (LAB_INIT=systemd) with systemd as
#     PID 1;
#   stage 2 (argument "stage2"; PID 1 in the new root): the usual API filesystems, lo, module
#     directory, then the command (as root, in the checkout), its exit code to the run directory, and
#     power off.
#   systemd (LAB_INIT=systemd): stage 1 also binds the modules, installs the tools and writes a unit
#     set into a fresh /etc/systemd/system (the host's enabled units do not apply): the default target
#     kitnet-lab.target is basic.target plus kitnet-lab.service, which runs this script with the
#     argument "command" (the command, its exit code, power off, as stage 2 does). systemd mounts the
#     API filesystems itself (bpffs, cgroup2, tracefs, debugfs included).
# The run directory (9p tag "labrun", at /run/lab inside) holds `config` and `env` (shell assignments
# written by run.sh), `cmd` (the command as a bash script) and receives `exit-code` and `boot-seconds`.
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
  # node_modules and dist: read-only and cached (run.sh shares them as code0, code1, ...)
  i=0
  for d in ${LAB_CODE_DIRS:-}; do
    mount -t 9p -o "$P9,ro,cache=loose" "code$i" "/newroot$LAB_WORKTREE/$d" || fail "mounting $d (code$i) failed"
    i=$((i + 1))
  done
  cp /bin/busybox /newroot/run/.lab/busybox
  cp /init /newroot/run/.lab/init
  if [ "${LAB_INIT:-busybox}" = systemd ]; then
    systemd_prepare
    umount /proc /sys /dev 2>/dev/null
    exec switch_root /newroot /lib/systemd/systemd
    fail "switch_root to systemd failed"
  fi
  umount /proc /sys /dev 2>/dev/null
  exec switch_root /newroot /run/.lab/busybox sh /run/.lab/init stage2
  fail "switch_root failed"
}

# Modules and the backports tools, from stage 2 (ROOT "") or for systemd from stage 1 (ROOT /newroot).
modules_tools_install() {
  root=$1
  # the guest kernel's modules (depmod'ed by fetch.sh), for the kernel's own modprobe calls too
  $bb mkdir -p "$root/lib/modules"
  $bb mount --bind "$root$LAB_MODULES" "$root/lib/modules" || fail "binding $LAB_MODULES on /lib/modules failed"
  # iproute2/bpftool from backports over the host's (in the tmpfs upper layer: fast to exec, and found
  # by absolute paths such as /usr/sbin/bpftool too)
  for d in bin sbin usr/bin usr/sbin usr/lib usr/share/iproute2; do
    [ -d "$root$LAB_TOOLS/$d" ] || continue
    $bb mkdir -p "$root/$d" && $bb cp -af "$root$LAB_TOOLS/$d/." "$root/$d/" || fail "installing $LAB_TOOLS/$d failed"
  done
}

# Units that cost boot time and do nothing useful in a throwaway VM without disks, network services,
# users or logins (each is one exec or more under TCG, 20-50x slower than on the host). Kept as on a
# real host: journald, and kmod-static-nodes + tmpfiles-setup-dev (device nodes such as /dev/net/tun
# whose first open loads the module: there is no udev, and the kitnet unit cannot load modules).
SYSTEMD_MASK="systemd-firstboot.service systemd-repart.service systemd-pcrphase.service
  systemd-pcrphase-sysinit.service systemd-random-seed.service systemd-binfmt.service
  proc-sys-fs-binfmt_misc.automount systemd-machine-id-commit.service systemd-modules-load.service
  systemd-sysusers.service systemd-update-utmp.service
  systemd-journal-flush.service systemd-journald-audit.socket systemd-hwdb-update.service
  systemd-update-done.service systemd-ask-password-console.path systemd-ask-password-wall.path
  dev-hugepages.mount sys-fs-fuse-connections.mount sys-kernel-config.mount systemd-pstore.service
  systemd-timesyncd.service systemd-tmpfiles-clean.timer systemd-udev-settle.service
  systemd-tmpfiles-setup.service systemd-sysctl.service dev-mqueue.mount
  ldconfig.service systemd-journal-catalog-update.service
  systemd-networkd-wait-online.service getty.target serial-getty@.service getty@.service
  console-getty.service systemd-logind.service
  apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer
  dpkg-db-backup.timer"

systemd_prepare() {
  bb=/bin/busybox
  modules_tools_install /newroot
  echo kitnet-lab > /newroot/etc/hostname
  # The host root may come from a container image and carry /.dockerenv: systemd would then believe it
  # runs in a docker container and skip kernel-facing setup (bpffs on /sys/fs/bpf, among others).
  rm -f /newroot/.dockerenv
  # A unit directory of our own: what the host enabled (databases, timers, gettys) stays off.
  mount -t tmpfs -o mode=0755 tmpfs /newroot/etc/systemd/system || fail "tmpfs on /etc/systemd/system failed"
  u=/newroot/etc/systemd/system
  for m in $SYSTEMD_MASK; do ln -sf /dev/null "$u/$m"; done
  # No generators: no fstab (the host's), gettys, sysv scripts, cryptsetup; also faster daemon-reloads.
  mkdir -p /newroot/etc/systemd/system-generators
  for g in /newroot/usr/lib/systemd/system-generators/*; do
    ln -sf /dev/null "/newroot/etc/systemd/system-generators/${g##*/}"
  done
  mkdir -p /newroot/etc/systemd/journald.conf.d
  printf '[Journal]\nStorage=volatile\n' > /newroot/etc/systemd/journald.conf.d/lab.conf
  cat > "$u/kitnet-lab.target" <<'UNIT'
[Unit]
Description=kitnet lab: the command under systemd
Requires=basic.target
After=basic.target
Wants=kitnet-lab.service
AllowIsolate=yes
UNIT
  cat > "$u/kitnet-lab.service" <<'UNIT'
[Unit]
Description=kitnet lab command (/run/lab/cmd)
After=basic.target systemd-journald.service
# the command never started (or its runner died): power off rather than wait for the VM timeout
FailureAction=poweroff-force
[Service]
Type=exec
ExecStart=/run/.lab/busybox sh /run/.lab/init command
StandardInput=null
StandardOutput=journal+console
TimeoutStartSec=infinity
UNIT
  ln -sf kitnet-lab.target "$u/default.target"
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
  modules_tools_install ""
  $bb hostname "kitnet-lab"
  $bb ip link set lo up
  [ -x /sbin/modprobe ] && echo /sbin/modprobe > /proc/sys/kernel/modprobe
  command_run
}

# The command with the clean environment, output on the serial line, exit code to the run directory,
# power off. PID 1 in stage 2; under systemd, kitnet-lab.service.
command_run() {
  bb=/run/.lab/busybox
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
  command) . /run/lab/config && command_run ;;
  *) stage1 ;;
esac
