/**
 * A strict DNS message codec (RFC 1035) for the DNS proxy: what it needs and no more. Parses the
 * header, the questions and the answer section (A, AAAA and CNAME decoded, other types kept opaque);
 * authority and additional records are walked over with the same bounds checks, never decoded.
 *
 * No npm DNS library is installed, and the input comes from workloads and resolvers, so every read is
 * bounds-checked and every pointer must point strictly backwards (a compression loop cannot form), with
 * RFC limits on label (63) and name (255) length. Names come out lower-cased without the trailing dot;
 * a byte outside `[-a-zA-Z0-9_]` inside a label is written `\DDD`, so a label holding a dot can never
 * pass for two labels (policy selectors cannot contain `\`, such a name matches none).
 */

/** Largest DNS message over TCP (the length prefix is 16 bits); UDP datagrams are smaller still. */
export const DNS_MESSAGE_MAX = 65535;
export const DNS_HEADER_LENGTH = 12;

export const DnsType = { A: 1, CNAME: 5, AAAA: 28 } as const;
export const DnsClass = { IN: 1 } as const;
export const DnsRcode = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

const NAME_MAX_WIRE = 255;
const LABEL_MAX = 63;
const MAX_POINTER_JUMPS = 64;

export class DnsParseError extends Error {
  override name = 'DnsParseError';
}

export interface DnsQuestion {
  name: string;
  type: number;
  class: number;
}

export type DnsRecordData = { kind: 'address'; address: string } | { kind: 'cname'; target: string } | { kind: 'other' };

export interface DnsRecord {
  name: string;
  type: number;
  class: number;
  /** Seconds; values with the top bit set count as 0 (RFC 2181 §8). */
  ttl: number;
  data: DnsRecordData;
}

export interface DnsMessage {
  id: number;
  response: boolean;
  opcode: number;
  rcode: number;
  truncated: boolean;
  recursionDesired: boolean;
  questions: DnsQuestion[];
  answers: DnsRecord[];
}

function isDnsChar(b: number): boolean {
  return (b >= 0x61 && b <= 0x7a) || (b >= 0x41 && b <= 0x5a) || (b >= 0x30 && b <= 0x39) || b === 0x2d || b === 0x5f;
}

/**
 * Where nameRead writes a name's text before making it one string: the proxy reads three names a
 * lookup, and a string per label (or per byte) and their join were a large part of its garbage. The
 * longest name (255 wire bytes) escapes to at most 4 characters a byte.
 */
const nameText = Buffer.alloc(NAME_MAX_WIRE * 4);
const BACKSLASH = 0x5c;

/**
 * Reads a (possibly compressed) name at `offset`. Returns the name and the offset just past it in the
 * original sequence (after the first pointer, if any).
 */
export function nameRead(buf: Uint8Array, offset: number): { name: string; next: number } {
  let pos = offset;
  let next = -1;
  let wire = 1; // the final zero-length label
  let jumps = 0;
  let out = 0; // characters written to nameText
  // A pointer must go below the lowest position read so far, so each jump makes progress towards 0.
  let floor = offset;
  for (;;) {
    if (pos >= buf.length) throw new DnsParseError(`name at ${offset} runs past the end of the message`);
    const len = buf[pos]!;
    if (len === 0) {
      if (next < 0) next = pos + 1;
      break;
    }
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (pos + 1 >= buf.length) throw new DnsParseError(`name at ${offset}: truncated compression pointer`);
      const target = ((len & 0x3f) << 8) | buf[pos + 1]!;
      if (target >= floor) throw new DnsParseError(`name at ${offset}: compression pointer to ${target} does not point backwards`);
      if (++jumps > MAX_POINTER_JUMPS) throw new DnsParseError(`name at ${offset}: too many compression pointers`);
      if (next < 0) next = pos + 2;
      pos = floor = target;
      continue;
    }
    if (kind !== 0) throw new DnsParseError(`name at ${offset}: unsupported label type 0x${kind.toString(16)}`);
    if (len > LABEL_MAX) throw new DnsParseError(`name at ${offset}: label longer than ${LABEL_MAX}`);
    if (pos + 1 + len > buf.length) throw new DnsParseError(`name at ${offset}: label runs past the end of the message`);
    wire += len + 1;
    if (wire > NAME_MAX_WIRE) throw new DnsParseError(`name at ${offset}: longer than ${NAME_MAX_WIRE} bytes`);
    if (out > 0) nameText[out++] = 0x2e;
    // Lower case; any byte outside [-a-z0-9_] as \DDD, so no label can hold a separator.
    for (let i = pos + 1; i <= pos + len; i++) {
      const b = buf[i]!;
      if (isDnsChar(b)) nameText[out++] = b >= 0x41 && b <= 0x5a ? b + 0x20 : b;
      else {
        nameText[out++] = BACKSLASH;
        nameText[out++] = 0x30 + Math.floor(b / 100);
        nameText[out++] = 0x30 + (Math.floor(b / 10) % 10);
        nameText[out++] = 0x30 + (b % 10);
      }
    }
    pos += 1 + len;
  }
  return { name: nameText.toString('latin1', 0, out), next };
}

function u16(buf: Uint8Array, at: number, what: string): number {
  if (at + 2 > buf.length) throw new DnsParseError(`${what} at ${at} runs past the end of the message`);
  return (buf[at]! << 8) | buf[at + 1]!;
}

function u32(buf: Uint8Array, at: number, what: string): number {
  return u16(buf, at, what) * 0x10000 + u16(buf, at + 2, what);
}

function ipv6Text(b: Uint8Array): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((b[i]! << 8) | b[i + 1]!).toString(16));
  // The canonical form (RFC 5952): the longest run of two or more zero groups becomes `::`.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

function recordRead(buf: Uint8Array, offset: number): { record: DnsRecord; next: number } {
  const { name, next: afterName } = nameRead(buf, offset);
  const type = u16(buf, afterName, 'record type');
  const klass = u16(buf, afterName + 2, 'record class');
  const rawTtl = u32(buf, afterName + 4, 'record TTL');
  const rdlength = u16(buf, afterName + 8, 'record length');
  const rdata = afterName + 10;
  const end = rdata + rdlength;
  if (end > buf.length) throw new DnsParseError(`record ${name} at ${offset}: data runs past the end of the message`);
  let data: DnsRecordData = { kind: 'other' };
  if (klass === DnsClass.IN && type === DnsType.A) {
    if (rdlength !== 4) throw new DnsParseError(`A record ${name}: data length ${rdlength}, expected 4`);
    data = { kind: 'address', address: `${buf[rdata]}.${buf[rdata + 1]}.${buf[rdata + 2]}.${buf[rdata + 3]}` };
  } else if (klass === DnsClass.IN && type === DnsType.AAAA) {
    if (rdlength !== 16) throw new DnsParseError(`AAAA record ${name}: data length ${rdlength}, expected 16`);
    data = { kind: 'address', address: ipv6Text(buf.subarray(rdata, end)) };
  } else if (type === DnsType.CNAME) {
    // The target's own bytes must end exactly at the record's end (pointers may reach back before it).
    const target = nameRead(buf.subarray(0, end), rdata);
    if (target.next !== end) throw new DnsParseError(`CNAME record ${name}: target does not fill the record data`);
    data = { kind: 'cname', target: target.name };
  }
  return { record: { name, type, class: klass, ttl: rawTtl >= 0x80000000 ? 0 : rawTtl, data }, next: end };
}

/** Parses a whole message; throws DnsParseError on anything malformed, including trailing bytes. */
export function dnsParse(buf: Uint8Array): DnsMessage {
  if (buf.length > DNS_MESSAGE_MAX) throw new DnsParseError(`message of ${buf.length} bytes, more than ${DNS_MESSAGE_MAX}`);
  if (buf.length < DNS_HEADER_LENGTH) throw new DnsParseError(`message of ${buf.length} bytes, shorter than the ${DNS_HEADER_LENGTH}-byte header`);
  const flags = u16(buf, 2, 'flags');
  const qdcount = u16(buf, 4, 'count');
  const sections = [u16(buf, 6, 'count'), u16(buf, 8, 'count'), u16(buf, 10, 'count')] as const;
  const msg: DnsMessage = {
    id: u16(buf, 0, 'id'),
    response: (flags & 0x8000) !== 0,
    opcode: (flags >> 11) & 0xf,
    truncated: (flags & 0x0200) !== 0,
    recursionDesired: (flags & 0x0100) !== 0,
    rcode: flags & 0xf,
    questions: [],
    answers: [],
  };
  let pos = DNS_HEADER_LENGTH;
  for (let i = 0; i < qdcount; i++) {
    const { name, next } = nameRead(buf, pos);
    msg.questions.push({ name, type: u16(buf, next, 'question type'), class: u16(buf, next + 2, 'question class') });
    pos = next + 4;
  }
  for (let section = 0; section < 3; section++) {
    for (let i = 0; i < sections[section]!; i++) {
      const { record, next } = recordRead(buf, pos);
      if (section === 0) msg.answers.push(record);
      pos = next;
    }
  }
  if (pos !== buf.length) throw new DnsParseError(`${buf.length - pos} bytes after the last record`);
  return msg;
}

/** The question section's bytes of a message with one question (for echoing it in a reply). */
function firstQuestionEnd(query: Uint8Array): number {
  const { next } = nameRead(query, DNS_HEADER_LENGTH);
  if (next + 4 > query.length) throw new DnsParseError('question runs past the end of the message');
  return next + 4;
}

/**
 * A reply to `query` with only a header and its (first) question: REFUSED for names no rule allows,
 * SERVFAIL when the upstream failed, FORMERR for a query the proxy does not take.
 */
export function dnsErrorReply(query: Uint8Array, rcode: number): Buffer {
  if (query.length < DNS_HEADER_LENGTH) throw new DnsParseError(`message of ${query.length} bytes, shorter than the ${DNS_HEADER_LENGTH}-byte header`);
  let end = DNS_HEADER_LENGTH;
  let qd = 0;
  try {
    if (u16(query, 4, 'count') > 0) {
      end = firstQuestionEnd(query);
      qd = 1;
    }
  } catch {
    // A question we cannot read is not echoed.
  }
  const out = Buffer.alloc(end);
  Buffer.from(query.buffer, query.byteOffset, end).copy(out);
  const flags = (query[2]! << 8) | query[3]!;
  // QR set, opcode and RD kept, RA set (we recurse through the upstream), rcode replaced.
  const replyFlags = 0x8000 | (flags & 0x7900) | 0x0080 | (rcode & 0xf);
  out.writeUInt16BE(replyFlags, 2);
  out.writeUInt16BE(qd, 4);
  out.writeUInt16BE(0, 6);
  out.writeUInt16BE(0, 8);
  out.writeUInt16BE(0, 10);
  return out;
}

function nameWrite(name: string): Buffer {
  const parts = name.replace(/\.$/, '').split('.').filter((l) => l.length > 0);
  const bufs = parts.map((l) => {
    const b = Buffer.from(l, 'ascii');
    if (b.length > LABEL_MAX) throw new RangeError(`label ${l} longer than ${LABEL_MAX}`);
    return Buffer.concat([Buffer.from([b.length]), b]);
  });
  return Buffer.concat([...bufs, Buffer.from([0])]);
}

/** A standard query (RD set) for one name and type. */
export function dnsQueryBuild(id: number, name: string, type: number): Buffer {
  const header = Buffer.alloc(DNS_HEADER_LENGTH);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(0x0100, 2);
  header.writeUInt16BE(1, 4);
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE(type, 0);
  tail.writeUInt16BE(DnsClass.IN, 2);
  return Buffer.concat([header, nameWrite(name), tail]);
}

export interface AnswerRecordInput {
  name: string;
  ttl: number;
  /** An IPv4 or IPv6 address (A / AAAA), or `cname` for a CNAME. */
  address?: string;
  cname?: string;
}

/** A reply to `query` (NOERROR) with the given answers, uncompressed: for the tests' DNS servers. */
export function dnsReplyBuild(query: Uint8Array, answers: readonly AnswerRecordInput[], rcode: number = DnsRcode.NOERROR): Buffer {
  const head = dnsErrorReply(query, rcode);
  head.writeUInt16BE(answers.length, 6);
  const records = answers.map((a) => {
    let type: number;
    let rdata: Buffer;
    if (a.cname !== undefined) {
      type = DnsType.CNAME;
      rdata = nameWrite(a.cname);
    } else if (a.address!.includes(':')) {
      type = DnsType.AAAA;
      rdata = ipv6Bytes(a.address!);
    } else {
      type = DnsType.A;
      rdata = Buffer.from(a.address!.split('.').map(Number));
    }
    const fixed = Buffer.alloc(10);
    fixed.writeUInt16BE(type, 0);
    fixed.writeUInt16BE(DnsClass.IN, 2);
    fixed.writeUInt32BE(a.ttl >>> 0, 4);
    fixed.writeUInt16BE(rdata.length, 8);
    return Buffer.concat([nameWrite(a.name), fixed, rdata]);
  });
  return Buffer.concat([head, ...records]);
}

function ipv6Bytes(text: string): Buffer {
  const [l, r] = text.includes('::') ? text.split('::') : [text, undefined];
  const left = l ? l.split(':') : [];
  const right = r ? r.split(':') : [];
  const groups = r === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

export interface LearnedName {
  /** Lower-case, no trailing dot. */
  name: string;
  addresses: string[];
  /** Seconds: the smallest TTL along the CNAME chain from this name to the addresses. */
  ttl: number;
}

/**
 * What a response teaches: the question's name with the A/AAAA addresses at the end of its CNAME
 * chain, with the smallest TTL on the way (Cilium maps only the question name to the response's
 * addresses; the chain is followed to find them). The names along the chain are not learned: the
 * resolver, which the workload may control, could otherwise teach any name (`CNAME api.bank.example`)
 * that another workload's toFQDNs selects. Records off the chain (an upstream adding unrelated
 * names) are ignored.
 */
export function dnsLearned(msg: DnsMessage): LearnedName[] {
  const q = msg.questions[0];
  if (!q || msg.rcode !== DnsRcode.NOERROR) return [];
  let chained = false;
  for (const a of msg.answers) if (a.data.kind === 'cname') chained = true;
  if (!chained) {
    // Most answers: address records of the asked name itself. What the chain below gives then, without
    // its maps: the name's addresses (each once, in order) with the smallest TTL among its records.
    let addresses: string[] | undefined;
    let ttl = 0;
    for (const a of msg.answers) {
      if (a.data.kind !== 'address' || a.name !== q.name) continue;
      if (!addresses) {
        addresses = [a.data.address];
        ttl = a.ttl;
        continue;
      }
      if (!addresses.includes(a.data.address)) addresses.push(a.data.address);
      ttl = Math.min(ttl, a.ttl);
    }
    return addresses ? [{ name: q.name, addresses, ttl }] : [];
  }
  const cnames = new Map<string, { target: string; ttl: number }>();
  const addrs = new Map<string, Array<{ address: string; ttl: number }>>();
  for (const a of msg.answers) {
    if (a.data.kind === 'cname') cnames.set(a.name, { target: a.data.target, ttl: a.ttl });
    else if (a.data.kind === 'address') (addrs.get(a.name) ?? addrs.set(a.name, []).get(a.name)!).push({ address: a.data.address, ttl: a.ttl });
  }
  const chain: string[] = [];
  let name = q.name;
  while (!chain.includes(name)) {
    chain.push(name);
    if (chain.length > 32) return [];
    const c = cnames.get(name);
    if (!c) break;
    name = c.target;
  }
  // A CNAME loop ends nowhere: nothing to learn.
  if (cnames.has(name) && chain.includes(cnames.get(name)!.target)) return [];
  const final = addrs.get(name) ?? [];
  if (final.length === 0) return [];
  const addresses = [...new Set(final.map((f) => f.address))];
  // The smallest TTL of the address records and of every CNAME from the question to them.
  let ttl = final[0]!.ttl;
  for (const f of final) ttl = Math.min(ttl, f.ttl);
  for (let i = 0; i < chain.length - 1; i++) ttl = Math.min(ttl, cnames.get(chain[i]!)!.ttl);
  return [{ name: q.name, addresses, ttl }];
}
