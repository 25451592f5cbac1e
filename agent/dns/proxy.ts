/**
 * The DNS proxy (issue #17): takes the DNS queries of workloads with DNS rules (UDP and TCP, IPv4 and
 * IPv6), answers REFUSED to names no rule allows, forwards the others to the upstream resolver, learns
 * the asked name -> the addresses at the end of its CNAME chain and hands them to `learn`, which writes
 * them into the maps, and only then releases the answer: a connection opened right after the lookup
 * finds its address already known.
 *
 * Steering (bpf/include/dns.h, agent/dns/steering.ts): the datapath rewrites the destination of every port-53 UDP/TCP
 * packet of a workload with DNS rules (whatever resolver it addresses, so none is bypassed) to this
 * proxy's host-local address and port, keeping the original destination in a map keyed by the
 * workload's address, port and protocol, and rewrites the source of the replies back (checksums
 * fixed with the L3/L4 csum helpers). `upstream` then reads that map. Rejected: bpf_redirect to a
 * socket (no such path from tc), TPROXY / bpf_sk_assign (needs IP_TRANSPARENT sockets and replies
 * sent from a foreign source address, which node's sockets cannot do without a native addon).
 *
 * The UDP sockets are the addon's (agent/dns/udp-socket.ts): datagrams arrive as views of slabs shared by
 * thousands of them, not an ArrayBuffer each for V8's young collections to sweep (bench/README §8).
 *
 * UDP queries go upstream over a few sockets they share, each connected to the upstream, with a random
 * port that lives for a few dozen queries, under random message ids of the proxy's
 * (agent/dns/upstream-udp.ts); a reply must carry its query's id and question, so a spoofed or late
 * reply for another query is never taken. Over TCP each query has its own connection.
 * An answer that cannot be parsed, or whose learning failed, is never released: SERVFAIL instead.
 */
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import type { Logger } from 'pino';
import { udpTcpListen } from '../../common/udp-tcp-listen.js';
import { UdpUpstreams } from './upstream-udp.js';
import { UdpSocket } from './udp-socket.js';
import { dnsErrorReply, dnsLearned, dnsParse, DnsParseError, DnsRcode, DNS_HEADER_LENGTH, DNS_MESSAGE_MAX } from './codec.js';
import { specialAddressKind } from './special-address.js';
import { DnsFastPath, DnsFastRecordKind } from './fast-path.js';
import type { DnsFastRecord, DnsFastTables } from './fast-path.js';
import type { DnsMessage, LearnedName } from './codec.js';

export interface DnsEndpoint {
  address: string;
  port: number;
}

export type DnsTransport = 'udp' | 'tcp';

export interface DnsVerdict {
  allowed: boolean;
  /** The rule that allowed or (with no rule allowing) the policy that denied, for logs and flows. */
  rule?: string | undefined;
  /** The resolver the workload addressed, that the verdict was made for (the flows' other end), when known. */
  resolver?: DnsEndpoint | undefined;
  /**
   * `resolver`: refused for the resolver the query would go to, whatever the name: a host-local or
   * special address (agent/dns/special-address.ts), or a workload whose ingress policy does not admit
   * the client (agent/dns/steering.ts, resolverIngressRefusal); counted apart and logged at most every 10 s.
   */
  refusal?: 'resolver' | undefined;
  /**
   * For an allowed verdict: every name the same rules allow from this client to this resolver, as the
   * fast path's thread takes them (DnsFastTables.plan), so a name never asked need not wait for the
   * agent's thread (the steering gives it with every allowed verdict; without it, the thread takes only
   * the names asked before).
   */
  names?: string | undefined;
}

export interface DnsProxyOptions {
  /** Where to listen (UDP and TCP on the same address and port; port 0 picks one). */
  listen: DnsEndpoint;
  /**
   * The resolver to forward a client's query to (the destination it addressed, from the datapath's
   * steering map, or a configured upstream); undefined for a client that was not steered here (it is
   * answered REFUSED, never forwarded). `addressed`: that destination as already read from the map when
   * the query came in (null: there was none), for the map not to be read twice.
   */
  upstream(client: DnsEndpoint, transport: DnsTransport, addressed?: DnsEndpoint | null): DnsEndpoint | undefined;
  /** Whether the client may look up `name` (lower case, no trailing dot) from `upstream` over `transport`. */
  verdict(client: DnsEndpoint, name: string, transport: DnsTransport, upstream: DnsEndpoint): DnsVerdict;
  /** Writes what the answer taught into the maps; the answer waits for it. A rejection makes it SERVFAIL. */
  learn(client: DnsEndpoint, learned: LearnedName[]): Promise<void>;
  /** Floor on learned TTLs in seconds (Cilium's --tofqdns-min-ttl; default 0). */
  minTtl?: number;
  /**
   * Ceiling on learned TTLs in seconds (default 86,400): an answer's TTL (up to 2^31-1 s, ~68 years)
   * would otherwise hold its addresses, and the asking workload's share of them, for good.
   */
  maxTtl?: number;
  /** How long to wait for the upstream (default 5000 ms). */
  upstreamTimeoutMs?: number;
  /** Queries in flight at once; beyond it new ones are dropped and counted (default 4096). */
  maxInFlight?: number;
  /**
   * Queries in flight at once from one client address (default 512): a workload flooding the proxy
   * with names its upstream never answers holds each for upstreamTimeoutMs, and must not take the
   * others' share of maxInFlight.
   */
  maxInFlightPerClient?: number;
  /** Open TCP connections at once; beyond it new ones are closed at once (default 256). */
  maxTcpConnections?: number;
  /** Open TCP connections of one client address (default 16): one workload cannot hold them all. */
  maxTcpConnectionsPerClient?: number;
  /** Where to count (shared by the proxies of both families, kept across their restarts); default its own. */
  stats?: DnsProxyStats;
  /**
   * The fast path (agent/dns/fast-path.ts): UDP lookups the tables decide are forwarded and answered
   * by the addon's thread; the rest reach this proxy as before. Without it every lookup comes here.
   */
  fast?: { tables: DnsFastTables; redirectMapFd: number } | undefined;
  log: Logger;
}

/** Why a query or a connection was turned away unanswered (DnsProxyStats.dropped, the metric's `reason`). */
export type DnsDropReason = 'in-flight' | 'client-in-flight' | 'tcp-connections' | 'client-tcp-connections';

export interface DnsProxyStats {
  allowed: number;
  refused: number;
  /** Of `refused`: queries sent to an address the proxy never forwards to (DnsVerdict.refusal `resolver`). */
  refusedResolver: number;
  malformed: number;
  upstreamFailures: number;
  /** Every query or connection turned away, whatever the reason (the sum of droppedBy). */
  dropped: number;
  droppedBy: Record<DnsDropReason, number>;
  /** Answers not released (SERVFAIL) because learning them would pass a limit on learned addresses. */
  learnRefused: Record<DnsLearnLimitError['limit'], number>;
  /** Of `allowed`: answered by the fast path's thread without this proxy (agent/dns/fast-path.ts). */
  fastAnswered: number;
  /** Lookups the fast path forwarded under a verdict that no longer held when checked again (its verdicts were then dropped). */
  fastStale: number;
}

export function dnsProxyStatsCreate(): DnsProxyStats {
  return { allowed: 0, refused: 0, refusedResolver: 0, malformed: 0, upstreamFailures: 0, dropped: 0, droppedBy: { 'in-flight': 0, 'client-in-flight': 0, 'tcp-connections': 0, 'client-tcp-connections': 0 }, learnRefused: { workload: 0, total: 0 }, fastAnswered: 0, fastStale: 0 };
}

/**
 * `learn` refusing an answer's new addresses because a limit on learned addresses was reached (the
 * asking workload's share, or the total): the answer is SERVFAIL, counted by the limit.
 */
export class DnsLearnLimitError extends Error {
  constructor(
    readonly limit: 'workload' | 'total',
    message: string,
  ) {
    super(message);
    this.name = 'DnsLearnLimitError';
  }
}

export type DnsQueryEvent = {
  client: DnsEndpoint;
  transport: DnsTransport;
  name: string;
  qtype: number;
  rcode: number;
  verdict: DnsVerdict;
  learned: LearnedName[];
  /** For flows: the query's id, when it arrived (wall clock, ns), where it was forwarded, the upstream's parsed answer. */
  id: number;
  receivedNs: bigint;
  upstream?: DnsEndpoint | undefined;
  reply?: DnsMessage | undefined;
};

/** Wall-clock time in nanoseconds, finer than Date.now() (flow times and L7 latency). */
export function wallClockNs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e3)) * 1000n;
}

const TCP_IDLE_MS = 10_000;
const UDP_RECV_BUFFER = 4 << 20;
/**
 * Queries of one TCP connection taken at once: they are answered one after the other, and beyond
 * this the connection is not read until one is answered (TCP's flow control holds the client back).
 */
const TCP_PIPELINE_MAX = 16;
/** At most one warning of a kind (turned-away clients, failed sends, socket errors) per this long. */
const DROP_LOG_INTERVAL_MS = 10_000;

export class DnsProxy {
  private udp?: UdpSocket;
  private fastPath?: DnsFastPath;
  private tcp?: net.Server;
  private inFlight = 0;
  /** Queries in flight and open TCP connections per client address (entries only while above 0). */
  private readonly inFlightBy = new Map<string, number>();
  private readonly tcpBy = new Map<string, number>();
  private readonly tcpSockets = new Set<net.Socket>();
  private readonly warnedAt = new Map<string, number>();
  /** The upstream sockets UDP queries share (agent/dns/upstream-udp.ts). */
  readonly upstreams = new UdpUpstreams();
  readonly stats: DnsProxyStats;
  /** Called once per answered query (for flows and metrics). */
  onQuery?: (e: DnsQueryEvent) => void;

  constructor(private readonly opts: DnsProxyOptions) {
    this.stats = opts.stats ?? dnsProxyStatsCreate();
  }

  async start(): Promise<DnsEndpoint> {
    // Every steered workload's queries share the UDP socket: a burst (or the agent's thread busy or not
    // scheduled for a few ms) must queue in the kernel, not overflow it. The kernel caps the size at
    // net.core.rmem_max (the default buffer, 208 KiB, holds ~200 queries: 40 ms at 5,000/s).
    const { udp, tcp, port } = await udpTcpListen({
      address: this.opts.listen.address,
      port: this.opts.listen.port,
      udpBind: async (address, port) => {
        const socket: UdpSocket = new UdpSocket({
          address,
          port,
          recvBufferSize: UDP_RECV_BUFFER,
          onMessage: (msg, from) => this.udpQuery(socket, msg, from),
          // One error a datagram at worst (a queued answer whose send then fails): a workload that makes
          // its answers fail must not flood the log either.
          onError: (e) => this.warnSometimes('socket', { err: e }, 'DNS proxy UDP socket error (more in the next 10 s are not logged)'),
        });
        return { socket, port: socket.port, close: () => socket.close() };
      },
      tcpServer: () => {
        const server = net.createServer((s) => this.tcpConnection(s));
        // Each connection may idle TCP_IDLE_MS: a cap keeps a workload from holding sockets without end.
        server.maxConnections = this.opts.maxTcpConnections ?? 256;
        server.on('drop', (d?: { remoteAddress?: string; remotePort?: number }) => this.drop('tcp-connections', { address: d?.remoteAddress ?? '', port: d?.remotePort ?? 0 }));
        return server;
      },
      onTcpError: (e) => this.warnSometimes('tcp-accept', { err: e }, 'DNS proxy TCP listener error, e.g. a failed accept (more in the next 10 s are not logged)'),
    });
    this.udp = udp;
    this.tcp = tcp;
    const fast = this.opts.fast;
    if (fast) {
      try {
        this.fastPath = new DnsFastPath(udp, {
          tables: fast.tables,
          redirectMapFd: fast.redirectMapFd,
          upstreamTimeoutMs: this.opts.upstreamTimeoutMs ?? 5000,
          maxPending: Math.min(this.opts.maxInFlight ?? 4096, 4096),
          onRecord: (r) => this.fastRecord(udp, r),
        });
      } catch (err) {
        await this.stop();
        throw err;
      }
    }
    return { address: this.opts.listen.address, port };
  }

  async stop(): Promise<void> {
    // Cleared first: the queries cut short below answer no one (udpQuery checks).
    const { udp, tcp } = this;
    this.udp = undefined;
    this.tcp = undefined;
    // Before the socket closes: the thread reads a duplicate of its descriptor.
    this.fastPath?.stop();
    this.fastPath = undefined;
    for (const s of this.tcpSockets) s.destroy();
    this.upstreams.close();
    udp?.close();
    await new Promise<void>((r) => (tcp ? tcp.close(() => r()) : r()));
  }

  /** Queries taken and not yet answered (or given up on), the fast path's thread's included. */
  get queriesInFlight(): number {
    return this.inFlight + (this.fastPath?.stats()?.inFlight ?? 0);
  }

  /** Counts a query in flight for `client`, or turns it away (counted, logged now and then). */
  private admit(client: DnsEndpoint): boolean {
    const mine = this.inFlightBy.get(client.address) ?? 0;
    if (this.inFlight >= (this.opts.maxInFlight ?? 4096)) return this.drop('in-flight', client);
    if (mine >= (this.opts.maxInFlightPerClient ?? 512)) return this.drop('client-in-flight', client);
    this.inFlight++;
    this.inFlightBy.set(client.address, mine + 1);
    return true;
  }

  private release(client: DnsEndpoint): void {
    this.inFlight--;
    const mine = (this.inFlightBy.get(client.address) ?? 1) - 1;
    if (mine > 0) this.inFlightBy.set(client.address, mine);
    else this.inFlightBy.delete(client.address);
  }

  private drop(reason: DnsDropReason, client: DnsEndpoint): false {
    this.stats.dropped++;
    this.stats.droppedBy[reason]++;
    const limit = { 'in-flight': 'dns.proxy.maxQueriesInFlight', 'client-in-flight': 'dns.proxy.maxQueriesInFlightPerWorkload', 'tcp-connections': 'dns.proxy.maxTcpConnections', 'client-tcp-connections': 'dns.proxy.maxTcpConnectionsPerWorkload' }[reason];
    this.warnSometimes('drop', { client: client.address, reason, limit, droppedBy: this.stats.droppedBy }, `DNS proxy: turning queries away (${limit} reached); later ones are counted in kitnet_dns_proxy_dropped_total`);
    return false;
  }

  /** A warning of this kind at most every DROP_LOG_INTERVAL_MS: a flooding workload must not flood the log too. */
  private warnSometimes(kind: string, fields: object, message: string, level: 'warn' | 'info' = 'warn'): void {
    const now = performance.now();
    if (now - (this.warnedAt.get(kind) ?? -Infinity) < DROP_LOG_INTERVAL_MS) return;
    this.warnedAt.set(kind, now);
    this.opts.log[level](fields, message);
  }

  private udpQuery(sock: UdpSocket, received: Buffer, client: DnsEndpoint, addressed?: DnsEndpoint | null): void {
    if (!this.admit(client)) return;
    // A query waits for its upstream (seconds, for one that never answers): kept as a view, it would
    // keep its whole slab, and a workload sending large junk between queries it makes wait could pin a
    // slab per query. Copied (from node's pool: no ArrayBuffer of its own), it keeps only its bytes.
    const msg = Buffer.from(received);
    // One reaction for both outcomes (not then/catch/finally: three promises a query).
    this.answer(msg, client, 'udp', addressed).then(
      (reply) => {
        this.release(client);
        // Not after stop(): the queries it cut short end here with the socket closed.
        if (reply && this.udp === sock) this.udpReply(sock, reply, client);
      },
      (e: unknown) => {
        this.release(client);
        this.opts.log.warn({ err: e, client }, 'DNS proxy: query failed');
      },
    );
  }

  private udpReply(sock: UdpSocket, reply: Buffer, client: DnsEndpoint): void {
    try {
      sock.send(reply, client);
    } catch (e) {
      // EAGAIN: the send buffer stayed full while the socket queued all it may (udp-socket.ts); this one is
      // dropped, and the workload's resolver library asks again
      this.warnSometimes('send', { err: e, client }, 'DNS proxy: an answer could not be sent');
    }
  }

  private tcpConnection(sock: net.Socket): void {
    const client = { address: sock.remoteAddress ?? '', port: sock.remotePort ?? 0 };
    const open = this.tcpBy.get(client.address) ?? 0;
    if (open >= (this.opts.maxTcpConnectionsPerClient ?? 16)) {
      this.drop('client-tcp-connections', client);
      sock.destroy();
      return;
    }
    this.tcpBy.set(client.address, open + 1);
    this.tcpSockets.add(sock);
    sock.setTimeout(TCP_IDLE_MS, () => sock.destroy());
    sock.on('close', () => {
      this.tcpSockets.delete(sock);
      const left = (this.tcpBy.get(client.address) ?? 1) - 1;
      if (left > 0) this.tcpBy.set(client.address, left);
      else this.tcpBy.delete(client.address);
    });
    sock.on('error', () => sock.destroy());
    let pending: Buffer = Buffer.alloc(0);
    // Queries taken and not yet answered; past TCP_PIPELINE_MAX the socket is paused.
    let taken = 0;
    // One query at a time per connection (RFC 7766 allows pipelining; order is kept by answering in turn).
    let chain = Promise.resolve();
    const take = () => {
      while (pending.length >= 2 && taken < TCP_PIPELINE_MAX) {
        const len = pending.readUInt16BE(0);
        if (pending.length < 2 + len) break;
        const msg = pending.subarray(2, 2 + len);
        pending = pending.subarray(2 + len);
        if (!this.admit(client)) {
          sock.destroy();
          return;
        }
        taken++;
        chain = chain.then(async () => {
          try {
            // A connection closed meanwhile: its queries waiting their turn are not asked upstream.
            if (sock.destroyed) return;
            const reply = await this.answer(msg, client, 'tcp');
            if (!reply) {
              sock.destroy();
              return;
            }
            const frame = Buffer.alloc(2 + reply.length);
            frame.writeUInt16BE(reply.length, 0);
            reply.copy(frame, 2);
            if (!sock.destroyed) sock.write(frame);
          } catch (e) {
            this.opts.log.warn({ err: e, client }, 'DNS proxy: query failed');
            sock.destroy();
          } finally {
            this.release(client);
            taken--;
            if (!sock.destroyed && sock.isPaused() && taken < TCP_PIPELINE_MAX) {
              sock.resume();
              take();
            }
          }
        });
      }
      if (taken >= TCP_PIPELINE_MAX) sock.pause();
    };
    sock.on('data', (chunk) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      take();
    });
  }

  /** The reply to one query, or undefined to say nothing (not even a header to answer to). */
  private async answer(msg: Buffer, client: DnsEndpoint, transport: DnsTransport, addressed?: DnsEndpoint | null): Promise<Buffer | undefined> {
    const receivedNs = wallClockNs();
    if (msg.length < DNS_HEADER_LENGTH) {
      this.stats.malformed++;
      return undefined;
    }
    let query: DnsMessage;
    try {
      query = dnsParse(msg);
    } catch (e) {
      if (!(e instanceof DnsParseError)) throw e;
      this.stats.malformed++;
      return dnsErrorReply(msg, DnsRcode.FORMERR);
    }
    if (query.response) {
      this.stats.malformed++;
      return undefined;
    }
    if (query.opcode !== 0) return dnsErrorReply(msg, DnsRcode.NOTIMP);
    const q = query.questions[0];
    if (query.questions.length !== 1 || !q) {
      this.stats.malformed++;
      return dnsErrorReply(msg, DnsRcode.FORMERR);
    }
    const upstream = this.opts.upstream(client, transport, addressed);
    const verdict: DnsVerdict = upstream ? this.opts.verdict(client, q.name, transport, upstream) : { allowed: false, rule: 'not steered to the proxy by the datapath' };
    if (!verdict.allowed) {
      this.stats.refused++;
      if (verdict.refusal === 'resolver') {
        // A workload may send these at will: counted, and logged at most every 10 s.
        this.stats.refusedResolver++;
        this.warnSometimes('resolver', { client, name: q.name, rule: verdict.rule, refusedResolver: this.stats.refusedResolver }, 'DNS proxy: a query refused for its resolver (a host-local or special address, or a workload whose ingress policy does not admit the client), never forwarded (later ones in the next 10 s are counted in kitnet_dns_proxy_refused_resolver_total, not logged)');
      } else {
        // Each one is a DROPPED DNS flow; a workload asking names no rule allows, in a loop, must not flood the log
        this.warnSometimes('refused', { client, name: q.name, qtype: q.type, rule: verdict.rule, refused: this.stats.refused },
          'DNS query refused by policy (the next 10 s of refusals are DNS flows, not log lines: kitnet observe --protocol dns)', 'info');
      }
      this.event(client, transport, query, verdict, receivedNs, upstream, DnsRcode.REFUSED);
      return dnsErrorReply(msg, DnsRcode.REFUSED);
    }
    this.stats.allowed++;
    // The name may be asked again through the fast path's thread, as long as nothing it depends on changes.
    if (transport === 'udp' && this.fastPath && verdict.resolver) {
      const { tables } = this.opts.fast!;
      tables.verdict(client.address, verdict.resolver, q.name, upstream!);
      if (verdict.names !== undefined) {
        try {
          tables.plan(client.address, verdict.resolver, verdict.names, upstream!);
        } catch (err) {
          // Not expected (the names come from validated selectors); the query is answered all the same.
          this.warnSometimes('fast-plan', { err, client: client.address }, 'DNS proxy: the fast path refused a name plan; those names go through the agent\'s thread');
        }
      }
    }
    let raw: Buffer;
    try {
      raw = await (transport === 'udp' ? this.forwardUdp(msg, upstream!) : this.forwardTcp(msg, upstream!));
    } catch (e) {
      return this.upstreamFailed(e, msg, query, client, transport, verdict, receivedNs, upstream);
    }
    return this.releaseAnswer(msg, query, raw, client, transport, verdict, receivedNs, upstream!);
  }

  private upstreamFailed(e: unknown, msg: Buffer, query: DnsMessage, client: DnsEndpoint, transport: DnsTransport, verdict: DnsVerdict, receivedNs: bigint, upstream: DnsEndpoint | undefined): Buffer {
    this.stats.upstreamFailures++;
    this.opts.log.warn({ err: e, client, name: query.questions[0]!.name, upstream }, 'DNS proxy: upstream failed, answering SERVFAIL');
    this.event(client, transport, query, verdict, receivedNs, upstream, DnsRcode.SERVFAIL);
    return dnsErrorReply(msg, DnsRcode.SERVFAIL);
  }

  /** The upstream's answer to a query: checked, learned (the maps written), then returned to release; else SERVFAIL. */
  private async releaseAnswer(msg: Buffer, query: DnsMessage, raw: Buffer, client: DnsEndpoint, transport: DnsTransport, verdict: DnsVerdict, receivedNs: bigint, upstream: DnsEndpoint): Promise<Buffer> {
    const q = query.questions[0]!;
    let reply: DnsMessage;
    try {
      reply = dnsParse(raw);
      if (!reply.response || reply.id !== query.id || !sameQuestion(reply, query)) throw new DnsParseError('the reply does not answer the query');
    } catch (e) {
      return this.upstreamFailed(e, msg, query, client, transport, verdict, receivedNs, upstream);
    }
    const minTtl = this.opts.minTtl ?? 0;
    const maxTtl = this.opts.maxTtl ?? 86_400;
    const learned = dnsLearned(reply);
    for (const l of learned) l.ttl = Math.min(Math.max(l.ttl, minTtl), maxTtl);
    // Loopback, unspecified, link-local, multicast, broadcast, IPv4-mapped addresses are released in
    // the answer but not learned: no toFQDNs rule allows them.
    const special = (a: string) => specialAddressKind(a) !== undefined;
    const taught = !learned.some((l) => l.addresses.some(special))
      ? learned
      : learned.flatMap((l) => {
          const addresses = l.addresses.filter((a) => !special(a));
          return addresses.length ? [{ ...l, addresses }] : [];
        });
    if (taught.length > 0) {
      try {
        await this.opts.learn(client, taught);
      } catch (e) {
        // Releasing the answer now would send the workload to addresses the datapath does not allow yet.
        if (e instanceof DnsLearnLimitError) {
          this.stats.learnRefused[e.limit]++;
          this.warnSometimes('learn-limit', { client: client.address, name: q.name, learnRefused: this.stats.learnRefused }, `DNS proxy: ${e.message}; answering SERVFAIL (later ones are counted in kitnet_dns_proxy_learn_refused_total)`);
        } else {
          this.stats.upstreamFailures++;
          this.opts.log.warn({ err: e, client, name: q.name }, 'DNS proxy: learning the answer failed, answering SERVFAIL');
        }
        this.event(client, transport, query, verdict, receivedNs, upstream, DnsRcode.SERVFAIL);
        return dnsErrorReply(msg, DnsRcode.SERVFAIL);
      }
    }
    this.event(client, transport, query, verdict, receivedNs, upstream, reply.rcode, learned, reply);
    return raw;
  }

  /**
   * A record of the fast path's thread (agent/dns/fast-path.ts): a query it did not take goes the usual
   * way; one it forwarded is finished here as the usual way would finish it (checked again against the
   * verdict as it stands now, learned, counted, a flow), and answered unless the thread did.
   */
  private fastRecord(sock: UdpSocket, r: DnsFastRecord): void {
    if (this.udp !== sock) return;
    if (r.kind === DnsFastRecordKind.query) return this.udpQuery(sock, r.query, r.client, r.addressed);
    const released = r.kind === DnsFastRecordKind.answered;
    if (released) this.stats.fastAnswered++;
    const msg = Buffer.from(r.query);
    this.inFlight++;
    this.fastFinish(msg, r, released).then(
      (reply) => {
        this.inFlight--;
        if (reply && (!released || !r.sent) && this.udp === sock) this.udpReply(sock, reply, r.client);
      },
      (e: unknown) => {
        this.inFlight--;
        this.opts.log.warn({ err: e, client: r.client }, 'DNS proxy: query failed');
      },
    );
  }

  private async fastFinish(msg: Buffer, r: DnsFastRecord, released: boolean): Promise<Buffer | undefined> {
    const { client, receivedNs } = r;
    const used = r.upstream!;
    let query: DnsMessage;
    try {
      query = dnsParse(msg);
    } catch {
      // The thread read it whole: not expected; never released twice, never unanswered.
      this.stats.malformed++;
      return released ? undefined : dnsErrorReply(msg, DnsRcode.FORMERR);
    }
    const q = query.questions[0]!;
    const upstream = this.opts.upstream(client, 'udp', r.addressed);
    let verdict: DnsVerdict = upstream ? this.opts.verdict(client, q.name, 'udp', upstream) : { allowed: false, rule: 'not steered to the proxy by the datapath' };
    if (!verdict.allowed || upstream?.address !== used.address || upstream.port !== used.port) {
      // Something the verdicts depend on changed without a hook dropping them: all of them go now.
      this.stats.fastStale++;
      this.opts.fast!.tables.forget({ verdicts: true });
      this.warnSometimes('fast-stale', { client, name: q.name, upstream: used, now: upstream, rule: verdict.rule, fastStale: this.stats.fastStale }, 'DNS proxy: a lookup the fast path forwarded is no longer allowed as it was forwarded (policy, workload or upstream changed); its verdicts are dropped (later ones in the next 10 s are counted in kitnet_dns_proxy_fast_stale_total)');
      if (!released && !verdict.allowed) {
        this.stats.refused++;
        this.event(client, 'udp', query, verdict, receivedNs, upstream, DnsRcode.REFUSED);
        return dnsErrorReply(msg, DnsRcode.REFUSED);
      }
      // Released already (or allowed still, from the upstream it went to): reported as it was decided.
      if (!verdict.allowed) verdict = { allowed: true, rule: 'a verdict of the fast path that no longer holds', resolver: verdict.resolver };
    }
    this.stats.allowed++;
    if (!r.answer) {
      const err = r.errno ? Object.assign(new Error(`upstream ${used.address}:${used.port}: ${errnoName(r.errno)}`), { errno: r.errno }) : new Error(`no answer from ${used.address}:${used.port} within ${this.opts.upstreamTimeoutMs ?? 5000} ms`);
      return this.upstreamFailed(err, msg, query, client, 'udp', verdict, receivedNs, used);
    }
    return this.releaseAnswer(msg, query, Buffer.from(r.answer), client, 'udp', verdict, receivedNs, used);
  }

  /** Hands one answered query to onQuery (a method, not a closure per query: the proxy's garbage). */
  private event(client: DnsEndpoint, transport: DnsTransport, query: DnsMessage, verdict: DnsVerdict, receivedNs: bigint, upstream: DnsEndpoint | undefined, rcode: number, learned: LearnedName[] = [], reply?: DnsMessage): void {
    if (!this.onQuery) return;
    const q = query.questions[0]!;
    this.onQuery({ client, transport, name: q.name, qtype: q.type, rcode, verdict, learned, id: query.id, receivedNs, upstream, reply });
  }

  private forwardUdp(msg: Buffer, upstream: DnsEndpoint): Promise<Buffer> {
    return this.upstreams.query(msg, upstream, this.opts.upstreamTimeoutMs ?? 5000);
  }

  private forwardTcp(msg: Buffer, upstream: DnsEndpoint): Promise<Buffer> {
    const timeoutMs = this.opts.upstreamTimeoutMs ?? 5000;
    return new Promise<Buffer>((resolve, reject) => {
      const sock = net.connect({ host: upstream.address, port: upstream.port });
      let buf: Buffer = Buffer.alloc(0);
      let settled = false;
      const done = (err: Error | undefined, reply?: Buffer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sock.destroy();
        if (err) reject(err);
        else resolve(reply!);
      };
      const timer = setTimeout(() => done(new Error(`no answer from ${upstream.address}:${upstream.port} within ${timeoutMs} ms`)), timeoutMs);
      sock.on('error', (e) => done(e));
      sock.on('connect', () => {
        const frame = Buffer.alloc(2 + msg.length);
        frame.writeUInt16BE(msg.length, 0);
        msg.copy(frame, 2);
        sock.write(frame);
      });
      sock.on('data', (chunk) => {
        buf = Buffer.concat([buf, chunk]);
        if (buf.length > 2 + DNS_MESSAGE_MAX) return done(new Error('upstream sent more than one message'));
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) done(undefined, buf.subarray(2, 2 + buf.readUInt16BE(0)));
      });
      sock.on('end', () => done(new Error('upstream closed the connection before answering')));
    });
  }
}

const ERRNO_NAMES = new Map(Object.entries(osConstants.errno).map(([name, n]) => [n, name]));

function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

function sameQuestion(a: DnsMessage, b: DnsMessage): boolean {
  const qa = a.questions[0];
  const qb = b.questions[0];
  return a.questions.length === 1 && !!qa && !!qb && qa.name === qb.name && qa.type === qb.type && qa.class === qb.class;
}
