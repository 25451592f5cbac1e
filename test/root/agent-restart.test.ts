import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { Prober } from '../helpers/prober-client.js';
import { status, waitFor } from '../helpers/sys.js';

const execFileP = promisify(execFile);
const checkout = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/**
 * The datapath of the last release this one must upgrade from (the last landed main). Bump it when a
 * release lands; the test builds that commit's BPF object from git history.
 */
const UPGRADE_FROM = '565e61b';

/**
 * Two workloads, a and b, talk (a continuous IPv4 and IPv6 ping, a TCP echo stream) while the agent
 * is stopped and started again (with `second` as the BPF object, if given); c is denied by policy
 * throughout. Nothing may be lost, the pinned links are adopted (same link ids) and their programs
 * replaced in place. Returns the program ids of a's links before and after.
 */
async function restartUnderTraffic(
  fx: AgentFixture,
  ns: string,
  track: { children: ChildProcess[]; probers: Prober[] },
  second: { bpfObject?: string } = {},
): Promise<{ before: Record<string, number | undefined>; after: Record<string, number | undefined> }> {
  const api = fx.api;
  const [nsA, nsB, nsC] = [await fx.netns('a'), await fx.netns('b'), await fx.netns('c')];
  const a = await api.call<Workload>('POST', '/v1/workloads', { name: 'a', namespace: ns, labels: { app: 'a' }, netns: `/var/run/netns/${nsA}` });
  const b = await api.call<Workload>('POST', '/v1/workloads', { name: 'b', namespace: ns, labels: { app: 'b' }, netns: `/var/run/netns/${nsB}` });
  await api.call<Workload>('POST', '/v1/workloads', { name: 'c', namespace: ns, labels: { app: 'c' }, netns: `/var/run/netns/${nsC}` });
  // b accepts a only; c is denied.
  await api.call('PUT', '/v1/policies', `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-from-a, namespace: ${ns}}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]
`, 'application/yaml');
  const fromC = new Prober(nsC, [7]);
  track.probers.push(fromC);
  await fromC.ready;
  const cReachesB = async () => (await fromC.probe([{ addr: b.ipv4, port: 9000, protocol: 'TCP' }], 500))[0];

  const server = spawn('ip', ['netns', 'exec', nsB, process.execPath, '-e', "require('net').createServer(c=>c.on('error',()=>{}).pipe(c)).listen(9000,'::')"], { stdio: 'ignore' });
  track.children.push(server);
  await waitFor('echo server', async () => (await status('ip', ['netns', 'exec', nsB, 'sh', '-c', 'ss -ltn | grep -q :9000'])) === 0);
  assert.equal(await cReachesB(), false, 'c is denied before the restart');
  const client = spawn('ip', ['netns', 'exec', nsA, process.execPath, '-e',
    `const s=require('net').connect(9000,'${b.ipv4}');let n=0;s.on('data',()=>{n++;process.stdout.write(n+'\\n')});setInterval(()=>s.write('x'),20);s.on('error',e=>{console.error('stream error',e.message);process.exit(3)});s.on('close',()=>process.exit(4))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  track.children.push(client);
  let echoes = 0;
  let clientExit: number | null = null;
  client.stdout!.on('data', (d: Buffer) => (echoes = Number(d.toString().trim().split('\n').pop())));
  client.on('exit', (code) => (clientExit = code));
  await waitFor('the stream to run', async () => echoes > 10);

  // 200 pings at 25 ms spacing cover the whole stop/start.
  const pings = execFileP('ip', ['netns', 'exec', nsA, 'ping', '-c', '200', '-i', '0.025', '-W', '1', b.ipv4], { timeout: 30_000 });
  const pings6 = execFileP('ip', ['netns', 'exec', nsA, 'ping', '-6', '-c', '200', '-i', '0.025', '-W', '1', b.ipv6], { timeout: 30_000 });
  await new Promise((r) => setTimeout(r, 500));
  const linksBefore = fx.agent.kernel.datapath.linkInfo(a.interfaces.host.name);
  await fx.stop();
  assert.equal(await cReachesB(), false, 'policy still enforced while no agent runs');
  const duringDown = echoes;
  await waitFor('the stream to keep flowing with no agent', async () => echoes > duringDown + 10);
  await fx.start(second);
  const linksAfter = fx.agent.kernel.datapath.linkInfo(a.interfaces.host.name);
  for (const [prog, info] of Object.entries(linksBefore)) {
    assert.equal(linksAfter[prog as keyof typeof linksAfter]?.id, info?.id, `${prog}: pinned link adopted, not recreated`);
  }
  const [r4, r6] = await Promise.all([pings, pings6]);
  assert.match(r4.stdout, / 0% packet loss/, r4.stdout.split('\n').slice(-3).join('\n'));
  assert.match(r6.stdout, / 0% packet loss/, r6.stdout.split('\n').slice(-3).join('\n'));
  const afterRestart = echoes;
  await waitFor('the stream to keep flowing after the restart', async () => echoes > afterRestart + 10);
  assert.equal(clientExit, null, 'the TCP stream never broke');
  assert.equal(await cReachesB(), false, 'c is still denied after the restart');
  const w = await api.call<Workload>('GET', '/v1/workloads/' + ns + '/a');
  assert.equal(w.interfaces.host.ifindex, a.interfaces.host.ifindex, 'device adopted');
  const progIds = (l: typeof linksBefore) => Object.fromEntries(Object.entries(l).map(([k, v]) => [k, v?.progId]));
  return { before: progIds(linksBefore), after: progIds(linksAfter) };
}

/**
 * An agent restart must not disturb the datapath: pinned programs, links and maps keep forwarding and
 * enforcing while no agent runs, and the new agent adopts them instead of recreating anything.
 */
describe('agent restart under traffic (root)', { timeout: 180_000 }, () => {
  const fx = new AgentFixture({ tag: 'rst', ipv4Pool: '10.207.0.0/16', ipv6Pool: 'fd00:207::/64', namespaces: ['rst'] });
  const track = { children: [] as ChildProcess[], probers: [] as Prober[] };

  after(async () => {
    for (const c of track.children) c.kill('SIGKILL');
    for (const p of track.probers) p.close();
    await fx.cleanup();
  });
  before(() => fx.start());

  test('a continuous ping and a TCP stream lose nothing across a restart; policy stays enforced', async () => {
    await restartUnderTraffic(fx, 'rst', track);
  });
});

/**
 * An upgrade: the agent runs the previous release's datapath (its BPF object, built from git
 * history), then starts with this one. The new programs replace the old in place on the same links,
 * and the pinned maps the old programs filled (conntrack entries of established connections,
 * endpoints, policy) serve the new ones without a lost packet.
 */
describe(`agent upgrade from the datapath of ${UPGRADE_FROM} under traffic (root)`, { timeout: 240_000 }, () => {
  const fx = new AgentFixture({ tag: 'upg', ipv4Pool: '10.218.0.0/16', ipv6Pool: 'fd00:218::/64', namespaces: ['upg'] });
  const track = { children: [] as ChildProcess[], probers: [] as Prober[] };
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-upgrade-'));
  const oldObject = join(dir, 'kitnet.bpf.o');

  after(async () => {
    for (const c of track.children) c.kill('SIGKILL');
    for (const p of track.probers) p.close();
    await fx.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  test('old programs replaced in place on the same links; nothing lost, policy kept', async () => {
    // The checkout must hold that commit (a full clone does; a shallow one: git fetch --unshallow).
    await execFileP('git', ['-C', checkout, 'cat-file', '-e', `${UPGRADE_FROM}^{commit}`]);
    await execFileP('sh', ['-c', `git -C "$1" archive "$2" bpf/src bpf/include | tar -x -C "$3"`, 'sh', checkout, UPGRADE_FROM, dir]);
    await execFileP('bash', [join(checkout, 'bpf/compile.sh'), dir, oldObject], { timeout: 120_000 });
    await fx.start({ bpfObject: oldObject });
    const { before: progsBefore, after: progsAfter } = await restartUnderTraffic(fx, 'upg', track);
    for (const [role, id] of Object.entries(progsBefore)) {
      assert.ok(id !== undefined && progsAfter[role] !== undefined && progsAfter[role] !== id, `${role}: program ${id} replaced (now ${progsAfter[role]})`);
    }
  });
});
