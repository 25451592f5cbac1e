import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { FastifyServerFactory } from 'fastify';

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
}

const starting: Handler = (_req, res) => {
  res.writeHead(503, { 'content-type': 'application/json; charset=utf-8', 'retry-after': '1' });
  res.end(
    JSON.stringify({ statusCode: 503, code: 'AGENT_ERR_API_STARTING', error: 'Service Unavailable', message: 'the kitnet agent is starting (restoring its workloads); retry shortly' }),
  );
};

/** Binds a unix socket (`path`) or a TCP address; https for TLS. Rejects with the listen error (code kept). */
export async function listenerBind(where: { path: string } | { host: string; port: number }, https?: { cert: Buffer; key: Buffer }): Promise<BoundListener> {
  let handler: Handler = starting;
  let api: Handler | undefined;
  const onRequest: Handler = (req, res) => handler(req, res);
  const server: Server = https ? createHttpsServer(https, onRequest) : createServer(onRequest);
  // fastify's defaults for the servers it makes itself (long keep-alive, no request timeout: follow streams).
  server.keepAliveTimeout = 72_000;
  server.requestTimeout = 0;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(where, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    server,
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
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
