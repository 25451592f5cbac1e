import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { datapathUnpinAll } from '../bpf/index.js';
import { ApiClient } from '../common/api-client.js';
import { flowCompact } from '../common/format.js';
import type { TraceResponse } from '../common/schemas/policy.js';
import type { Workload } from '../common/schemas/workload.js';
import { netnsCreate, netnsDelete } from '../netkit/index.js';
import { daemonRun } from './daemon.js';

const execFileP = promisify(execFile);

export interface DemoOptions {
  /** Stop by itself after this many seconds (0 = until Ctrl-C). */
  durationSeconds: number;
}

const bold = process.stdout.isTTY === true && !process.env.NO_COLOR;
const say = (msg: string) => process.stdout.write(bold ? `\x1b[1m==> ${msg}\x1b[0m\n` : `==> ${msg}\n`);

/** Traffic rounds (one a second) before the policy is applied, so flows are seen passing first. */
const ROUNDS_BEFORE_POLICY = 4;
/** A pool of its own, so the demo never takes the addresses of a real agent on the same host. */
const DEMO_POOLS = { ipv4Pool: '10.242.0.0/24', ipv6Pool: 'fd00:242::/64' };
const DB_PORT = 5432;

/** The identity policy applied while the traffic runs: backend takes HTTP from frontend only, db takes only backend. */
const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: backend-from-frontend, namespace: shop }
spec:
  endpointSelector: { matchLabels: { app: backend } }
  ingress:
    - fromEndpoints: [{ matchLabels: { app: frontend } }]
      toPorts: [{ ports: [{ port: "8080", protocol: TCP }] }]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: db-from-backend, namespace: shop }
spec:
  endpointSelector: { matchLabels: { app: db } }
  ingress:
    - fromEndpoints: [{ matchLabels: { app: backend } }]
      toPorts: [{ ports: [{ port: "${DB_PORT}", protocol: TCP }] }]
`;

interface FlowJson {
  flow: {
    verdict: string;
    drop_reason_desc?: string;
    source: { namespace?: string; pod_name?: string };
    destination: { namespace?: string; pod_name?: string };
    l4?: { TCP?: { destination_port: number }; UDP?: { destination_port: number }; ICMPv4?: { type: number }; ICMPv6?: { type: number } };
  };
}

/** The trace request for a flow between two workloads: its protocol and port (ICMP: the type). */
function traceOf(f: FlowJson['flow']): { from: { workload: string }; to: { workload: string }; protocol: string; port: number } | undefined {
  if (!f.source.pod_name || !f.destination.pod_name) return undefined;
  const l4 = f.l4 ?? {};
  const [protocol, port] = l4.TCP ? ['TCP', l4.TCP.destination_port] : l4.UDP ? ['UDP', l4.UDP.destination_port] : l4.ICMPv4 ? ['ICMP', l4.ICMPv4.type] : l4.ICMPv6 ? ['ICMPv6', l4.ICMPv6.type] : [];
  if (protocol === undefined || port === undefined) return undefined;
  return { from: { workload: `${f.source.namespace}/${f.source.pod_name}` }, to: { workload: `${f.destination.namespace}/${f.destination.pod_name}` }, protocol, port };
}

/**
 * The service map for a browser: a local HTTP listener on 127.0.0.1 that passes GET and HEAD to the
 * agent's unix socket and refuses the rest (the socket is admin; this port is for looking only).
 */
async function serviceMapListen(socket: string, port: number): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end('the demo forwards only GET and HEAD\n');
      return;
    }
    const upstream = request({ socketPath: socket, method: req.method, path: req.url, headers: { ...req.headers, host: 'kitnet' } }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    res.on('close', () => upstream.destroy());
    upstream.end();
  });
  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => (server.off('error', reject), resolve()));
    });
  // 8080 as in the README; any free port when that one is taken.
  await listen(port).catch(() => listen(0));
  const address = server.address();
  return { server, url: `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}/ui` };
}

/**
 * The quick-start demo: an agent in the foreground with its own state, socket, pin root and pools; two
 * workloads in fresh network namespaces and a `kind: vm` workload (its namespace, bridge and tap made
 * by kitnet; no guest boots, so a permanent neighbour entry on the host stands in for the guest's ARP
 * reply); ping, HTTP and database traffic; after a few seconds an identity policy that denies part of
 * it, the denied flows and a `policy trace` of one; the service map's address. Everything goes
 * through the REST API. Ctrl-C (or the duration) removes everything it made.
 */
export async function demoRun(opts: DemoOptions): Promise<void> {
  // Checked before anything is made.
  const uiPort = process.env.KITNET_DEMO_UI_PORT ?? '8080';
  if (!/^\d{1,5}$/.test(uiPort) || Number(uiPort) > 65535) throw new Error(`KITNET_DEMO_UI_PORT: "${uiPort}" is not a port number (0-65535; 0 for any free port)`);
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-demo-'));
  const pinRoot = '/sys/fs/bpf/kitnet-demo';
  const socket = join(dir, 'kitnet.sock');
  const namespaces = ['kitnet-demo-frontend', 'kitnet-demo-backend'];
  const children: ChildProcess[] = [];
  let timer: NodeJS.Timeout | undefined;
  let agent: Awaited<ReturnType<typeof daemonRun>> | undefined;
  let ui: Server | undefined;
  const api = new ApiClient({ socket });
  const followAbort = new AbortController();

  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      say('cleaning up');
      if (timer) clearInterval(timer);
      followAbort.abort();
      ui?.closeAllConnections();
      ui?.close();
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
      say('done: workloads, namespaces (the VM\'s too), devices and pins removed');
    })());

  // A closed stdout (e.g. piped into `head`) must not kill the demo before it cleans up.
  process.stdout.on('error', () => undefined);
  const stop = new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
    if (opts.durationSeconds > 0) setTimeout(resolve, opts.durationSeconds * 1000).unref();
  });

  try {
    say(`starting the kitnet agent (state ${dir}, pins ${pinRoot}, pools ${DEMO_POOLS.ipv4Pool} ${DEMO_POOLS.ipv6Pool})`);
    for (const n of namespaces) {
      await netnsDelete(n).catch(() => undefined);
      await netnsCreate(n);
    }
    agent = await daemonRun({
      overrides: { stateDir: join(dir, 'state'), bpfPinRoot: pinRoot, api: { socket }, logLevel: 'warn', nodeName: 'kitnet-demo', ipam: DEMO_POOLS },
    });
    const fe = await api.call<Workload>('POST', '/v1/workloads', { name: 'frontend', namespace: 'shop', labels: { app: 'frontend', tier: 'web' }, netns: `/var/run/netns/${namespaces[0]}` });
    const be = await api.call<Workload>('POST', '/v1/workloads', { name: 'backend', namespace: 'shop', labels: { app: 'backend', tier: 'api' }, netns: `/var/run/netns/${namespaces[1]}` });
    const db = await api.call<Workload>('POST', '/v1/workloads', { kind: 'vm', name: 'db', namespace: 'shop', labels: { app: 'db', tier: 'data' } });
    for (const w of [fe, be, db]) {
      say(`registered ${w.kind} ${w.namespace}/${w.name}: identity ${w.identity}, ${w.ipv4} ${w.ipv6}, ${w.mode} ${w.interfaces.host.name} <-> ${w.interfaces.workload.name}`);
    }
    if (db.vm) {
      say(`VM ${db.namespace}/${db.name}: namespace ${db.vm.netnsPath}, tap ${db.vm.tap} on bridge ${db.vm.bridge}, guest MAC ${db.vm.mac}; a hypervisor would run:`);
      console.log(`    ${db.vm.runHint}`);
      // No guest boots here: the neighbour entry a guest's ARP reply would make, so the host sends to it.
      await execFileP('ip', ['neigh', 'replace', db.ipv4, 'lladdr', db.vm.mac, 'dev', db.interfaces.host.name, 'nud', 'permanent']);
    }

    // An HTTP server in the backend namespace, listening on both families.
    const server = spawn('ip', ['netns', 'exec', namespaces[1]!, process.execPath, '-e',
      "require('http').createServer((q,r)=>r.end('hello from backend\\n')).listen(8080,'::')"], { stdio: 'ignore' });
    children.push(server);

    const map = await serviceMapListen(socket, Number(uiPort));
    ui = map.server;
    say(`service map: ${map.url} (read-only, this host only)`);

    say(`traffic every second: frontend -> backend ping and HTTP :8080, frontend -> db :${DB_PORT}; flows follow (Ctrl-C to stop)`);
    let policyApplied = false;
    let traced = false;
    const onFlow = (line: string) => {
      const rec = JSON.parse(line) as FlowJson;
      process.stdout.write(`${flowCompact(JSON.parse(line), bold)}\n`);
      // A denied TCP flow is the one traced (the database connections to the VM, or HTTP if it were).
      if (!policyApplied || traced || rec.flow.verdict !== 'DROPPED' || !rec.flow.l4?.TCP) return;
      const req = traceOf(rec.flow);
      if (!req) return;
      traced = true;
      void api.call<TraceResponse>('POST', '/v1/policy/trace', req).then(
        (r) => {
          say(`policy trace --from ${req.from.workload} --to ${req.to.workload} --port ${req.port}/${req.protocol}`);
          console.log(r.text.replace(/^/gm, '    '));
        },
        (e: Error) => console.error(`policy trace: ${e.message}`),
      );
    };
    void api.stream('/v1/flows?follow=true', onFlow, followAbort.signal).catch(() => undefined);

    let round = 0;
    const traffic = async () => {
      const v6 = round++ % 2 === 1;
      if (round === ROUNDS_BEFORE_POLICY) {
        await api.call('PUT', '/v1/policies', POLICY, 'application/yaml');
        policyApplied = true;
        say('applied policies: backend takes HTTP :8080 from frontend only, db takes only backend (kitnet policy ls); pings to backend and frontend -> db are now DROPPED');
      }
      const target = v6 ? be.ipv6 : be.ipv4;
      const inFrontend = (args: string[], timeout = 3000) => execFileP('ip', ['netns', 'exec', namespaces[0]!, ...args], { timeout }).catch(() => undefined);
      await inFrontend(['ping', '-c', '1', '-W', '1', target]);
      const url = v6 ? `http://[${be.ipv6}]:8080/` : `http://${be.ipv4}:8080/`;
      await inFrontend([process.execPath, '-e', `fetch('${url}').then(r=>r.text()).catch(()=>{})`]);
      await inFrontend([process.execPath, '-e', `require('net').connect(${DB_PORT},'${db.ipv4}').on('error',()=>{}).setTimeout(1000,function(){this.destroy()})`]);
    };
    timer = setInterval(() => void traffic().catch((e: Error) => console.error(e.message)), 1000);
    await stop;
  } finally {
    await cleanup();
  }
}
