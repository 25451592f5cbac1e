import { constants as osConstants } from 'node:os';
import { getSystemErrorName } from 'node:util';

/** The device a kernel operation was about, as far as the caller knows it. */
export interface DeviceRef {
  name?: string;
  ifindex?: number;
  netns?: string;
}

export interface KernelErrorInit {
  /** Kernel operation, e.g. 'RTM_NEWLINK' or 'BPF_LINK_CREATE'. */
  op: string;
  errno: number;
  device?: DeviceRef;
  /** The kernel's extended ack message, when it sent one. */
  extack?: string;
  /** What the operator should do next. */
  hint?: string;
  cause?: unknown;
}

export function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-Math.abs(errno));
  } catch {
    return `errno ${errno}`;
  }
}

export function errnoNumber(name: string): number | undefined {
  return (osConstants.errno as Record<string, number>)[name];
}

function deviceLabel(device?: DeviceRef): string {
  if (!device) return '';
  const parts = [device.name ?? (device.ifindex !== undefined ? `ifindex ${device.ifindex}` : undefined)];
  if (device.netns) parts.push(`in ${device.netns}`);
  return parts.filter(Boolean).join(' ');
}

/**
 * An error returned by the kernel (netlink or bpf syscall), carrying what an operator needs:
 * which operation on which device failed, with which errno, and what to do about it.
 * Message shape: `RTM_NEWLINK kn1a2b: EEXIST (File exists) — hint: ...`.
 */
export class KernelError extends Error {
  readonly op: string;
  readonly errno: number;
  readonly errnoName: string;
  readonly device?: DeviceRef;
  readonly extack?: string;
  readonly hint?: string;

  constructor(init: KernelErrorInit) {
    const errno = Math.abs(init.errno);
    const name = errnoName(errno);
    const dev = deviceLabel(init.device);
    const detail = init.extack ? ` (${init.extack})` : '';
    const hint = init.hint ? ` — hint: ${init.hint}` : '';
    super(`${init.op}${dev ? ` ${dev}` : ''}: ${name}${detail}${hint}`, { cause: init.cause });
    this.name = 'KernelError';
    this.op = init.op;
    this.errno = errno;
    this.errnoName = name;
    if (init.device) this.device = init.device;
    if (init.extack) this.extack = init.extack;
    if (init.hint) this.hint = init.hint;
  }
}

/** Compare by errno name, never by number (numbers differ across architectures). */
export function isErrno(err: unknown, name: string): boolean {
  return err instanceof KernelError ? err.errnoName === name : (err as { code?: string } | null)?.code === name;
}

/** A kernel feature this host lacks, found by a real probe. */
export class UnsupportedFeatureError extends Error {
  readonly feature: string;
  readonly requirement: string;
  constructor(feature: string, requirement: string, cause?: unknown) {
    super(`${feature} is not supported by this kernel (needs ${requirement})`, { cause });
    this.name = 'UnsupportedFeatureError';
    this.feature = feature;
    this.requirement = requirement;
  }
}

/** A map write the kernel refused for want of room (ENOSPC from tries and hashes, E2BIG from arrays and batch ops). */
export function isMapFull(err: unknown): boolean {
  return err instanceof KernelError && err.op.startsWith('BPF_MAP_UPDATE') && (err.errnoName === 'ENOSPC' || err.errnoName === 'E2BIG');
}
