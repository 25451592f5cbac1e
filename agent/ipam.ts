import ipaddr from 'ipaddr.js';

/** A parsed CIDR with the network address as a bigint, so v4 and v6 share one code path. */
export interface Cidr {
  family: 4 | 6;
  network: bigint;
  prefixLength: number;
  /** Canonical text, e.g. `10.200.0.0/16`, `fd00:200::/64`. */
  text: string;
}

const BITS = { 4: 32, 6: 128 } as const;

export class IpamError extends Error {
  override name = 'IpamError';
  constructor(
    readonly code: 'BAD_ADDRESS' | 'OUT_OF_POOL' | 'ADDRESS_TAKEN' | 'POOL_EXHAUSTED',
    message: string,
  ) {
    super(message);
  }
}

export function addressToBigint(addr: ipaddr.IPv4 | ipaddr.IPv6): bigint {
  return addr.toByteArray().reduce((acc, byte) => (acc << 8n) | BigInt(byte), 0n);
}

export function bigintToAddress(value: bigint, family: 4 | 6): string {
  const bytes: number[] = [];
  for (let i = 0; i < BITS[family] / 8; i++) {
    bytes.unshift(Number(value & 0xffn));
    value >>= 8n;
  }
  return ipaddr.fromByteArray(bytes).toString();
}

/** Parses an address (no prefix); throws IpamError BAD_ADDRESS. */
export function addressParse(text: string): { family: 4 | 6; value: bigint; text: string } {
  // A zone (`fd00::3%x`) would stay in the text while the maps take the address without it: the
  // same BPF key under two texts, which defeats every comparison made on the text.
  if (text.includes('%')) throw new IpamError('BAD_ADDRESS', `"${text.slice(0, 80)}" carries an IPv6 zone (%...): an address without one is expected`);
  if (!ipaddr.isValid(text)) throw new IpamError('BAD_ADDRESS', `"${text}" is not an IP address`);
  const addr = ipaddr.parse(text);
  const family = addr.kind() === 'ipv4' ? 4 : 6;
  if (family === 6 && (addr as ipaddr.IPv6).isIPv4MappedAddress()) {
    throw new IpamError('BAD_ADDRESS', `"${text}" is an IPv4-mapped IPv6 address; give the IPv4 address instead`);
  }
  return { family, value: addressToBigint(addr), text: addr.toString() };
}

export function cidrParse(text: string): Cidr {
  let parsed: [ipaddr.IPv4 | ipaddr.IPv6, number];
  try {
    // The family by the text (only IPv6 has ':'): ipaddr.parseCIDR tries IPv6 first, and its throw
    // for every IPv4 CIDR made 60k-CIDR policies spend seconds here.
    parsed = text.includes(':') ? ipaddr.IPv6.parseCIDR(text) : ipaddr.IPv4.parseCIDR(text);
  } catch {
    throw new IpamError('BAD_ADDRESS', `"${text}" is not a CIDR (expected e.g. 10.200.0.0/16)`);
  }
  const [addr, prefixLength] = parsed;
  const family = addr.kind() === 'ipv4' ? 4 : 6;
  const hostBits = BigInt(BITS[family] - prefixLength);
  const network = (addressToBigint(addr) >> hostBits) << hostBits;
  return { family, network, prefixLength, text: `${bigintToAddress(network, family)}/${prefixLength}` };
}

export function cidrContains(cidr: Cidr, family: 4 | 6, value: bigint): boolean {
  if (family !== cidr.family) return false;
  const hostBits = BigInt(BITS[family] - cidr.prefixLength);
  return value >> hostBits === cidr.network >> hostBits;
}

/**
 * Address allocation within one pool. Pure logic: the caller supplies the addresses in use (from the
 * store), so there is a single source of truth and nothing to get out of sync after a crash.
 * The first usable address is network+2 for IPv4 (network+1 stays free for a future gateway and the
 * network/broadcast addresses are never handed out) and network+2 for IPv6 alike.
 */
export class Pool {
  readonly cidr: Cidr;
  private readonly first: bigint;
  private readonly last: bigint;

  constructor(cidrText: string) {
    this.cidr = cidrParse(cidrText);
    const size = 1n << BigInt(BITS[this.cidr.family] - this.cidr.prefixLength);
    this.first = this.cidr.network + 2n;
    this.last = this.cidr.network + size - (this.cidr.family === 4 ? 2n : 1n);
    if (this.last < this.first) throw new IpamError('POOL_EXHAUSTED', `pool ${this.cidr.text} is too small to allocate from`);
  }

  get family(): 4 | 6 {
    return this.cidr.family;
  }

  /** Validates a requested address: right family, inside the pool, usable, not taken. Returns canonical text. */
  check(requested: string, inUse: ReadonlySet<string>, field: string): string {
    let parsed;
    try {
      parsed = addressParse(requested);
    } catch (err) {
      throw new IpamError('BAD_ADDRESS', `${field}: ${(err as Error).message}`);
    }
    if (parsed.family !== this.family) {
      throw new IpamError('BAD_ADDRESS', `${field}: "${requested}" is not an IPv${this.family} address`);
    }
    if (!cidrContains(this.cidr, parsed.family, parsed.value) || parsed.value < this.first || parsed.value > this.last) {
      throw new IpamError('OUT_OF_POOL', `${field}: ${parsed.text} is outside the usable range of pool ${this.cidr.text}`);
    }
    if (inUse.has(parsed.text)) throw new IpamError('ADDRESS_TAKEN', `${field}: ${parsed.text} is already in use`);
    return parsed.text;
  }

  /**
   * Value of an in-use address text if it lies in this pool's range. Memoised: registration calls
   * allocate() with every address in use, and parsing them all each time grew with the workload count.
   */
  private valueOf(text: string): bigint | undefined {
    let v = this.values.get(text);
    if (v === undefined && !this.values.has(text)) {
      const a = addressParse(text);
      v = a.family === this.family && a.value >= this.first && a.value <= this.last ? a.value : undefined;
      this.values.set(text, v);
    }
    return v;
  }

  private readonly values = new Map<string, bigint | undefined>();

  /**
   * Lowest free address. `inUse` holds canonical texts. Runs in O(used) by scanning the sorted used
   * values for the first gap, so it stays fast for large pools that are mostly empty.
   */
  allocate(inUse: ReadonlySet<string>, field: string): string {
    const used: bigint[] = [];
    for (const t of inUse) {
      const v = this.valueOf(t);
      if (v !== undefined) used.push(v);
    }
    used.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    let candidate = this.first;
    for (const v of used) {
      if (v > candidate) break;
      if (v === candidate) candidate++;
    }
    if (candidate > this.last) {
      throw new IpamError('POOL_EXHAUSTED', `${field}: pool ${this.cidr.text} has no free address left`);
    }
    return bigintToAddress(candidate, this.family);
  }
}
