#!/usr/bin/env bash
# Runs a command as root inside a throwaway QEMU (TCG) VM booted with a netkit-capable kernel.
#
# usage: test/lab/run.sh KERNEL [options] -- CMD [ARGS...]
#   KERNEL   6.12 (bookworm-backports) | unstable (Debian unstable's newest kernel)
#   CMD      run in the checkout directory (the caller's directory when inside the checkout); a single
#            argument containing whitespace is run with `bash -c`, so shell operators can be quoted:
#              test/lab/run.sh 6.12 -- 'ip link add nk0 type netkit peer name nk1 && ip -d link show nk0'
# options (or environment):
#   --timeout S   KITNET_LAB_TIMEOUT   seconds before a hung VM is killed (default 600)
#   --mem MIB     KITNET_LAB_MEM       guest memory (default 2048)
#   --cpus N      KITNET_LAB_CPUS      vCPUs (default 2)
#   --verbose     KITNET_LAB_VERBOSE=1 kernel messages on the console and the QEMU command line
#   --init I      KITNET_LAB_INIT      busybox (default: a shell script as PID 1 runs CMD) or systemd
#                                      (the host's systemd as PID 1 runs CMD as kitnet-lab.service;
#                                      KITNET_EXPECT_SYSTEMD=1 inside)
#
# The guest sees the host's / read-only (9p, tmpfs overlay on top, so writes outside the work tree are
# thrown away), the checkout read-write at the same path, the guest kernel's modules at /lib/modules,
# iproute2/bpftool from bookworm-backports first on PATH. CI, NO_COLOR, FORCE_COLOR, TERM and KITNET_*
# variables pass through; inside, KITNET_LAB=<KERNEL>, KITNET_LAB_KERNEL=<uname -r>, and
# KITNET_EXPECT_NETKIT=1 when the kernel's config has CONFIG_NETKIT=y.
# Exit status: CMD's; 124 when the VM timed out; 125 when the VM died without reporting one.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
kernel=$1; shift
case "$kernel" in 6.12|unstable) ;; -h|--help) usage ;; *) lab_die "unknown kernel '$kernel' (6.12 | unstable)" ;; esac
timeout_s=${KITNET_LAB_TIMEOUT:-600}
mem=${KITNET_LAB_MEM:-2048}
cpus=${KITNET_LAB_CPUS:-2}
verbose=${KITNET_LAB_VERBOSE:-0}
init=${KITNET_LAB_INIT:-busybox}
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --verbose) verbose=1; shift ;;
    --init) init=$2; shift 2 ;;
    *) usage ;;
  esac
done
[ $# -ge 1 ] || usage
case "$init" in
  busybox) ;;
  systemd) [ -x /lib/systemd/systemd ] || lab_die "--init systemd needs systemd on this host (/lib/systemd/systemd; apt-get install systemd)" ;;
  *) lab_die "unknown init '$init' (busybox | systemd)" ;;
esac

bash "$LAB_DIR/fetch.sh" "$kernel"
kdir=$(sed -n "s/^KERNEL_DIR_${kernel//./_}=//p" "$LAB_CACHE/resolved.env" | tail -1)
tools=$(sed -n 's/^TOOLS_DIR=//p' "$LAB_CACHE/resolved.env" | tail -1)
kver=$(cat "$kdir/kver")
modules=$(realpath "$kdir/modules")
modroot=$(dirname "$(dirname "$modules")")

# --- initramfs: busybox, the init script, the few modules needed to reach the 9p root ----------
initramfs() {
  local want=(9pnet_virtio 9p overlay virtio_pci virtio_rng)
  local key
  key=$( { cat "$LAB_DIR/guest-init.sh"; dpkg-query -W -f='${Version}' busybox-static; echo "$kver ${want[*]}"; } |
    sha256sum | cut -c1-12)
  local out=$LAB_CACHE/initramfs/$kver-$key.cpio.gz
  if [ -f "$out" ]; then echo "$out"; return; fi
  lab_log "building initramfs for $kver"
  local tmp; tmp=$(mktemp -d "$LAB_CACHE/.initramfs.XXXXXX")
  mkdir -p "$tmp/bin" "$tmp/modules" "$tmp/proc" "$tmp/sys" "$tmp/dev"
  cp /bin/busybox "$tmp/bin/busybox"
  install -m 0755 "$LAB_DIR/guest-init.sh" "$tmp/init"
  local line path name
  : > "$tmp/modules/order"
  while read -r line; do
    case "$line" in
      insmod\ *)
        path=$(echo "$line" | awk '{print $2}')
        name=$(basename "$path"); name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
        grep -qx "$name" "$tmp/modules/order" && continue
        case "$path" in
          *.xz) xz -dc "$path" > "$tmp/modules/$name" ;;
          *.zst) zstd -qdc "$path" > "$tmp/modules/$name" ;;
          *.gz) gzip -dc "$path" > "$tmp/modules/$name" ;;
          *) cp "$path" "$tmp/modules/$name" ;;
        esac
        echo "$name" >> "$tmp/modules/order" ;;
    esac
  done < <(modprobe -d "$modroot" -S "$kver" --show-depends -a "${want[@]}")
  mkdir -p "$(dirname "$out")"
  (cd "$tmp" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
  echo "$out"
}
initrd=$(initramfs)

# --- the run directory, shared with the guest as "labrun" ---------------------------------------
mkdir -p "$LAB_CACHE/runs"
run=$(mktemp -d "$LAB_CACHE/runs/$kernel.XXXXXX")
qpid=
cleanup() {
  [ -n "$qpid" ] && kill "$qpid" 2>/dev/null
  [ "${KITNET_LAB_KEEP_RUN:-0}" = 1 ] || rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The trees the tests load code from (node_modules, dist) get read-only shares of their own, cached
# aggressively (cache=loose) and mounted over the work tree's copies: node stats and opens thousands
# of files to import the agent, and through the work tree's coherent cache mode each is a 9p round
# trip (importing the agent took ~120 s under TCG; ~40 s this way). Rebuild before a run, not during.
code_dirs=()
# A symlinked tree (a worktree's node_modules pointing at the main checkout's) cannot be mounted over:
# it resolves through the host root share, which is cached the same way.
for d in node_modules dist; do [ -d "$REPO_DIR/$d" ] && [ ! -L "$REPO_DIR/$d" ] && code_dirs+=("$d"); done

workdir=$REPO_DIR
case "$PWD/" in "$REPO_DIR"/*) workdir=$PWD ;; esac
q() { printf '%q' "$1"; }
{
  echo "LAB_WORKTREE=$(q "$REPO_DIR")"
  echo "LAB_MODULES=$(q "$modules")"
  echo "LAB_TOOLS=$(q "$tools")"
  echo "LAB_WORK_CACHE=$(q "${KITNET_LAB_WORK_CACHE:-mmap}")"
  echo "LAB_INIT=$(q "$init")"
  echo "LAB_CODE_DIRS=$(q "${code_dirs[*]}")"
} > "$run/config"
{
  path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  echo "export PATH=$(q "$path") HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8"
  # the serial line is a terminal, but nobody reads a pager there
  echo "export SYSTEMD_PAGER=cat PAGER=cat"
  echo "export KITNET_LAB=$(q "$kernel") KITNET_LAB_KERNEL=$(q "$kver") KITNET_LAB_INIT=$(q "$init")"
  [ "$init" = systemd ] && echo "export KITNET_EXPECT_SYSTEMD=1"
  grep -q '^CONFIG_NETKIT=y' "$kdir/config" 2>/dev/null && echo "export KITNET_EXPECT_NETKIT=1"
  # colours only when the caller's output is a terminal (the guest's is always the serial line)
  [ -t 1 ] || [ -n "${FORCE_COLOR:-}" ] || echo "export NO_COLOR=1"
  while IFS= read -r var; do
    echo "export $var=$(q "${!var}")"
  done < <(compgen -e | grep -E '^(CI|NO_COLOR|FORCE_COLOR|TERM|KITNET_[A-Z0-9_]+)$' | grep -vE '^KITNET_LAB_(TIMEOUT|MEM|CPUS|VERBOSE|CACHE|MIRROR|KEEP_RUN|MAX_AGE_DAYS|INIT)$')
} > "$run/env"
{
  echo "cd $(q "$workdir") || exit 125"
  if [ $# -eq 1 ] && [[ "$1" =~ [[:space:]] ]]; then
    echo "exec bash -c $(q "$1")"
  else
    printf 'exec'; printf ' %q' "$@"; echo
  fi
} > "$run/cmd"

# --- boot -----------------------------------------------------------------------------------------
# The command's output goes to the serial line (our stdout); kernel messages go to a virtio console
# logged to a file, shown on failure (with --verbose they share the serial line instead).
append="panic=-1 oops=panic rdinit=/init ${KITNET_LAB_APPEND:-}"
if [ "$verbose" = 1 ]; then append+=" console=ttyS0 loglevel=7"; else append+=" console=hvc0 loglevel=4"; fi
p9() { # ID PATH TAG [readonly]
  echo "-fsdev local,id=$1,path=$2,security_model=none,multidevs=remap${4:+,readonly=on}"
  echo "-device virtio-9p-pci,fsdev=$1,mount_tag=$3"
}
qemu=(qemu-system-x86_64 -accel tcg,thread=multi -cpu "${KITNET_LAB_QEMU_CPU:-max}" -M q35 -m "$mem" -smp "$cpus"
  -nodefaults -no-user-config -display none -no-reboot
  -chardev stdio,id=con,signal=on -serial chardev:con
  -kernel "$kdir/vmlinuz" -initrd "$initrd" -append "$append"
  -device virtio-serial-pci -chardev file,id=klog,path="$run/console.log" -device virtconsole,chardev=klog
  -device virtio-rng-pci
  $(p9 fsroot / hostroot ro) $(p9 fswork "$REPO_DIR" work) $(p9 fsrun "$run" labrun))
for i in "${!code_dirs[@]}"; do qemu+=($(p9 "fscode$i" "$REPO_DIR/${code_dirs[$i]}" "code$i" ro)); done
[ "$verbose" = 1 ] && lab_log "${qemu[*]}"
# A guest kernel that dies during early boot, before init ran anything of ours, is the emulator's
# failure, not the tests' (multi-threaded TCG occasionally leaves an int3 of the kernel's own
# text patching behind: "Oops: int3" in sched_clock_cpu at ~1.8 s). Such a boot (no boot-seconds
# written: the command never started) is tried once more, and said. So is a guest kernel that
# panicked later (its console says "Kernel panic - not syncing"; seen once in the 6.12-systemd job:
# RIP in the middle of a jmp in __netif_receive_skb_core, a half-patched static branch): the whole
# command runs again in a fresh VM, and a panic that comes back fails the job.
boots=0
while :; do
  boots=$((boots + 1))
  lab_log "booting $kernel ($kver, init $init), $cpus vCPUs, $mem MiB, timeout ${timeout_s}s: $*"
  start=$(date +%s.%N)
  set +e
  timeout -k 10 "$timeout_s" "${qemu[@]}" < /dev/null &
  qpid=$!
  wait "$qpid"
  qrc=$?
  qpid=
  set -e
  if [ "$boots" -lt 2 ] && [ "$qrc" != 124 ] && [ "$qrc" != 137 ] && [ ! -s "$run/exit-code" ]; then
    if [ ! -e "$run/boot-seconds" ]; then
      tail -n 12 "$run/console.log" 2>/dev/null | sed 's/^/[lab]   | /' >&2
      lab_log "the $kernel guest kernel died before userspace started (qemu status $qrc; kernel log above): booting it once more"
      continue
    fi
    if grep -q 'Kernel panic - not syncing' "$run/console.log" 2>/dev/null; then
      tail -n 40 "$run/console.log" | sed 's/^/[lab]   | /' >&2
      cp "$run/console.log" "$LAB_CACHE/panic-console-${KITNET_LAB_JOB:-$kernel}.txt" 2>/dev/null || :
      lab_log "the $kernel guest kernel panicked after $(cat "$run/boot-seconds")s of userspace (qemu status $qrc; kernel log above, all of it in $LAB_CACHE/panic-console-${KITNET_LAB_JOB:-$kernel}.txt): running the command once more in a fresh VM"
      rm -f "$run/boot-seconds"
      continue
    fi
  fi
  break
done
secs=$(echo "$(date +%s.%N) - $start" | bc)
boot=$(cat "$run/boot-seconds" 2>/dev/null || echo '?')
klog=$LAB_CACHE/last-console-${KITNET_LAB_JOB:-$kernel}.txt
cp "$run/console.log" "$klog" 2>/dev/null || : > "$klog"
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  lab_log "TIMEOUT: the $kernel VM was still running after ${timeout_s}s and was killed (KITNET_LAB_TIMEOUT / --timeout)"
  exit 124
fi
if [ ! -s "$run/exit-code" ]; then
  tail -n 40 "$klog" | sed 's/^/[lab]   | /' >&2
  lab_log "the $kernel VM stopped (qemu status $qrc) without reporting an exit code: kernel panic or init failure? (kernel log above, all of it in $klog)"
  exit 125
fi
rc=$(cat "$run/exit-code")
printf '[lab] %s: exit %s after %.1fs (guest userspace up at %ss; kernel log in %s)\n' "$kernel" "$rc" "$secs" "$boot" "$klog" >&2
exit "$rc"
