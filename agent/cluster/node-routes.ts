import type { Logger } from 'pino';
import { errnoNumber, KernelError } from '../../common/kernel-error.js';
import { linkGetByIndex } from '../../netkit/link.js';
import { routeAdd, routeDelete, routeGet, routeList, type RouteInfo } from '../../netkit/route.js';
import type { Rtnl } from '../../netkit/socket.js';
import { AF_INET, AF_INET6 } from '../../netkit/uapi.js';
import type { NodeSink, PeerNode } from './node-registry.js';

/**
 * rtm_protocol of the routes to other nodes' CIDRs: how kitnet finds its own routes again after a
 * restart, and never touches anyone else's (`ip route show proto 211`). Unassigned in iproute2's
 * rt_protos; a kitnet choice, not a kernel constant.
 */
export const NODE_ROUTE_PROTOCOL = 211;
/** A full pass (repairs routes someone removed) this often, and sooner after a failed one. */
const RESYNC_MS = 30_000;
const RETRY_MS = 3_000;
const ENETUNREACH = errnoNumber('ENETUNREACH') ?? 101;

interface WantedRoute {
  dst: string;
  gateway: string;
  node: string;
}

/** What the operator reads for a route the kernel refused: the route, the device, the errno, what to do. */
function routeErrorExplain(r: WantedRoute, dev: string | undefined, err: unknown): string {
  const name = err instanceof KernelError ? err.errnoName : (err as Error).message;
  const what = `route ${r.dst} via ${r.gateway}${dev ? ` dev ${dev}` : ''} (node ${r.node})`;
  switch (name) {
    case 'EEXIST':
      return `${what}: EEXIST — a route for ${r.dst} that is not kitnet's is in the main table; kitnet leaves it. Remove it (ip route del ${r.dst}) if node ${r.node}'s workloads should be reached through kitnet`;
    case 'ENETUNREACH':
    case 'EHOSTUNREACH':
      return `${what}: ${name} — ${r.gateway} is not on a network directly connected to this host; native routing needs the nodes on one L2 segment (or set cluster.autoDirectNodeRoutes: false and route the node CIDRs another way)`;
    case 'EPERM':
    case 'EACCES':
      return `${what}: ${name} — the agent needs CAP_NET_ADMIN in its network namespace to install node routes`;
    case 'ENODEV':
      return `${what}: ENODEV — the device towards ${r.gateway} went away meanwhile; the next pass retries`;
    default:
      return `${what}: ${err instanceof KernelError ? err.message : name}`;
  }
}

/**
 * Native routing between nodes: a route in the main table for every other node's IPv4 and IPv6
 * CIDR via that node's address, on the device the host reaches the address through (which must be
 * on-link: no gateway on the way). Kept by reconciling with the table: routes of kitnet's protocol
 * for nodes no longer in the cluster go, missing ones come; failures are logged once per cause and
 * retried.
 */
export class NodeRoutes implements NodeSink {
  private readonly peers = new Map<string, PeerNode>();
  /** False until the registry's first list: before it, nothing known is no reason to remove routes. */
  private listed = false;
  private running: Promise<void> | undefined;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** The message of each failing route (by destination): logged when it changes, cleared on success. */
  private readonly failing = new Map<string, string>();
  readonly counts = { installed: 0, removed: 0, errors: 0 };

  constructor(
    private readonly nl: Rtnl,
    private readonly log: Logger,
  ) {}

  apply(set: readonly PeerNode[], gone: readonly string[]): void {
    for (const name of gone) this.peers.delete(name);
    for (const p of set) this.peers.set(p.name, p);
    this.listed = true;
    this.kick();
  }

  /** Routes this node wants now. */
  wanted(): WantedRoute[] {
    const out: WantedRoute[] = [];
    for (const p of this.peers.values()) {
      if (p.ipv4Cidr && p.ipv4) out.push({ dst: p.ipv4Cidr.text, gateway: p.ipv4, node: p.name });
      if (p.ipv6Cidr && p.ipv6) out.push({ dst: p.ipv6Cidr.text, gateway: p.ipv6, node: p.name });
    }
    return out;
  }

  /** Runs a pass now (or right after the running one); resolves when the table matches, as far as it can. */
  kick(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    // A pass that failed as a whole (the route dump refused, e.g. EBUSY while another dump runs on the
    // shared socket) is retried as soon as one with a failing route, not at the next resync.
    let failed = false;
    this.running = (async () => {
      do {
        this.again = false;
        failed = false;
        await this.pass().catch((err: unknown) => {
          failed = true;
          this.log.error({ err }, 'node route pass failed; retrying');
        });
      } while (this.again && !this.closed);
    })().finally(() => {
      this.running = undefined;
      this.schedule(failed || this.failing.size ? RETRY_MS : RESYNC_MS);
    });
    return this.running;
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    if (!this.closed && this.listed) this.timer = setTimeout(() => void this.kick(), ms).unref();
  }

  private async pass(): Promise<void> {
    if (!this.listed) return;
    const wanted = new Map(this.wanted().map((w) => [w.dst, w]));
    const present = [...(await routeList(this.nl, AF_INET)), ...(await routeList(this.nl, AF_INET6))].filter((r) => r.protocol === NODE_ROUTE_PROTOCOL);
    const have = new Map<string, RouteInfo>();
    for (const r of present) {
      const w = wanted.get(r.dst);
      if (w && r.gateway === w.gateway && !have.has(r.dst)) {
        have.set(r.dst, r);
        continue;
      }
      try {
        await routeDelete(this.nl, { dst: r.dst, ...(r.gateway ? { gateway: r.gateway } : {}), oif: r.oif ?? 0, protocol: NODE_ROUTE_PROTOCOL });
        this.counts.removed++;
        this.log.info({ dst: r.dst, gateway: r.gateway }, 'route to a node that left removed');
      } catch (err) {
        if (err instanceof KernelError && (err.errnoName === 'ESRCH' || err.errnoName === 'ENOENT')) continue;
        this.counts.errors++;
        this.log.error({ err, dst: r.dst }, `route ${r.dst} via ${r.gateway ?? '?'} of a node that left could not be removed; retrying`);
      }
    }
    for (const [dst, w] of wanted) {
      if (have.has(dst)) {
        this.failing.delete(dst);
        continue;
      }
      let dev: string | undefined;
      try {
        const via = await routeGet(this.nl, w.gateway);
        if (!via) throw new KernelError({ op: 'RTM_GETROUTE', errno: ENETUNREACH });
        dev = via.oif ? (await linkGetByIndex(this.nl, via.oif))?.ifname : undefined;
        if (via.gateway) throw new KernelError({ op: 'RTM_GETROUTE', errno: ENETUNREACH /* only through another router */ });
        await routeAdd(this.nl, { dst, gateway: w.gateway, oif: via.oif ?? 0, protocol: NODE_ROUTE_PROTOCOL }, { ifname: dev });
        this.counts.installed++;
        this.failing.delete(dst);
        this.log.info({ dst, gateway: w.gateway, device: dev, node: w.node }, 'route to a node\'s CIDR installed');
      } catch (err) {
        const message = routeErrorExplain(w, dev, err);
        this.counts.errors++;
        if (this.failing.get(dst) !== message) this.log.error({ node: w.node, dst, gateway: w.gateway, device: dev, errno: err instanceof KernelError ? err.errnoName : undefined }, message);
        this.failing.set(dst, message);
      }
    }
    for (const dst of [...this.failing.keys()]) if (!wanted.has(dst)) this.failing.delete(dst);
  }

  /** Failing routes and why (for status and tests). */
  failures(): Array<{ dst: string; message: string }> {
    return [...this.failing].map(([dst, message]) => ({ dst, message }));
  }

  /**
   * Stops reconciling. The routes stay (like the pinned datapath, they keep traffic flowing while the
   * agent restarts); the next start removes those of nodes that left meanwhile.
   */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.running;
  }
}
