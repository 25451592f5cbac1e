// `endpoints` map: host-side ifindex -> struct endpoint_info, and its index `endpoint_addrs`: workload
// address -> host-side ifindex (for netkit's primary-side program, which cannot go by skb->ifindex).
// Both are written together here, so no caller can let them disagree.
import type { EndpointInfo } from '../types.js';
import { ipv4Format, ipv4Parse, ipv6Format, ipv6Parse, macFormat, macParse } from '../addr.js';
import { structDecode, structEncode } from '../layout.js';
import { ENDPOINT_ADDR_KEY, ENDPOINT_INFO, FAMILY_IPV4, FAMILY_IPV6 } from '../layout.gen.js';
import type { BpfMap } from './map.js';

function u32Key(ifindex: number): Buffer {
  const k = Buffer.alloc(4);
  k.writeUInt32LE(ifindex);
  return k;
}

export function endpointInfoEncode(info: EndpointInfo): Buffer {
  return structEncode(ENDPOINT_INFO, {
    endpoint_id: info.endpointId,
    identity: info.identity,
    ipv4: info.ipv4 ? ipv4Parse(info.ipv4) : new Uint8Array(4),
    ipv6: info.ipv6 ? ipv6Parse(info.ipv6) : new Uint8Array(16),
    mac: info.mac ? macParse(info.mac) : new Uint8Array(6),
    flags: info.flags,
    host_mac: info.hostMac ? macParse(info.hostMac) : new Uint8Array(6),
  });
}

export function endpointInfoDecode(buf: Buffer): EndpointInfo {
  const v = structDecode(ENDPOINT_INFO, buf);
  const ipv4 = v.ipv4 as Uint8Array;
  const ipv6 = v.ipv6 as Uint8Array;
  const mac = v.mac as Uint8Array;
  const hostMac = v.host_mac as Uint8Array;
  const info: EndpointInfo = {
    endpointId: v.endpoint_id as number,
    identity: v.identity as number,
    ipv4: ipv4.some((b) => b) ? ipv4Format(ipv4) : '',
    ipv6: ipv6.some((b) => b) ? ipv6Format(ipv6) : '',
    mac: mac.some((b) => b) ? macFormat(mac) : '',
    flags: v.flags as number,
  };
  // only when set, so entries written without one read back as they were written
  if (hostMac.some((b) => b)) info.hostMac = macFormat(hostMac);
  return info;
}

function addrKey(address: string): Buffer {
  const v4 = !address.includes(':');
  const addr = new Uint8Array(16);
  addr.set(v4 ? ipv4Parse(address) : ipv6Parse(address));
  return structEncode(ENDPOINT_ADDR_KEY, { family: v4 ? FAMILY_IPV4 : FAMILY_IPV6, addr });
}

function addrKeyDecode(buf: Buffer): string {
  const k = structDecode(ENDPOINT_ADDR_KEY, buf);
  const addr = k.addr as Uint8Array;
  return k.family === FAMILY_IPV4 ? ipv4Format(addr) : ipv6Format(addr);
}

const addressesOf = (info: EndpointInfo): string[] => [info.ipv4, info.ipv6].filter((a) => a !== '');

export class EndpointsMap {
  constructor(
    readonly map: BpfMap,
    readonly addrs: BpfMap,
  ) {}

  upsert(ifindex: number, info: EndpointInfo): void {
    const old = this.get(ifindex);
    this.map.update(u32Key(ifindex), endpointInfoEncode(info));
    const now = addressesOf(info);
    for (const a of now) this.addrs.update(addrKey(a), u32Key(ifindex));
    if (old) this.addrsRelease(ifindex, addressesOf(old).filter((a) => !now.includes(a)));
  }

  delete(ifindex: number): boolean {
    const old = this.get(ifindex);
    const deleted = this.map.delete(u32Key(ifindex));
    if (old) this.addrsRelease(ifindex, addressesOf(old));
    return deleted;
  }

  /** Index entries of `ifindex` only: the address may already belong to a newer endpoint. */
  private addrsRelease(ifindex: number, addresses: string[]): void {
    for (const a of addresses) {
      const key = addrKey(a);
      if (this.addrs.lookup(key)?.readUInt32LE(0) === ifindex) this.addrs.delete(key);
    }
  }

  /** The address index: [address, host-side ifindex], sorted by address. */
  addrList(): Array<[string, number]> {
    return [...this.addrs.entries()]
      .map(([k, v]) => [addrKeyDecode(k), v.readUInt32LE(0)] as [string, number])
      .sort((a, b) => a[0].localeCompare(b[0]));
  }

  get(ifindex: number): EndpointInfo | undefined {
    const v = this.map.lookup(u32Key(ifindex));
    return v && endpointInfoDecode(v);
  }

  list(): Array<[number, EndpointInfo]> {
    return [...this.map.entries()].map(([k, v]) => [k.readUInt32LE(0), endpointInfoDecode(v)] as [number, EndpointInfo]).sort((a, b) => a[0] - b[0]);
  }
}
