// The DNS proxy forwards a workload's query from the host's own sockets, so a workload resolver would
// see the host (which every endpoint's ingress admits: allow-localhost), never the asking workload.
// Through a real agent: workload A may send DNS to B and R (a DNS rule, so its DNS is steered to the
// proxy); B's ingress admits nobody, R's admits A on UDP 53. A's query to B is REFUSED by the proxy and
// never reaches B (a hostile A would otherwise talk to B:53 past B's policy, looking like the host),
// with a DROPPED DNS flow saying why and the refusal counted; A's query to R is answered. A plain
// datagram from A to B:54, which A's egress allows, shows B's ingress policy in force.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { netnsAdd, netnsDel, run, status, uniq, waitFor } from '../helpers/sys.js';

const id = uniq();
const NS = { a: `dz-a-${id}`, b: `dz-b-${id}`, r: `dz-r-${id}` };
const fx = new AgentFixture({ tag: 'dzri', ipv4Pool: '10.225.0.0/16', ipv6Pool: 'fd00:225::/64', namespaces: ['dzri'] });
const children: ChildProcess[] = [];

/** A resolver on UDP PORT: logs each sender to FILE and answers every question with one A record. */
const RESOLVER_PY = `
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', int(sys.argv[2])))
while True:
    m, a = s.recvfrom(4096)
    with open(sys.argv[1], 'a') as f: f.write('%s port %s\\n' % (a[0], sys.argv[2]))
    if len(m) < 12: continue
    qend = m.index(b'\\0', 12) + 5
    s.sendto(m[:2] + b'\\x81\\x80' + b'\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x00' + m[12:qend] + b'\\xc0\\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + socket.inet_aton('10.225.99.99'), a)
`;
/** One query for secret.test to DST:PORT; prints {answered, from, rcode, ancount} (answered false: nothing within 3 s). */
const QUERY_PY = `
import json, socket, struct, sys
dst, port = sys.argv[1], int(sys.argv[2])
q = struct.pack('>HHHHHH', 4242, 0x0100, 1, 0, 0, 0) + b'\\x06secret\\x04test\\x00' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
try:
    s.sendto(q, (dst, port)); m, src = s.recvfrom(4096)
    print(json.dumps({'answered': True, 'from': src[0], 'rcode': m[3] & 15, 'ancount': struct.unpack('>H', m[6:8])[0]}))
except OSError as e:
    print(json.dumps({'answered': False, 'error': type(e).__name__}))
`;

type Reply = { answered: boolean; from?: string; rcode?: number; ancount?: number };
type Flow = { verdict: string; IP: { source: string; destination: string }; l7?: { type: string; dns: { query: string } }; Summary?: string; drop_reason_desc?: string };

let a: Workload;
let b: Workload;
let r: Workload;
const heard = (ns: 'b' | 'r') => {
  const f = join(fx.dir, `${ns}-heard.log`);
  return existsSync(f) ? readFileSync(f, 'utf8') : '';
};
const query = async (dst: string, port: number): Promise<Reply> => JSON.parse(await run('ip', ['netns', 'exec', NS.a, 'python3', '-c', QUERY_PY, dst, String(port)])) as Reply;
const refusedResolver = async () => Number(/^kitnet_dns_proxy_refused_resolver_total (\d+)$/m.exec(await fx.agent.metrics.registry.metrics())?.[1] ?? 'NaN');

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await fx.cleanup();
  for (const ns of Object.values(NS)) await netnsDel(ns).catch(() => undefined);
});

before(async () => {
  for (const ns of Object.values(NS)) await netnsAdd(ns);
  await fx.start();
  const add = (name: string, app: string, ns: string) => fx.api.call<Workload>('POST', '/v1/workloads', { name, namespace: 'dzri', labels: { app }, netns: `/var/run/netns/${ns}` });
  a = await add('a', 'a', NS.a);
  b = await add('b', 'b', NS.b);
  r = await add('r', 'r', NS.r);
  for (const [ns, port] of [['b', 53], ['b', 54], ['r', 53]] as const) {
    children.push(spawn('ip', ['netns', 'exec', NS[ns], 'python3', '-c', RESOLVER_PY, join(fx.dir, `${ns}-heard.log`), String(port)], { stdio: 'ignore' }));
  }
  for (const [ns, port] of [['b', 53], ['b', 54], ['r', 53]] as const) {
    await waitFor(`the resolver in ${ns} on ${port}`, async () => (await status('ip', ['netns', 'exec', NS[ns], 'sh', '-c', `ss -lun | grep -q ':${port} '`])) === 0, 10_000);
  }
  // Returns once the policy is written and A's DNS steered.
  await fx.api.call('PUT', '/v1/policies', `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-egress, namespace: dzri}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
    - toEndpoints: [{matchExpressions: [{key: app, operator: In, values: [b, r]}]}]
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules: {dns: [{matchPattern: "*"}]}
    - toEndpoints: [{matchLabels: {app: b}}]
      toPorts:
        - ports: [{port: "54", protocol: UDP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-ingress, namespace: dzri}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: nobody}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: r-ingress, namespace: dzri}
spec:
  endpointSelector: {matchLabels: {app: r}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: a}}]
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
`, 'application/yaml');
});

test('a query to a workload resolver whose ingress denies the asking workload is REFUSED and never reaches it', { timeout: 120_000 }, async () => {
  const refusedBefore = await refusedResolver();
  assert.equal((await query(b.ipv4, 54)).answered, false, 'B\'s ingress policy drops A\'s own datagram');
  const viaProxy = await query(b.ipv4, 53);
  assert.deepEqual(viaProxy, { answered: true, from: b.ipv4, rcode: 5, ancount: 0 }, 'REFUSED, as from B');
  assert.equal(heard('b'), '', 'B heard nothing: neither A\'s datagram nor the proxy\'s');
  assert.equal((await refusedResolver()) - refusedBefore, 1);
  const flow = await waitFor('the dropped DNS flow', async () => {
    const lines: string[] = [];
    await fx.api.stream('/v1/flows?last=4095', (l) => lines.push(l));
    return lines.map((l) => (JSON.parse(l) as { flow?: Flow }).flow).find((f) => f?.l7?.dns.query === 'secret.test.' && f.IP.destination === b.ipv4 && f.verdict === 'DROPPED');
  });
  assert.equal(flow.IP.source, a.ipv4);
  assert.equal(flow.drop_reason_desc, 'POLICY_DENY');
  assert.match(flow.Summary ?? '', /refused: resolver 10\.225\.\S+ is workload dzri\/b whose ingress policy does not admit this workload on UDP 53/);
});

test('a query to a workload resolver whose ingress admits the asking workload is answered', { timeout: 120_000 }, async () => {
  const viaProxy = await query(r.ipv4, 53);
  assert.deepEqual(viaProxy, { answered: true, from: r.ipv4, rcode: 0, ancount: 1 });
  assert.match(heard('r'), / port 53\n/);
});
