import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Server as TcpServer, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { FastifyServerFactory } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { ConnectionGuard, connectionMetricsRegister, refusalsCounted, tcpServerGuarding, type ConnectionLimits } from './connection-guard.js';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/**
 * A listener bound before the agent touches the kernel, so a port in use or a socket path that cannot be
 * made stops the start before anything else happened; it answers 503 (AGENT_ERR_API_STARTING) until the
 * API is built on it (`factory` for fastify's serverFactory) and `serve` hands requests over.
 */
export interface BoundListener {
  readonly server: Server;
  /** For serverBuild: fastify builds its routing on this server; requests reach it after `serve`. */
  readonly factory: FastifyServerFactory;
  /** From now on requests go to the API that `factory` was given. */
  serve(): void;
  /** Stops accepting and ends every connection (follow streams never end by themselves). */
  close(): Promise<void>;
  /** Where it listens (a TCP listener's port as the kernel gave it, for port 0). */
  address(): ReturnType<Server['address']>;
  /** TLS over TCP only: the connections held now and those refused before being served (api/connection-guard.ts). */
  readonly connections?: { readonly open: number; readonly refused: Readonly<Record<ApiTcpRefusal, number>> };
}

/** TLS for a TCP listener (`api.tcp`), and what its clients may hold before they authenticate. */
export interface ListenerTls extends ConnectionLimits {
  cert: Buffer;
  key: Buffer;
  /** A TLS handshake not done by then closes the connection (api.tcp.tls.handshakeTimeoutMs). */
  handshakeTimeoutMs: number;
  log: Logger;
}

const API_TCP_REFUSALS = ['max_connections', 'max_connections_per_address', 'handshake_timeout', 'handshake_failed', 'no_request'] as const;
/** Why a connection to the TCP API was closed before a request was read (kitnet_api_connections_refused_total's `reason`). */
export type ApiTcpRefusal = (typeof API_TCP_REFUSALS)[number];

const starting: Handler = (_req, res) => {
  res.writeHead(503, { 'content-type': 'application/json; charset=utf-8', 'retry-after': '1' });
  res.end(
    JSON.stringify({ statusCode: 503, code: 'AGENT_ERR_API_STARTING', error: 'Service Unavailable', message: 'the kitnet agent is starting (restoring its workloads); retry shortly' }),
  );
};

/**
 * Binds a unix socket (`path`) or a TCP address; TLS with `tls` (a TCP listener serves nothing else).
 * Rejects with the listen error (code kept). With TLS, connections are accepted on a plain TCP server
 * and only those within `tls`'s limits are handed to the https server (which does not listen itself): a
 * connection over a limit is closed before any TLS work, and one whose handshake is not done in
 * `handshakeTimeoutMs`, or whose first request's headers have not arrived as long again after it, is closed.
 */
export async function listenerBind(where: { path: string } | { host: string; port: number }, tls?: ListenerTls): Promise<BoundListener> {
  let handler: Handler = starting;
  let api: Handler | undefined;
  const onRequest: Handler = (req, res) => handler(req, res);
  const https = tls ? createHttpsServer({ cert: tls.cert, key: tls.key, minVersion: 'TLSv1.2', handshakeTimeout: tls.handshakeTimeoutMs }, onRequest) : undefined;
  const server: Server = https ?? createServer(onRequest);
  // fastify's defaults for the servers it makes itself (long keep-alive, no request timeout: follow streams).
  server.keepAliveTimeout = 72_000;
  server.requestTimeout = 0;
  let listening: Server | TcpServer = server;
  let guard: ConnectionGuard | undefined;
  let connections: BoundListener['connections'];
  if (tls) {
    const g = (guard = new ConnectionGuard(tls));
    const { refused, refuse } = refusalsCounted(API_TCP_REFUSALS, tls.log, 'API TCP listener: connection refused', { maxConnections: tls.maxConnections, maxConnectionsPerAddress: tls.maxConnectionsPerAddress }, tls.ipv6ClientPrefix);
    listening = tcpServerGuarding(https!, g, refuse);
    // A client that finished its handshake has as long again for its first request's headers ('request'
    // comes once they are in). node bounds the headers of a request it has begun to read (headersTimeout)
    // and the wait between requests (keepAliveTimeout), not a connection that never sends a byte: that
    // one would hold its place until the agent stopped.
    const firstRequest = new WeakMap<Socket, NodeJS.Timeout>();
    https!.on('secureConnection', (socket: TLSSocket) => {
      const timer = setTimeout(() => {
        refuse('no_request', socket.remoteAddress);
        socket.destroy();
      }, tls.handshakeTimeoutMs);
      firstRequest.set(socket, timer);
      socket.once('close', () => clearTimeout(timer));
    });
    https!.on('request', (req: IncomingMessage) => clearTimeout(firstRequest.get(req.socket)));
    connections = {
      get open() {
        return g.open;
      },
      refused,
    };
  }
  const bound = listening;
  await new Promise<void>((resolve, reject) => {
    bound.once('error', reject);
    bound.listen(where, () => {
      bound.off('error', reject);
      resolve();
    });
  });
  // The https server does not listen itself, and node's http server starts tracking its connections
  // (headersTimeout, closeAllConnections) on its 'listening' event: it is told the port is open.
  if (bound !== server) server.emit('listening');
  return {
    server,
    address: () => bound.address(),
    factory: ((fastifyHandler: Handler) => {
      api = fastifyHandler;
      return server;
    }) as unknown as FastifyServerFactory,
    serve: () => {
      if (!api) throw new Error('listener: serve() before an API was built on it');
      handler = api;
    },
    close: () =>
      new Promise<void>((resolve) => {
        bound.close(() => resolve());
        if (bound !== server) server.close();
        server.closeAllConnections();
        guard?.destroyAll();
      }),
    ...(connections ? { connections } : {}),
  };
}

/** `kitnet_api_connections` (open now) and `kitnet_api_connections_refused_total{reason}` of the TCP listener, read when scraped. */
export function apiTcpMetricsRegister(registry: Registry, listener: BoundListener): void {
  if (!listener.connections) return;
  connectionMetricsRegister(registry, 'kitnet_api', {
    open: 'TCP connections to the API listener (api.tcp) open now, handshaking or served',
    refused: 'TCP connections to the API listener closed before a request was read, by reason: a limit reached (api.tcp.maxConnections, api.tcp.maxConnectionsPerAddress), a TLS handshake not done in time (api.tcp.tls.handshakeTimeoutMs) or failed, no request headers as long again after the handshake',
  }, listener.connections);
}
