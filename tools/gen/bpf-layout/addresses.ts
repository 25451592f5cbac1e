// Addresses the datapath and the TypeScript side share. Part of the generator (../bpf-layout.ts).

/**
 * Addresses shared by the datapath and the TypeScript side. C gets byte initialisers
 * (`#define GATEWAY_IPV4_INIT { 169, 254, 1, 1 }`) and TS the text (`export const GATEWAY_IPV4 = '169.254.1.1'`).
 */
export const ADDRESSES: Array<[name: string, text: string, doc: string]> = [
  ['GATEWAY_IPV4', '169.254.1.1', 'IPv4 default gateway of every workload; the datapath answers ARP for it (endpoint_info.host_mac)'],
  ['GATEWAY_IPV6', 'fe80::1', 'IPv6 default gateway of every workload; the datapath answers neighbour solicitations for it'],
];

/** Bytes of a textual IPv4 or IPv6 address (the generator compiles alone, so no import from bpf/addr.ts). */
export function addressBytes(text: string): number[] {
  if (!text.includes(':')) {
    const parts = text.split('.').map(Number);
    if (parts.length !== 4 || parts.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) throw new Error(`bad IPv4 address ${text}`);
    return parts;
  }
  const halves = text.split('::');
  if (halves.length > 2) throw new Error(`bad IPv6 address ${text}`);
  const words = (h: string | undefined) => (h ? h.split(':').map((w) => parseInt(w, 16)) : []);
  const head = words(halves[0]);
  const tail = words(halves[1]);
  const fill = halves.length === 2 ? 8 - head.length - tail.length : 0;
  const all = [...head, ...Array<number>(fill).fill(0), ...tail];
  if (all.length !== 8 || all.some((w) => !Number.isInteger(w) || w < 0 || w > 0xffff)) throw new Error(`bad IPv6 address ${text}`);
  return all.flatMap((w) => [w >> 8, w & 0xff]);
}
