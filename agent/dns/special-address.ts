/**
 * Addresses a workload cannot reach by itself through its own routing: the host's loopback and
 * "this host" addresses, link-local, multicast and broadcast ones, the IPv4-in-IPv6 forms (an agent's
 * IPv6 socket sends ::ffff:a.b.c.d to a.b.c.d), and the reserved rest of the spaces. The DNS proxy
 * never forwards a query addressed to one (agent/dns/steering.ts: from the host it would reach
 * resolvers listening on the host only, or any IPv4 address with the host's identity), and never
 * learns one from an answer (a toFQDNs rule does not allow them).
 *
 * IPv4 link-local (169.254.0.0/16) is not among them: the host routes it like any other address (cloud
 * metadata services and resolvers live there: 169.254.169.254, AWS's 169.254.169.253), and so it
 * routes the workload's own packets to it; policy judges it as any address. The proxy's own address
 * there is refused by the caller.
 */
import ipaddr from 'ipaddr.js';

export type SpecialAddressKind =
  | 'unspecified'
  | 'loopback'
  | 'link-local'
  | 'multicast'
  | 'broadcast'
  | 'reserved'
  | 'ipv4-mapped'
  | 'ipv4-compatible'
  | 'not an address';

/** The kind of special address `address` is (IPv4 dotted quad or IPv6 text), undefined for an ordinary one. */
export function specialAddressKind(address: string): SpecialAddressKind | undefined {
  if (!address.includes(':')) {
    // The proxy's answers and maps give dotted quads: no parse for the common case.
    const parts = address.split('.');
    if (parts.length !== 4) return 'not an address';
    const a = Number(parts[0]);
    if (parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) return 'not an address';
    if (a === 0) return 'unspecified'; // 0.0.0.0/8, "this network"
    if (a === 127) return 'loopback';
    if (a >= 224 && a < 240) return 'multicast';
    if (address === '255.255.255.255') return 'broadcast';
    if (a >= 240) return 'reserved';
    return undefined;
  }
  let bytes: number[];
  try {
    bytes = ipaddr.IPv6.parse(address).toByteArray();
  } catch {
    return 'not an address';
  }
  const zeros = (n: number) => bytes.slice(0, n).every((x) => x === 0);
  if (zeros(16)) return 'unspecified';
  if (zeros(15) && bytes[15] === 1) return 'loopback';
  if (bytes[0] === 0xff) return 'multicast';
  if (bytes[0] === 0xfe && (bytes[1]! & 0xc0) === 0x80) return 'link-local';
  if (zeros(10) && bytes[10] === 0xff && bytes[11] === 0xff) return 'ipv4-mapped';
  if (zeros(12)) return 'ipv4-compatible';
  return undefined;
}
