// `ipcache` LPM trie: remote prefix -> {identity, host}. The key's prefixlen also covers the family byte
// and padding (IPCACHE_PREFIX_FAMILY bits), so IPv4 and IPv6 prefixes never match each other, nor the
// ipBlock view's (`ipblock:PREFIX`, family | IPCACHE_FAMILY_IPBLOCK) any address lookup.
// Host entries (/32, /128) are written to the `ipcache_exact` hash as well, which the datapath asks
// first (bpf/include/maps.h); the trie keeps every entry. Write order and repair: ./exact.ts.
import type { IpcacheEntry } from '../types.js';
import { cidrFormat, cidrParse } from '../addr.js';
import { structDecode, structEncode } from '../layout.js';
import {
  FAMILY_IPV4,
  FAMILY_IPV6,
  IPCACHE_FAMILY_IPBLOCK,
  IPCACHE_KEY,
  IPCACHE_MAP_MAX,
  IPCACHE_PREFIX_FAMILY,
  IPCACHE_PREFIX_V4_HOST,
  IPCACHE_PREFIX_V6_HOST,
  IPCACHE_VALUE,
} from '../layout.gen.js';
import { batchApply, dump, dumpKey, dumpValue, ExactMirror, hashUpdateBatch, OP_UPDATE } from './exact.js';
import type { ExactDiff } from './exact.js';
import type { BpfMap } from './map.js';

/** Keys of the ipBlock view (IPCACHE_FAMILY_IPBLOCK, shared.gen.h) are written `ipblock:PREFIX`. */
const IPBLOCK_VIEW = 'ipblock:';

export function ipcacheKeyEncode(cidr: string, out = Buffer.alloc(IPCACHE_KEY.size), base = 0): Buffer {
  const view = cidr.startsWith(IPBLOCK_VIEW);
  const c = cidrParse(view ? cidr.slice(IPBLOCK_VIEW.length) : cidr);
  return structEncode(IPCACHE_KEY, { prefixlen: IPCACHE_PREFIX_FAMILY + c.prefixLen, family: view ? c.family | IPCACHE_FAMILY_IPBLOCK : c.family, addr: c.addr }, out, base);
}

export function ipcacheKeyDecode(buf: Buffer): string {
  const k = structDecode(IPCACHE_KEY, buf);
  const family = k.family as number;
  const text = cidrFormat({ family: (family & ~IPCACHE_FAMILY_IPBLOCK) as 4 | 6, addr: k.addr as Uint8Array, prefixLen: (k.prefixlen as number) - IPCACHE_PREFIX_FAMILY });
  return family & IPCACHE_FAMILY_IPBLOCK ? IPBLOCK_VIEW + text : text;
}

/** A host entry (/32, /128): the ones that also go into `ipcache_exact`. */
export function ipcacheKeyIsHost(key: Buffer, off = 0): boolean {
  const plen = key.readUInt32LE(off + IPCACHE_KEY.fields.prefixlen.offset);
  const family = key.readUInt8(off + IPCACHE_KEY.fields.family.offset);
  return (family === FAMILY_IPV4 && plen === IPCACHE_PREFIX_V4_HOST) || (family === FAMILY_IPV6 && plen === IPCACHE_PREFIX_V6_HOST);
}

export class IpcacheMap {
  /** Absent with objects of releases before the hash (the trie alone then). */
  readonly exact?: ExactMirror;

  constructor(
    readonly map: BpfMap,
    exact?: BpfMap,
  ) {
    if (exact) this.exact = new ExactMirror(map, exact, IPCACHE_MAP_MAX, ipcacheKeyIsHost);
  }

  upsert(cidr: string, entry: IpcacheEntry): void {
    const key = ipcacheKeyEncode(cidr);
    const value = structEncode(IPCACHE_VALUE, { identity: entry.identity, host_id: entry.hostId });
    this.map.update(key, value);
    if (!this.exact || !ipcacheKeyIsHost(key)) return;
    try {
      this.exact.hash.update(key, value);
    } catch (err) {
      this.exact.forget([key]); // a stale value would shadow the trie's new one
      throw err;
    }
  }

  /**
   * upsert() for many entries in two native calls instead of two syscalls each through N-API (the DNS
   * proxy's burst of new names: one write per event-loop turn). Same order as upsert(): the whole batch
   * into the trie, then its host entries into the hash. When either write fails half-way, the batch's
   * host keys leave the hash (the trie may hold new values for some of them, which an old hash value
   * would shadow); lookups of them fall back to the trie until the next write.
   */
  upsertMany(entries: ReadonlyArray<readonly [string, IpcacheEntry]>): void {
    const n = entries.length;
    if (n === 0) return;
    const ks = IPCACHE_KEY.size;
    const vs = IPCACHE_VALUE.size;
    if (ks !== this.map.keySize || vs !== this.map.valueSize) {
      for (const [cidr, entry] of entries) this.upsert(cidr, entry); // the map's own size error
      return;
    }
    const keys = Buffer.alloc(n * ks);
    const values = Buffer.alloc(n * vs);
    let hosts = 0;
    for (let i = 0; i < n; i++) {
      const [cidr, entry] = entries[i]!;
      ipcacheKeyEncode(cidr, keys, i * ks);
      structEncode(IPCACHE_VALUE, { identity: entry.identity, host_id: entry.hostId }, values, i * vs);
      if (ipcacheKeyIsHost(keys, i * ks)) hosts++;
    }
    const exact = hosts > 0 ? this.exact : undefined;
    const hostKeys = hosts === n ? keys : Buffer.alloc(hosts * ks);
    const hostValues = hosts === n ? values : Buffer.alloc(hosts * vs);
    if (exact && hosts !== n) {
      for (let i = 0, j = 0; i < n; i++) {
        if (!ipcacheKeyIsHost(keys, i * ks)) continue;
        keys.copy(hostKeys, j * ks, i * ks, (i + 1) * ks);
        values.copy(hostValues, j * vs, i * vs, (i + 1) * vs);
        j++;
      }
    }
    try {
      batchApply(this.map, Buffer.alloc(n, OP_UPDATE), keys, values);
      if (exact) hashUpdateBatch(exact.hash, hostKeys, hostValues);
    } catch (err) {
      exact?.forget(Array.from({ length: hosts }, (_, j) => hostKeys.subarray(j * ks, (j + 1) * ks)));
      throw err;
    }
  }

  delete(cidr: string): boolean {
    const key = ipcacheKeyEncode(cidr);
    if (this.exact && ipcacheKeyIsHost(key)) this.exact.hash.delete(key);
    return this.map.delete(key);
  }

  /** Every entry (the trie holds them all). */
  list(): Array<[string, IpcacheEntry]> {
    const d = dump(this.map, this.map.maxEntries); // batch lookups, not a syscall per key from here
    const out: Array<[string, IpcacheEntry]> = [];
    for (let i = 0; i < d.count; i++) {
      const v = structDecode(IPCACHE_VALUE, dumpValue(d, i));
      out.push([ipcacheKeyDecode(dumpKey(d, i)), { identity: v.identity as number, hostId: v.host_id as number }]);
    }
    return out;
  }

  /** Where `ipcache_exact` differs from the trie's host entries, as CIDRs; undefined without the hash. */
  exactDiff(): { missing: string[]; extra: string[] } | undefined {
    if (!this.exact) return undefined;
    const d: ExactDiff = this.exact.diff();
    return { missing: d.missing.map(([k]) => ipcacheKeyDecode(k)), extra: d.extra.map((k) => ipcacheKeyDecode(k)) };
  }
}
