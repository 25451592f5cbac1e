import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import type { TraceResponse } from '../../common/schemas/policy.js';
import type { Workload } from '../../common/schemas/workload.js';
import { Prober } from '../helpers/prober-client.js';
import { AgentFixture } from '../helpers/fixture.js';
import { ping, run, status, waitFor } from '../helpers/sys.js';

type FlowLine = { flow?: { verdict: string; drop_reason?: number; drop_reason_desc?: string; IP: { source: string; destination: string } } };

/**
 * Enforcement details beyond the conformance matrix, with real traffic: anti-spoofing (IPv4, IPv6,
 * MAC), label changes that move a workload between identities while its connections stay up, and
 * drops visible as flows with Hubble's reasons.
 */
describe('policy in the datapath (root)', { timeout: 300_000 }, () => {
  const fx = new AgentFixture({ tag: 'pol', ipv4Pool: '10.203.0.0/16', ipv6Pool: 'fd00:203::/64', namespaces: ['pd'] });
  const api = fx.api;
  const children: ChildProcess[] = [];
  const probers: Prober[] = [];
  let nsA: string;
  let nsB: string;
  let a: Workload;
  let b: Workload;

  const flows = async (): Promise<FlowLine[]> => {
    let text = '';
    await api.stream('/v1/flows?last=4095', (l) => (text += `${l}\n`));
    return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as FlowLine);
  };

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    for (const p of probers) p.close();
    await fx.cleanup();
  });
  before(async () => {
    nsA = await fx.netns('a');
    nsB = await fx.netns('b');
    await fx.start();
    a = await api.call<Workload>('POST', '/v1/workloads', { name: 'a', namespace: 'pd', labels: { app: 'client' }, netns: `/var/run/netns/${nsA}` });
    b = await api.call<Workload>('POST', '/v1/workloads', { name: 'b', namespace: 'pd', labels: { app: 'server' }, netns: `/var/run/netns/${nsB}` });
  });

  test('a spoofed IPv4 source is dropped as INVALID_SOURCE_IP and shows up as a flow', async () => {
    assert.ok(await ping(nsA, b.ipv4), 'genuine source works');
    await run('ip', ['-n', nsA, 'addr', 'add', '10.203.99.99/32', 'dev', 'eth0']);
    assert.equal(await status('ip', ['netns', 'exec', nsA, 'ping', '-c', '1', '-W', '1', '-I', '10.203.99.99', b.ipv4]), 1);
    await waitFor('a spoofed IPv4 drop flow', async () =>
      (await flows()).some((f) => f.flow?.verdict === 'DROPPED' && f.flow.drop_reason === 132 && f.flow.IP.source === '10.203.99.99'),
    );
  });

  test('a spoofed IPv6 source is dropped as INVALID_SOURCE_IP', async () => {
    await run('ip', ['-n', nsA, 'addr', 'add', 'fd00:203::9999/128', 'dev', 'eth0', 'nodad']);
    assert.equal(await status('ip', ['netns', 'exec', nsA, 'ping', '-c', '1', '-W', '1', '-I', 'fd00:203::9999', b.ipv6]), 1);
    assert.ok(await ping(nsA, b.ipv6), 'genuine IPv6 source (and neighbour discovery) still works');
    await waitFor('a spoofed IPv6 drop flow', async () =>
      (await flows()).some((f) => f.flow?.drop_reason === 132 && f.flow.IP.source === 'fd00:203::9999'),
    );
  });

  test('a frame with a spoofed source MAC is dropped as INVALID_SOURCE_MAC', async () => {
    // Sent from a packet socket: changing the interface MAC instead would also flush the workload's
    // neighbour table. The frame is a well-formed ICMP echo from a's own IP, only the MAC is foreign.
    const hostMac = a.interfaces.host.mac!.split(':').map((h) => parseInt(h, 16));
    const src = a.ipv4.split('.').map(Number);
    const dst = b.ipv4.split('.').map(Number);
    const py = `
import socket, struct
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b)//2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return (~s) & 0xffff
icmp = struct.pack('!BBHHH', 8, 0, 0, 0x4b4e, 1) + b'kitnet-spoof'
icmp = icmp[:2] + struct.pack('!H', csum(icmp)) + icmp[4:]
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, bytes(${JSON.stringify(src)}), bytes(${JSON.stringify(dst)}))
ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
eth = bytes(${JSON.stringify(hostMac)}) + bytes([2, 0, 0, 0, 0x99, 0x99]) + bytes([8, 0])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
for _ in range(3): s.send(eth + ip + icmp)
`;
    await run('ip', ['netns', 'exec', nsA, 'python3', '-c', py]);
    await waitFor('a MAC spoofing drop flow', async () =>
      (await flows()).some((f) => f.flow?.verdict === 'DROPPED' && f.flow.drop_reason === 130 && f.flow.drop_reason_desc === 'INVALID_SOURCE_MAC'),
    );
    assert.ok(await ping(nsA, b.ipv4), 'genuine frames still pass');
  });

  test('label changes re-derive the identity, keep allowed connections and enforce the new policy', async () => {
    await api.call('PUT', '/v1/policies', `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-from-client, namespace: pd}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
`, 'application/yaml');
    // A long-lived echo connection from a to b.
    const server = spawn('ip', ['netns', 'exec', nsB, process.execPath, '-e', "require('net').createServer(c=>c.on('error',()=>{}).pipe(c)).listen(9000,'::')"], { stdio: 'ignore' });
    children.push(server);
    await waitFor('echo server', async () => (await status('ip', ['netns', 'exec', nsB, 'sh', '-c', 'ss -ltn | grep -q :9000'])) === 0);
    const client = spawn('ip', ['netns', 'exec', nsA, process.execPath, '-e',
      `const s=require('net').connect(9000,'${b.ipv4}');let n=0;s.on('data',()=>{n++;process.stdout.write(n+'\\n')});setInterval(()=>s.write('x'),50);s.on('error',e=>{console.error(e.message);process.exit(3)})`], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(client);
    let echoes = 0;
    client.stdout!.on('data', (d: Buffer) => (echoes = Number(d.toString().trim().split('\n').pop())));
    await waitFor('echoes before the label change', async () => echoes > 5);

    const prober = new Prober(nsA, [7]);
    probers.push(prober);
    await prober.ready;
    const connectNew = async () => (await prober.probe([{ addr: b.ipv4, port: 9000, protocol: 'TCP' }], 700))[0];
    assert.equal(await connectNew(), true, 'new connections allowed for app=client');

    // Still a client, but a different label set: a new identity that the policy still allows.
    const oldIdentity = a.identity;
    a = await api.call<Workload>('PATCH', `/v1/workloads/pd/a`, { labels: { app: 'client', tier: 'web' } });
    assert.notEqual(a.identity, oldIdentity);
    const before = echoes;
    await waitFor('echoes continue after the identity change', async () => echoes > before + 5);
    assert.equal(await connectNew(), true, 'new connections still allowed');

    // No longer a client: new connections are denied, and trace agrees.
    a = await api.call<Workload>('PATCH', `/v1/workloads/pd/a`, { labels: { app: 'intruder' } });
    assert.equal(await connectNew(), false, 'new connections denied after the label change');
    const trace = await api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { workload: 'pd/a' }, to: { workload: 'pd/b' }, protocol: 'TCP', port: 9000 });
    assert.equal(trace.verdict, 'DENIED');
    assert.match(trace.text, /default-deny|POLICY_DENIED|denied/i);
    await waitFor('a POLICY_DENIED flow', async () => (await flows()).some((f) => f.flow?.drop_reason === 133 && f.flow.drop_reason_desc === 'POLICY_DENIED'));
    // The identity the workload left is released once nothing uses it.
    const ids = await api.call<Array<{ id: number; labels: string[] }>>('GET', '/v1/identities');
    assert.ok(!ids.some((i) => i.labels.includes('k8s:app=client')), 'identities of the old label sets released');
    assert.ok(!ids.some((i) => i.id === oldIdentity), 'a released number is not handed out again at once');
  });
});
