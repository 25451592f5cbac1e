import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Agent, KITNET_VERSION } from '../../agent/agent.js';
import { configLoad, type ConfigInput } from '../../agent/config.js';
import { hostFactsGather } from '../../agent/host-facts.js';
import { kernelOpsReal } from '../../agent/kernel-ops-real.js';
import { sqliteStoreOpen } from '../../agent/store/index.js';
import { serverBuild } from '../../api/server.js';
import { datapathLoad, datapathUnpinAll, type FillMapName, type KitnetDatapath } from '../../bpf/index.js';
import { hostForwardingEnsure } from '../../netkit/index.js';
import { testMode } from './mode.js';

export interface TestAgent {
  agent: Agent;
  datapath: KitnetDatapath;
  /** http://127.0.0.1:PORT — the API on TCP, as a browser or fetch() reaches it. */
  url: string;
  pinRoot: string;
  /** Open TCP connections of the API server. */
  connections(): Promise<number>;
  stop(): Promise<void>;
}

/**
 * An agent as daemonRun starts it (store, datapath, Agent, API), on a temp state dir, its own pin root
 * and an ephemeral TCP port, with the Agent object in hand so tests can look inside (flow pipeline
 * listeners, datapath config). `stop` also removes the pins and the state. `mapSizes` shrinks maps
 * (capacity tests).
 */
export async function testAgentStart(id: string, overrides: ConfigInput = {}, opts: { mapSizes?: Partial<Record<FillMapName, number>> } = {}): Promise<TestAgent> {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-test-'));
  const pinRoot = `/sys/fs/bpf/kitnet-test-${id}`;
  const config = configLoad(undefined, {
    stateDir: join(dir, 'state'),
    bpfPinRoot: pinRoot,
    logLevel: 'error',
    api: { socket: join(dir, 'kitnet.sock') },
    datapath: { mode: testMode },
    ...overrides,
  });
  const log = pino({ level: config.logLevel });
  const store = sqliteStoreOpen(join(config.stateDir, 'kitnet.db'));
  await hostForwardingEnsure();
  const datapath = await datapathLoad({ pinRoot, ...(opts.mapSizes ? { mapSizes: opts.mapSizes } : {}) });
  const agent = new Agent(config, store, kernelOpsReal(datapath), hostFactsGather(), log);
  await agent.start();
  const app = await serverBuild({ agent, logger: false, version: KITNET_VERSION });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  let stopped: Promise<void> | undefined;
  return {
    agent,
    datapath,
    url: `http://127.0.0.1:${port}`,
    pinRoot,
    connections: () => new Promise((resolve, reject) => app.server.getConnections((err, n) => (err ? reject(err) : resolve(n)))),
    stop: () =>
      (stopped ??= (async () => {
        await app.close();
        for (const w of agent.workloadList()) await agent.workloadRemove(w.namespace, w.name).catch(() => undefined);
        agent.stop();
        datapath.close();
        store.close();
        await datapathUnpinAll(pinRoot).catch(() => undefined);
        rmSync(dir, { recursive: true, force: true });
      })()),
  };
}

/** GET/POST/... JSON against the agent's TCP API; throws with the body on 4xx/5xx. */
export async function apiCall<T>(url: string, method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(`${url}${path}`, {
    method,
    ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return (text ? JSON.parse(text) : undefined) as T;
}
