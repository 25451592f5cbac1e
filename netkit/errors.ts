// Turning netlink error replies into operator messages: errno + extended ack + a hint per
// (operation, errno). Also the checks that reject bad names before the kernel sees them.
import type { DeviceRef } from '../common/kernel-error.js';
import { KernelError, errnoName } from '../common/kernel-error.js';
import { attrsDecode, readS32, readStr, readU32 } from './attrs.js';
import {
  IFALIAS_MAX_BYTES, IFNAME_MAX_BYTES, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS,
} from './uapi.js';

/** A request netkit/ refused before calling the kernel (bad name, bad address, missing netns...). */
export class EndpointSpecError extends Error {
  readonly field: string;
  constructor(field: string, message: string, cause?: unknown) {
    super(message, { cause });
    this.name = 'EndpointSpecError';
    this.field = field;
  }
}

export interface NetlinkErrorReply {
  /** Positive errno; 0 is an ACK. */
  errno: number;
  extack?: string;
  /** NLMSGERR_ATTR_OFFS: byte offset of the offending attribute in the request. */
  extackOffset?: number;
}

/**
 * Parses the payload of an NLMSG_ERROR message: s32 error, the request's nlmsghdr (and its payload
 * unless NLM_F_CAPPED), then, with NLM_F_ACK_TLVS, NLMSGERR_ATTR_* attributes.
 */
export function netlinkErrorParse(data: Buffer, flags: number): NetlinkErrorReply {
  if (data.length < 4) return { errno: 0 };
  const errno = Math.abs(readS32(data, 0));
  const out: NetlinkErrorReply = { errno };
  if (!(flags & NLM_F_ACK_TLVS) || data.length < 20) return out;
  const origLen = readU32(data, 4);
  const tlvStart = 4 + ((flags & NLM_F_CAPPED) ? 16 : ((origLen + 3) & ~3));
  if (tlvStart > data.length) return out;
  const tlvs = attrsDecode(data.subarray(tlvStart));
  const msg = tlvs.get(NLMSGERR_ATTR_MSG);
  if (msg) {
    const text = readStr(msg).trim();
    if (text) out.extack = text;
  }
  const offs = tlvs.get(NLMSGERR_ATTR_OFFS);
  if (offs && offs.length >= 4) out.extackOffset = readU32(offs, 0);
  return out;
}

const ROOT_HINT = 'kitnet must run as root (or with CAP_NET_ADMIN in the namespace that owns the device)';

/** What to do about an errno, given the operation. Never empty for the errnos kitnet expects. */
export function errnoHint(op: string, name: string): string | undefined {
  const link = op.includes('LINK');
  switch (name) {
    case 'EEXIST':
      if (link) return 'a link with this name already exists; pick another name or remove the old one (`ip link del NAME`)';
      if (op.includes('ADDR')) return 'the address is already configured on this device';
      if (op.includes('ROUTE')) return 'a route for this prefix already exists (is the address used by another workload?)';
      if (op.includes('NEIGH')) return 'the neighbour entry already exists';
      if (op.includes('QDISC')) return 'a qdisc of this kind is already attached';
      return 'the object already exists';
    case 'ENODEV':
      return 'the device does not exist (removed meanwhile?); re-read the state and retry';
    case 'ENOENT':
      return op.includes('ROUTE') || op.includes('ADDR') || op.includes('NEIGH')
        ? 'no such entry; it may have been removed with its device'
        : 'the object does not exist';
    case 'ESRCH':
      return 'no such route/entry';
    case 'EPERM':
    case 'EACCES':
      return ROOT_HINT;
    case 'EOPNOTSUPP':
    case 'ENOTSUP': // same number on Linux; libuv names 95 ENOTSUP
      return link
        ? 'this kernel lacks the link kind or one of the requested attributes (driver not built in / module missing, or an older kernel)'
        : 'the operation is not supported by this kernel or device';
    case 'ERANGE':
      return 'a value is out of range (interface names are at most 15 bytes, MTU must fit the device)';
    case 'EINVAL':
      return link
        ? 'the kernel rejected an attribute: check names (<= 15 bytes, no "/", ":" or spaces), MTU and the netns'
        : 'the kernel rejected an attribute value';
    case 'EBADF':
      return 'the network namespace file descriptor is not valid (was the namespace deleted?)';
    case 'ENETDOWN':
      return 'the device is down; bring it up first';
    case 'ENETUNREACH':
      return 'the gateway is not reachable through this device; add the link-scope route to it first';
    case 'EADDRNOTAVAIL':
      return 'the address (IP or MAC) is not valid here';
    case 'EBUSY':
      return 'the device is busy (in use by another operation or enslaved)';
    case 'ENOBUFS':
    case 'ENOMEM':
      return 'the kernel is out of memory or the socket buffer overflowed; retry';
    case 'ETIMEDOUT':
      return 'the kernel did not answer in time; retry';
    default:
      return undefined;
  }
}

export function kernelErrorFromReply(op: string, reply: NetlinkErrorReply, device?: DeviceRef, hint?: string): KernelError {
  return new KernelError({
    op,
    errno: reply.errno,
    device,
    extack: reply.extack,
    hint: hint ?? errnoHint(op, errnoName(reply.errno)),
  });
}

/** Errno name comparison that treats ENOTSUP and EOPNOTSUPP (both 95 on Linux) as one. */
export function errnoIs(err: unknown, ...names: string[]): boolean {
  const name = err instanceof KernelError ? err.errnoName : (err as { code?: string } | null)?.code;
  if (!name) return false;
  const norm = (n: string): string => (n === 'ENOTSUP' ? 'EOPNOTSUPP' : n);
  return names.some((n) => norm(n) === norm(name));
}

/** Rejects what the kernel's dev_valid_name() rejects, with a message naming the field. */
export function ifnameValidate(field: string, name: unknown): string {
  if (typeof name !== 'string' || name.length === 0) {
    throw new EndpointSpecError(field, `${field}: interface name is empty`);
  }
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > IFNAME_MAX_BYTES) {
    throw new EndpointSpecError(field, `${field}: interface name "${name}" is ${bytes} bytes; Linux allows at most ${IFNAME_MAX_BYTES}`);
  }
  if (name === '.' || name === '..' || /[/:\s]/.test(name) || name.includes('\0')) {
    throw new EndpointSpecError(field, `${field}: interface name "${name}" is invalid (no "/", ":", whitespace, "." or "..")`);
  }
  return name;
}

export function aliasValidate(field: string, alias: unknown): string {
  if (typeof alias !== 'string') throw new EndpointSpecError(field, `${field}: alias must be a string`);
  if (Buffer.byteLength(alias, 'utf8') > IFALIAS_MAX_BYTES) {
    throw new EndpointSpecError(field, `${field}: alias is longer than ${IFALIAS_MAX_BYTES} bytes`);
  }
  return alias;
}
