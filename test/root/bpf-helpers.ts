// Helpers for the bpf root tests: crafted frames for BPF_PROG_TEST_RUN, shell commands, event collection.
import { execFileSync } from 'node:child_process';
import { after, before } from 'node:test';
import { datapathLoad, datapathUnpinAll, type EndpointInfo, type FlowEvent, type KitnetDatapath } from '../../bpf/index.js';
import { ipv4Parse, ipv6Parse, macParse } from '../../bpf/addr.js';

export function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${e.stderr?.trim() || e.message}`);
  }
}

export function shOk(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore', timeout: 20_000 });
    return true;
  } catch {
    return false;
  }
}

export const ETH_P_IP = 0x0800;
export const ETH_P_IPV6 = 0x86dd;
export const ETH_P_ARP = 0x0806;

export function eth(type: number, payload: Buffer, src = '02:00:00:00:00:02', dst = '02:00:00:00:00:01'): Buffer {
  const h = Buffer.alloc(14);
  h.set(macParse(dst), 0);
  h.set(macParse(src), 6);
  h.writeUInt16BE(type, 12);
  return Buffer.concat([h, payload]);
}

export function ipv4(src: string, dst: string, protocol: number, payload: Buffer, opts: { fragOff?: number; mf?: boolean; id?: number } = {}): Buffer {
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + payload.length, 2);
  h.writeUInt16BE(opts.id ?? 0, 4);
  h.writeUInt16BE(((opts.mf ? 1 : 0) << 13) | ((opts.fragOff ?? 0) >> 3), 6);
  h[8] = 64;
  h[9] = protocol;
  h.set(ipv4Parse(src), 12);
  h.set(ipv4Parse(dst), 16);
  return Buffer.concat([h, payload]);
}

/** IPv6 with optional extension headers, each [type, body] where body pads to a multiple of 8. */
export function ipv6(src: string, dst: string, protocol: number, payload: Buffer, ext: Array<[number, Buffer]> = [], hopLimit = 64): Buffer {
  const chain: Buffer[] = [];
  const types = [...ext.map(([t]) => t), protocol];
  ext.forEach(([, body], i) => {
    const len = Math.ceil((body.length + 2) / 8) * 8;
    const b = Buffer.alloc(len);
    b[0] = types[i + 1]!;
    b[1] = len / 8 - 1;
    body.copy(b, 2);
    chain.push(b);
  });
  const rest = Buffer.concat([...chain, payload]);
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h.writeUInt16BE(rest.length, 4);
  h[6] = types[0]!;
  h[7] = hopLimit;
  h.set(ipv6Parse(src), 8);
  h.set(ipv6Parse(dst), 24);
  return Buffer.concat([h, rest]);
}

export function tcp(sport: number, dport: number, flags: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt16BE(sport, 0);
  b.writeUInt16BE(dport, 2);
  b[12] = 5 << 4;
  b[13] = flags;
  return b;
}

export function udp(sport: number, dport: number, data = Buffer.alloc(8)): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt16BE(sport, 0);
  b.writeUInt16BE(dport, 2);
  b.writeUInt16BE(8 + data.length, 4);
  return Buffer.concat([b, data]);
}

export function icmp(type: number, code: number, id = 0, seq = 0): Buffer {
  const b = Buffer.alloc(16);
  b[0] = type;
  b[1] = code;
  b.writeUInt16BE(id, 4);
  b.writeUInt16BE(seq, 6);
  return b;
}

/** ARP for Ethernet/IPv4 (28 bytes): op 1 request, 2 reply. */
export function arp(op: number, sha: string, spa: string, tha: string, tpa: string): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt16BE(1, 0);
  b.writeUInt16BE(ETH_P_IP, 2);
  b[4] = 6;
  b[5] = 4;
  b.writeUInt16BE(op, 6);
  b.set(macParse(sha), 8);
  b.set(ipv4Parse(spa), 14);
  b.set(macParse(tha), 18);
  b.set(ipv4Parse(tpa), 24);
  return b;
}

/** One's complement sum of 16-bit big-endian words, folded (not complemented). */
export function onesSum(...parts: Buffer[]): number {
  const b = Buffer.concat(parts);
  let sum = 0;
  for (let i = 0; i < b.length; i += 2) sum += (b[i]! << 8) | (b[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** ICMPv6 pseudo-header (RFC 8200 8.1) for a message of `len` bytes. */
export function icmp6Pseudo(src: string, dst: string, len: number): Buffer {
  const b = Buffer.alloc(40);
  b.set(ipv6Parse(src), 0);
  b.set(ipv6Parse(dst), 16);
  b.writeUInt32BE(len, 32);
  b[39] = 58;
  return b;
}

/**
 * Neighbour solicitation (135) / advertisement (136) with a correct checksum. `opts` are [type, body]
 * pairs (body padded to 8-byte units with its 2-byte header), e.g. [[1, mac]] for a source link-layer
 * address option; `flags` is the NA's first flag byte (R 0x80, S 0x40, O 0x20).
 */
export function ndMsg(src: string, dst: string, type: 135 | 136, target: string, opts: Array<[number, Buffer]> = [], flags = 0): Buffer {
  const head = Buffer.alloc(24);
  head[0] = type;
  head[4] = flags;
  head.set(ipv6Parse(target), 8);
  return ndWithOptions(src, dst, head, opts);
}

/** An ND message: its fixed part, then its options padded to 8 bytes, and the ICMPv6 checksum. */
function ndWithOptions(src: string, dst: string, head: Buffer, opts: Array<[number, Buffer]>): Buffer {
  const o = opts.map(([t, body]) => {
    const len = Math.ceil((body.length + 2) / 8) * 8;
    const b = Buffer.alloc(len);
    b[0] = t;
    b[1] = len / 8;
    body.copy(b, 2);
    return b;
  });
  const msg = Buffer.concat([head, ...o]);
  msg.writeUInt16BE(~onesSum(icmp6Pseudo(src, dst, msg.length), msg) & 0xffff, 2);
  return msg;
}

/** Router solicitation (133) with a correct checksum; `opts` as for ndMsg ([[1, mac]]: source link-layer address). */
export function rsMsg(src: string, dst: string, opts: Array<[number, Buffer]> = []): Buffer {
  return ndWithOptions(src, dst, Buffer.from([133, 0, 0, 0, 0, 0, 0, 0]), opts);
}

/** Entries that allow everything in both directions: what the agent writes for a non-enforced endpoint. */
export function policyAllowAll(dp: KitnetDatapath, endpointId: number): void {
  const any = { identity: 0, protocol: 0, port: 0, portPrefixLen: 0, deny: false };
  dp.policyApply(endpointId, [
    { op: 'upsert', entry: { ...any, direction: 'ingress' } },
    { op: 'upsert', entry: { ...any, direction: 'egress' } },
  ]);
}

/** IPv6 fragment header body for ipv6(..., [[44, fragHdr(...)]]): offset in bytes (multiple of 8), M flag, id. */
export function fragHdr(offset: number, more: boolean, id: number): Buffer {
  const b = Buffer.alloc(6);
  b.writeUInt16BE((offset & 0xfff8) | (more ? 1 : 0), 0);
  b.writeUInt32BE(id, 2);
  return b;
}

export const TCP = { FIN: 1, SYN: 2, RST: 4, PSH: 8, ACK: 16 } as const;

/** Collects flow events from a datapath until `until` holds or the timeout passes. */
export class EventSink {
  readonly events: FlowEvent[] = [];
  private readonly reader;
  private received = 0n;
  private readonly sentBase: bigint;
  constructor(private readonly dp: KitnetDatapath) {
    this.sentBase = dp.metricsRead().EVENTS_SENT.packets;
    this.reader = dp.flowsRead((evs) => {
      this.received += BigInt(evs.length);
      this.events.push(...evs);
    });
  }
  async waitFor(pred: (evs: FlowEvent[]) => boolean, timeoutMs = 3000): Promise<FlowEvent[]> {
    const end = Date.now() + timeoutMs;
    while (!pred(this.events) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    return [...this.events];
  }
  /** Let in-flight events arrive, then return and clear what was collected. */
  async drain(ms = 150): Promise<FlowEvent[]> {
    await new Promise((r) => setTimeout(r, ms));
    return this.events.splice(0);
  }
  /**
   * Return and clear what was collected once every event the kernel has written (EVENTS_SENT, this pin
   * root's counter) has arrived: exact for BPF_PROG_TEST_RUN, whose events are written before it
   * returns, however slow the machine (a TCG VM takes far longer than a fixed delay).
   */
  async settle(timeoutMs = 5000): Promise<FlowEvent[]> {
    const end = Date.now() + timeoutMs;
    const sent = this.dp.metricsRead().EVENTS_SENT.packets - this.sentBase;
    while (this.received < sent && Date.now() < end) await new Promise((r) => setTimeout(r, 2));
    return this.events.splice(0);
  }
  lostEvents(): bigint {
    return this.reader.lostEvents();
  }
  close(): void {
    this.reader.close();
  }
}

/** The ifindex BPF_PROG_TEST_RUN tests charge their packets to: the loopback's, always present. */
export const LO = 1;

/**
 * One datapath for a describe block of BPF_PROG_TEST_RUN tests: loaded on its own pin root
 * (/sys/fs/bpf/kitnet-test-TAG-PID), with an event sink and `endpoint` on LO; `ready` gets both (then
 * adds what the block needs: policy, ipcache). Closed and unpinned after the block, however it ended.
 * Returns the pin root.
 */
export function testRunDatapathUse(tag: string, endpoint: EndpointInfo, ready: (dp: KitnetDatapath, sink: EventSink) => void): string {
  const pinRoot = `/sys/fs/bpf/kitnet-test-${tag}-${process.pid}`;
  let dp: KitnetDatapath | undefined;
  let sink: EventSink | undefined;
  before(async () => {
    await datapathUnpinAll(pinRoot);
    dp = await datapathLoad({ pinRoot });
    sink = new EventSink(dp);
    dp.endpointUpsert(LO, endpoint);
    ready(dp, sink);
  });
  after(async () => {
    sink?.close();
    dp?.close();
    await datapathUnpinAll(pinRoot);
  });
  return pinRoot;
}
