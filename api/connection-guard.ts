/**
 * What a TLS listener's clients may hold before they have authenticated, shared by the REST API's TCP
 * listener (`api.tcp`) and Hubble's (`hubble.listen`). Node's TLS servers bound nothing there: any host
 * that reaches the port could open connections and never finish a handshake, each held for Node's default
 * handshake timeout (120 s), until the agent ran out of memory or file descriptors. A listener here
 * accepts on a plain TCP server and hands over to its TLS server (which does not listen itself) only the
 * connections within its limits: at most `maxConnections` at once, and `maxConnectionsPerAddress` from
 * one client (an IPv4 address, an IPv6 prefix), counted from the accept. A connection over either is
 * closed at once, before any TLS work, and counted once.
 */
import { createServer as tcpServerCreate, isIPv4, isIPv6, type Server as TcpServer, type Socket } from 'node:net';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { Gauge, type Registry } from 'prom-client';
import { mirroredCounter } from '../agent/metrics/mirror.js';
import { ipv6Format, ipv6Parse } from '../bpf/addr.js';

export interface ConnectionLimits {
  maxConnections: number;
  maxConnectionsPerAddress: number;
  /** IPv6 clients count per prefix of this length; 64 if not given. */
  ipv6ClientPrefix?: number;
}

export type ConnectionLimitRefusal = 'max_connections' | 'max_connections_per_address';

/**
 * Whose share a connection counts against: an IPv4 client's address (`::ffff:a.b.c.d`, an IPv4 client of
 * a dual-stack socket, counts as a.b.c.d), an IPv6 client's prefix of `ipv6Prefix` bits (/64 by default:
 * one IPv6 host holds a /64 with SLAAC and privacy addresses, and may connect from any of its 2^64
 * addresses, so a share per address would not bound it at all).
 */
export function connectionSourceKey(a: string | undefined, ipv6Prefix = 64): string {
  if (!a) return '?';
  if (a.startsWith('::ffff:') && isIPv4(a.slice(7))) return a.slice(7);
  if (!isIPv6(a)) return a;
  const bytes = ipv6Parse(a);
  const whole = ipv6Prefix >> 3;
  if (whole < 16) {
    bytes[whole] = bytes[whole]! & (0xff << (8 - (ipv6Prefix & 7)));
    bytes.fill(0, whole + 1);
  }
  return `${ipv6Format(bytes)}/${ipv6Prefix}`;
}

/** The connections a listener holds, in all and per client, until each closes. */
export class ConnectionGuard {
  private readonly perSource = new Map<string, number>();
  private readonly sockets = new Set<Socket>();

  constructor(private readonly limits: ConnectionLimits) {}

  /** Counts `raw` until it closes, or says which limit it is over (the caller closes it). */
  admit(raw: Socket): ConnectionLimitRefusal | undefined {
    if (this.sockets.size >= this.limits.maxConnections) return 'max_connections';
    const source = connectionSourceKey(raw.remoteAddress, this.limits.ipv6ClientPrefix);
    const fromThere = this.perSource.get(source) ?? 0;
    if (fromThere >= this.limits.maxConnectionsPerAddress) return 'max_connections_per_address';
    this.sockets.add(raw);
    this.perSource.set(source, fromThere + 1);
    raw.once('close', () => {
      this.sockets.delete(raw);
      const left = (this.perSource.get(source) ?? 1) - 1;
      if (left > 0) this.perSource.set(source, left);
      else this.perSource.delete(source);
    });
    return undefined;
  }

  /** Connections held now (handshaking or served). */
  get open(): number {
    return this.sockets.size;
  }

  destroyAll(): void {
    for (const s of this.sockets) s.destroy();
  }
}

export type HandshakeRefusal = 'handshake_timeout' | 'handshake_failed';

/**
 * The plain TCP server a TLS listener accepts on: `tlsServer` (which does not listen itself) gets only
 * the connections within `guard`'s limits, so a refused one costs no TLS work and is counted once; a
 * handshake that fails or is not done in the TLS server's handshakeTimeout closes its connection.
 */
export function tcpServerGuarding(tlsServer: TlsServer, guard: ConnectionGuard, refuse: (reason: ConnectionLimitRefusal | HandshakeRefusal, remote: string | undefined, detail?: string) => void): TcpServer {
  tlsServer.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => {
    const timeout = err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT';
    refuse(timeout ? 'handshake_timeout' : 'handshake_failed', socket.remoteAddress, timeout ? undefined : err.message);
    socket.destroy();
  });
  return tcpServerCreate((raw: Socket) => {
    const over = guard.admit(raw);
    if (over) {
      refuse(over, raw.remoteAddress);
      raw.destroy();
      return;
    }
    tlsServer.emit('connection', raw);
  });
}

/** One warning per reason at most this often: a flood must not flood the log too. */
const WARN_EVERY_MS = 10_000;

/** Refusals of a listener by reason: counted, and logged at most every WARN_EVERY_MS per reason. */
export function refusalsCounted<R extends string>(reasons: readonly R[], log: Logger, message: string, fields: object, ipv6Prefix?: number) {
  const refused = Object.fromEntries(reasons.map((r) => [r, 0])) as Record<R, number>;
  const warned = new Map<R, number>();
  return {
    refused: refused as Readonly<Record<R, number>>,
    refuse(reason: R, remote: string | undefined, detail?: string): void {
      refused[reason]++;
      const now = performance.now();
      if ((warned.get(reason) ?? -Infinity) + WARN_EVERY_MS > now) return;
      warned.set(reason, now);
      log.warn({ remote, client: connectionSourceKey(remote, ipv6Prefix), reason, detail, refusedSoFar: refused[reason], ...fields }, message);
    },
  };
}

/** `<prefix>_connections` (open now) and `<prefix>_connections_refused_total{reason}`, read when scraped. */
export function connectionMetricsRegister(
  registry: Registry,
  prefix: string,
  help: { open: string; refused: string },
  listener: { readonly open: number; readonly refused: Readonly<Record<string, number>> },
): void {
  new Gauge({
    name: `${prefix}_connections`,
    help: help.open,
    registers: [registry],
    collect() {
      this.set(listener.open);
    },
  });
  mirroredCounter(registry, `${prefix}_connections_refused_total`, help.refused, ['reason'] as const, () =>
    Object.entries(listener.refused).map(([reason, n]) => [{ reason }, n]));
}
