// `conntrack` LRU hash: read for debugging and tests; the datapath owns its content.
import { ipv4Format, ipv6Format } from '../addr.js';
import { structDecode } from '../layout.js';
import { CT_ENTRY, CT_KEY, DIR_INGRESS } from '../layout.gen.js';
import type { BpfMap } from './map.js';

/** A connection as the packet that created it saw it (addresses and ports in its order). */
export interface ConntrackEntry {
  family: 4 | 6;
  protocol: number;
  srcAddr: string;
  dstAddr: string;
  srcPort: number;
  dstPort: number;
  /** Direction of the packet that created the entry. */
  direction: 'INGRESS' | 'EGRESS';
  /** Packets counted by the datapath (a u32 that wraps: statistics). */
  packets: bigint;
  bytes: bigint;
  /** The policy revision (dp_config.policy_revision) the connection was last allowed at. */
  policyRevision: number;
  lastSeenNs: bigint;
  flags: number;
  txFlagsSeen: number;
  rxFlagsSeen: number;
}

export class ConntrackMap {
  constructor(readonly map: BpfMap) {}

  list(): ConntrackEntry[] {
    const out: ConntrackEntry[] = [];
    for (const [k, v] of this.map.entries()) {
      const key = structDecode(CT_KEY, k);
      const e = structDecode(CT_ENTRY, v);
      const fmt = key.family === 4 ? ipv4Format : ipv6Format;
      const local = { addr: fmt(key.laddr as Uint8Array), port: key.lport as number };
      const remote = { addr: fmt(key.raddr as Uint8Array), port: key.rport as number };
      // The key is the connection seen from its endpoint; the creating packet went local -> remote when
      // it left the workload. Entries of the previous layout keep the creating packet's tuple in the key
      // and its direction in v1_direction.
      const v1 = (key.v1_direction as number) !== 0;
      const direction = v1 ? (key.v1_direction as number) : (e.direction as number);
      const [src, dst] = v1 || direction !== DIR_INGRESS ? [local, remote] : [remote, local];
      out.push({
        family: key.family as 4 | 6,
        protocol: key.protocol as number,
        srcAddr: src.addr,
        dstAddr: dst.addr,
        srcPort: src.port,
        dstPort: dst.port,
        direction: direction === DIR_INGRESS ? 'INGRESS' : 'EGRESS',
        packets: BigInt(e.packets as number),
        bytes: e.bytes as bigint,
        policyRevision: e.policy_revision as number,
        lastSeenNs: e.last_seen_ns as bigint,
        flags: e.flags as number,
        txFlagsSeen: e.tx_flags_seen as number,
        rxFlagsSeen: e.rx_flags_seen as number,
      });
    }
    return out;
  }

  /** Remove every entry (tests, `kitnet ct flush`). Returns how many were removed. */
  flush(): number {
    let n = 0;
    for (const k of [...this.map.keys()]) if (this.map.delete(k)) n++;
    return n;
  }
}
