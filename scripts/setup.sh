#!/usr/bin/env bash
# Prepares this checkout to run kitnet: Debian packages (only when missing), npm packages (only when the
# lock file changed), the BPF object and native addon, and the TypeScript build. Idempotent and quick
# on a ready machine. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[setup] %s\n' "$*" >&2; }

# Node 20 or newer (package.json engines): Debian 12's own nodejs is 18, too old; say so before anything
# else fails on it.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  log "error: kitnet needs Node.js 20 or newer; this machine has $(node --version 2>/dev/null || echo 'no node')."
  log "Debian 12's nodejs package is 18: install Node 20 (e.g. NodeSource's nodejs 20 for Debian 12, or the"
  log "official linux-x64 tarball from nodejs.org unpacked under /usr/local), then run this again."
  exit 1
fi

# qemu-system-x86, busybox-static, kmod, cpio, zstd: the lab VM that runs the tests on netkit kernels (test/lab),
# zstd also for the kernel facts of netkit/uapi.facts.json (tools/gen/netkit-uapi.ts).
# etcd-server: the real etcd the cluster-mode tests start (test/helpers/etcd.ts); etcd-client: etcdctl, which
# the ClusterMesh test reads the kvstore with, as an operator would.
# isc-dhcp-client: dhclient -4/-6 as a real guest client in test/root/vm-dhcp6.test.ts.
# dnsmasq-base: the resolver of the DNS policy tests (Debian's dnsmasq binary without the host-wide service
# that the `dnsmasq` package enables on port 53; test/root/dns-policy.test.ts). systemd: its
# systemd-networkd is a VM guest's DHCP/RA client in test/root/vm-networkd.test.ts (container images lack it).
apt_packages=(clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool iproute2 iputils-ping make g++ python3 pkg-config
  qemu-system-x86 busybox-static kmod cpio zstd etcd-server etcd-client isc-dhcp-client dnsmasq-base systemd)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# BPF pins live on bpffs; containers and minimal hosts often lack the mount.
if [ "$(id -u)" = 0 ] && ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

stamp=node_modules/.kitnet-lock-sha
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -L node_modules ] && { [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; }; then
  # A git worktree sharing another checkout's packages: npm ci would empty that checkout's tree.
  echo "[setup] node_modules is a symlink to $(readlink -f node_modules) and does not match this package-lock.json;" >&2
  echo "[setup] run npm ci in the checkout it points to (or replace the link with a directory)" >&2
  exit 1
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

if [ -f bpf/build.sh ]; then
  bash bpf/build.sh
fi

log "compiling TypeScript"
npx tsc -p tsconfig.json
log "ready"
