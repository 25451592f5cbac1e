// Conntrack and policy changes with real traffic through a real agent (issue #12 item 2), TCP and UDP,
// IPv4 and IPv6:
//  - 4-tuple reuse: a client's attempt that its egress allowed and the server's ingress dropped leaves
//    an unanswered entry at the client; after the client's egress policy changes to deny the server
//    (and the server's ingress to allow the client), a new attempt from the same source port must be
//    dropped at the client's egress (POLICY_DENIED flow), not ride the earlier entry;
//  - established: a connection that flows, then a policy that denies it: its packets in the original
//    direction are dropped with a policy reason (flows) and the echoes stop.
// KITNET_CT_TEST_OBJECT=<object> runs it against another datapath object (e.g. the previous release's).
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import type { TraceResponse } from '../../common/schemas/policy.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { status, waitFor } from '../helpers/sys.js';

type L4 = { source_port: number; destination_port: number };
type FlowLine = {
  flow?: {
    verdict: string;
    drop_reason?: number;
    traffic_direction?: string;
    IP: { source: string; destination: string };
    l4?: { TCP?: L4; UDP?: L4 };
  };
};

const TCP_PORT = 9100;
const UDP_PORT = 9200;

/** Echo servers, TCP and UDP, dual-stack. */
const SERVER_PY = `
import socket, socketserver, threading
class T(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6; allow_reuse_address = True; daemon_threads = True
class H(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(100)
            if not d: return
            self.request.sendall(d)
class U(socketserver.UDPServer):
    address_family = socket.AF_INET6; allow_reuse_address = True
class UH(socketserver.BaseRequestHandler):
    def handle(self): self.request[1].sendto(self.request[0], self.client_address)
threading.Thread(target=T(('::', ${TCP_PORT}), H).serve_forever, daemon=True).start()
U(('::', ${UDP_PORT}), UH).serve_forever()
`;

/** One attempt from a fixed source port: TCP connect, or a UDP datagram and its echo. Exit 0 = answered. */
const ATTEMPT_PY = `
import socket, sys
addr, port, sport, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('::' if fam == socket.AF_INET6 else '0.0.0.0', sport))
s.settimeout(1.5)
try:
    s.connect((addr, port))
    if proto == 'udp':
        s.send(b'kitnet'); s.recv(100)
    sys.exit(0)
except OSError:
    sys.exit(1)
`;

/** A connection that sends every 50 ms and prints the running count of echoes. */
const STREAM_PY = `
import socket, sys, time
addr, port, sport, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('::' if fam == socket.AF_INET6 else '0.0.0.0', sport))
s.settimeout(3)
s.connect((addr, port))
s.settimeout(0.05)
n = 0
while True:
    try: s.send(b'x')
    except OSError: pass
    try:
        d = s.recv(100)
        n += len(d) if proto == 'tcp' else 1
        print(n, flush=True)
    except OSError: pass
    time.sleep(0.05)
`;

describe('conntrack and policy changes with real traffic (root)', { timeout: 300_000 }, () => {
  const fx = new AgentFixture({ tag: 'ctp', ipv4Pool: '10.212.0.0/16', ipv6Pool: 'fd00:212::/64', namespaces: ['ctp'] });
  const api = fx.api;
  const children: ChildProcess[] = [];
  let nsA: string;
  let nsB: string;
  let b: Workload;

  const flows = async (): Promise<FlowLine[]> => {
    let text = '';
    await api.stream('/v1/flows?last=4095', (l) => (text += `${l}\n`));
    return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as FlowLine);
  };
  /** Policy drops at a's egress of the connection from sport to the server's port. */
  const egressDrops = async (proto: 'tcp' | 'udp', dst: string, sport: number, dport: number): Promise<number> =>
    (await flows()).filter((f) => {
      const l4 = proto === 'tcp' ? f.flow?.l4?.TCP : f.flow?.l4?.UDP;
      return (
        f.flow?.verdict === 'DROPPED' &&
        f.flow.drop_reason === 133 &&
        f.flow.traffic_direction === 'EGRESS' &&
        f.flow.IP.destination === dst &&
        l4?.source_port === sport &&
        l4.destination_port === dport
      );
    }).length;

  /** a's egress allows the server on the given ports; b's ingress allows a on the server's ports, or nothing. */
  async function policies(egressPorts: { tcp: number; udp: number }, ingressFromClient: boolean): Promise<void> {
    await api.call('PUT', '/v1/policies', `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress, namespace: ctp}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "${egressPorts.tcp}", protocol: TCP}, {port: "${egressPorts.udp}", protocol: UDP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress, namespace: ctp}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: ${ingressFromClient ? 'client' : 'nobody'}}}]
    toPorts: [{ports: [{port: "${TCP_PORT}", protocol: TCP}, {port: "${UDP_PORT}", protocol: UDP}]}]
`, 'application/yaml');
  }
  const ALLOWED = { tcp: TCP_PORT, udp: UDP_PORT };
  const DENIED_PORTS = { tcp: TCP_PORT + 1, udp: UDP_PORT + 1 };

  const attempt = (addr: string, port: number, sport: number, proto: 'tcp' | 'udp'): Promise<number> =>
    status('ip', ['netns', 'exec', nsA, 'python3', '-c', ATTEMPT_PY, addr, String(port), String(sport), proto]);

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await fx.cleanup();
  });
  before(async () => {
    nsA = await fx.netns('a');
    nsB = await fx.netns('b');
    const object = process.env.KITNET_CT_TEST_OBJECT;
    await fx.start(object ? { bpfObject: object } : {});
    await api.call<Workload>('POST', '/v1/workloads', { name: 'a', namespace: 'ctp', labels: { app: 'client' }, netns: `/var/run/netns/${nsA}` });
    b = await api.call<Workload>('POST', '/v1/workloads', { name: 'b', namespace: 'ctp', labels: { app: 'server' }, netns: `/var/run/netns/${nsB}` });
    const server = spawn('ip', ['netns', 'exec', nsB, 'python3', '-c', SERVER_PY], { stdio: 'ignore' });
    children.push(server);
    await waitFor('echo servers', async () => (await status('ip', ['netns', 'exec', nsB, 'sh', '-c', `ss -ltn | grep -q :${TCP_PORT} && ss -lun | grep -q :${UDP_PORT}`])) === 0);
  });

  const cases = [
    { fam: 'IPv4', proto: 'tcp', sport: 45001 },
    { fam: 'IPv6', proto: 'tcp', sport: 45002 },
    { fam: 'IPv4', proto: 'udp', sport: 45003 },
    { fam: 'IPv6', proto: 'udp', sport: 45004 },
  ] as const;

  for (const c of cases) {
    test(`${c.fam} ${c.proto.toUpperCase()} 4-tuple reuse: an unanswered attempt does not let the same 4-tuple past a later egress deny`, async () => {
      const dst = c.fam === 'IPv4' ? b.ipv4 : b.ipv6;
      const port = c.proto === 'tcp' ? TCP_PORT : UDP_PORT;
      await policies(ALLOWED, true);
      assert.equal(await attempt(dst, port, c.sport + 100, c.proto), 0, 'the path works when both sides allow');
      // a's egress allows it, b's ingress drops it: a keeps an entry that never saw a reply
      await policies(ALLOWED, false);
      assert.equal(await attempt(dst, port, c.sport, c.proto), 1, 'dropped at the server');
      // now a's egress denies the server, and the server would accept a
      await policies(DENIED_PORTS, true);
      const before = await egressDrops(c.proto, dst, c.sport, port);
      assert.equal(await attempt(dst, port, c.sport, c.proto), 1, 'the same 4-tuple must not get through');
      await waitFor('a POLICY_DENIED flow at the client\'s egress', async () => (await egressDrops(c.proto, dst, c.sport, port)) > before);
    });

    test(`${c.fam} ${c.proto.toUpperCase()} established, then a policy denies it: dropped with POLICY_DENIED, echoes stop`, async () => {
      const dst = c.fam === 'IPv4' ? b.ipv4 : b.ipv6;
      const port = c.proto === 'tcp' ? TCP_PORT : UDP_PORT;
      const sport = c.sport + 200;
      await policies(ALLOWED, true);
      const client = spawn('ip', ['netns', 'exec', nsA, 'python3', '-c', STREAM_PY, dst, String(port), String(sport), c.proto], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(client);
      let echoes = 0;
      client.stdout!.on('data', (d: Buffer) => (echoes = Number(d.toString().trim().split('\n').pop())));
      try {
        await waitFor('echoes while allowed', async () => echoes > 5);
        await policies(DENIED_PORTS, true);
        await waitFor('a POLICY_DENIED flow of the established connection', async () => (await egressDrops(c.proto, dst, sport, port)) > 0);
        const atDrop = echoes;
        // the connection keeps sending (TCP: retransmissions); every packet is dropped
        await waitFor('more drops of the same connection', async () => (await egressDrops(c.proto, dst, sport, port)) > 1, 10_000);
        assert.ok(echoes <= atDrop + 1, `echoes stopped (${atDrop} at the first drop, ${echoes} now)`);
        const trace = await api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { workload: 'ctp/a' }, to: { workload: 'ctp/b' }, protocol: c.proto.toUpperCase(), port });
        assert.equal(trace.verdict, 'DENIED');
        assert.match(trace.text, /conntrack: .*established connection/, 'trace states what happens to established connections');
      } finally {
        client.kill('SIGKILL');
      }
    });
  }

  test('the client can still reach what its policy allows', async () => {
    await policies(ALLOWED, true);
    assert.equal(await attempt(b.ipv4, TCP_PORT, 45999, 'tcp'), 0);
    assert.equal(await attempt(b.ipv6, UDP_PORT, 45998, 'udp'), 0);
  });
});
