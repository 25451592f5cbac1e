/**
 * UDP queries to upstream resolvers over a few short-lived sockets shared by many queries, instead of
 * one socket per query: making, binding, connecting and closing a socket was a quarter of the proxy's
 * CPU per lookup at thousands of lookups a second (bench/README §8).
 *
 * What keeps a forged answer out, as resolvers with port pools do (dnsmasq's random sockets):
 * - each socket is connected to the upstream, so the kernel drops datagrams from any other address or
 *   port;
 * - its port is picked at random by the kernel, and it takes at most `queriesPerSocket` queries before a
 *   new socket with a new random port replaces it (closed once its last answer is in), so a port lives
 *   for a handful of queries, as before for one;
 * - every query goes out under a message id of the proxy's, drawn from a cryptographic source and
 *   unique among the socket's queries in flight, never the workload's (which may be predictable); the
 *   answer gets the workload's id back. An answer whose id matches no query in flight is dropped and
 *   counted; the caller still checks that the answer's question is the query's.
 *
 * A socket with nothing in flight closes after a second; with `maxSockets` open, the idle ones close
 * before another opens (a workload asking many resolvers cannot pile up sockets).
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { UdpSocket } from './udp-socket.js';

export interface UdpUpstreamOptions {
  /** Sockets taking queries at once, per upstream (default 4). */
  socketsPerUpstream?: number;
  /** Queries a socket takes before a new one (new random port) replaces it (default 64). */
  queriesPerSocket?: number;
  /** Sockets open before idle ones are closed to make room (default 256). */
  maxSockets?: number;
  /** A socket with no query in flight for this long closes (default 1000 ms). */
  idleMs?: number;
}

interface Pending {
  clientId: number;
  resolve(reply: Buffer): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

interface PooledSocket {
  sock: UdpSocket;
  pending: Map<number, Pending>;
  /** Queries sent on it so far. */
  used: number;
  closed: boolean;
  /** When its last query was sent or answered (performance.now()). */
  activeAt: number;
}

/** Random 16-bit ids, drawn from the system's CSPRNG a few thousand at a time. */
class IdSource {
  private pool: Buffer = Buffer.alloc(0);
  private at = 0;
  next(): number {
    if (this.at + 2 > this.pool.length) {
      this.pool = randomBytes(8192);
      this.at = 0;
    }
    const id = this.pool.readUInt16BE(this.at);
    this.at += 2;
    return id;
  }
}

export class UdpUpstreams {
  private readonly live = new Map<string, PooledSocket[]>();
  private readonly all = new Set<PooledSocket>();
  private readonly ids = new IdSource();
  private readonly socketsPerUpstream: number;
  private readonly queriesPerSocket: number;
  private readonly maxSockets: number;
  private readonly idleMs: number;
  private sweeper: NodeJS.Timeout | undefined;
  /** Answers dropped: no query in flight under their id (late, duplicated or forged). */
  unmatched = 0;

  constructor(opts: UdpUpstreamOptions = {}) {
    this.socketsPerUpstream = opts.socketsPerUpstream ?? 4;
    this.queriesPerSocket = opts.queriesPerSocket ?? 64;
    this.maxSockets = opts.maxSockets ?? 256;
    this.idleMs = opts.idleMs ?? 1000;
  }

  /** Sends `msg` (a query, at least a header) and resolves with the answer under the query's own id. */
  async query(msg: Buffer, upstream: { address: string; port: number }, timeoutMs: number): Promise<Buffer> {
    const ps = this.socketFor(upstream);
    ps.used++;
    ps.activeAt = performance.now();
    let id = this.ids.next();
    for (let tries = 0; ps.pending.has(id); tries++) {
      // at most queriesPerSocket ids are ever taken on one socket: a free one is found at once
      if (tries > 64) throw new Error('no free DNS message id on the upstream socket');
      id = this.ids.next();
    }
    const out = Buffer.from(msg);
    out.writeUInt16BE(id, 0);
    const answer = new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => this.settle(ps, id, new Error(`no answer from ${upstream.address}:${upstream.port} within ${timeoutMs} ms`)), timeoutMs);
      ps.pending.set(id, { clientId: msg.readUInt16BE(0), resolve, reject, timer });
    });
    try {
      ps.sock.send(out);
    } catch (err) {
      this.settle(ps, id, err as Error);
    }
    return answer;
  }

  /** Closes every socket; queries in flight fail. */
  close(): void {
    for (const ps of [...this.all]) this.socketClose(ps, new Error('DNS proxy stopped'));
    this.live.clear();
    clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  /** Sockets open now (taking queries or waiting for their last answers). */
  get sockets(): number {
    return this.all.size;
  }

  private socketFor(upstream: { address: string; port: number }): PooledSocket {
    const key = `${upstream.address}|${upstream.port}`;
    if (this.all.size >= this.maxSockets && (this.live.get(key)?.length ?? 0) < this.socketsPerUpstream) this.idleClose(Infinity);
    let list = this.live.get(key);
    if (!list) this.live.set(key, (list = []));
    if (list.length < this.socketsPerUpstream) {
      const ps = this.socketOpen(upstream);
      list.push(ps);
      this.retireIfUsed(list, ps);
      return ps;
    }
    const ps = list[Math.floor(Math.random() * list.length)]!;
    this.retireIfUsed(list, ps);
    return ps;
  }

  /** A socket about to take its last query leaves the list of those taking queries. */
  private retireIfUsed(list: PooledSocket[], ps: PooledSocket): void {
    if (ps.used + 1 < this.queriesPerSocket) return;
    list.splice(list.indexOf(ps), 1);
  }

  /** Closes the sockets with nothing in flight since `before` (performance.now()); forgets upstreams left without sockets. */
  private idleClose(before: number): void {
    for (const ps of [...this.all]) if (ps.pending.size === 0 && ps.activeAt <= before) this.socketClose(ps);
    for (const [key, list] of this.live) if (list.length === 0) this.live.delete(key);
    if (this.all.size === 0) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  private socketOpen(upstream: { address: string; port: number }): PooledSocket {
    if (!this.sweeper) {
      this.sweeper = setInterval(() => this.idleClose(performance.now() - this.idleMs), this.idleMs);
      this.sweeper.unref();
    }
    // A connected socket only hears from the upstream's address and port. Opened (bound, connected) at
    // once: a failure (no route to the upstream) throws to the query that asked for it. Its callbacks
    // run from the event loop, never inside this constructor.
    const sock = new UdpSocket({
      address: net.isIPv6(upstream.address) ? '::' : '0.0.0.0',
      port: 0,
      connect: upstream,
      onMessage: (reply) => this.answered(ps, reply),
      onError: (err) => this.socketClose(ps, err),
    });
    const ps: PooledSocket = { sock, pending: new Map(), used: 0, closed: false, activeAt: performance.now() };
    this.all.add(ps);
    return ps;
  }

  /** An upstream's datagram: the answer to the query in flight under its id, or dropped and counted. */
  private answered(ps: PooledSocket, reply: Buffer): void {
    const id = reply.length >= 2 ? reply.readUInt16BE(0) : -1;
    const p = ps.pending.get(id);
    if (!p) {
      this.unmatched++;
      return;
    }
    // Copied out of the receive slab (it waits for learning, and must not keep the slab), with the
    // workload's id back.
    const own = Buffer.from(reply);
    own.writeUInt16BE(p.clientId, 0);
    this.settle(ps, id, undefined, own);
  }

  private settle(ps: PooledSocket, id: number, err: Error | undefined, reply?: Buffer): void {
    const p = ps.pending.get(id);
    if (!p) return;
    ps.pending.delete(id);
    ps.activeAt = performance.now();
    clearTimeout(p.timer);
    if (err) p.reject(err);
    else p.resolve(reply!);
    // A retired socket closes with its last answer.
    if (ps.used >= this.queriesPerSocket && ps.pending.size === 0) this.socketClose(ps);
  }

  private socketClose(ps: PooledSocket, err?: Error): void {
    if (ps.closed) return;
    ps.closed = true;
    this.all.delete(ps);
    for (const list of this.live.values()) {
      const i = list.indexOf(ps);
      if (i >= 0) list.splice(i, 1);
    }
    for (const [id, p] of [...ps.pending]) {
      ps.pending.delete(id);
      clearTimeout(p.timer);
      p.reject(err ?? new Error('upstream socket closed'));
    }
    ps.sock.close();
  }
}
