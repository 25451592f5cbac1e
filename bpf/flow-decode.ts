// Decodes ring-buffer batches (framed by the addon as [u32 len][u32 0][record padded to 8]) into
// FlowEvent objects. Hot path: one pass, offsets hoisted into module constants, no per-field helper
// calls beyond address formatting; the monotonic -> wall-clock offset is computed once per reader.
import type { FlowEvent, ReportReason } from './types.js';
import { ipv4Format, ipv4Parse, ipv6Format, ipv6Parse } from './addr.js';
import { structEncode } from './layout.js';
import { DIR_EGRESS, DIR_INGRESS, FAMILY_IPV4, FAMILY_IPV6, FLOW_EVENT, VERDICT_DROPPED, VERDICT_FORWARDED } from './layout.gen.js';

const F = FLOW_EVENT.fields;
const SIZE = FLOW_EVENT.size;
const O_TIME = F.time_ns.offset;
const O_IFINDEX = F.ifindex.offset;
const O_EPID = F.endpoint_id.offset;
const O_SRCID = F.src_identity.offset;
const O_DSTID = F.dst_identity.offset;
const O_LEN = F.length.offset;
const O_SADDR = F.saddr.offset;
const O_DADDR = F.daddr.offset;
const O_SPORT = F.sport.offset;
const O_DPORT = F.dport.offset;
const O_DROP = F.drop_reason.offset;
const O_DIR = F.direction.offset;
const O_FAMILY = F.family.offset;
const O_PROTO = F.protocol.offset;
const O_ICMPT = F.icmp_type.offset;
const O_ICMPC = F.icmp_code.offset;
const O_TCPF = F.tcp_flags.offset;
const O_VERDICT = F.verdict.offset;
const O_REPLY = F.is_reply.offset;
const O_REASON = F.reason.offset;
const O_ETHERTYPE = F.ethertype.offset;

/** Index = REPORT_* value (generated order). */
const REASONS: readonly ReportReason[] = ['EVERY', 'NEW', 'FLAGS', 'CLOSE', 'INTERVAL', 'DROP', 'FIRST_REPLY'];

/**
 * Offset to add to bpf_ktime_get_ns() (CLOCK_MONOTONIC) to get wall-clock ns since the epoch.
 * process.hrtime is libuv's CLOCK_MONOTONIC; performance.timeOrigin+now gives sub-ms wall time.
 */
export function monotonicToWallOffsetNs(): bigint {
  const mono = process.hrtime.bigint();
  const wallUs = Math.round((performance.timeOrigin + performance.now()) * 1000);
  return BigInt(wallUs) * 1000n - mono;
}

function u16(b: Buffer, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}
function u32(b: Buffer, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16)) + b[o + 3]! * 0x1000000;
}

/**
 * One struct flow_event, read from its wakeup's batch buffer. The integers are read at construction;
 * the two address strings and the BigInt time, which were most of the cost of decoding an event and
 * most of the garbage it left, are made when first asked for and kept: a flow that is only counted and
 * kept in the ring (the common case: nobody follows) formats at most its peer's address (enrichment
 * looks it up) and never its time. Holds the batch buffer (one copy per wakeup) while it is referenced.
 */
class FlowEventRecord implements FlowEvent {
  readonly ifindex: number;
  readonly endpointId: number;
  readonly direction: FlowEvent['direction'];
  readonly family: 0 | 4 | 6;
  readonly protocol: number;
  readonly srcPort: number;
  readonly dstPort: number;
  readonly icmpType: number;
  readonly icmpCode: number;
  readonly tcpFlags: number;
  readonly srcIdentity: number;
  readonly dstIdentity: number;
  readonly verdict: FlowEvent['verdict'];
  readonly dropReason: number;
  readonly isReply: boolean;
  readonly length: number;
  readonly reportReason: ReportReason;
  readonly etherType: number;
  #src: string | undefined;
  #dst: string | undefined;
  #time: bigint | undefined;

  constructor(
    private readonly buf: Buffer,
    private readonly off: number,
    private readonly wallOffsetNs: bigint,
  ) {
    const b = buf;
    const o = off;
    const fam = b[o + O_FAMILY];
    this.family = fam === FAMILY_IPV4 ? 4 : fam === FAMILY_IPV6 ? 6 : 0;
    this.ifindex = u32(b, o + O_IFINDEX);
    this.endpointId = u32(b, o + O_EPID);
    this.direction = b[o + O_DIR] === DIR_INGRESS ? 'INGRESS' : 'EGRESS';
    this.protocol = b[o + O_PROTO]!;
    this.srcPort = u16(b, o + O_SPORT);
    this.dstPort = u16(b, o + O_DPORT);
    this.icmpType = b[o + O_ICMPT]!;
    this.icmpCode = b[o + O_ICMPC]!;
    this.tcpFlags = b[o + O_TCPF]!;
    this.srcIdentity = u32(b, o + O_SRCID);
    this.dstIdentity = u32(b, o + O_DSTID);
    this.verdict = b[o + O_VERDICT] === VERDICT_DROPPED ? 'DROPPED' : 'FORWARDED';
    this.dropReason = u16(b, o + O_DROP);
    this.isReply = b[o + O_REPLY] !== 0;
    this.length = u32(b, o + O_LEN);
    this.reportReason = REASONS[b[o + O_REASON]!] ?? 'EVERY';
    this.etherType = u16(b, o + O_ETHERTYPE);
    this.#src = undefined;
    this.#dst = undefined;
    this.#time = undefined;
  }

  get timeNs(): bigint {
    return (this.#time ??= this.buf.readBigUInt64LE(this.off + O_TIME) + this.wallOffsetNs);
  }

  get srcIpv4(): number | undefined {
    return this.family === 4 ? this.buf.readUInt32BE(this.off + O_SADDR) : undefined;
  }

  get dstIpv4(): number | undefined {
    return this.family === 4 ? this.buf.readUInt32BE(this.off + O_DADDR) : undefined;
  }

  get srcAddr(): string {
    return (this.#src ??= addrFormat(this.buf, this.off + O_SADDR, this.family));
  }

  get dstAddr(): string {
    return (this.#dst ??= addrFormat(this.buf, this.off + O_DADDR, this.family));
  }

  /** The event as a plain object (every field read): for tests, logs and comparisons. */
  toJSON(): FlowEvent {
    return flowEventPlain(this);
  }
}

function addrFormat(b: Buffer, o: number, family: 0 | 4 | 6): string {
  return family === 4 ? ipv4Format(b, o) : family === 6 ? ipv6Format(b, o) : '';
}

/** Every field of an event as an own property of a plain object. */
export function flowEventPlain(ev: FlowEvent): FlowEvent {
  return {
    timeNs: ev.timeNs,
    ifindex: ev.ifindex,
    endpointId: ev.endpointId,
    direction: ev.direction,
    family: ev.family,
    protocol: ev.protocol,
    srcAddr: ev.srcAddr,
    dstAddr: ev.dstAddr,
    srcPort: ev.srcPort,
    dstPort: ev.dstPort,
    icmpType: ev.icmpType,
    icmpCode: ev.icmpCode,
    tcpFlags: ev.tcpFlags,
    srcIdentity: ev.srcIdentity,
    dstIdentity: ev.dstIdentity,
    verdict: ev.verdict,
    dropReason: ev.dropReason,
    isReply: ev.isReply,
    length: ev.length,
    reportReason: ev.reportReason,
    etherType: ev.etherType,
  };
}

/** Decode one struct flow_event at `o` (fields read on access; see FlowEventRecord). */
export function flowDecodeOne(b: Buffer, o: number, wallOffsetNs: bigint): FlowEvent {
  return new FlowEventRecord(b, o, wallOffsetNs);
}

/** Decode every framed record of a batch; records shorter than struct flow_event are skipped. */
export function flowDecodeBatch(batch: Buffer, wallOffsetNs: bigint, out: FlowEvent[] = []): FlowEvent[] {
  const n = batch.length;
  let pos = 0;
  while (pos + 8 <= n) {
    const len = u32(batch, pos);
    const rec = pos + 8;
    if (len >= SIZE && rec + SIZE <= n) out.push(flowDecodeOne(batch, rec, wallOffsetNs));
    pos = rec + ((len + 7) & ~7);
  }
  return out;
}

// ---- encoders (tests, benchmarks): the inverse, through the generic layout encoder ----

function addrBytes(family: 0 | 4 | 6, s: string): Uint8Array {
  const out = new Uint8Array(16);
  if (family) out.set(family === 4 ? ipv4Parse(s) : ipv6Parse(s));
  return out;
}

/** Encode a FlowEvent as the datapath would write it (time converted back to monotonic). */
export function flowEventEncode(ev: FlowEvent, wallOffsetNs: bigint): Buffer {
  return structEncode(FLOW_EVENT, {
    time_ns: ev.timeNs - wallOffsetNs,
    ifindex: ev.ifindex,
    endpoint_id: ev.endpointId,
    src_identity: ev.srcIdentity,
    dst_identity: ev.dstIdentity,
    length: ev.length,
    saddr: addrBytes(ev.family, ev.srcAddr),
    daddr: addrBytes(ev.family, ev.dstAddr),
    sport: ev.srcPort,
    dport: ev.dstPort,
    drop_reason: ev.dropReason,
    direction: ev.direction === 'INGRESS' ? DIR_INGRESS : DIR_EGRESS,
    family: ev.family,
    protocol: ev.protocol,
    icmp_type: ev.icmpType,
    icmp_code: ev.icmpCode,
    tcp_flags: ev.tcpFlags,
    verdict: ev.verdict === 'DROPPED' ? VERDICT_DROPPED : VERDICT_FORWARDED,
    is_reply: ev.isReply ? 1 : 0,
    reason: Math.max(0, REASONS.indexOf(ev.reportReason ?? 'EVERY')),
    ethertype: ev.etherType ?? 0,
  });
}

/** Frame records the way the addon does for one wakeup. */
export function flowBatchFrame(records: Buffer[]): Buffer {
  const parts: Buffer[] = [];
  for (const r of records) {
    const hdr = Buffer.alloc(8);
    hdr.writeUInt32LE(r.length, 0);
    parts.push(hdr, r, Buffer.alloc(((r.length + 7) & ~7) - r.length));
  }
  return Buffer.concat(parts);
}
