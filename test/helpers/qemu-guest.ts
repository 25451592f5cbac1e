import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, waitFor } from './sys.js';

const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const LAB_CACHE = process.env.KITNET_LAB_CACHE ?? join(REPO, '.cache/lab');

export interface LabKernel {
  vmlinuz: string;
  kver: string;
  /** The directory holding lib/modules/KVER. */
  modroot: string;
}

/** The lab's 6.12 kernel (vmlinuz + modules), fetched with the lab's own (idempotent) step if missing. */
export async function labKernel(): Promise<LabKernel> {
  const resolved = () => {
    const env = join(LAB_CACHE, 'resolved.env');
    if (!existsSync(env)) return undefined;
    const dir = /^KERNEL_DIR_6_12=(.*)$/m.exec(readFileSync(env, 'utf8'))?.[1];
    return dir && existsSync(join(dir, 'vmlinuz')) && existsSync(join(dir, 'kver')) ? dir : undefined;
  };
  let kdir = resolved();
  if (!kdir) {
    await run('bash', [join(REPO, 'test/lab/fetch.sh'), '6.12'], { timeoutMs: 900_000 });
    kdir = resolved();
    if (!kdir) throw new Error(`test/lab/fetch.sh 6.12 ran but ${LAB_CACHE}/resolved.env names no usable 6.12 kernel`);
  }
  const kver = readFileSync(join(kdir, 'kver'), 'utf8').trim();
  const modules = realpathSync(join(kdir, 'modules'));
  return { vmlinuz: join(kdir, 'vmlinuz'), kver, modroot: dirname(dirname(modules)) };
}

/**
 * Debian unstable's static busybox (1.38), which has udhcpc6 (Debian 12's busybox builds lack it),
 * fetched by the lab's own (idempotent) step if missing; returns the binary's path.
 */
export async function labBusyboxWithUdhcpc6(): Promise<string> {
  const resolved = () => {
    const env = join(LAB_CACHE, 'resolved.env');
    const dir = existsSync(env) ? /^BUSYBOX_SID_DIR=(.*)$/m.exec(readFileSync(env, 'utf8'))?.[1] : undefined;
    return dir && existsSync(join(dir, '.done')) ? join(dir, 'usr/bin/busybox') : undefined;
  };
  let bin = resolved();
  if (!bin) {
    await run('bash', [join(REPO, 'test/lab/fetch.sh'), '6.12'], { timeoutMs: 900_000 });
    bin = resolved();
    if (!bin) throw new Error(`test/lab/fetch.sh 6.12 ran but ${LAB_CACHE}/resolved.env names no busybox with udhcpc6`);
  }
  return bin;
}

/**
 * The start of every guest's /init: busybox applets, API filesystems, virtio_net from /modules, lo up,
 * no duplicate address detection (nothing else is on the link, and a tentative link-local address would
 * delay router solicitations and DHCPv6), then waits for eth0. `$IP` is the real iproute2 (busybox sh
 * runs its own applets before PATH, and busybox's ip lacks nodad, nud permanent and -j).
 */
export const GUEST_INIT_PRELUDE = `#!/bin/busybox sh
/bin/busybox mkdir -p /bb
/bin/busybox --install -s /bb
export PATH=/usr/sbin:/bb
IP=/usr/sbin/ip
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /tmp /run /var/lib/dhcp
for m in $(cat /modules/order); do insmod /modules/$m; done
arg() { tr ' ' '\\n' < /proc/cmdline | sed -n "s/^kn\\.$1=//p"; }
echo "KN-BOOTED $(uname -r) $($IP -V)"
$IP link set lo up
echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad
i=0; while ! $IP link show eth0 >/dev/null 2>&1 && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
`;

/**
 * An initramfs: static busybox as /bin/busybox, `init` as /init, virtio_net (and what it needs) from the
 * kernel's modules in load order, and `binaries` (absolute paths) at the same paths with the shared
 * libraries ldd names, plus `files` (path -> content, executable).
 */
export async function initramfsBuild(dir: string, kernel: LabKernel, o: { init: string; binaries: string[]; files?: Record<string, string> }): Promise<string> {
  const root = join(dir, 'root');
  for (const d of ['bin', 'proc', 'sys', 'dev', 'modules']) mkdirSync(join(root, d), { recursive: true });
  const place = (from: string, to: string) => {
    mkdirSync(dirname(join(root, to)), { recursive: true });
    copyFileSync(realpathSync(from), join(root, to));
    chmodSync(join(root, to), 0o755);
  };
  place('/bin/busybox', '/bin/busybox');
  for (const bin of o.binaries) {
    place(bin, bin);
    for (const m of (await run('ldd', [bin])).matchAll(/(\/\S+\.so[^\s]*)/g)) place(m[1]!, m[1]!);
  }
  for (const [path, content] of Object.entries(o.files ?? {})) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), content, { mode: 0o755 });
  }
  const deps = await run('modprobe', ['-d', kernel.modroot, '-S', kernel.kver, '--show-depends', '-a', 'virtio_net']);
  const order: string[] = [];
  for (const line of deps.split('\n')) {
    const path = /^insmod (\S+)/.exec(line)?.[1];
    if (!path) continue;
    const name = basename(path).replace(/\.(xz|zst|gz)$/, '');
    if (order.includes(name)) continue;
    const dest = join(root, 'modules', name);
    if (path.endsWith('.xz')) await run('sh', ['-c', `xz -dc "$1" > "$2"`, 'sh', path, dest]);
    else if (path.endsWith('.zst')) await run('sh', ['-c', `zstd -qdc "$1" > "$2"`, 'sh', path, dest]);
    else if (path.endsWith('.gz')) await run('sh', ['-c', `gzip -dc "$1" > "$2"`, 'sh', path, dest]);
    else copyFileSync(path, dest);
    order.push(name);
  }
  writeFileSync(join(root, 'modules/order'), `${order.join('\n')}\n`);
  writeFileSync(join(root, 'init'), o.init, { mode: 0o755 });
  const out = join(dir, 'initramfs.cpio.gz');
  await run('sh', ['-c', `cd "$1" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > "$2"`, 'sh', root, out]);
  return out;
}

/** A running guest: its serial console so far, and its exit. */
export interface QemuGuest {
  readonly output: () => string;
  /** Resolves with the console line that starts with `marker` (rejects if the guest exits or the time is up). */
  line(marker: string, timeoutMs: number): Promise<string>;
  readonly exited: Promise<number | null>;
  kill(): void;
}

/**
 * Boots a TCG guest in `netns` (where kitnet put the VM's tap) with `netdev` (the workload's
 * `qemuNetdev`); the serial console is stdio. The process group is killed by `kill()`, which the
 * caller must call in its cleanup.
 */
export function qemuBoot(o: { netns: string; netdev: string; kernel: LabKernel; initrd: string; append: string[] }): QemuGuest {
  // no option ROM: iPXE would only cost boot time
  const netdev = o.netdev.split(' ').map((a) => (a.startsWith('virtio-net-pci,') ? `${a},romfile=` : a));
  const append = ['console=ttyS0', 'quiet', 'panic=-1', 'rdinit=/init', ...o.append].join(' ');
  const args = ['netns', 'exec', o.netns, 'qemu-system-x86_64', '-accel', 'tcg', '-M', 'pc', '-cpu', 'max', '-m', '256', '-smp', '1',
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-serial', 'stdio',
    '-kernel', o.kernel.vmlinuz, '-initrd', o.initrd, '-append', append, ...netdev];
  let out = '';
  let proc: ChildProcess;
  const exited = new Promise<number | null>((resolve, reject) => {
    proc = spawn('ip', args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    proc.on('error', reject);
    proc.on('exit', (code) => resolve(code));
  });
  let done = false;
  void exited.finally(() => (done = true)).catch(() => undefined);
  // complete lines only: the last piece may still be arriving
  const find = (marker: string) => out.split('\n').slice(0, -1).find((l) => l.startsWith(marker))?.replace(/\r$/, '');
  return {
    output: () => out,
    exited,
    async line(marker, timeoutMs) {
      const l = await waitFor(`"${marker}" on the guest's console`, async () => find(marker) ?? (done ? 'EXITED' : undefined), timeoutMs)
        .catch((err: Error) => { throw new Error(`${err.message}; console:\n${out.slice(-4000)}`); });
      if (l === 'EXITED') throw new Error(`the guest exited before "${marker}"; console:\n${out.slice(-4000)}`);
      return l;
    },
    kill() {
      if (proc?.pid !== undefined && !done) {
        try {
          process.kill(-proc.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    },
  };
}
