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
import { CONNECTION_STREAMS_MAX, hubbleContext } from './context.js';
import { healthService } from './health.js';
import { observerService } from './observer.js';
import { flowPathWarm, type FlowPathWarm } from './warm.js';
import { flowResponseEncoderCreate } from './flow-encoder.js';
import { peerService } from './peer.js';
import { hubbleServices } from './proto.js';
import { hubbleTcpListen, hubbleTcpMetricsRegister, type HubbleTcpListener } from './tcp-listener.js';

/** Hubble's gRPC API of this agent: bound at the start, serving the agent's flows once it runs. */
export interface HubbleServer {
  /** The unix socket path, when serving on one. */
  readonly socket: string | undefined;
  /** The TCP port bound (hubble.listen), if any. */
  readonly port: number | undefined;
  /** The TCP listener's connection counts, when it listens on TCP. */
  readonly tcp: Pick<HubbleTcpListener, 'open' | 'refused'> | undefined;
  serve(backend: HubbleBackend): void;
  /** Serves `daemon.agent`; its stop closes this server first (follow streams end). */
  attach<D extends { agent: Agent; config: Config; stop: () => Promise<void> }>(daemon: D): D;
  /**
   * Streams open now: `held` follow, Notify and Watch streams (OPEN_STREAMS_MAX); `snapshots`, GetFlows
   * streams without follow (SNAPSHOT_STREAMS_MAX), with `snapshotQueued` messages queued among them.
   */
  streams(): { held: number; snapshots: number; snapshotQueued: number };
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

/** The TLS listener (tcp-listener.ts); with hubble.tls.clientCa, clients must present a certificate the CA signed (mTLS). */
async function tcpBind(server: Server, config: Config, log: Logger): Promise<{ host: string; listener: HubbleTcpListener }> {
  const { host, port } = hubbleListenParse(config.hubble.listen!);
  const problems: Array<[string, string]> = [];
  const tls = config.hubble.tls!;
  const files = hubbleTlsRead(tls, problems);
  if (!files) throw new ConfigError(problems.map(([k, m]) => `${k}: ${m}`).join('; '), problems.map(([k]) => k));
  const where = `${isIPv6(host) ? `[${host}]` : host}:${port}`;
  try {
    const listener = await hubbleTcpListen(server, {
      host,
      port,
      tls: { cert: files.cert, key: files.key, ...(files.clientCa ? { clientCa: files.clientCa } : {}) },
      maxConnections: config.hubble.maxConnections,
      maxConnectionsPerAddress: config.hubble.maxConnectionsPerAddress,
      ipv6ClientPrefix: config.hubble.ipv6ClientPrefix,
      handshakeTimeoutMs: tls.handshakeTimeoutMs,
      log,
    });
    return { host, listener };
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
  tcp: undefined,
  streams: () => ({ held: 0, snapshots: 0, snapshotQueued: 0 }),
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
  const server = new Server({ 'grpc.max_receive_message_length': 1 << 20, 'grpc.max_concurrent_streams': CONNECTION_STREAMS_MAX });
  // one encoder for every follower, and for the warm of the flow path when the agent starts serving
  const encode = flowResponseEncoderCreate();
  server.addService(services.observer, observerService(ctx, encode));
  server.addService(services.peer, peerService(ctx));
  server.addService(services.health, healthService(ctx));
  let tcp: { host: string; port: number } | undefined;
  let listener: HubbleTcpListener | undefined;
  try {
    await unixBind(server, socket, config.api.socketMode);
    if (config.hubble.listen !== undefined) {
      const bound = await tcpBind(server, config, log);
      listener = bound.listener;
      tcp = { host: bound.host, port: listener.port };
      address = advertisedAddress(tcp.host, tcp.port);
    }
  } catch (err) {
    listener?.close();
    server.forceShutdown();
    try {
      unlinkSync(socket);
    } catch {
      // not made
    }
    throw err;
  }
  let closing: Promise<void> | undefined;
  let warm: FlowPathWarm | undefined;
  const close = () =>
    (closing ??= (async () => {
      warm?.cancel();
      for (const stop of [...ctx.followers, ...ctx.snapshots.keys()]) stop();
      listener?.close();
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
    tcp: listener,
    streams: () => ({
      held: ctx.followers.size,
      snapshots: ctx.snapshots.size,
      snapshotQueued: [...ctx.snapshots.values()].reduce((n, queued) => n + queued(), 0),
    }),
    serve: (backend) => {
      ctx.serve(backend);
      if (config.hubble.warmFlows > 0 && !warm) {
        const started = performance.now();
        warm = flowPathWarm(backend, encode, config.hubble.warmFlows);
        void warm.done.then(
          () => log.debug({ flows: config.hubble.warmFlows, ms: Math.round(performance.now() - started) }, 'Hubble flow path warmed'),
          (err: unknown) => log.warn({ err }, 'Hubble flow path warm failed (followers are served all the same)'),
        );
      }
      log.info({ socket, tcp: tcp ? `${tcp.host}:${tcp.port}` : null, mtls: !!config.hubble.tls?.clientCa }, 'Hubble API listening');
    },
    attach: (daemon) => {
      hubble.serve(hubbleBackendOf(daemon.agent, daemon.config.nodeName));
      if (listener) hubbleTcpMetricsRegister(daemon.agent.metrics.registry, listener);
      const stop = daemon.stop;
      return { ...daemon, stop: async () => (await close(), await stop()) };
    },
    close,
  };
  return hubble;
}
