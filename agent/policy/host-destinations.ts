/**
 * Every destination the host's own stack delivers locally, as ipcache prefixes of the reserved host
 * identity: a workload's packet to any of them reaches host sockets, so policy must see `host`, never
 * `world` (a rule allowing world or 0.0.0.0/0 but not host would otherwise let a workload reach host
 * services through them).
 *
 * - The host's addresses (/32, /128), on every device, running or not.
 * - What the kernel's local routing table (255) delivers to the host: routes of type local (an
 *   address, or a whole prefix: `local 127.0.0.0/8 dev lo`, AnyIP's `ip route add local
 *   198.51.100.0/24 dev lo`), broadcast (`broadcast 192.0.2.255`), anycast (the IPv6 subnet-router
 *   anycast address, `anycast 2001:db8::`, present while the host forwards) and multicast. Read from
 *   the kernel, not computed from an address and its prefix length: the IPv4 network address
 *   (192.0.2.0 for 192.0.2.1/24) is an ordinary unicast address on current kernels, a LAN machine can
 *   own it, and it is host only where the kernel has a route delivering it locally.
 * - IPv4 limited broadcast 255.255.255.255 and multicast 224.0.0.0/4; IPv6 multicast ff00::/8. A
 *   workload's device is point to point: the only receiver of its multicast is the host (the
 *   all-hosts/all-nodes groups are joined on every device, and a socket bound to the wildcard address
 *   receives a group's datagrams by default: IP_MULTICAST_ALL / IPV6_MULTICAST_ALL), or the host's
 *   multicast routing, which is the host's doing too.
 * - IPv6 link-local fe80::/10, whole: a workload's only on-link neighbour is the host side of its
 *   device, so any link-local destination it can reach is the host (workloads' own link-local
 *   addresses are never in the ipcache: they cannot be reached across the host). Local routes inside
 *   these ranges (each device's link-local address, `multicast ff00::/8 dev X`) add nothing.
 *
 * Being host in the ipcache is what a workload's packets to these destinations are judged as; towards a
 * workload only the host's own packets are host (the datapath judges a forwarded packet from a host
 * address as world: bpf/include/ipcache.h, ipcache_source_identity).
 *
 * Cilium differs here: its ipcache gives HOST_ID only to node addresses of a scope below link
 * (`local-max-addr-scope`, RT_SCOPE_LINK - 1 by default: pkg/datapath/tables/node_address.go), so a
 * pod's packet to the node's link-local address, or to a broadcast, resolves to world there. kitnet
 * prefers what the host actually delivers: these are host services, whatever their address.
 */
import type { NetworkInterfaceInfo } from 'node:os';
import { networkInterfaces } from 'node:os';
import { cidrParse, type Cidr } from '../ipam.js';
import { cidrParsed } from './cidr.js';

/** Prefixes that are the host's whatever its addresses. */
export const HOST_RANGES: readonly string[] = ['255.255.255.255/32', '224.0.0.0/4', 'fe80::/10', 'ff00::/8'];

const BITS = { 4: 32, 6: 128 } as const;

/**
 * The host prefixes one interface address adds by itself (pure): the address, and on a loopback device
 * its whole prefix (Linux delivers all of `127.0.0.0/8` locally: the local table says so too, this
 * covers the time before it was read). `cidr` is the address with its prefix length, as node:os reports
 * it (`192.0.2.1/24`); `internal` marks a loopback device. Broadcast and anycast addresses are not
 * derived here: they come from the kernel's local table (hostDestinationsFrom).
 */
export function interfaceAddressDestinations(cidr: string, internal: boolean): string[] {
  const slash = cidr.lastIndexOf('/');
  const address = cidr.slice(0, slash);
  const family = address.includes(':') ? 6 : 4;
  const net: Cidr = cidrParse(cidr);
  const full = BITS[family];
  const host = cidrParse(`${address}/${full}`);
  if (family === 6 && isLinkLocal6(host)) return []; // fe80::/10 covers it
  return internal && net.prefixLength < full ? [host.text, net.text] : [host.text];
}

function isLinkLocal6(c: Cidr): boolean {
  return c.family === 6 && c.network >> 118n === 0x3fan;
}

/**
 * Host prefixes (pure): HOST_RANGES, each address's, then each prefix the local table delivers
 * locally (`localDelivery`, netkit localDeliveryPrefixes) that HOST_RANGES do not cover, without repeats.
 */
export function hostDestinationsFrom(addresses: ReadonlyArray<{ cidr: string; loopback: boolean }>, localDelivery: readonly string[] = []): string[] {
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
  const ranges = new HostDestinationSet(HOST_RANGES);
  for (const p of localDelivery) {
    let c: Cidr;
    try {
      c = cidrParse(p);
    } catch {
      continue;
    }
    if (!ranges.has(c.text)) out.add(c.text);
  }
  return [...out];
}

/**
 * Host prefixes of a node:os interface list (pure): the addresses only, for the time before the kernel's
 * listing (node:os knows no routes; it also leaves out the addresses of devices that are not running).
 */
export function hostDestinationsOf(ifaces: NodeJS.Dict<NetworkInterfaceInfo[]>): string[] {
  const addresses: Array<{ cidr: string; loopback: boolean }> = [];
  for (const addrs of Object.values(ifaces)) {
    for (const a of addrs ?? []) {
      const family = a.family === 'IPv4' ? 4 : 6;
      // node:os gives cidr null for a netmask that is not a prefix: then the address alone
      addresses.push({ cidr: a.cidr ?? `${a.address.split('%')[0]}/${BITS[family]}`, loopback: a.internal });
    }
  }
  return hostDestinationsFrom(addresses);
}

/** What the kernel listed: every address of every device, and the local table's local deliveries. */
export interface HostDestinationListing {
  addresses: ReadonlyArray<{ cidr: string; loopback: boolean }>;
  localDelivery: readonly string[];
}

/**
 * The kernel's last listing (agent/host-address-watch.ts reads it with netlink dumps at start and after
 * every change of an address or of the local table); undefined until then, or once the watch stopped.
 */
let listed: HostDestinationListing | undefined;

export function hostDestinationsListedSet(listing: HostDestinationListing | undefined): void {
  listed = listing;
}

/** The set of the last listing, made once per listing (the watch hands over a new one on every change). */
let listedSet: { listing: HostDestinationListing; set: HostDestinationSet } | undefined;

/**
 * The host destinations of the kernel's last listing as a set, current whenever it is asked (made
 * again only when the listing changed: building it parses every prefix, a millisecond or more on a
 * host with many addresses); undefined before there is a listing.
 */
export function hostDestinationSetListed(): HostDestinationSet | undefined {
  if (!listed) return undefined;
  if (listedSet?.listing !== listed) listedSet = { listing: listed, set: new HostDestinationSet(hostDestinationsFrom(listed.addresses, listed.localDelivery)) };
  return listedSet.set;
}

/**
 * The host prefixes of this host now: from the kernel's last listing, or, before there is one, the
 * addresses node:os reports.
 */
export function hostDestinations(): string[] {
  return listed ? hostDestinationsFrom(listed.addresses, listed.localDelivery) : hostDestinationsOf(networkInterfaces());
}

/**
 * Whether an address, or a prefix, lies inside one of `prefixes` (host prefixes): for the agent's
 * other writers of the ipcache (policy CIDRs, the DNS proxy's learned addresses), which must never give
 * a host destination another identity (a longer prefix would win over the host's in the LPM lookup).
 */
export class HostDestinationSet {
  private readonly exact = new Set<string>();
  private readonly wide: Cidr[] = [];
  /** The IPv4 prefixes again as numbers: a bare IPv4 address (every learned DNS answer's) is judged without a parse into a bigint. */
  private readonly exactV4 = new Set<number>();
  private readonly wideV4: Array<{ network: number; shift: number }> = [];

  constructor(prefixes: readonly string[]) {
    for (const p of prefixes) {
      const c = cidrParse(p);
      if (c.prefixLength === BITS[c.family]) this.exact.add(c.text);
      else this.wide.push(c);
      if (c.family !== 4) continue;
      if (c.prefixLength === 32) this.exactV4.add(Number(c.network));
      else this.wideV4.push({ network: Number(c.network), shift: 32 - c.prefixLength });
    }
  }

  /** `what`: an address (`192.0.2.255`) or a prefix (`fe80::/64`). */
  has(what: string): boolean {
    const v4 = ipv4Dotted(what);
    if (v4 !== undefined) return this.exactV4.has(v4) || this.wideV4.some((w) => w.shift === 32 || Math.floor(v4 / 2 ** w.shift) === Math.floor(w.network / 2 ** w.shift));
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

/**
 * A bare IPv4 address in plain dotted decimal (four numbers 0-255, no leading zeros) as a number;
 * undefined for anything else, which the caller parses the general way (same answers, slower).
 */
export function ipv4Dotted(text: string): number | undefined {
  if (text.length > 15) return undefined;
  let value = 0;
  let part = -1;
  let digits = 0;
  let parts = 0;
  for (let i = 0; i <= text.length; i++) {
    const ch = i < text.length ? text.charCodeAt(i) : 46; // a '.' after the end closes the last part
    if (ch === 46) {
      if (digits === 0 || part > 255 || ++parts > 4) return undefined;
      value = value * 256 + part;
      part = -1;
      digits = 0;
    } else if (ch >= 48 && ch <= 57) {
      if (part === 0) return undefined; // a leading zero: octal to some parsers
      part = (part < 0 ? 0 : part * 10) + (ch - 48);
      digits++;
    } else {
      return undefined;
    }
  }
  return parts === 4 ? value : undefined;
}
