// Address conversions between the strings the agent uses and the network-order bytes the maps hold.
// Formatting is on the flow hot path (two addresses per event), so it avoids regexes and allocations
// beyond the result string.
import { isIPv4, isIPv6 } from 'node:net';

export function ipv4Parse(s: string): Uint8Array {
  if (!isIPv4(s)) throw new TypeError(`not an IPv4 address: ${JSON.stringify(s)}`);
  return Uint8Array.from(s.split('.').map(Number));
}

export function ipv6Parse(s: string): Uint8Array {
  if (!isIPv6(s)) throw new TypeError(`not an IPv6 address: ${JSON.stringify(s)}`);
  const out = new Uint8Array(16);
  let str = s.replace(/%.*$/, '');
  // trailing embedded IPv4 (::ffff:1.2.3.4) becomes two hextets
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(str);
  if (v4?.[1]) {
    const b = ipv4Parse(v4[1]);
    str = str.slice(0, -v4[1].length) + `${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const [head = '', tail] = str.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 0xff;
  });
  return out;
}

export function ipv4Format(b: Uint8Array, off = 0): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

/** RFC 5952 text form: lowercase, the longest run (>= 2) of zero groups compressed to `::`. */
export function ipv6Format(b: Uint8Array, off = 0): string {
  const g = [0, 0, 0, 0, 0, 0, 0, 0];
  let bestStart = -1;
  let bestLen = 1;
  let runStart = -1;
  for (let i = 0; i < 8; i++) {
    const v = (b[off + i * 2]! << 8) | b[off + i * 2 + 1]!;
    g[i] = v;
    if (v === 0) {
      if (runStart < 0) runStart = i;
      if (i - runStart + 1 > bestLen) {
        bestLen = i - runStart + 1;
        bestStart = runStart;
      }
    } else runStart = -1;
  }
  if (bestStart < 0) return g.map((x) => x.toString(16)).join(':');
  let s = '';
  for (let i = 0; i < bestStart; i++) s += (i ? ':' : '') + g[i]!.toString(16);
  s += '::';
  for (let i = bestStart + bestLen; i < 8; i++) s += (i > bestStart + bestLen ? ':' : '') + g[i]!.toString(16);
  return s;
}

export function macParse(s: string): Uint8Array {
  const parts = s.split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p))) throw new TypeError(`not a MAC address: ${JSON.stringify(s)}`);
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

export function macFormat(b: Uint8Array, off = 0): string {
  let s = '';
  for (let i = 0; i < 6; i++) s += (i ? ':' : '') + b[off + i]!.toString(16).padStart(2, '0');
  return s;
}

export interface Cidr {
  family: 4 | 6;
  /** 16 bytes, network order; IPv4 in the first 4, host bits cleared. */
  addr: Uint8Array;
  prefixLen: number;
}

/** `10.0.0.0/8`, `fd00::5/128`, or a bare address (host prefix). Host bits are cleared. */
export function cidrParse(s: string): Cidr {
  const slash = s.indexOf('/');
  const ip = slash < 0 ? s : s.slice(0, slash);
  const family = isIPv4(ip) ? 4 : isIPv6(ip) ? 6 : 0;
  if (!family) throw new TypeError(`not a CIDR: ${JSON.stringify(s)}`);
  const max = family === 4 ? 32 : 128;
  const lenStr = slash < 0 ? String(max) : s.slice(slash + 1);
  const prefixLen = /^\d{1,3}$/.test(lenStr) ? Number(lenStr) : NaN;
  if (!(prefixLen >= 0 && prefixLen <= max)) throw new TypeError(`bad prefix length in ${JSON.stringify(s)}`);
  const addr = new Uint8Array(16);
  addr.set(family === 4 ? ipv4Parse(ip) : ipv6Parse(ip));
  for (let bit = prefixLen; bit < max; bit++) addr[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return { family, addr, prefixLen };
}

export function cidrFormat(c: Cidr): string {
  return `${c.family === 4 ? ipv4Format(c.addr) : ipv6Format(c.addr)}/${c.prefixLen}`;
}
