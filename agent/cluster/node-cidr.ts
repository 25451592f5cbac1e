import type { Logger } from 'pino';
import { bigintToAddress, cidrParse, type Cidr } from '../ipam.js';
import type { ClusterSession } from './session.js';

/**
 * kitnet's own prefix for per-node CIDR claims: `<prefix>/<cluster>/<cidr>` = the node's name. Not
 * leased: a claim outlives its node's process, so a node that restarts (or reboots) gets its CIDR,
 * and the addresses its workloads keep, back. A node gone for good leaves its claim until an operator
 * deletes it (README, Cluster).
 */
export const NODE_CIDRS_PREFIX = 'kitnet/state/node-cidrs/v1';

const BITS = { 4: 32, 6: 128 } as const;
/** Create-only attempts before giving up (each lost race lists again). */
const CLAIM_ATTEMPTS = 16;

/** Whether two CIDRs share an address. */
export function cidrOverlaps(a: Cidr, b: Cidr): boolean {
  if (a.family !== b.family) return false;
  const shorter = Math.min(a.prefixLength, b.prefixLength);
  const shift = BigInt(BITS[a.family] - shorter);
  return a.network >> shift === b.network >> shift;
}

/** Whether `inner` lies entirely inside `outer`. */
export function cidrWithin(inner: Cidr, outer: Cidr): boolean {
  return inner.family === outer.family && inner.prefixLength >= outer.prefixLength && cidrOverlaps(inner, outer);
}

/**
 * The lowest block of `/maskSize` in `pool` that overlaps none of `taken`; undefined when the pool is
 * full. O(taken): the blocks are walked from the start, jumping past each claimed range in order.
 */
export function nodeCidrFree(pool: Cidr, maskSize: number, taken: readonly Cidr[]): Cidr | undefined {
  const bits = BITS[pool.family];
  const block = 1n << BigInt(bits - maskSize);
  const end = pool.network + (1n << BigInt(bits - pool.prefixLength));
  const ranges = taken
    .filter((t) => cidrOverlaps(t, pool))
    .map((t) => ({ start: t.network, end: t.network + (1n << BigInt(bits - t.prefixLength)) }))
    .sort((x, y) => (x.start < y.start ? -1 : x.start > y.start ? 1 : 0));
  let candidate = pool.network;
  for (const r of ranges) {
    if (candidate + block <= r.start) break;
    if (r.end > candidate) candidate = ((r.end + block - 1n) / block) * block;
  }
  if (candidate + block > end) return undefined;
  return cidrParse(`${bigintToAddress(candidate, pool.family)}/${maskSize}`);
}

export interface NodeCidrRequest {
  cluster: string;
  nodeName: string;
  /** The cluster pool (ipam.ipv4Pool or ipam.ipv6Pool) and the per-node mask size. */
  pool: Cidr;
  maskSize: number;
  /** The config key of the pool, for messages. */
  poolKey: string;
}

interface Claim {
  key: string;
  cidr: Cidr;
  node: string;
}

async function claimsList(session: ClusterSession, cluster: string): Promise<Claim[]> {
  const prefix = `${NODE_CIDRS_PREFIX}/${cluster}/`;
  const res = await session.client.getAll().prefix(prefix).exec();
  const out: Claim[] = [];
  for (const kv of res.kvs) {
    const key = kv.key.toString('utf8');
    try {
      out.push({ key, cidr: cidrParse(key.slice(prefix.length)), node: kv.value.toString('utf8') });
    } catch {
      // not a CIDR: nobody's claim, and it takes no room
    }
  }
  return out;
}

/**
 * This node's CIDR in the pool: its own claim from before when it still fits the pool and mask size,
 * else the lowest free block, claimed create-only (a transaction that succeeds only if the key does
 * not exist), so two nodes never hold one CIDR; a lost race lists again and takes the next block.
 */
export async function nodeCidrClaim(session: ClusterSession, req: NodeCidrRequest, log: Logger): Promise<Cidr> {
  for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
    const claims = await claimsList(session, req.cluster);
    const mine = claims.filter((c) => c.node === req.nodeName && c.cidr.family === req.pool.family);
    const fits = mine.find((c) => c.cidr.prefixLength === req.maskSize && cidrWithin(c.cidr, req.pool));
    if (fits) return fits.cidr;
    for (const old of mine) {
      log.warn({ key: old.key, pool: req.pool.text, maskSize: req.maskSize }, `this node's earlier CIDR ${old.cidr.text} does not fit ${req.poolKey} /${req.maskSize} any more; a new one is claimed (delete the old key when no workload uses it)`);
    }
    const free = nodeCidrFree(req.pool, req.maskSize, claims.map((c) => c.cidr));
    if (!free) {
      const used = claims.filter((c) => cidrOverlaps(c.cidr, req.pool)).length;
      throw new Error(
        `${req.poolKey}: ${req.pool.text} has no free /${req.maskSize} left for node ${req.nodeName} (${used} claimed under ${NODE_CIDRS_PREFIX}/${req.cluster}/); ` +
          'enlarge the pool, or delete the claims of nodes gone for good (etcdctl del KEY)',
      );
    }
    const key = `${NODE_CIDRS_PREFIX}/${req.cluster}/${free.text}`;
    const res = await session.client.if(key, 'Create', '==', 0).then(session.client.put(key).value(req.nodeName)).commit();
    if (res.succeeded) {
      log.info({ cidr: free.text, key }, 'node CIDR claimed');
      return free;
    }
  }
  throw new Error(`${req.poolKey}: could not claim a /${req.maskSize} of ${req.pool.text} after ${CLAIM_ATTEMPTS} attempts (other nodes claimed each one first); retry the start`);
}
