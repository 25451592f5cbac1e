// Turns the addon's raw errors into KernelError (common/kernel-error.ts) with an operator hint.
import { release } from 'node:os';
import type { DeviceRef } from '../common/kernel-error.js';
import { KernelError, UnsupportedFeatureError, errnoNumber } from '../common/kernel-error.js';

interface RawNativeError extends Error {
  errno?: number;
  code?: string;
  op?: string;
  libbpfLog?: string;
}

/** The verifier rejected a program: `log` has libbpf's output including the verifier log. */
export class VerifierError extends KernelError {
  readonly log: string;
  constructor(init: ConstructorParameters<typeof KernelError>[0], log: string) {
    super(init);
    this.name = 'VerifierError';
    this.log = log;
  }
}

export function kernelAtLeast(want: string): boolean {
  const [a = 0, b = 0] = release().split(/[.-]/).map(Number);
  const [x = 0, y = 0] = want.split('.').map(Number);
  return a > x || (a === x && b >= y);
}

const PERM_HINT = 'run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)';
const BPFFS_HINT = 'is bpffs mounted on /sys/fs/bpf? (mount -t bpf bpf /sys/fs/bpf)';

function logTail(log: string, lines: number): string {
  return log
    .split('\n')
    .map((l) => l.trimEnd())
    .filter(Boolean)
    .slice(-lines)
    .join(' | ');
}

/** The map a write went to, for the hint of a full map. */
export interface MapRef {
  name: string;
  maxEntries: number;
}

/** What an operator can do about a full map, naming it and the constant that sizes it. */
function mapFullHint(map: MapRef | undefined): string {
  if (!map) return 'the map is full (max_entries in tools/gen/bpf-layout/constants.ts)';
  return `the \`${map.name}\` map is full (max_entries ${map.maxEntries}): free entries (fewer policies x peers x ports, workloads or CIDRs) or raise ${map.name.toUpperCase()}_MAP_MAX in tools/gen/bpf-layout/constants.ts (then remove the pinned map, <pinRoot>/maps/${map.name}, before the agent starts)`;
}

type ErrorCtx = { path?: string; attach?: 'tcx' | 'netkit'; map?: MapRef };

function hintFor(op: string, code: string, log: string, ctx: ErrorCtx): string | undefined {
  if (code === 'EPERM' || (code === 'EACCES' && op !== 'BPF_PROG_LOAD')) return PERM_HINT;
  switch (op) {
    case 'BPF_OBJECT_OPEN':
      if (code === 'ENOENT') return `BPF object ${ctx.path ?? ''} missing: run \`bash bpf/build.sh\``;
      return log ? `libbpf: ${logTail(log, 3)}` : undefined;
    case 'BPF_PROG_LOAD':
      if (/couldn't reuse pinned map|parameter mismatch/.test(log))
        return `a pinned map's definition differs from this object's (layout or size changed): remove the old pins (datapathUnpinAll or rm -r <pinRoot>/maps) — ${logTail(log, 2)}`;
      if (code === 'ENOENT' && /pin/.test(log)) return BPFFS_HINT;
      return log ? `verifier/libbpf: ${logTail(log, 6)}` : undefined;
    case 'BPF_OBJ_PIN':
    case 'BPF_OBJ_GET':
      if (code === 'ENOENT') return BPFFS_HINT;
      if (code === 'EEXIST') return `a pin already exists at ${ctx.path ?? 'that path'}`;
      return undefined;
    case 'BPF_LINK_CREATE':
      if (code === 'ENODEV') return 'the device is gone';
      if (ctx.attach === 'netkit') return 'is the device a netkit primary? netkit needs Linux >= 6.7 with CONFIG_NETKIT';
      if (code === 'EEXIST') return 'a program is already attached in a mode that excludes others';
      return undefined;
    case 'BPF_LINK_UPDATE':
      if (code === 'ENOLINK') return 'the link was detached (device gone): unpin it and attach again';
      return undefined;
    case 'BPF_MAP_LOOKUP_BATCH':
      if (code === 'EINVAL' || code === 'EOPNOTSUPP') return 'this kernel has no batch lookups for this map type (Linux >= 5.6): read it key by key (mapDump)';
      return undefined;
    case 'BPF_MAP_UPDATE_ELEM':
    case 'BPF_MAP_UPDATE_BATCH':
      if (code === 'E2BIG' || code === 'ENOSPC') return mapFullHint(ctx.map);
      return undefined;
    default:
      return undefined;
  }
}

/** Wrap any error thrown by the addon; errors without errno (programming errors) pass through. */
export function bpfError(err: unknown, device?: DeviceRef, ctx: ErrorCtx = {}): Error {
  const raw = err as RawNativeError;
  if (!(err instanceof Error) || typeof raw.errno !== 'number' || !raw.op) return err as Error;
  const op = raw.op;
  const code = raw.code ?? '';
  const log = raw.libbpfLog ?? '';
  if (op === 'BPF_LINK_CREATE' && (code === 'EINVAL' || code === 'EOPNOTSUPP')) {
    if (ctx.attach === 'tcx' && !kernelAtLeast('6.6')) return new UnsupportedFeatureError('tcx', 'Linux >= 6.6', err);
    if (ctx.attach === 'netkit' && !kernelAtLeast('6.7')) return new UnsupportedFeatureError('netkit', 'Linux >= 6.7 with CONFIG_NETKIT', err);
  }
  const init = {
    op,
    errno: raw.errno || errnoNumber(code) || 0,
    ...(device ? { device } : {}),
    hint: hintFor(op, code, log, ctx),
    cause: err,
  };
  if (op === 'BPF_PROG_LOAD' && /BEGIN PROG LOAD LOG|processed \d+ insns/.test(log)) return new VerifierError(init, log);
  return new KernelError(init);
}

/** Run an addon call, converting its errors. */
export function kcall<T>(fn: () => T, device?: DeviceRef, ctx?: ErrorCtx): T {
  try {
    return fn();
  } catch (err) {
    throw bpfError(err, device, ctx);
  }
}
