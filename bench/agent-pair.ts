// One in-process agent (own state dir, pin root and API socket) with two netns workloads, for the
// benchmarks that drive the flow pipeline with real datapath events. Cleanup is registered with
// lib.ts's onCleanup, so it runs on failure and on Ctrl-C too.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ConfigInput } from '../agent/config.js';
import { datapathUnpinAll } from '../bpf/index.js';
import { ApiClient } from '../common/api-client.js';
import type { Workload } from '../common/schemas/workload.js';
import { daemonRun } from '../main/daemon.js';
import { RUN_ID, netnsAddMany, netnsDelMany, onCleanup } from './lib.js';

export interface AgentPairOptions {
  /** Short tag for names of the state dir, pin root, namespaces and the workloads' namespace. */
  tag: string;
  /** The pools this benchmark's workloads take addresses from (distinct per benchmark). */
  ipv4Pool: string;
  ipv6Pool: string;
  /** Extra config, merged over the defaults (e.g. `flows`). */
  overrides?: ConfigInput;
}

export async function benchAgentPairStart(opts: AgentPairOptions) {
  const dir = mkdtempSync(join(tmpdir(), `kitnet-bench-${opts.tag}-`));
  const pinRoot = `/sys/fs/bpf/kitnet-bench-${opts.tag}-${RUN_ID}`;
  const socket = join(dir, 'kitnet.sock');
  const names = [0, 1].map((i) => `kb-${opts.tag}-${RUN_ID}-${i}`);
  const namespace = `bench${opts.tag}`;
  onCleanup('state dir', () => rmSync(dir, { recursive: true, force: true }));
  onCleanup('pins', () => datapathUnpinAll(pinRoot));
  onCleanup('namespaces', () => netnsDelMany(names));
  await netnsAddMany(names);
  const daemon = await daemonRun({
    overrides: {
      stateDir: join(dir, 'state'), bpfPinRoot: pinRoot, logLevel: 'error', nodeName: 'bench', api: { socket },
      ipam: { ipv4Pool: opts.ipv4Pool, ipv6Pool: opts.ipv6Pool }, datapath: { mode: 'veth' },
      ...opts.overrides,
    },
  });
  onCleanup('agent', () => daemon.stop());
  const api = new ApiClient({ socket });
  const workloads: Workload[] = [];
  onCleanup('workloads', async () => {
    for (const w of workloads) await api.call('DELETE', `/v1/workloads/${namespace}/${w.name}`).catch(() => undefined);
  });
  for (const [i, n] of names.entries()) {
    const name = `${opts.tag}${i}`;
    workloads.push(await api.call<Workload>('POST', '/v1/workloads', { name, namespace, labels: { app: name }, netns: `/var/run/netns/${n}` }));
  }
  const [a, b] = workloads as [Workload, Workload];
  return { dir, daemon, api, a, b, namespaces: names, datapath: daemon.agent.kernel.datapath, flows: daemon.agent.flows };
}
