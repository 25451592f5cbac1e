import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface InstallOptions {
  /** Prefix for every written file (tests install into a scratch root); '' = the real system. */
  root: string;
  /** Enable and start the unit with systemctl (only when PID 1 is systemd and root is ''). */
  enable: boolean;
  log: (line: string) => void;
  /** The checkout the unit runs and the node binary; default: this checkout and this node (tests set them). */
  checkout?: string;
  node?: string;
}

const checkout = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export const DEFAULT_CONFIG = `# kitnet agent configuration. Every key is optional; \`kitnet config check FILE\` validates a file.
# nodeName: host-a
logLevel: info
stateDir: /var/lib/kitnet
bpfPinRoot: /sys/fs/bpf/kitnet
api:
  socket: /run/kitnet/kitnet.sock
ipam:
  ipv4Pool: 10.200.0.0/16
  ipv6Pool: fd00:200::/64
datapath:
  mode: auto
flows:
  ringCapacity: 4095
`;

function pid1IsSystemd(): boolean {
  try {
    return readFileSync('/proc/1/comm', 'utf8').trim() === 'systemd';
  } catch {
    return false;
  }
}

function groupExists(root: string, name: string): boolean {
  try {
    return readFileSync(join(root || '/', 'etc/group'), 'utf8').split('\n').some((l) => l.startsWith(`${name}:`));
  } catch {
    return false;
  }
}

const under = (path: string, dirs: string[]) => dirs.find((d) => path === d || path.startsWith(`${d}/`));

/**
 * The unit for a checkout and a node binary. The sandbox must still let the service read both:
 * ProtectHome=yes makes /home, /root and /run/user inaccessible (a checkout in root's home is common),
 * so it becomes read-only there; PrivateTmp=yes gives the service its own /tmp and /var/tmp, so a
 * checkout there (a CI clone) is bound into it read-only. Each change is logged.
 */
export function unitRender(template: string, checkout: string, node: string, log: (line: string) => void): string {
  let unit = template.replaceAll('@KITNET_ROOT@', checkout).replaceAll('@NODE@', node);
  const paths = [checkout, node];
  const home = paths.filter((p) => under(p, ['/home', '/root', '/run/user']));
  if (home.length) {
    unit = unit.replace(/^ProtectHome=yes$/m, 'ProtectHome=read-only');
    log(`${home.join(' and ')} under a home directory: ProtectHome=read-only instead of yes, so that the service can read it`);
  }
  const tmp = paths.filter((p) => under(p, ['/tmp', '/var/tmp']));
  if (tmp.length) {
    unit = unit.replace(/^PrivateTmp=yes$/m, `PrivateTmp=yes\n# ${tmp.join(' and ')} under /tmp: visible in the private /tmp, read-only\nBindReadOnlyPaths=${tmp.join(' ')}`);
    log(`${tmp.join(' and ')} under /tmp, which the service sees privately (PrivateTmp=yes): bound in read-only; a permanent place such as /opt/kitnet is better`);
  }
  return unit;
}

/**
 * Installs kitnet as a systemd service: the unit (pointing at this checkout), a default config when
 * none exists, and the `kitnet` group whose members may use the API socket; then enables and starts it.
 * Idempotent: an existing config is never overwritten.
 */
export function install(opts: InstallOptions): void {
  const at = (p: string) => join(opts.root || '/', p);
  const from = opts.checkout ?? checkout;
  const unit = unitRender(readFileSync(join(checkout, 'packaging/kitnet.service'), 'utf8'), from, opts.node ?? process.execPath, opts.log);
  mkdirSync(at('etc/systemd/system'), { recursive: true });
  writeFileSync(at('etc/systemd/system/kitnet.service'), unit);
  opts.log(`wrote ${at('etc/systemd/system/kitnet.service')}`);
  mkdirSync(at('etc/kitnet'), { recursive: true, mode: 0o755 });
  if (existsSync(at('etc/kitnet/config.yaml'))) {
    opts.log(`kept existing ${at('etc/kitnet/config.yaml')}`);
  } else {
    writeFileSync(at('etc/kitnet/config.yaml'), DEFAULT_CONFIG, { mode: 0o644 });
    opts.log(`wrote ${at('etc/kitnet/config.yaml')}`);
  }
  if (!groupExists(opts.root, 'kitnet')) {
    if (opts.root) {
      opts.log('skipped creating group kitnet (scratch root)');
    } else {
      execFileSync('groupadd', ['--system', 'kitnet'], { stdio: 'inherit' });
      opts.log('created system group kitnet (members may use the API socket)');
    }
  }
  if (opts.root || !opts.enable) {
    opts.log('not enabling the service; run: systemctl daemon-reload && systemctl enable --now kitnet');
    return;
  }
  if (!pid1IsSystemd()) {
    opts.log('PID 1 is not systemd here; start the agent with `kitnet agent` or under your init system');
    return;
  }
  execFileSync('systemctl', ['daemon-reload'], { stdio: 'inherit' });
  execFileSync('systemctl', ['enable', '--now', 'kitnet'], { stdio: 'inherit' });
  opts.log('kitnet enabled and started: systemctl status kitnet, journalctl -u kitnet');
}
