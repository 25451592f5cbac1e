/**
 * Every destination the host's own stack delivers locally, as ipcache prefixes of the reserved host
 * identity: a workload's packet to any of them reaches host sockets, so policy must see `host`, never
 * `world` (a rule allowing world or 0.0.0.0/0 but not host would otherwise let a workload reach host
 * services through them).
 *
 * - The host's addresses (/32, /128), as before.
 * - IPv4, per interface address with a prefix shorter than /31: the subnet broadcast (192.0.2.255 for
 *   192.0.2.1/24, which Linux routes as `broadcast ... table local`) and the network address (older
 *   kernels add a broadcast route for it too; no host on the subnet can own it). An address on a
 *   loopback device makes its whole prefix local (`local 127.0.0.0/8 dev lo`): the prefix is written.
 * - IPv4 limited broadcast 255.255.255.255 and multicast 224.0.0.0/4; IPv6 multicast ff00::/8. A
 *   workload's device is point to point: the only receiver of its multicast is the host (the
 *   all-hosts/all-nodes groups are joined on every device, and a socket bound to the wildcard address
 *   receives a group's datagrams by default: IP_MULTICAST_ALL / IPV6_MULTICAST_ALL), or the host's
 *   multicast routing, which is the host's doing too.
 * - IPv6 link-local fe80::/10, whole: a workload's only on-link neighbour is the host side of its
 *   device, so any link-local destination it can reach is the host (workloads' own link-local
 *   addresses are never in the ipcache: they cannot be reached across the host).
 * - IPv6, per global or ULA address with a prefix shorter than /127: the subnet-router anycast address
 *   (the prefix with an all-zero host part, RFC 4291 2.6.1), which Linux answers locally while it
 *   forwards (`anycast 2001:db8:: ... table local`); written whether or not forwarding is on now.
 *
 * Cilium differs here: its ipcache gives HOST_ID only to node addresses of a scope below link
 * (`local-max-addr-scope`, RT_SCOPE_LINK - 1 by default: pkg/datapath/tables/node_address.go), so a
 * pod's packet to the node's link-local address, or to a broadcast, resolves to world there. kitnet
 * prefers what the host actually delivers: these are host services, whatever their address.
 */
import type { NetworkInterfaceInfo } from 'node:os';
import { networkInterfaces } from 'node:os';
import { bigintToAddress, cidrParse, type Cidr } from '../ipam.js';
import { cidrParsed } from './cidr.js';

/** Prefixes that are the host's whatever its addresses. */
export const HOST_RANGES: readonly string[] = ['255.255.255.255/32', '224.0.0.0/4', 'fe80::/10', 'ff00::/8'];

const BITS = { 4: 32, 6: 128 } as const;

/** One address as its host prefix. */
function hostPrefixOf(family: 4 | 6, value: bigint): string {
  return `${bigintToAddress(value, family)}/${BITS[family]}`;
}

/**
 * The host prefixes one interface address adds (pure: the address arithmetic). `cidr` is the address
 * with its prefix length, as node:os reports it (`192.0.2.1/24`); `internal` marks a loopback device.
 */
export function interfaceAddressDestinations(cidr: string, internal: boolean): string[] {
  const slash = cidr.lastIndexOf('/');
  const address = cidr.slice(0, slash);
  const family = address.includes(':') ? 6 : 4;
  const net: Cidr = cidrParse(cidr);
  const len = net.prefixLength;
  const full = BITS[family];
  const host = cidrParse(`${address}/${full}`);
  if (family === 6 && isLinkLocal6(host)) return []; // fe80::/10 covers it
  const out = [host.text];
  if (family === 4) {
    if (internal) {
      if (len < full) out.push(net.text);
    } else if (len < 31) {
      const hostMask = (1n << BigInt(full - len)) - 1n;
      out.push(hostPrefixOf(4, net.network), hostPrefixOf(4, net.network | hostMask));
    }
  } else if (len < 127) {
    out.push(hostPrefixOf(6, net.network));
  }
  return out;
}

function isLinkLocal6(c: Cidr): boolean {
  return c.family === 6 && c.network >> 118n === 0x3fan;
}

/** Host prefixes of a list of interface addresses (pure): HOST_RANGES, then each address's, without repeats. */
export function hostDestinationsFromAddresses(addresses: ReadonlyArray<{ cidr: string; loopback: boolean }>): string[] {
  const out = new Set<string>(HOST_RANGES);
  for (const a of addresses) {
    let prefixes: string[];
    try {
      prefixes = interfaceAddressDestinations(a.cidr, a.loopback);
    } catch {
      continue; // not an address ipaddr.js reads: one odd address must not stop the others' entries
    }
    for (const p of prefixes) out.add(p);
  }
  return [...out];
}

/** Host prefixes of a node:os interface list (pure). */
export function hostDestinationsOf(ifaces: NodeJS.Dict<NetworkInterfaceInfo[]>): string[] {
  const addresses: Array<{ cidr: string; loopback: boolean }> = [];
  for (const addrs of Object.values(ifaces)) {
    for (const a of addrs ?? []) {
      const family = a.family === 'IPv4' ? 4 : 6;
      // node:os gives cidr null for a netmask that is not a prefix: then the address alone
      addresses.push({ cidr: a.cidr ?? `${a.address.split('%')[0]}/${BITS[family]}`, loopback: a.internal });
    }
  }
  return hostDestinationsFromAddresses(addresses);
}

/**
 * The host's addresses as the kernel listed them last (agent/host-address-watch.ts reads them with a
 * netlink dump at start and after every change); undefined until then, or once the watch stopped.
 */
let listed: ReadonlyArray<{ cidr: string; loopback: boolean }> | undefined;

export function hostAddressesListedSet(addresses: ReadonlyArray<{ cidr: string; loopback: boolean }> | undefined): void {
  listed = addresses;
}

/**
 * The host prefixes of this host now: from the kernel's last listing of its addresses, or, before there
 * is one, from node:os (which leaves out the addresses of devices that are not running).
 */
export function hostDestinations(): string[] {
  return listed ? hostDestinationsFromAddresses(listed) : hostDestinationsOf(networkInterfaces());
}

/**
 * Whether an address, or a prefix, lies inside one of `prefixes` (host prefixes): for the agent's
 * other writers of the ipcache (policy CIDRs, the DNS proxy's learned addresses), which must never give
 * a host destination another identity (a longer prefix would win over the host's in the LPM lookup).
 */
export class HostDestinationSet {
  private readonly exact = new Set<string>();
  private readonly wide: Cidr[] = [];

  constructor(prefixes: readonly string[]) {
    for (const p of prefixes) {
      const c = cidrParse(p);
      if (c.prefixLength === BITS[c.family]) this.exact.add(c.text);
      else this.wide.push(c);
    }
  }

  /** `what`: an address (`192.0.2.255`) or a prefix (`fe80::/64`). */
  has(what: string): boolean {
    let c: Cidr;
    try {
      c = cidrParsed(what.includes('/') ? what : `${what}/${what.includes(':') ? 128 : 32}`); // cached: policies repeat prefixes
    } catch {
      return false;
    }
    if (c.prefixLength === BITS[c.family] && this.exact.has(c.text)) return true;
    return this.wide.some((w) => {
      if (w.family !== c.family || c.prefixLength < w.prefixLength) return false;
      const shift = BigInt(BITS[w.family] - w.prefixLength);
      return c.network >> shift === w.network >> shift;
    });
  }
}
