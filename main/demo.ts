import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { datapathUnpinAll } from '../bpf/index.js';
import { netnsCreate, netnsDelete } from '../netkit/index.js';
import { ApiClient } from '../common/api-client.js';
import { flowCompact } from '../common/format.js';
import type { Workload } from '../common/schemas/workload.js';
import { daemonRun } from './daemon.js';

const execFileP = promisify(execFile);

export interface DemoOptions {
  /** Stop by itself after this many seconds (0 = until Ctrl-C). */
  durationSeconds: number;
}

const say = (msg: string) => process.stdout.write(`\x1b[1m==> ${msg}\x1b[0m\n`);

/**
 * The quick-start demo: an agent in the foreground with its own state, socket and pin root, two
 * workloads in fresh network namespaces, ping and HTTP traffic between them over IPv4 and IPv6, and
 * their flows printed live. Ctrl-C (or the duration) removes everything it made.
 */
export async function demoRun(opts: DemoOptions): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-demo-'));
  const pinRoot = '/sys/fs/bpf/kitnet-demo';
  const socket = join(dir, 'kitnet.sock');
  const namespaces = ['kitnet-demo-frontend', 'kitnet-demo-backend'];
  const children: ChildProcess[] = [];
  let timer: NodeJS.Timeout | undefined;
  let agent: Awaited<ReturnType<typeof daemonRun>> | undefined;
  const api = new ApiClient({ socket });
  const followAbort = new AbortController();

  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      say('cleaning up');
      if (timer) clearInterval(timer);
      followAbort.abort();
      for (const c of children) c.kill('SIGTERM');
      if (agent) {
        for (const w of await api.call<Workload[]>('GET', '/v1/workloads').catch(() => [])) {
          await api.call('DELETE', `/v1/workloads/${w.namespace}/${w.name}`).catch((e: Error) => console.error(e.message));
        }
        await agent.stop().catch((e: Error) => console.error(e.message));
      }
      for (const n of namespaces) await netnsDelete(n).catch(() => undefined);
      await datapathUnpinAll(pinRoot).catch((e: Error) => console.error(e.message));
      rmSync(dir, { recursive: true, force: true });
      say('done: workloads, namespaces, devices and pins removed');
    })());

  // A closed stdout (e.g. piped into `head`) must not kill the demo before it cleans up.
  process.stdout.on('error', () => undefined);
  const stop = new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
    if (opts.durationSeconds > 0) setTimeout(resolve, opts.durationSeconds * 1000).unref();
  });

  try {
    say(`starting the kitnet agent (state ${dir}, pins ${pinRoot})`);
    for (const n of namespaces) {
      await netnsDelete(n).catch(() => undefined);
      await netnsCreate(n);
    }
    agent = await daemonRun({
      overrides: { stateDir: join(dir, 'state'), bpfPinRoot: pinRoot, api: { socket }, logLevel: 'warn', nodeName: 'kitnet-demo' },
    });
    const [fe, be] = [
      await api.call<Workload>('POST', '/v1/workloads', { name: 'frontend', namespace: 'shop', labels: { app: 'frontend', tier: 'web' }, netns: `/var/run/netns/${namespaces[0]}` }),
      await api.call<Workload>('POST', '/v1/workloads', { name: 'backend', namespace: 'shop', labels: { app: 'backend', tier: 'api' }, netns: `/var/run/netns/${namespaces[1]}` }),
    ];
    for (const w of [fe, be]) {
      say(`registered ${w.namespace}/${w.name}: identity ${w.identity}, ${w.ipv4} ${w.ipv6}, ${w.mode} ${w.interfaces.host.name} <-> ${w.interfaces.workload.name}`);
    }

    // An HTTP server in the backend namespace, listening on both families.
    const server = spawn('ip', ['netns', 'exec', namespaces[1]!, process.execPath, '-e',
      "require('http').createServer((q,r)=>r.end('hello from backend\\n')).listen(8080,'::')"], { stdio: 'ignore' });
    children.push(server);

    say('traffic: ping and HTTP from frontend to backend every second; flows follow (Ctrl-C to stop)');
    const colour = process.stdout.isTTY === true && !process.env.NO_COLOR;
    void api
      .stream('/v1/flows?follow=true', (l) => process.stdout.write(`${flowCompact(JSON.parse(l), colour)}\n`), followAbort.signal)
      .catch(() => undefined);
    let round = 0;
    const traffic = async () => {
      const v6 = round++ % 2 === 1;
      const target = v6 ? be.ipv6 : be.ipv4;
      await execFileP('ip', ['netns', 'exec', namespaces[0]!, 'ping', '-c', '1', '-W', '1', target]).catch(() => undefined);
      const url = v6 ? `http://[${be.ipv6}]:8080/` : `http://${be.ipv4}:8080/`;
      await execFileP('ip', ['netns', 'exec', namespaces[0]!, process.execPath, '-e', `fetch('${url}').then(r=>r.text()).catch(()=>{})`], { timeout: 3000 }).catch(() => undefined);
    };
    timer = setInterval(() => void traffic(), 1000);
    await stop;
  } finally {
    await cleanup();
  }
}
