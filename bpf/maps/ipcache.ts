// `ipcache` LPM trie: remote prefix -> {identity, host}. The key's prefixlen also covers the family byte
// and padding (32 bits), so IPv4 and IPv6 prefixes never match each other.
import type { IpcacheEntry } from '../types.js';
import { cidrFormat, cidrParse } from '../addr.js';
import { structDecode, structEncode } from '../layout.js';
import { IPCACHE_KEY, IPCACHE_VALUE } from '../layout.gen.js';
import type { BpfMap } from './map.js';

const KEY_PREFIX_BITS = 32;

export function ipcacheKeyEncode(cidr: string): Buffer {
  const c = cidrParse(cidr);
  return structEncode(IPCACHE_KEY, { prefixlen: KEY_PREFIX_BITS + c.prefixLen, family: c.family, addr: c.addr });
}

export function ipcacheKeyDecode(buf: Buffer): string {
  const k = structDecode(IPCACHE_KEY, buf);
  return cidrFormat({ family: k.family as 4 | 6, addr: k.addr as Uint8Array, prefixLen: (k.prefixlen as number) - KEY_PREFIX_BITS });
}

export class IpcacheMap {
  constructor(readonly map: BpfMap) {}

  upsert(cidr: string, entry: IpcacheEntry): void {
    this.map.update(ipcacheKeyEncode(cidr), structEncode(IPCACHE_VALUE, { identity: entry.identity, host_id: entry.hostId }));
  }

  delete(cidr: string): boolean {
    return this.map.delete(ipcacheKeyEncode(cidr));
  }

  list(): Array<[string, IpcacheEntry]> {
    return [...this.map.entries()].map(([k, v]) => {
      const d = structDecode(IPCACHE_VALUE, v);
      return [ipcacheKeyDecode(k), { identity: d.identity as number, hostId: d.host_id as number }] as [string, IpcacheEntry];
    });
  }
}
