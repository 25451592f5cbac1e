import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { Agent } from '../../agent/agent.js';
import { ConfigError, type Config } from '../../agent/config.js';
import { hubbleBackendOf, type HubbleBackend } from './backend.js';
import { hubbleSocketPath } from './config-check.js';
import { hubbleContext } from './context.js';
import { healthService } from './health.js';
import { observerService } from './observer.js';
import { peerService } from './peer.js';
import { hubbleServices } from './proto.js';

/** Hubble's gRPC API of this agent: bound at the start, serving the agent's flows once it runs. */
export interface HubbleServer {
  /** The unix socket path, when serving on one. */
  readonly socket: string | undefined;
  serve(backend: HubbleBackend): void;
  /** Serves `daemon.agent`; its stop closes this server first (follow streams end). */
  attach<D extends { agent: Agent; config: Config; stop: () => Promise<void> }>(daemon: D): D;
  /** Ends every stream and stops listening; removes the socket file. */
  close(): Promise<void>;
}

/** A socket file left by a crashed agent is removed; one that still answers belongs to someone else. */
async function socketPrepare(path: string): Promise<void> {
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  } catch (err) {
    throw new ConfigError(`hubble.socket: cannot create the directory of ${path}: ${(err as Error).message}`, ['hubble.socket']);
  }
  if (!existsSync(path)) return;
  const alive = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
  if (alive) throw new ConfigError(`hubble.socket: another process is already listening on ${path}`, ['hubble.socket']);
  unlinkSync(path);
}

function kitnetGid(): number | undefined {
  try {
    const line = readFileSync('/etc/group', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('kitnet:'));
    return line ? Number(line.split(':')[2]) : undefined;
  } catch {
    return undefined;
  }
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
  await socketPrepare(path);
  const umask = process.umask(0o177);
  try {
    await bind(server, `unix:${path}`, ServerCredentials.createInsecure());
  } catch (err) {
    throw new ConfigError(`hubble.socket: cannot listen on ${path}: ${(err as Error).message}`, ['hubble.socket']);
  } finally {
    process.umask(umask);
  }
  chmodSync(path, mode);
  const gid = kitnetGid();
  if (gid !== undefined) chownSync(path, 0, gid);
}

const disabled: HubbleServer = {
  socket: undefined,
  serve: () => undefined,
  attach: (d) => d,
  close: async () => undefined,
};

/** Binds Hubble's listeners (config `hubble`); requests get UNAVAILABLE until `serve`/`attach`. */
export async function hubbleListen(config: Config, log: Logger): Promise<HubbleServer> {
  if (!config.hubble.enabled) return disabled;
  const socket = hubbleSocketPath(config);
  const ctx = hubbleContext(`unix://${socket}`, { enabled: false, serverName: config.nodeName });
  const services = hubbleServices();
  const server = new Server({ 'grpc.max_receive_message_length': 1 << 20 });
  server.addService(services.observer, observerService(ctx));
  server.addService(services.peer, peerService(ctx));
  server.addService(services.health, healthService(ctx));
  try {
    await unixBind(server, socket, config.api.socketMode);
  } catch (err) {
    server.forceShutdown();
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
    serve: (backend) => {
      ctx.serve(backend);
      log.info({ socket }, 'Hubble API listening');
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
