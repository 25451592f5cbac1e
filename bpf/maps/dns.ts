// DNS steering maps (bpf/include/dns.h, issue #17): where the proxy listens, which endpoints' DNS is
// steered to it, and the destination each steered client socket addressed (its resolver).
import { ipv4Format, ipv4Parse, ipv6Format, ipv6Parse } from '../addr.js';
import { structDecode, structEncode } from '../layout.js';
import { DNS_PROXY_CONFIG, DNS_PROXY_F_SET, DNS_REDIRECT_KEY, DNS_REDIRECT_VALUE, FAMILY_IPV4, FAMILY_IPV6 } from '../layout.gen.js';
import type { BpfMap } from './map.js';

const KEY0 = Buffer.alloc(4);
const ONE = Buffer.from([1, 0, 0, 0]);

export interface DnsProxyAddress {
  /** 0 = no proxy: nothing is steered. */
  port: number;
  ipv4: string;
  ipv6: string;
}

/** Parsed client addresses: the proxy asks for the same few workload addresses on every query. */
const addrMemo = new Map<string, { family: number; addr: Uint8Array }>();
const ADDR_MEMO_MAX = 4096;

function addrBytes(address: string): { family: number; addr: Uint8Array } {
  let a = addrMemo.get(address);
  if (a) return a;
  const v6 = address.includes(':');
  const out = new Uint8Array(16);
  out.set(v6 ? ipv6Parse(address) : ipv4Parse(address));
  if (addrMemo.size >= ADDR_MEMO_MAX) addrMemo.clear();
  addrMemo.set(address, (a = { family: v6 ? FAMILY_IPV6 : FAMILY_IPV4, addr: out }));
  return a;
}

const REDIRECT_KEY = DNS_REDIRECT_KEY.fields;
const REDIRECT_VALUE = DNS_REDIRECT_VALUE.fields;

export class DnsSteeringMaps {
  constructor(
    private readonly proxy: BpfMap,
    private readonly endpoints: BpfMap,
    private readonly redirect: BpfMap,
  ) {}

  private readonly redirectKey = Buffer.alloc(DNS_REDIRECT_KEY.size);
  private readonly redirectValue = Buffer.alloc(DNS_REDIRECT_VALUE.size);
  /** The last destination read, and its value bytes: most queries go to the resolver the last one went to. */
  private readonly lastValue = Buffer.alloc(DNS_REDIRECT_VALUE.size);
  private lastDestination: Readonly<{ address: string; port: number }> | undefined;
  private lastFamily = 0;

  proxySet(p: DnsProxyAddress): void {
    this.proxy.update(KEY0, structEncode(DNS_PROXY_CONFIG, { port: p.port, flags: p.port ? DNS_PROXY_F_SET : 0, ipv4: ipv4Parse(p.ipv4), ipv6: ipv6Parse(p.ipv6) }));
  }

  proxyGet(): DnsProxyAddress | undefined {
    const v = this.proxy.lookup(KEY0);
    if (!v) return undefined;
    const d = structDecode(DNS_PROXY_CONFIG, v);
    if (!((d.flags as number) & DNS_PROXY_F_SET)) return undefined;
    return { port: d.port as number, ipv4: ipv4Format(d.ipv4 as Uint8Array), ipv6: ipv6Format(d.ipv6 as Uint8Array) };
  }

  /** Makes the steered endpoints exactly `ids` (adds first: an endpoint never loses steering mid-change). */
  endpointsSet(ids: ReadonlySet<number>): void {
    const present = new Set<number>();
    for (const k of this.endpoints.keys()) present.add(k.readUInt32LE(0));
    for (const id of ids) {
      if (present.has(id)) continue;
      const k = Buffer.alloc(4);
      k.writeUInt32LE(id, 0);
      this.endpoints.update(k, ONE);
    }
    for (const id of present) {
      if (ids.has(id)) continue;
      const k = Buffer.alloc(4);
      k.writeUInt32LE(id, 0);
      this.endpoints.delete(k);
    }
  }

  endpointsList(): number[] {
    return [...this.endpoints.keys()].map((k) => k.readUInt32LE(0));
  }

  /** The `dns_redirect` map's descriptor (the DNS proxy's fast path reads it in its own thread). */
  get redirectFd(): number {
    return this.redirect.fd;
  }

  /**
   * The destination a steered client (workload address, source port, 6 or 17) addressed, if known. Read
   * for every query the proxy takes: key and value go through buffers kept for them (the kernel copies
   * both during the call), and a destination equal to the last one read is that same frozen object.
   */
  originalDestination(client: string, port: number, protocol: number): Readonly<{ address: string; port: number }> | undefined {
    const { family, addr } = addrBytes(client);
    const key = this.redirectKey;
    key.set(addr, REDIRECT_KEY.addr.offset);
    key.writeUInt16LE(port, REDIRECT_KEY.port.offset);
    key.writeUInt8(protocol, REDIRECT_KEY.protocol.offset);
    key.writeUInt8(family, REDIRECT_KEY.family.offset);
    const v = this.redirectValue;
    if (!this.redirect.lookupInto(key, v)) return undefined;
    if (this.lastDestination && family === this.lastFamily && v.equals(this.lastValue)) return this.lastDestination;
    const at = REDIRECT_VALUE.addr.offset;
    // The value's family is the key's: a steered packet keeps its family.
    const destination = Object.freeze({ address: family === FAMILY_IPV4 ? ipv4Format(v, at) : ipv6Format(v, at), port: v.readUInt16LE(REDIRECT_VALUE.port.offset) });
    v.copy(this.lastValue);
    this.lastFamily = family;
    this.lastDestination = destination;
    return destination;
  }
}
