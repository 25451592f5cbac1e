import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { pino, type Logger } from 'pino';
import { datapathLoad } from '../bpf/index.js';
import { hostForwardingEnsure } from '../netkit/index.js';
import { serverBuild } from '../api/server.js';
import { Agent, KITNET_VERSION } from './agent.js';
import { configLoad, type Config, type ConfigInput } from './config.js';
import { hostFactsGather } from './host-facts.js';
import { kernelOpsReal } from './kernel-ops-real.js';
import { SqliteStore } from './store/sqlite-store.js';

export const DEFAULT_CONFIG_PATH = '/etc/kitnet/config.yaml';

export interface DaemonOptions {
  configPath?: string | undefined;
  overrides?: ConfigInput;
  /** Called once the API listens (the demo and tests wait for it). */
  onReady?: (info: { socket: string }) => void;
}

/** A unix socket file left by a crashed agent is removed; one that still answers means another agent runs. */
async function socketPrepare(path: string): Promise<void> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  if (!existsSync(path)) return;
  const alive = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`another kitnet agent is already listening on ${path}`);
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

export async function daemonRun(opts: DaemonOptions = {}): Promise<{ stop: () => Promise<void>; config: Config; agent: Agent }> {
  const configPath = opts.configPath ?? (existsSync(DEFAULT_CONFIG_PATH) ? DEFAULT_CONFIG_PATH : undefined);
  const config = configLoad(configPath, opts.overrides);
  const log: Logger = pino({ level: config.logLevel, base: { node: config.nodeName } });
  if (process.getuid?.() !== 0) {
    throw new Error('kitnet agent must run as root (it needs CAP_NET_ADMIN, CAP_BPF and CAP_SYS_ADMIN for namespaces)');
  }
  log.info({ version: KITNET_VERSION, config: configPath ?? '(defaults)' }, 'kitnet agent starting');

  const store = new SqliteStore(join(config.stateDir, 'kitnet.db'));
  await hostForwardingEnsure();
  const datapath = await datapathLoad({ pinRoot: config.bpfPinRoot });
  const kernel = kernelOpsReal(datapath);
  const [features, hostFacts] = await Promise.all([kernel.features(), hostFactsGather()]);
  log.info({ kernel: features.kernelRelease, netkit: features.netkit, tcx: features.tcx, mode: config.datapath.mode }, 'kernel features probed');

  const agent = new Agent(config, store, kernel, hostFacts, log);
  await agent.start();

  const app = await serverBuild({ agent, logger: log.child({ component: 'api' }), version: KITNET_VERSION });
  await socketPrepare(config.api.socket);
  await app.listen({ path: config.api.socket });
  chmodSync(config.api.socket, config.api.socketMode);
  const gid = kitnetGid();
  if (gid !== undefined) chownSync(config.api.socket, 0, gid);
  // fastify listens once per instance, so TCP gets its own instance with the same routes.
  const tcpApp = config.api.tcp ? await serverBuild({ agent, logger: log.child({ component: 'api-tcp' }), version: KITNET_VERSION }) : undefined;
  if (tcpApp && config.api.tcp) await tcpApp.listen({ host: config.api.tcp.host, port: config.api.tcp.port });
  log.info({ socket: config.api.socket, tcp: config.api.tcp ?? null }, 'API listening');
  opts.onReady?.({ socket: config.api.socket });

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      log.info('kitnet agent stopping; the datapath stays pinned and keeps forwarding');
      await Promise.all([app.close(), tcpApp?.close()]);
      await agent.workloads.exclusive(async () => undefined);
      agent.stop();
      datapath.close();
      store.close();
    })());
  return { stop, config, agent };
}
