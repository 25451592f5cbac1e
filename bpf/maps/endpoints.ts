// `endpoints` map: host-side ifindex -> struct endpoint_info.
import type { EndpointInfo } from '../types.js';
import { ipv4Format, ipv4Parse, ipv6Format, ipv6Parse, macFormat, macParse } from '../addr.js';
import { structDecode, structEncode } from '../layout.js';
import { ENDPOINT_INFO } from '../layout.gen.js';
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

export class EndpointsMap {
  constructor(readonly map: BpfMap) {}

  upsert(ifindex: number, info: EndpointInfo): void {
    this.map.update(u32Key(ifindex), endpointInfoEncode(info));
  }

  delete(ifindex: number): boolean {
    return this.map.delete(u32Key(ifindex));
  }

  get(ifindex: number): EndpointInfo | undefined {
    const v = this.map.lookup(u32Key(ifindex));
    return v && endpointInfoDecode(v);
  }

  list(): Array<[number, EndpointInfo]> {
    return [...this.map.entries()].map(([k, v]) => [k.readUInt32LE(0), endpointInfoDecode(v)] as [number, EndpointInfo]).sort((a, b) => a[0] - b[0]);
  }
}
