import { unlinkSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { unixSocketBindPrivate, unixSocketPrepare, unixSocketSecure } from '../unix-socket.js';
import type { Logger } from 'pino';
import type { Agent } from '../../agent/agent.js';
import { ConfigError, type Config } from '../../agent/config.js';
import { hubbleBackendOf, type HubbleBackend } from './backend.js';
import { hubbleListenParse, hubbleSocketPath, hubbleTlsRead } from '../../agent/hubble-config.js';
import { hubbleContext } from './context.js';
import { healthService } from './health.js';
import { observerService } from './observer.js';
import { peerService } from './peer.js';
import { hubbleServices } from './proto.js';

/** Hubble's gRPC API of this agent: bound at the start, serving the agent's flows once it runs. */
export interface HubbleServer {
  /** The unix socket path, when serving on one. */
  readonly socket: string | undefined;
  /** The TCP port bound (hubble.listen), if any. */
  readonly port: number | undefined;
  serve(backend: HubbleBackend): void;
  /** Serves `daemon.agent`; its stop closes this server first (follow streams end). */
  attach<D extends { agent: Agent; config: Config; stop: () => Promise<void> }>(daemon: D): D;
  /** Ends every stream and stops listening; removes the socket file. */
  close(): Promise<void>;
}

function bind(server: Server, address: string, creds: ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port))));
}

/**
 * The unix socket, with the REST socket's permission model: mode api.socketMode (0660), owner root,
 * group kitnet when that group exists. It is made under umask 0177, so no one else can connect in the
 * moment between bind and chmod.
 */
async function unixBind(server: Server, path: string, mode: number): Promise<void> {
  await unixSocketPrepare(path, 'hubble.socket');
  try {
    await unixSocketBindPrivate(() => bind(server, `unix:${path}`, ServerCredentials.createInsecure()));
  } catch (err) {
    throw new ConfigError(`hubble.socket: cannot listen on ${path}: ${(err as Error).message}`, ['hubble.socket']);
  }
  unixSocketSecure(path, mode);
}

/** A TCP listen error as an operator message naming hubble.listen. */
function tcpBindError(err: unknown, where: string): ConfigError {
  const text = (err as Error).message;
  const why = /EADDRINUSE/.test(text)
    ? 'the port is in use (EADDRINUSE): another process listens there; stop it or pick another port'
    : /EADDRNOTAVAIL/.test(text)
      ? 'not an address of this host (EADDRNOTAVAIL)'
      : /EACCES/.test(text)
        ? 'permission denied (EACCES)'
        : text;
  return new ConfigError(`hubble.listen: cannot listen on ${where}: ${why}`, ['hubble.listen']);
}

/** The TLS listener; with hubble.tls.clientCa, clients must present a certificate the CA signed (mTLS). */
async function tcpBind(server: Server, config: Config): Promise<{ host: string; port: number }> {
  const { host, port } = hubbleListenParse(config.hubble.listen!);
  const problems: Array<[string, string]> = [];
  const files = hubbleTlsRead(config.hubble.tls!, problems);
  if (!files) throw new ConfigError(problems.map(([k, m]) => `${k}: ${m}`).join('; '), problems.map(([k]) => k));
  const creds = ServerCredentials.createSsl(files.clientCa ?? null, [{ cert_chain: files.cert, private_key: files.key }], !!files.clientCa);
  const where = `${isIPv6(host) ? `[${host}]` : host}:${port}`;
  try {
    return { host, port: await bind(server, where, creds) };
  } catch (err) {
    throw tcpBindError(err, where);
  }
}

/** Where relays reach this node: the listen address, or this host's first external address when it listens on all. */
function advertisedAddress(host: string, port: number): string {
  let h = host;
  if (h === '0.0.0.0' || h === '::') {
    const all = Object.values(networkInterfaces()).flatMap((l) => l ?? []);
    h = all.find((a) => !a.internal && a.family === 'IPv4')?.address ?? all.find((a) => !a.internal)?.address ?? '127.0.0.1';
  }
  return `${isIPv6(h) ? `[${h}]` : h}:${port}`;
}

const disabled: HubbleServer = {
  socket: undefined,
  port: undefined,
  serve: () => undefined,
  attach: (d) => d,
  close: async () => undefined,
};

/** Binds Hubble's listeners (config `hubble`); requests get UNAVAILABLE until `serve`/`attach`. */
export async function hubbleListen(config: Config, log: Logger): Promise<HubbleServer> {
  if (!config.hubble.enabled) return disabled;
  const socket = hubbleSocketPath(config);
  const tls = { enabled: config.hubble.listen !== undefined, serverName: config.hubble.tls?.serverName ?? config.nodeName };
  let address = `unix://${socket}`;
  const ctx = hubbleContext(() => address, tls, config.hubble.followQueue);
  const services = hubbleServices();
  const server = new Server({ 'grpc.max_receive_message_length': 1 << 20 });
  server.addService(services.observer, observerService(ctx));
  server.addService(services.peer, peerService(ctx));
  server.addService(services.health, healthService(ctx));
  let tcp: { host: string; port: number } | undefined;
  try {
    await unixBind(server, socket, config.api.socketMode);
    if (config.hubble.listen !== undefined) {
      tcp = await tcpBind(server, config);
      address = advertisedAddress(tcp.host, tcp.port);
    }
  } catch (err) {
    server.forceShutdown();
    try {
      unlinkSync(socket);
    } catch {
      // not made
    }
    throw err;
  }
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      for (const stop of [...ctx.followers]) stop();
      server.forceShutdown();
      try {
        unlinkSync(socket);
      } catch {
        // gone already
      }
    })());
  const hubble: HubbleServer = {
    socket,
    port: tcp?.port,
    serve: (backend) => {
      ctx.serve(backend);
      log.info({ socket, tcp: tcp ? `${tcp.host}:${tcp.port}` : null, mtls: !!config.hubble.tls?.clientCa }, 'Hubble API listening');
    },
    attach: (daemon) => {
      hubble.serve(hubbleBackendOf(daemon.agent, daemon.config.nodeName));
      const stop = daemon.stop;
      return { ...daemon, stop: async () => (await close(), await stop()) };
    },
    close,
  };
  return hubble;
}
