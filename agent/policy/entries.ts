/**
 * The policy map entries of one endpoint, from the (direction, identity, protocol, port) keys its
 * rule sections add: port matches become port-prefix keys, and overlaps are resolved so that the
 * datapath's two longest-prefix lookups give the upstream answer (deny wins; see compile.ts). Within
 * one (direction, identity) group a deny entry is kept only if no shorter deny covers it and an allow
 * entry only if no shorter entry covers it at all (an allow under a deny would hide the deny from the
 * longest-prefix match; an allow under an allow is redundant).
 */
import { ANY_L4_PROTOCOLS, portRangePrefixes, protocolNumber } from './ports.js';
import { STEP } from './slices.js';
import { PROTO_ANY_L4 } from './types.js';
import type { Direction, NamedPort, PolicyEntry, PortMatch } from './types.js';

export interface L4Key {
  protocol: number;
  port: number;
  portPrefixLen: number;
}

export function portsOfMatch(m: PortMatch & { port: number }): L4Key[] {
  const protos = m.protocol === PROTO_ANY_L4 ? [...ANY_L4_PROTOCOLS] : [m.protocol];
  let prefixes: Array<{ port: number; prefixLen: number }>;
  if (m.endPort !== undefined) prefixes = portRangePrefixes(m.port, m.endPort);
  else if (m.port === 0) prefixes = [{ port: 0, prefixLen: 0 }];
  else prefixes = [{ port: m.port, prefixLen: 16 }];
  return protos.flatMap((protocol) => prefixes.map((p) => ({ protocol, port: p.port, portPrefixLen: p.prefixLen })));
}

export function namedPortKeys(m: PortMatch & { port: string }, named: readonly NamedPort[]): L4Key[] {
  const out: L4Key[] = [];
  for (const np of named) {
    if (np.name !== m.port) continue;
    let proto: number;
    try {
      proto = protocolNumber(np.protocol);
    } catch {
      continue;
    }
    const ok = m.protocol === PROTO_ANY_L4 ? (ANY_L4_PROTOCOLS as readonly number[]).includes(proto) : m.protocol === proto;
    if (ok) out.push({ protocol: proto, port: np.port, portPrefixLen: 16 });
  }
  return out;
}

export interface Acc {
  k: L4Key;
  allow: Set<string>;
  deny: Set<string>;
}

/** Raw (unresolved) entries of one endpoint: direction -> identity -> l4 key -> rule refs. */
export class RawEntries {
  readonly m = new Map<Direction, Map<number, Map<string, Acc>>>();
  /** Adds made so far: the compile yields every STEP of them. */
  count = 0;
  /** Whether a yield point was reached (call after an add). */
  due(): boolean {
    return this.count % STEP === 0;
  }
  add(direction: Direction, identity: number, k: L4Key, deny: boolean, ref: string): void {
    this.count++;
    let byId = this.m.get(direction);
    if (!byId) this.m.set(direction, (byId = new Map()));
    let byKey = byId.get(identity);
    if (!byKey) byId.set(identity, (byKey = new Map()));
    const key = `${k.protocol}/${k.port}/${k.portPrefixLen}`;
    let acc = byKey.get(key);
    if (!acc) byKey.set(key, (acc = { k, allow: new Set(), deny: new Set() }));
    (deny ? acc.deny : acc.allow).add(ref);
  }
}

/** The 24-bit (protocol, port) space position of an entry: value and prefix length. */
function bits(e: { protocol: number; port: number; portPrefixLen: number }): { v: number; len: number } {
  return { v: (e.protocol << 16) | e.port, len: e.protocol === 0 ? 0 : 8 + e.portPrefixLen };
}

/** Whether a covers b (a is b or a shorter prefix containing b). */
export function covers(a: PolicyEntry, b: PolicyEntry): boolean {
  const A = bits(a);
  const B = bits(b);
  if (A.len > B.len) return false;
  if (A.len === 0) return true;
  const shift = 24 - A.len;
  return A.v >>> shift === B.v >>> shift;
}

export function entryCompare(a: PolicyEntry, b: PolicyEntry): number {
  return (
    (a.direction === b.direction ? 0 : a.direction === 'ingress' ? -1 : 1) ||
    a.identity - b.identity ||
    a.protocol - b.protocol ||
    a.port - b.port ||
    a.portPrefixLen - b.portPrefixLen
  );
}

/** Resolves one (direction, identity) group so that longest-prefix match gives deny-wins semantics. */
export function groupResolve(direction: Direction, identity: number, byKey: Map<string, Acc>, implicit: Map<string, PolicyEntry['implicit']>): PolicyEntry[] {
  const entries: Array<{ e: PolicyEntry; len: number; v: number }> = [];
  for (const [key, acc] of byKey) {
    const { protocol, port, portPrefixLen } = acc.k;
    const deny = acc.deny.size > 0;
    const refs = deny ? acc.deny : acc.allow;
    const rules = refs.size === 1 ? [...refs] : [...refs].sort();
    const e: PolicyEntry = { direction, identity, protocol, port, portPrefixLen, deny, rules };
    const imp = implicit.size ? implicit.get(`${direction}/${identity}/${key}`) : undefined;
    if (imp && !deny) e.implicit = imp;
    const b = bits(e);
    entries.push({ e, len: b.len, v: b.v });
  }
  if (entries.length === 1) return [entries[0]!.e];
  entries.sort((a, b) => a.len - b.len || a.v - b.v);
  const kept: typeof entries = [];
  for (const x of entries) {
    let drop = false;
    for (const k of kept) {
      if (k.len > x.len) continue;
      const covered = k.len === 0 || k.v >>> (24 - k.len) === x.v >>> (24 - k.len);
      // a deny is redundant under a deny; an allow is redundant (or would hide a deny) under anything
      if (covered && (!x.e.deny || k.e.deny)) {
        drop = true;
        break;
      }
    }
    if (!drop) kept.push(x);
  }
  return kept.map((x) => x.e);
}
