import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../api/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { Prober } from '../helpers/prober-client.js';
import { status, waitFor } from '../helpers/sys.js';

const execFileP = promisify(execFile);

/**
 * An agent restart must not disturb the datapath: pinned programs, links and maps keep forwarding and
 * enforcing while no agent runs, and the new agent adopts them instead of recreating anything.
 */
describe('agent restart under traffic (root)', { timeout: 180_000 }, () => {
  const fx = new AgentFixture({ tag: 'rst', ipv4Pool: '10.207.0.0/16', ipv6Pool: 'fd00:207::/64', namespaces: ['rst'] });
  const api = fx.api;
  const children: ChildProcess[] = [];
  const probers: Prober[] = [];
  let nsA: string;
  let nsB: string;
  let nsC: string;

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    for (const p of probers) p.close();
    await fx.cleanup();
  });
  before(async () => {
    nsA = await fx.netns('a');
    nsB = await fx.netns('b');
    nsC = await fx.netns('c');
    await fx.start();
  });

  test('a continuous ping and a TCP stream lose nothing across a restart; policy stays enforced', async () => {
    const a = await api.call<Workload>('POST', '/v1/workloads', { name: 'a', namespace: 'rst', labels: { app: 'a' }, netns: `/var/run/netns/${nsA}` });
    const b = await api.call<Workload>('POST', '/v1/workloads', { name: 'b', namespace: 'rst', labels: { app: 'b' }, netns: `/var/run/netns/${nsB}` });
    await api.call<Workload>('POST', '/v1/workloads', { name: 'c', namespace: 'rst', labels: { app: 'c' }, netns: `/var/run/netns/${nsC}` });
    // b accepts a only; c is denied.
    await api.call('PUT', '/v1/policies', `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-from-a, namespace: rst}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]
`, 'application/yaml');
    const fromC = new Prober(nsC, [7]);
    probers.push(fromC);
    await fromC.ready;
    const cReachesB = async () => (await fromC.probe([{ addr: b.ipv4, port: 9000, protocol: 'TCP' }], 500))[0];

    const server = spawn('ip', ['netns', 'exec', nsB, process.execPath, '-e', "require('net').createServer(c=>c.on('error',()=>{}).pipe(c)).listen(9000,'::')"], { stdio: 'ignore' });
    children.push(server);
    await waitFor('echo server', async () => (await status('ip', ['netns', 'exec', nsB, 'sh', '-c', 'ss -ltn | grep -q :9000'])) === 0);
    assert.equal(await cReachesB(), false, 'c is denied before the restart');
    const client = spawn('ip', ['netns', 'exec', nsA, process.execPath, '-e',
      `const s=require('net').connect(9000,'${b.ipv4}');let n=0;s.on('data',()=>{n++;process.stdout.write(n+'\\n')});setInterval(()=>s.write('x'),20);s.on('error',e=>{console.error('stream error',e.message);process.exit(3)});s.on('close',()=>process.exit(4))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(client);
    let echoes = 0;
    let clientExit: number | null = null;
    client.stdout!.on('data', (d: Buffer) => (echoes = Number(d.toString().trim().split('\n').pop())));
    client.on('exit', (code) => (clientExit = code));
    await waitFor('the stream to run', async () => echoes > 10);

    // 200 pings at 25 ms spacing cover the whole stop/start.
    const pings = execFileP('ip', ['netns', 'exec', nsA, 'ping', '-c', '200', '-i', '0.025', '-W', '1', b.ipv4], { timeout: 30_000 });
    const pings6 = execFileP('ip', ['netns', 'exec', nsA, 'ping', '-6', '-c', '200', '-i', '0.025', '-W', '1', b.ipv6], { timeout: 30_000 });
    await new Promise((r) => setTimeout(r, 500));
    const progIdsBefore = fx.agent.kernel.datapath.linkInfo(a.interfaces.host.name);
    await fx.stop();
    assert.equal(await cReachesB(), false, 'policy still enforced while no agent runs');
    const duringDown = echoes;
    await waitFor('the stream to keep flowing with no agent', async () => echoes > duringDown + 10);
    await fx.start();
    const linksAfter = fx.agent.kernel.datapath.linkInfo(a.interfaces.host.name);
    for (const [prog, info] of Object.entries(progIdsBefore)) {
      assert.equal(linksAfter[prog as keyof typeof linksAfter]?.id, info?.id, `${prog}: pinned link adopted, not recreated`);
    }
    const [r4, r6] = await Promise.all([pings, pings6]);
    assert.match(r4.stdout, / 0% packet loss/, r4.stdout.split('\n').slice(-3).join('\n'));
    assert.match(r6.stdout, / 0% packet loss/, r6.stdout.split('\n').slice(-3).join('\n'));
    const afterRestart = echoes;
    await waitFor('the stream to keep flowing after the restart', async () => echoes > afterRestart + 10);
    assert.equal(clientExit, null, 'the TCP stream never broke');
    assert.equal(await cReachesB(), false, 'c is still denied after the restart');
    const w = await api.call<Workload>('GET', '/v1/workloads/rst/a');
    assert.equal(w.interfaces.host.ifindex, a.interfaces.host.ifindex, 'device adopted');
  });
});
