/**
 * Hubble's TCP listener (`hubble.listen`): kitnet's own TLS server in front of grpc-js, which gets each
 * connection once its TLS handshake is done (grpc-js's connection injector, over which it speaks plain
 * HTTP/2 on the decrypted socket).
 *
 * Why not grpc-js's own TLS listener: it bounds nothing a client holds before it has authenticated
 * (api/connection-guard.ts). Here:
 * - at most `hubble.maxConnections` connections at once, and `hubble.maxConnectionsPerAddress` from one
 *   remote IPv4 address or IPv6 /64 (`hubble.ipv6ClientPrefix`; so one host cannot take them all), counted
 *   from the TCP accept: a connection over either is closed at once, before any TLS work;
 * - a handshake not done within `hubble.tls.handshakeTimeoutMs` closes the connection;
 * - with `hubble.tls.clientCa`, a client without a certificate that CA signed is refused in the
 *   handshake (mTLS), as before;
 * - a client that does not negotiate HTTP/2 (ALPN `h2`, which every gRPC client offers) is closed.
 */
import { createServer as tlsServerCreate, type TLSSocket } from 'node:tls';
import { ServerCredentials, type Server } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { ConnectionGuard, connectionMetricsRegister, refusalsCounted, tcpServerGuarding, type ConnectionLimits } from '../connection-guard.js';

export interface HubbleTcpOptions extends ConnectionLimits {
  host: string;
  port: number;
  tls: { cert: Buffer; key: Buffer; clientCa?: Buffer };
  handshakeTimeoutMs: number;
  log: Logger;
}

const REFUSALS = ['max_connections', 'max_connections_per_address', 'handshake_timeout', 'handshake_failed', 'not_http2'] as const;
/** Why a connection was closed before grpc-js saw it (kitnet_hubble_connections_refused_total's `reason`). */
export type HubbleTcpRefusal = (typeof REFUSALS)[number];

export interface HubbleTcpListener {
  readonly port: number;
  /** Connections open now (handshaking or served). */
  readonly open: number;
  readonly refused: Readonly<Record<HubbleTcpRefusal, number>>;
  close(): void;
}

export function hubbleTcpListen(server: Server, opts: HubbleTcpOptions): Promise<HubbleTcpListener> {
  const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
  const { refused, refuse } = refusalsCounted(REFUSALS, opts.log, 'Hubble TCP listener: connection refused', { maxConnections: opts.maxConnections, maxConnectionsPerAddress: opts.maxConnectionsPerAddress }, opts.ipv6ClientPrefix);
  const guard = new ConnectionGuard(opts);
  const tlsServer = tlsServerCreate({
    cert: opts.tls.cert,
    key: opts.tls.key,
    ...(opts.tls.clientCa ? { ca: opts.tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.2',
    handshakeTimeout: opts.handshakeTimeoutMs,
  });
  const tcpServer = tcpServerGuarding(tlsServer, guard, refuse);
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
          return guard.open;
        },
        refused,
        close: () => {
          tcpServer.close();
          injector.destroy();
          guard.destroyAll();
        },
      });
    });
  });
}

/** `kitnet_hubble_connections` (open now) and `kitnet_hubble_connections_refused_total{reason}`, read when scraped. */
export function hubbleTcpMetricsRegister(registry: Registry, listener: HubbleTcpListener): void {
  connectionMetricsRegister(registry, 'kitnet_hubble', {
    open: 'TCP connections to the Hubble listener (hubble.listen) open now, handshaking or served',
    refused: 'TCP connections to the Hubble listener closed before being served, by reason: a limit reached (hubble.maxConnections, hubble.maxConnectionsPerAddress), a TLS handshake not done in time (hubble.tls.handshakeTimeoutMs) or failed (no or a wrong client certificate), no HTTP/2',
  }, listener);
}
