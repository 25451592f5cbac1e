import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pino, type Logger } from 'pino';
import { datapathLoad } from '../bpf/index.js';
import { hostForwardingEnsure } from '../netkit/index.js';
import { apiTcpMetricsRegister, listenerBind, type BoundListener } from '../api/listener.js';
import { serverBuild } from '../api/server.js';
import { hubbleListen } from '../api/hubble/server.js';
import { unixSocketBindPrivate, unixSocketPrepare, unixSocketSecure } from '../api/unix-socket.js';
import type { ConfigChange, ConfigReloadResult } from '../common/schemas/config.js';
import { LOG_REDACT, type AuditSink } from '../api/security.js';
import { tokensLoad, type TokenSet } from '../common/tokens.js';
import { KitnetError } from '../common/errors.js';
import { Agent, KITNET_VERSION } from '../agent/agent.js';
import { ConfigError, configLoad, type Config, type ConfigInput } from '../agent/config.js';
import { clusterOpen, type ClusterMode } from '../agent/cluster/index.js';
import { configPrepare, configWarnings, type TcpPrepared } from '../agent/config-preflight.js';
import { instanceLockTake, type InstanceLock } from '../agent/instance-lock.js';
import { workloadsOutsidePools } from '../agent/pool-check.js';
import { ExpediteRcu } from '../agent/expedite-rcu.js';
import { hostFactsGather } from '../agent/host-facts.js';
import { kernelOpsReal } from '../agent/kernel-ops-real.js';
import { sqliteStoreOpen } from '../agent/store/index.js';
import { SystemdNotifier } from '../agent/systemd.js';

export const DEFAULT_CONFIG_PATH = '/etc/kitnet/config.yaml';

export interface DaemonOptions {
  configPath?: string | undefined;
  overrides?: ConfigInput;
  /** Called once the API listens (the demo and tests wait for it). */
  onReady?: (info: { socket: string }) => void;
  /** The BPF object to load (default: this build's, or $KITNET_BPF_OBJECT); the upgrade test starts an older one. */
  bpfObject?: string;
}

/** A listen error as an operator message naming the config key. */
function listenErrorExplain(err: unknown, where: string, keys: { address: string; port?: string }): ConfigError {
  const code = (err as NodeJS.ErrnoException).code ?? '';
  const why = (err as Error).message;
  if (code === 'EADDRINUSE') {
    return keys.port
      ? new ConfigError(`${keys.port}: ${where} is already in use (EADDRINUSE): another process listens there; stop it or pick another port`, [keys.port])
      : new ConfigError(`${keys.address}: ${where} is in use (EADDRINUSE)`, [keys.address]);
  }
  if (code === 'EACCES' && keys.port) return new ConfigError(`${keys.port}: ${where}: permission denied (EACCES)`, [keys.port]);
  if (code === 'EADDRNOTAVAIL') return new ConfigError(`${keys.address}: ${where} is not an address of this host (EADDRNOTAVAIL)`, [keys.address]);
  return new ConfigError(`${keys.address}: cannot listen on ${where}: ${why}`, [keys.address]);
}

/** The API's unix socket, bound (answering 503 until the API serves), with its mode and group. */
async function unixListen(config: Config): Promise<BoundListener> {
  const path = config.api.socket;
  await unixSocketPrepare(path, 'api.socket');
  let listener: BoundListener;
  try {
    listener = await unixSocketBindPrivate(() => listenerBind({ path }));
  } catch (err) {
    throw listenErrorExplain(err, path, { address: 'api.socket' });
  }
  unixSocketSecure(path, config.api.socketMode);
  return listener;
}

/** Audit lines: to the log (info) and, when configured, appended to their own file (0600). */
function auditSink(config: Config, log: Logger): AuditSink {
  const toLog = log.child({ component: 'audit' });
  const file = config.api.audit.file;
  if (!file) return toLog;
  let toFile: Logger;
  try {
    mkdirSync(dirname(file), { recursive: true, mode: 0o750 });
    toFile = pino({ level: 'info', base: { node: config.nodeName }, redact: LOG_REDACT }, pino.destination({ dest: file, append: true, mode: 0o600, sync: true }));
  } catch (err) {
    throw new ConfigError(`api.audit.file: cannot open ${file}: ${(err as Error).message}`, ['api.audit.file']);
  }
  return {
    info: (obj, msg) => {
      toLog.info(obj, msg);
      toFile.info(obj, msg);
    },
  };
}

export interface Daemon {
  stop: () => Promise<void>;
  /** Re-reads the config file (SIGHUP): applies what can change live, warns about the rest; never throws. */
  reload: () => void;
  /**
   * The same, for POST /v1/config/reload: returns what changed; an invalid file throws a KitnetError
   * (AGENT_ERR_CONFIG_INVALID, naming the bad keys) and leaves the running config as it was.
   */
  configReload: () => ConfigReloadResult;
  config: Config;
  agent: Agent;
}

/** Keys that take effect on reload; a change to any other key waits for a restart. */
const LIVE_KEYS = new Set([
  'logLevel',
  'flows.aggregation',
  'flows.reportIntervalSeconds',
  'flows.dropEvents.perSecond',
  'flows.dropEvents.burst',
  'datapath.expediteRcu',
]);

/** Leaf values by dotted path (`flows.aggregation`); arrays are values. */
function configLeaves(v: unknown, prefix = '', out = new Map<string, unknown>()): Map<string, unknown> {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v)) configLeaves(x, prefix ? `${prefix}.${k}` : k, out);
  } else if (prefix) out.set(prefix, v);
  return out;
}

/** The keys whose values differ between the running config and a newly loaded one, sorted. */
export function configDiff(running: Config, next: Config): ConfigChange[] {
  const a = configLeaves(running);
  const b = configLeaves(next);
  return [...new Set([...a.keys(), ...b.keys()])]
    .sort()
    .filter((k) => JSON.stringify(a.get(k)) !== JSON.stringify(b.get(k)))
    .map((key) => ({ key, from: a.get(key) ?? null, to: b.get(key) ?? null, applied: LIVE_KEYS.has(key) }));
}

/** How far a start without progress may run past the last report before systemd gives up on it. */
const RESTORE_STALL_USEC = 60_000_000;

/**
 * Progress of the startup restore, at most once a second: to systemd (STATUS, and
 * EXTEND_TIMEOUT_USEC so a long restore of many workloads outlives TimeoutStartSec=) and to the log.
 */
function restoreProgress(systemd: SystemdNotifier, log: Logger): (done: number, total: number) => void {
  let last = 0;
  return (done, total) => {
    const now = Date.now();
    if (done < total && now - last < 1000) return;
    last = now;
    systemd.startProgress(`restoring workloads: ${done}/${total}`, RESTORE_STALL_USEC);
    if (done < total) log.info({ done, total }, 'restoring workloads');
  };
}

/**
 * Starts the agent in this order: validate the config and everything it names, take the lock of the
 * state dir and pin root, bind the listeners, and only then touch the kernel (store, datapath, restore).
 * A refusal in the first three steps leaves nothing behind, so `Restart=on-failure` cannot repeat a
 * half-start; a failure later undoes what this start opened (the pins stay, as on any stop).
 */
export async function daemonRun(opts: DaemonOptions = {}): Promise<Daemon> {
  const configPath = opts.configPath ?? (existsSync(DEFAULT_CONFIG_PATH) ? DEFAULT_CONFIG_PATH : undefined);
  const config = configLoad(configPath, opts.overrides);
  const log: Logger = pino({ level: config.logLevel, base: { node: config.nodeName }, redact: LOG_REDACT });
  log.info({ version: KITNET_VERSION, config: configPath ?? '(defaults)' }, 'kitnet agent starting');
  const prepared = await configPrepare(config);
  for (const w of configWarnings(config)) log.warn({ key: w.key }, `config: ${w.message}`);
  if (process.getuid?.() !== 0) {
    throw new Error('kitnet agent must run as root (it needs CAP_NET_ADMIN, CAP_BPF and CAP_SYS_ADMIN for namespaces)');
  }

  const undo: Array<() => unknown> = [];
  try {
    const lock = instanceLockTake(config.stateDir, config.bpfPinRoot);
    undo.push(() => lock.release());
    const unixListener = await unixListen(config);
    undo.push(() => unixListener.close());
    let tcpListener: BoundListener | undefined;
    if (config.api.tcp && prepared.tcp) {
      const t = config.api.tcp;
      const { host, port } = t;
      try {
        tcpListener = await listenerBind({ host, port }, {
          ...prepared.tcp.https,
          handshakeTimeoutMs: t.tls!.handshakeTimeoutMs,
          maxConnections: t.maxConnections,
          maxConnectionsPerAddress: t.maxConnectionsPerAddress,
          ipv6ClientPrefix: t.ipv6ClientPrefix,
          log: log.child({ component: 'api-tcp' }),
        });
      } catch (err) {
        throw listenErrorExplain(err, `${host}:${port}`, { address: 'api.tcp.host', port: 'api.tcp.port' });
      }
      const bound = tcpListener;
      undo.push(() => bound.close());
    }
    const hubble = await hubbleListen(config, log);
    undo.push(() => hubble.close());
    const audit = auditSink(config, log);
    const cluster = config.cluster ? await clusterOpen(config.cluster, prepared.etcdTls, log, config, prepared.peerEtcdTls) : undefined;
    if (cluster) undo.push(() => cluster.close());
    return hubble.attach(await daemonStart({ opts, configPath, config, log, tcpSecurity: prepared.tcp, lock, unixListener, tcpListener, audit, undo, cluster }));
  } catch (err) {
    for (const u of undo.reverse()) {
      try {
        await u();
      } catch {
        // best effort: the first error is the one to report
      }
    }
    throw err;
  }
}

/** The kernel part of a start, once the config is valid, the lock held and the listeners bound. */
async function daemonStart(s: {
  opts: DaemonOptions;
  configPath: string | undefined;
  config: Config;
  log: Logger;
  tcpSecurity: TcpPrepared | undefined;
  lock: InstanceLock;
  unixListener: BoundListener;
  tcpListener: BoundListener | undefined;
  audit: AuditSink;
  /** What to close when this start fails; the lock and the listeners are in it already. */
  undo: Array<() => unknown>;
  cluster: ClusterMode | undefined;
}): Promise<Daemon> {
  const { opts, configPath, config, log, tcpSecurity, lock, unixListener, tcpListener, audit, undo, cluster } = s;
  const store = sqliteStoreOpen(join(config.stateDir, 'kitnet.db'));
  undo.push(() => store.close());
  await hostForwardingEnsure();
  // Before the restore below: it attaches every stored workload's programs again.
  const expediteRcu = new ExpediteRcu(log);
  expediteRcu.apply(config.datapath.expediteRcu);
  const datapath = await datapathLoad({
    pinRoot: config.bpfPinRoot,
    ...(opts.bpfObject ? { objectPath: opts.bpfObject } : {}),
    ...(config.flows.kernelRingBytes ? { eventsRingBytes: config.flows.kernelRingBytes } : {}),
    log,
  });
  undo.push(() => datapath.close());
  const kernel = kernelOpsReal(datapath);
  // Gathered meanwhile; a failure is handled (logged, node:os facts) by the agent, not here.
  const hostFacts = hostFactsGather();
  hostFacts.catch(() => undefined);
  const features = await kernel.features();
  log.info({ kernel: features.kernelRelease, netkit: features.netkit, tcx: features.tcx, mode: config.datapath.mode }, 'kernel features probed');

  // In cluster mode the local IPAM hands out addresses of this node's CIDRs, carved from the pools.
  const agent = new Agent(cluster ? { ...config, ipam: cluster.ipam } : config, store, kernel, hostFacts, log, cluster);
  cluster?.metricsRegister(agent.metrics.registry);
  if (tcpListener) apiTcpMetricsRegister(agent.metrics.registry, tcpListener);
  const systemd = new SystemdNotifier(log);
  undo.push(() => (agent.stop(), systemd.close()));
  await agent.start(restoreProgress(systemd, log));

  const statusText = () => `serving ${store.workloadList().length} workloads on ${config.api.socket}`;

  // What is in effect: the start config, with the live keys of every successful reload.
  let running: Config = config;
  const configReload = (): ConfigReloadResult => {
    systemd.reloading();
    try {
      let next: Config;
      // The tokens file is read again on every reload (rotating a token needs no restart); from the
      // running path: moving it to another file is a key change that waits for a restart.
      const tokensFile = tcpSecurity ? running.api.tcp?.tokensFile : undefined;
      let nextTokens: TokenSet | undefined;
      try {
        next = configLoad(configPath, opts.overrides);
        if (tokensFile) nextTokens = tokensLoad(tokensFile);
      } catch (err) {
        if (!(err instanceof ConfigError)) {
          log.error({ err }, 'config reload failed; keeping the running config');
          throw err;
        }
        // An operator's mistake, not a bug: the message names the file and the keys; no stack.
        log.error({ config: configPath ?? '(defaults)', keys: err.keys, error: err.message }, 'config reload failed; keeping the running config');
        throw new KitnetError('AGENT_ERR_CONFIG_INVALID', `${err.message} (the running config is unchanged)`, { ...(err.keys[0] ? { field: err.keys[0] } : {}), cause: err });
      }
      const changed = configDiff(running, next);
      // A pool change waits for a restart; say now which workloads it would leave outside.
      if (changed.some((c) => c.key.startsWith('ipam.'))) {
        for (const m of workloadsOutsidePools(store.workloadList(), next.ipam)) {
          log.warn(m, `after a restart, workload ${m.workload} keeps ${m.address}, outside the pool ${m.pool} in the file (${m.key})`);
        }
      }
      const live = new Set(changed.filter((c) => c.applied).map((c) => c.key));
      if (live.has('logLevel')) {
        log.level = next.logLevel;
        log.info({ logLevel: next.logLevel }, 'log level changed');
      }
      const flows = {
        ...running.flows,
        aggregation: next.flows.aggregation,
        reportIntervalSeconds: next.flows.reportIntervalSeconds,
        dropEvents: next.flows.dropEvents,
      };
      if ([...live].some((k) => k.startsWith('flows.'))) {
        agent.flowReportingApply(flows);
        log.info(
          { aggregation: flows.aggregation, reportIntervalSeconds: flows.reportIntervalSeconds, dropEvents: flows.dropEvents },
          'flow reporting changed',
        );
      }
      if (live.has('datapath.expediteRcu')) expediteRcu.apply(next.datapath.expediteRcu);
      running = { ...running, logLevel: next.logLevel, flows, datapath: { ...running.datapath, expediteRcu: next.datapath.expediteRcu } };
      if (tcpSecurity && tokensFile && nextTokens) {
        tcpSecurity.tokens.replaceWith(nextTokens);
        log.info({ tokensFile, count: nextTokens.size }, 'tokens reloaded');
        if (nextTokens.plaintext.length) log.warn({ tokens: nextTokens.plaintext }, 'tokens file holds plaintext secrets; store secretSha256 instead (kitnet token hash)');
      }
      const restartNeeded = changed.filter((c) => !c.applied).map((c) => c.key);
      if (restartNeeded.length) log.warn({ keys: restartNeeded }, 'config changed in keys that take effect only after a restart');
      log.info({ config: configPath ?? '(defaults)', changed: changed.map((c) => c.key) }, 'config reloaded');
      return { file: configPath ?? null, changed, applied: [...live], restartNeeded, tokens: tokensFile && nextTokens ? { file: tokensFile, count: nextTokens.size } : null };
    } finally {
      systemd.ready(statusText());
    }
  };
  const reload = () => {
    try {
      configReload();
    } catch {
      // logged above; SIGHUP has nobody to answer
    }
  };

  const limits = (max: number) => (config.api.rateLimit.enabled ? { max, windowMs: config.api.rateLimit.windowMs } : false);
  // The API is built on the listeners bound at the start; until `serve` they answered 503.
  const app = await serverBuild({
    agent,
    logger: log.child({ component: 'api' }),
    version: KITNET_VERSION,
    security: { rateLimit: limits(config.api.rateLimit.socketMax), audit },
    configReload,
    serverFactory: unixListener.factory,
  });
  undo.push(() => app.close());
  // fastify serves one server per instance, so TCP gets its own instance with the same routes.
  // It serves TLS only and wants a bearer token with the right scope on every request.
  if (tcpSecurity?.tokens.plaintext.length) log.warn({ tokens: tcpSecurity.tokens.plaintext }, 'tokens file holds plaintext secrets; store secretSha256 instead (kitnet token hash)');
  const tcpApp =
    tcpSecurity && tcpListener
      ? await serverBuild({
          agent,
          logger: log.child({ component: 'api-tcp' }),
          version: KITNET_VERSION,
          security: { tokens: tcpSecurity.tokens, rateLimit: limits(config.api.rateLimit.tcpMax), audit },
          configReload,
          serverFactory: tcpListener.factory,
        })
      : undefined;
  unixListener.serve();
  tcpListener?.serve();
  log.info({ socket: config.api.socket, tcp: config.api.tcp ?? null }, 'API listening');
  systemd.ready(statusText());
  const statusTimer = systemd.enabled ? setInterval(() => systemd.status(statusText()), 10_000).unref() : undefined;
  opts.onReady?.({ socket: config.api.socket });

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      log.info('kitnet agent stopping; the datapath stays pinned and keeps forwarding');
      systemd.stopping();
      if (statusTimer) clearInterval(statusTimer);
      await Promise.all([unixListener.close(), tcpListener?.close()]);
      await Promise.all([app.close(), tcpApp?.close()]);
      await agent.workloads.exclusive(async () => undefined);
      agent.stop();
      await cluster?.close();
      datapath.close();
      store.close();
      systemd.close();
      // Last: the next agent may start as soon as the lock is free.
      lock.release();
    })());
  return { stop, reload, configReload, config, agent };
}
