/**
 * Hubble's TCP listener (`hubble.listen`): kitnet's own TLS server in front of grpc-js, which gets each
 * connection once its TLS handshake is done (grpc-js's connection injector, over which it speaks plain
 * HTTP/2 on the decrypted socket).
 *
 * Why not grpc-js's own TLS listener: it bounds nothing a client holds before it has authenticated. Any
 * host that reaches the port could open connections and never finish a handshake, each held for Node's
 * default handshake timeout (120 s), until the agent ran out of memory or file descriptors. Here:
 * - at most `hubble.maxConnections` connections at once, and `hubble.maxConnectionsPerAddress` from one
 *   remote IPv4 address or IPv6 /64 (`hubble.ipv6ClientPrefix`; so one host cannot take them all), counted
 *   from the TCP accept: a connection over either is closed at once, before any TLS work;
 * - a handshake not done within `hubble.tls.handshakeTimeoutMs` closes the connection;
 * - with `hubble.tls.clientCa`, a client without a certificate that CA signed is refused in the
 *   handshake (mTLS), as before;
 * - a client that does not negotiate HTTP/2 (ALPN `h2`, which every gRPC client offers) is closed.
 */
import { createServer as tlsServerCreate, type TLSSocket } from 'node:tls';
import { isIPv4, isIPv6, createServer as tcpServerCreate, type Socket } from 'node:net';
import { ServerCredentials, type Server } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { Gauge, type Registry } from 'prom-client';
import { mirroredCounter } from '../../agent/metrics/mirror.js';
import { ipv6Format, ipv6Parse } from '../../bpf/addr.js';

export interface HubbleTcpOptions {
  host: string;
  port: number;
  tls: { cert: Buffer; key: Buffer; clientCa?: Buffer };
  maxConnections: number;
  maxConnectionsPerAddress: number;
  /** IPv6 clients count per prefix of this length (hubble.ipv6ClientPrefix); 64 if not given. */
  ipv6ClientPrefix?: number;
  handshakeTimeoutMs: number;
  log: Logger;
}

/** Why a connection was closed before grpc-js saw it (kitnet_hubble_connections_refused_total's `reason`). */
export type HubbleTcpRefusal = 'max_connections' | 'max_connections_per_address' | 'handshake_timeout' | 'handshake_failed' | 'not_http2';

export interface HubbleTcpListener {
  readonly port: number;
  /** Connections open now (handshaking or served). */
  readonly open: number;
  readonly refused: Readonly<Record<HubbleTcpRefusal, number>>;
  close(): void;
}

/** One warning per reason at most this often: a flood must not flood the log too. */
const WARN_EVERY_MS = 10_000;

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

export function hubbleTcpListen(server: Server, opts: HubbleTcpOptions): Promise<HubbleTcpListener> {
  const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
  const refused: Record<HubbleTcpRefusal, number> = { max_connections: 0, max_connections_per_address: 0, handshake_timeout: 0, handshake_failed: 0, not_http2: 0 };
  const warned = new Map<HubbleTcpRefusal, number>();
  const refuse = (reason: HubbleTcpRefusal, remote: string | undefined, detail?: string) => {
    refused[reason]++;
    const now = performance.now();
    if ((warned.get(reason) ?? -Infinity) + WARN_EVERY_MS > now) return;
    warned.set(reason, now);
    opts.log.warn({ remote, share: connectionSourceKey(remote, opts.ipv6ClientPrefix), reason, detail, refusedSoFar: refused[reason], maxConnections: opts.maxConnections, maxConnectionsPerAddress: opts.maxConnectionsPerAddress }, 'Hubble TCP listener: connection refused');
  };
  const perAddress = new Map<string, number>();
  const sockets = new Set<Socket>();
  const tlsServer = tlsServerCreate({
    cert: opts.tls.cert,
    key: opts.tls.key,
    ...(opts.tls.clientCa ? { ca: opts.tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.2',
    handshakeTimeout: opts.handshakeTimeoutMs,
  });
  // Connections are accepted here and only the ones within the limits go on to the TLS server (which
  // does not listen itself): a refused connection costs no TLS work and is counted once.
  const tcpServer = tcpServerCreate((raw: Socket) => {
    const share = connectionSourceKey(raw.remoteAddress, opts.ipv6ClientPrefix);
    const fromThere = perAddress.get(share) ?? 0;
    if (sockets.size >= opts.maxConnections) {
      refuse('max_connections', raw.remoteAddress);
      raw.destroy();
      return;
    }
    if (fromThere >= opts.maxConnectionsPerAddress) {
      refuse('max_connections_per_address', raw.remoteAddress);
      raw.destroy();
      return;
    }
    sockets.add(raw);
    perAddress.set(share, fromThere + 1);
    raw.once('close', () => {
      sockets.delete(raw);
      const left = (perAddress.get(share) ?? 1) - 1;
      if (left > 0) perAddress.set(share, left);
      else perAddress.delete(share);
    });
    tlsServer.emit('connection', raw);
  });
  tlsServer.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => {
    const timeout = err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT';
    refuse(timeout ? 'handshake_timeout' : 'handshake_failed', socket.remoteAddress, timeout ? undefined : err.message);
    socket.destroy();
  });
  tlsServer.on('secureConnection', (socket: TLSSocket) => {
    if (socket.alpnProtocol !== 'h2') {
      refuse('not_http2', socket.remoteAddress, `ALPN ${socket.alpnProtocol || 'none'}`);
      socket.destroy();
      return;
    }
    // Errors of a served connection are grpc-js's session's; this keeps one from being unhandled.
    socket.on('error', () => undefined);
    injector.injectConnection(socket);
  });
  return new Promise((resolve, reject) => {
    tcpServer.once('error', reject);
    tcpServer.listen(opts.port, opts.host, () => {
      tcpServer.off('error', reject);
      tcpServer.on('error', (err) => opts.log.error({ err }, 'Hubble TCP listener failed'));
      const address = tcpServer.address();
      resolve({
        port: typeof address === 'object' && address ? address.port : opts.port,
        get open() {
          return sockets.size;
        },
        refused,
        close: () => {
          tcpServer.close();
          injector.destroy();
          for (const s of sockets) s.destroy();
        },
      });
    });
  });
}

/** `kitnet_hubble_connections` (open now) and `kitnet_hubble_connections_refused_total{reason}`, read when scraped. */
export function hubbleTcpMetricsRegister(registry: Registry, listener: HubbleTcpListener): void {
  new Gauge({
    name: 'kitnet_hubble_connections',
    help: 'TCP connections to the Hubble listener (hubble.listen) open now, handshaking or served',
    registers: [registry],
    collect() {
      this.set(listener.open);
    },
  });
  mirroredCounter(registry, 'kitnet_hubble_connections_refused_total', 'TCP connections to the Hubble listener closed before being served, by reason: a limit reached (hubble.maxConnections, hubble.maxConnectionsPerAddress), a TLS handshake not done in time (hubble.tls.handshakeTimeoutMs) or failed (no or a wrong client certificate), no HTTP/2', ['reason'] as const, () =>
    (Object.entries(listener.refused) as Array<[string, number]>).map(([reason, n]) => [{ reason }, n]));
}
