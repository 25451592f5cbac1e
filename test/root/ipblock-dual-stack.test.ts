// Kubernetes NetworkPolicy ipBlocks on dual-stack workloads, with real traffic through a real agent
// (issue #12, item 3): an ipBlock selects workload ADDRESSES it covers, per family. A v4-only block
// covering a dual-stack client's IPv4 address lets its IPv4 traffic through and not its IPv6 traffic;
// an `except` carving out that IPv4 address denies it; a block pair covering both families allows
// both (the IPv6 path works). Ingress (at the server) and egress (at the client). A CiliumNetworkPolicy
// CIDR rule covering the same address does not select the workload (Cilium semantics).
// KITNET_IPBLOCK_TEST_OBJECT=<object> runs it against another datapath object (e.g. the previous one,
// where the v4-only cases fail).
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import type { TraceResponse } from '../../common/schemas/policy.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { status, waitFor } from '../helpers/sys.js';

const PORT = 9300;
const SERVER_PY = `
import socket, socketserver
class T(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6; allow_reuse_address = True; daemon_threads = True
class H(socketserver.BaseRequestHandler):
    def handle(self): self.request.sendall(b'ok')
T(('::', ${PORT}), H).serve_forever()
`;
/** A TCP connection that gets the server's answer: exit 0; refused, dropped or silent: 1. */
const CONNECT_PY = `
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.settimeout(1.5)
try:
    s.connect((addr, port)); sys.exit(0 if s.recv(2) == b'ok' else 1)
except OSError:
    sys.exit(1)
`;

describe('NetworkPolicy ipBlock on dual-stack workloads, per address (root)', { timeout: 300_000 }, () => {
  const fx = new AgentFixture({ tag: 'ipb', ipv4Pool: '10.219.0.0/16', ipv6Pool: 'fd00:219::/64', namespaces: ['ipb'] });
  const api = fx.api;
  const children: ChildProcess[] = [];
  let nsC: string;
  let c: Workload;
  let s: Workload;

  type Flow = { flow?: { verdict: string; drop_reason?: number; traffic_direction?: string; IP: { source: string; destination: string } } };
  const policyDrops = async (src: string, direction: 'INGRESS' | 'EGRESS'): Promise<number> => {
    let text = '';
    await api.stream('/v1/flows?last=4095', (l) => (text += `${l}\n`));
    return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Flow)
      .filter((f) => f.flow?.verdict === 'DROPPED' && f.flow.drop_reason === 133 && f.flow.traffic_direction === direction && f.flow.IP.source === src).length;
  };
  const connects = (addr: string): Promise<number> => status('ip', ['netns', 'exec', nsC, 'python3', '-c', CONNECT_PY, addr, String(PORT)]);
  /** Answered: exit 0 (waits for the policy to reach the datapath). */
  const allowed = (addr: string) => waitFor(`a connection to ${addr}`, async () => (await connects(addr)) === 0, 10_000);
  /** Not answered, and the drop is policy's (a POLICY_DENIED flow from the client's address). */
  const denied = async (addr: string, from: string, direction: 'INGRESS' | 'EGRESS') => {
    const before = await policyDrops(from, direction);
    assert.equal(await connects(addr), 1, `${from} -> ${addr} must be dropped`);
    await waitFor(`a POLICY_DENIED ${direction} flow from ${from}`, async () => (await policyDrops(from, direction)) > before);
  };

  const np = (direction: 'ingress' | 'egress', blocks: Array<{ cidr: string; except?: string[] }>) => {
    const peers = JSON.stringify(blocks.map((b) => ({ ipBlock: b })));
    return direction === 'ingress'
      ? `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: blocks, namespace: ipb}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress: [{from: ${peers}}]\n`
      : `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: blocks, namespace: ipb}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress: [{to: ${peers}}]\n`;
  };
  const apply = (yaml: string) => api.call('PUT', '/v1/policies', yaml, 'application/yaml');
  const clear = async () => {
    for (const p of await api.call<Array<{ kind: string; namespace: string; name: string }>>('GET', '/v1/policies')) {
      await api.call('DELETE', `/v1/policies/${p.kind}/${p.namespace}/${p.name}`);
    }
  };

  after(async () => {
    for (const ch of children) ch.kill('SIGKILL');
    await fx.cleanup();
  });
  before(async () => {
    nsC = await fx.netns('c');
    const nsS = await fx.netns('s');
    const object = process.env.KITNET_IPBLOCK_TEST_OBJECT;
    await fx.start(object ? { bpfObject: object } : {});
    c = await api.call<Workload>('POST', '/v1/workloads', { name: 'c', namespace: 'ipb', labels: { app: 'client' }, netns: `/var/run/netns/${nsC}` });
    s = await api.call<Workload>('POST', '/v1/workloads', { name: 's', namespace: 'ipb', labels: { app: 'server' }, netns: `/var/run/netns/${nsS}` });
    children.push(spawn('ip', ['netns', 'exec', nsS, 'python3', '-c', SERVER_PY], { stdio: 'ignore' }));
    await waitFor('the server', async () => (await status('ip', ['netns', 'exec', nsS, 'sh', '-c', `ss -ltn | grep -q :${PORT}`])) === 0);
  });

  for (const direction of ['ingress', 'egress'] as const) {
    const at = direction === 'ingress' ? 'INGRESS' : 'EGRESS';
    // the block covers the client's addresses at the server's ingress, the server's at the client's egress
    const peer = () => (direction === 'ingress' ? c : s);

    test(`${direction}: a v4-only ipBlock covering a dual-stack workload allows its IPv4 traffic, not its IPv6 traffic`, async () => {
      await clear();
      await apply(np(direction, [{ cidr: '10.219.0.0/16' }]));
      await allowed(s.ipv4);
      await denied(s.ipv6, c.ipv6, at);
      const trace = await api.call<TraceResponse>('POST', '/v1/policy/trace', direction === 'ingress'
        ? { from: { ip: c.ipv4 }, to: { workload: 'ipb/s' }, protocol: 'TCP', port: PORT }
        : { from: { workload: 'ipb/c' }, to: { ip: s.ipv4 }, protocol: 'TCP', port: PORT });
      assert.equal(trace.verdict, 'ALLOWED', trace.text);
      assert.match(trace.text, new RegExp(`by address: .*${peer().ipv4.replace(/\./g, '\\.')} was judged as NetworkPolicy ipBlocks see it, inside 10\\.219\\.0\\.0/16`));
    });

    test(`${direction}: an except carving out the workload's IPv4 address denies it`, async () => {
      await clear();
      await apply(np(direction, [{ cidr: '10.219.0.0/16', except: [`${peer().ipv4}/32`] }]));
      await denied(s.ipv4, c.ipv4, at);
    });

    test(`${direction}: blocks covering both families allow both (the IPv6 path works)`, async () => {
      await clear();
      await apply(np(direction, [{ cidr: '10.219.0.0/16' }, { cidr: 'fd00:219::/64' }]));
      await allowed(s.ipv4);
      await allowed(s.ipv6);
    });
  }

  test('a CiliumNetworkPolicy CIDR rule covering the workload does not select it', async () => {
    await clear();
    await apply(`apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: cidrs, namespace: ipb}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress: [{fromCIDR: [10.219.0.0/16, "fd00:219::/64"]}]\n`);
    await denied(s.ipv4, c.ipv4, 'INGRESS');
    await clear();
    await allowed(s.ipv4);
  });
});
