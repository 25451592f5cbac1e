/**
 * The DNS proxy's fast path: a thread of the addon (bpf/native/src/dnsfast.c) reads the proxy's UDP
 * socket and answers, without the agent's JavaScript thread, the lookups whose outcome that thread
 * already decided: a name it allowed this client to ask this resolver (DnsFastTables.verdict) or any name
 * the rules deciding that client's queries to that resolver allow (DnsFastTables.plan), and an
 * answer whose every address the maps already hold for the name (DnsFastTables.known). Everything else
 * reaches the proxy as a record to handle as before (agent/dns/proxy.ts), and so does every lookup the
 * thread answered, afterwards, for its flows, metrics and the learned addresses' expiry.
 *
 * Why: each lookup crossed the agent's event loop twice, and that loop also runs the flows, the API and
 * V8's collections; its stalls of a few milliseconds were the proxy's p99 (bench/README §8).
 *
 * What keeps it honest: the agent forgets the verdicts whenever what they were made from changes
 * (policy written, workloads, the FQDN identities, the configured upstream) and the known answers
 * whenever a learned address may leave the maps (a refresh, an expiry, an eviction); the thread takes a
 * known answer only while it has KNOWN_MARGIN_MS (5 s) left; and the proxy checks each answered record's
 * verdict again as it would have decided it (a change no hook saw makes it forget them all).
 */
import { native } from '../../common/native.js';
import type { NativeHandle } from '../../common/native.js';
import type { UdpSocket } from './udp-socket.js';
import type { DnsEndpoint } from './proxy.js';

export const DnsFastRecordKind = {
  /** Not taken by the thread: the proxy answers it as any query. */
  query: 1,
  /** Forwarded and answered by the thread (`sent`), or answered but not sent (the socket's buffer was full). */
  answered: 2,
  /** Forwarded by the thread; the answer teaches something (or could not be read there): learn, then release. */
  learn: 3,
  /** Forwarded by the thread; the upstream failed (`errno`) or did not answer in time (`errno` 0). */
  failed: 4,
} as const;
export type DnsFastRecordKind = (typeof DnsFastRecordKind)[keyof typeof DnsFastRecordKind];

export interface DnsFastRecord {
  kind: DnsFastRecordKind;
  sent: boolean;
  client: DnsEndpoint;
  /** Where the thread forwarded it (not for `query`). */
  upstream: DnsEndpoint | undefined;
  /**
   * The resolver the client addressed, as the thread read it from the datapath's `dns_redirect` map
   * when the query came in (null: no entry, the query was not steered here); the proxy need not read
   * the map again.
   */
  addressed: DnsEndpoint | null;
  errno: number;
  receivedNs: bigint;
  /** Views of the batch: copy what is kept past the callback. */
  query: Buffer;
  answer: Buffer | undefined;
}

/** A plan is given again after this long: the thread drops it after 60 s (VERDICT_MAX_AGE_MS). */
const PLAN_REGIVE_MS = 30_000;

/** The record layout of dnsfast.c (record_add). */
const REC_HEADER = 184;
const REC_ADDR_TEXT = 48;
const REC_ADDRESSED_AT = 136;
const REC_F_SENT = 1;
const REC_F_ADDRESSED = 2;

function text(batch: Buffer, at: number): string {
  const end = batch.indexOf(0, at);
  return batch.toString('latin1', at, end < 0 || end > at + REC_ADDR_TEXT ? at + REC_ADDR_TEXT : end);
}

/** Each record of a batch, in the order the thread made them. */
export function dnsFastRecords(batch: Buffer, each: (r: DnsFastRecord) => void): void {
  for (let at = 0; at + REC_HEADER <= batch.length; ) {
    const length = batch.readUInt32LE(at);
    if (length < REC_HEADER || at + length > batch.length) throw new Error(`DNS fast path: a record of ${length} bytes at ${at} of a batch of ${batch.length}`);
    const upstreamPort = batch.readUInt16LE(at + 8);
    const queryLength = batch.readUInt32LE(at + 16);
    const answerLength = batch.readUInt32LE(at + 20);
    const body = at + REC_HEADER;
    const flags = batch[at + 5]!;
    each({
      kind: batch[at + 4] as DnsFastRecordKind,
      sent: (flags & REC_F_SENT) !== 0,
      client: { address: text(batch, at + 32), port: batch.readUInt16LE(at + 6) },
      upstream: upstreamPort ? { address: text(batch, at + 80), port: upstreamPort } : undefined,
      addressed: flags & REC_F_ADDRESSED ? { address: text(batch, at + REC_ADDRESSED_AT), port: batch.readUInt16LE(at + 10) } : null,
      errno: batch.readInt32LE(at + 12),
      receivedNs: batch.readBigUInt64LE(at + 24),
      query: batch.subarray(body, body + queryLength),
      answer: answerLength ? batch.subarray(body + queryLength, body + queryLength + answerLength) : undefined,
    });
    at += length;
  }
}

/**
 * What the fast path may do alone, shared by the proxies of both families: allowed verdicts and known
 * answers. Sized so that a host's names fit (each table is emptied when half full, and refilled as the
 * lookups come through the agent again).
 */
export class DnsFastTables {
  readonly handle: NativeHandle;
  /** The resolvers some verdict was given for: a learned write at one of them changes its identity. */
  private readonly resolvers = new Set<string>();
  /** The plans given to the thread (by client, resolver and upstream), and when. */
  private readonly plans = new Map<string, { names: string; at: number }>();

  constructor(verdictSlots = 8192, knownSlots = 32_768) {
    this.handle = native().dnsFastTables(verdictSlots, knownSlots);
  }

  /** Queries of `client` to `resolver` for `name` may go to `upstream` (an allowed verdict only). */
  verdict(client: string, resolver: DnsEndpoint, name: string, upstream: DnsEndpoint): void {
    if (native().dnsFastVerdict(this.handle, client, resolver.address, resolver.port, name, upstream.address, upstream.port)) this.resolvers.add(resolver.address);
  }

  /**
   * Queries of `client` to `resolver` for any name `names` allow (DnsVerdict.names) may go to
   * `upstream`: given to the thread once per plan (again when the plan changes, and before the thread
   * ages it out), not per query.
   */
  plan(client: string, resolver: DnsEndpoint, names: string, upstream: DnsEndpoint): void {
    const key = `${client}/${resolver.address}/${resolver.port}/${upstream.address}/${upstream.port}`;
    const now = performance.now();
    const given = this.plans.get(key);
    if (given && given.names === names && now - given.at < PLAN_REGIVE_MS) return;
    const taken = native().dnsFastPlan(this.handle, client, resolver.address, resolver.port, names, upstream.address, upstream.port);
    if (taken === 2) this.plans.clear();
    if (taken === 0) return;
    this.plans.set(key, { names, at: now });
    this.resolvers.add(resolver.address);
  }

  /** The maps hold `address` for `name` until `expiresAtMs` (wall clock). */
  known(name: string, address: string, expiresAtMs: number): void {
    native().dnsFastKnown(this.handle, name, address, expiresAtMs);
  }

  isResolver(address: string): boolean {
    return this.resolvers.has(address);
  }

  forget(what: { verdicts?: boolean; known?: boolean }): void {
    native().dnsFastForget(this.handle, what.verdicts ?? false, what.known ?? false);
    if (what.verdicts) {
      this.resolvers.clear();
      this.plans.clear();
    }
  }
}

export interface DnsFastPathOptions {
  tables: DnsFastTables;
  /** The datapath's `dns_redirect` map: the resolver each steered client addressed. */
  redirectMapFd: number;
  upstreamTimeoutMs: number;
  /** Queries the thread waits on at once; beyond it they go through the agent. */
  maxPending: number;
  onRecord(r: DnsFastRecord): void;
}

/** The thread reading one proxy socket (paused for it: the socket still sends the agent's answers). */
export class DnsFastPath {
  private handle: NativeHandle | undefined;

  constructor(socket: UdpSocket, opts: DnsFastPathOptions) {
    const fd = socket.pause();
    // 64 queries a socket, 256 sockets: as agent/dns/upstream-udp.ts.
    this.handle = native().dnsFastStart(fd, opts.tables.handle, opts.redirectMapFd, opts.upstreamTimeoutMs, 64, 256, opts.maxPending, (batch) => dnsFastRecords(batch, (r) => opts.onRecord(r)));
  }

  stats(): { answered: number; learn: number; failed: number; handed: number; unmatched: number; inFlight: number } | undefined {
    return this.handle && native().dnsFastStats(this.handle);
  }

  /** The thread ends (its queries in flight are dropped: their clients ask again); no record after this. */
  stop(): void {
    if (!this.handle) return;
    native().dnsFastStop(this.handle);
    this.handle = undefined;
  }
}
