import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { credentials } from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { hubbleClient, type HubbleClient } from '../../api/hubble/client.js';
import { AgentFixture } from '../helpers/fixture.js';
import { hubbleCliOrSkip, hubbleRun } from '../helpers/hubble-cli.js';
import { Prober } from '../helpers/prober-client.js';
import { testCaMake, type TestCa } from '../helpers/test-ca.js';
import { run, waitFor } from '../helpers/sys.js';

type Rec = { flow?: Record<string, unknown> & { uuid: string }; lost_events?: unknown; node_name: string; time: string };

/**
 * What the gRPC API adds to the pipeline's flow (GET /v1/flows does not carry them yet): the deciding
 * policy and the interface's name.
 */
function withoutGrpcExtras(r: Rec): Rec {
  if (!r.flow) return r;
  const { ingress_allowed_by: _a, egress_allowed_by: _b, ingress_denied_by: _c, egress_denied_by: _d, ...flow } = r.flow;
  const iface = flow.interface as { index: number; name?: string } | undefined;
  return { ...r, flow: { ...flow, ...(iface ? { interface: { index: iface.index } } : {}) } as Rec['flow'] };
}

/** protojson leaves out the zero values (0, false, '', empty lists) the REST JSON keeps; compare without them. */
function normalize(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(normalize);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined || x === 0 || x === false || x === '' || (Array.isArray(x) && x.length === 0)) continue;
      out[k] = normalize(x);
    }
    return out;
  }
  return v;
}

/**
 * Hubble's gRPC API against a real agent with real traffic: the upstream `hubble` CLI (status, observe
 * with filters, follow, list nodes/namespaces) and kitnet's own grpc-js client give what GET /v1/flows
 * gives for the same filter; bad requests and other users are refused.
 */
describe('Hubble gRPC API (root)', { timeout: 240_000 }, () => {
  const fx = new AgentFixture({ tag: 'hubble', ipv4Pool: '10.241.0.0/16', ipv6Pool: 'fd00:241::/64', namespaces: ['hubns'] });
  const probers: Prober[] = [];
  const children: ChildProcess[] = [];
  let client: Workload;
  let server: Workload;
  let clientProber: Prober;
  let grpc: HubbleClient;
  let target: string;
  let tcp: string;
  let ca: TestCa;
  const cli = hubbleCliOrSkip();
  const freePort = () =>
    new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const { port } = s.address() as { port: number };
        s.close(() => resolve(port));
      });
    });

  const rest = async (query: string): Promise<Rec[]> => {
    const lines: string[] = [];
    await fx.api.stream(`/v1/flows?${query}`, (l) => lines.push(l));
    return lines.map((l) => JSON.parse(l) as Rec);
  };
  const hubble = async (args: string[]) => {
    if (!('path' in cli)) throw new Error('no CLI');
    const r = await hubbleRun(cli.path, [...args, '--server', target]);
    assert.equal(r.code, 0, `hubble ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return r.stdout;
  };
  const hubbleJson = async (args: string[]) =>
    (await hubble([...args, '-o', 'json']))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Rec);
  const uuids = (rs: Rec[]) => rs.filter((r) => r.flow).map((r) => r.flow!.uuid);
  const probe = (addr: string, port: number) => clientProber.probe([{ addr, port, protocol: 'TCP' }], 700);

  after(async () => {
    grpc?.close();
    for (const p of probers) p.close();
    for (const c of children) c.kill('SIGKILL');
    await fx.cleanup();
  });

  before(async () => {
    const nsClient = await fx.netns('client');
    const nsServer = await fx.netns('server');
    // The TCP listener with TLS and client certificates (mTLS) from a CA made here.
    ca = testCaMake(fx.dir, 'kitnet.test');
    tcp = `127.0.0.1:${await freePort()}`;
    Object.assign(fx.overrides, { hubble: { listen: tcp, tls: { cert: ca.serverCert, key: ca.serverKey, clientCa: ca.ca, serverName: 'kitnet.test' } } });
    await fx.start();
    target = `unix://${join(fx.dir, 'hubble.sock')}`;
    grpc = hubbleClient(target);
    client = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'client', namespace: 'hubns', labels: { app: 'client' }, netns: `/var/run/netns/${nsClient}` });
    server = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'server', namespace: 'hubns', labels: { app: 'web' }, netns: `/var/run/netns/${nsServer}` });
    await fx.api.call('PUT', '/v1/policies', `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-client, namespace: hubns}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "82", protocol: TCP}]}]
`, 'application/yaml');
    const serverProber = new Prober(nsServer, [80, 81, 82]);
    probers.push(serverProber);
    clientProber = new Prober(nsClient, [7]);
    probers.push(clientProber);
    await Promise.all([serverProber.ready, clientProber.ready]);
    assert.deepEqual(await probe(server.ipv4, 80), [true]);
    assert.deepEqual(await probe(server.ipv6, 80), [true]);
    assert.deepEqual(await probe(server.ipv4, 81), [false]);
    assert.deepEqual(await probe(server.ipv4, 82), [false]);
    // Every flow of this traffic is in the ring before the comparisons below (no traffic after this).
    await waitFor('forwarded and dropped flows', async () => {
      const rs = await rest('');
      return rs.some((r) => r.flow?.drop_reason_desc === 'POLICY_DENY') && rs.some((r) => (r.flow?.IP as { ipVersion?: string } | undefined)?.ipVersion === 'IPv6');
    });
  });

  test('the socket has the REST socket\'s permissions; another user cannot connect', async () => {
    const path = join(fx.dir, 'hubble.sock');
    assert.equal(statSync(path).mode & 0o777, 0o660);
    const script = `require('net').connect(${JSON.stringify(path)}).on('connect',()=>{console.log('connected');process.exit(0)}).on('error',e=>{console.log(e.code);process.exit(0)})`;
    const out = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script]);
    assert.equal(out.trim(), 'EACCES');
  });

  test('the warm of the flow path at start (hubble.warmFlows) left none of its made-up flows in the ring', async () => {
    // api/hubble/warm.ts: 30,000 events from 192.0.2.0/24 and 2001:db8::1, run when the agent began serving
    const rs = await rest('');
    assert.ok(rs.length > 0);
    const made = rs.filter((r) => /^(192\.0\.2\.|2001:db8::)/.test(String((r.flow?.IP as { source?: string } | undefined)?.source ?? '')));
    assert.deepEqual(made, []);
    const status = await grpc!.call('observer', 'ServerStatus');
    assert.ok(Number(status.seen_flows) < 30_000, `seen_flows ${String(status.seen_flows)}: the warm's flows were counted`);
  });

  describe('the upstream hubble CLI', { skip: cli.skip || false }, () => {
    test('hubble status: health check and server status', async () => {
      const out = await hubble(['status']);
      assert.match(out, /Healthcheck \(via unix:\/\/.*\): Ok/);
      assert.match(out, /Current\/Max Flows: [\d,]+\/4,?095/);
    });

    test('hubble observe --last 20 -o json gives what GET /v1/flows?last=20 gives', async () => {
      // No traffic runs now, but a connection's last flows may still be on their way: the two agree once settled.
      await waitFor('the same 20 flows on both APIs', async () => {
        const [viaCli, viaRest] = [await hubbleJson(['observe', '--last', '20']), await rest('last=20')];
        if (viaCli.length !== 20 || JSON.stringify(uuids(viaCli)) !== JSON.stringify(uuids(viaRest))) return false;
        assert.deepEqual(normalize(viaCli.map(withoutGrpcExtras)), normalize(viaRest));
        return true;
      }, 20_000);
    });

    test('hubble observe -o compact names the workloads and identities', async () => {
      const out = await hubble(['observe', '--last', '50', '-o', 'compact', '--to-pod', 'hubns/server']);
      assert.match(out, new RegExp(`hubns/client:\\d+ \\(ID:${client.identity}\\) -> hubns/server:80 \\(ID:${server.identity}\\) .*FORWARDED`));
      assert.match(out, new RegExp(`hubns/client:\\d+ \\(ID:${client.identity}\\) -> hubns/server:81 \\(ID:${server.identity}\\) .*DROPPED`));
      assert.ok(!out.includes('<nil>'), out);
    });

    test('filters give the flows the same filter gives on GET /v1/flows', async () => {
      const since = new Date(Date.now() - 60_000).toISOString();
      const cases: Array<[string[], string, (rs: Rec[]) => boolean]> = [
        [['--verdict', 'DROPPED'], 'verdict=DROPPED', (rs) => rs.every((r) => r.flow!.verdict === 'DROPPED')],
        [['--from-pod', 'hubns/client'], 'source_pod=hubns/client', (rs) => rs.every((r) => (r.flow!.source as { pod_name?: string }).pod_name === 'client')],
        [['--to-label', 'app=web'], 'destination_label=app%3Dweb', (rs) => rs.every((r) => (r.flow!.destination as { labels: string[] }).labels.includes('k8s:app=web'))],
        [['--port', '80'], `whitelist=${encodeURIComponent('[{"source_port":["80"]},{"destination_port":["80"]}]')}`, () => true],
        [['--protocol', 'tcp'], 'protocol=tcp', () => true],
        [['-4'], 'ip_version=IPv4', () => true],
        [['-6'], 'ip_version=IPv6', () => true],
        [['--since', '1m'], `since=${since}`, () => true],
        [['--type', 'drop'], 'verdict=DROPPED', (rs) => rs.every((r) => (r.flow!.event_type as { type: number }).type === 1)],
      ];
      for (const [args, query, check] of cases) {
        // A workload's own IPv6 housekeeping (MLD, neighbour discovery) can add a flow between the two
        // calls: the two agree once a pair of calls saw the same ring.
        await waitFor(`hubble observe ${args.join(' ')} and GET /v1/flows?${query} to agree`, async () => {
          const viaCli = await hubbleJson(['observe', '--last', '4095', ...args]);
          const viaRest = await rest(`last=4095&${query}`);
          assert.ok(viaCli.length > 0, `${args.join(' ')}: some flows`);
          assert.ok(check(viaCli), `${args.join(' ')}: every flow matches`);
          // --since 1m on the CLI is a minute before its own start, a little later than `since` here.
          const restIds = new Set(uuids(viaRest));
          const sub = uuids(viaCli).every((u) => restIds.has(u));
          return sub && (args[0] === '--since' || viaCli.length === viaRest.length);
        }, 20_000);
      }
    });

    test('hubble observe --follow receives a flow made after it started', async () => {
      if (!('path' in cli)) return;
      const child = spawn(cli.path, ['observe', '--follow', '-o', 'json', '--to-pod', 'hubns/server', '--port', '81', '--server', target], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(child);
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      const before = fx.agent.flows.listenerCount('flow');
      await waitFor('the CLI to follow', async () => fx.agent.flows.listenerCount('flow') > before, 10_000);
      assert.deepEqual(await probe(server.ipv4, 81), [false]);
      const rec = await waitFor('the new drop on the follow stream', async () =>
        out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Rec).find((r) => r.flow?.verdict === 'DROPPED'), 10_000);
      assert.equal((rec.flow!.destination as { pod_name: string }).pod_name, 'server');
      assert.equal(rec.flow!.drop_reason_desc, 'POLICY_DENIED');
      child.kill('SIGTERM');
    });

    test('policy attribution and the interface name, as Cilium fills them', async () => {
      const rs = await hubbleJson(['observe', '--last', '4095', '--to-pod', 'hubns/server', '--traffic-direction', 'ingress']);
      type Pol = { name: string; namespace: string; kind: string; labels: string[] };
      const to = (port: number) => rs.filter((r) => (r.flow!.l4 as { TCP?: { destination_port: number } }).TCP?.destination_port === port && !r.flow!.is_reply);
      const allowed = to(80).find((r) => r.flow!.verdict === 'FORWARDED');
      assert.ok(allowed, 'a forwarded flow to port 80');
      const by = allowed.flow!.ingress_allowed_by as Pol[];
      assert.deepEqual(by.map((p) => [p.kind, p.namespace, p.name]), [['CiliumNetworkPolicy', 'hubns', 'web-from-client']]);
      assert.ok(by[0]!.labels.includes('k8s:io.cilium.k8s.policy.name=web-from-client'));
      assert.deepEqual((allowed.flow!.interface as { name?: string }).name, server.interfaces.host.name);
      const denied = to(82).find((r) => r.flow!.drop_reason_desc === 'POLICY_DENY');
      assert.ok(denied, 'an explicitly denied flow to port 82');
      assert.deepEqual((denied.flow!.ingress_denied_by as Pol[]).map((p) => p.name), ['web-from-client']);
      // A default-deny drop (port 81) has no rule to name.
      const defaultDeny = to(81).find((r) => r.flow!.verdict === 'DROPPED');
      assert.ok(defaultDeny && !defaultDeny.flow!.ingress_denied_by);
    });

    test('TLS with a client certificate on hubble.listen; without one, or with a stranger CA\'s, refused', async () => {
      if (!('path' in cli)) return;
      const tls = ['--server', tcp, '--tls', '--tls-ca-cert-files', ca.ca, '--tls-server-name', 'kitnet.test'];
      const ok = await hubbleRun(cli.path, ['status', ...tls, '--tls-client-cert-file', ca.clientCert, '--tls-client-key-file', ca.clientKey]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.stdout, /Healthcheck \(via 127\.0\.0\.1:\d+\): Ok/);
      const flows = await hubbleRun(cli.path, ['observe', '--last', '3', '-o', 'json', ...tls, '--tls-client-cert-file', ca.clientCert, '--tls-client-key-file', ca.clientKey]);
      assert.equal(flows.code, 0, flows.stderr);
      assert.equal(flows.stdout.trim().split('\n').length, 3);
      const noCert = await hubbleRun(cli.path, ['status', ...tls, '--timeout', '3s']);
      assert.notEqual(noCert.code, 0, 'a client without a certificate is refused');
      const stranger = await hubbleRun(cli.path, ['status', ...tls, '--tls-client-cert-file', ca.strangerCert, '--tls-client-key-file', ca.strangerKey, '--timeout', '3s']);
      assert.notEqual(stranger.code, 0, 'a certificate from another CA is refused');
      const plain = await hubbleRun(cli.path, ['status', '--server', tcp, '--timeout', '3s']);
      assert.notEqual(plain.code, 0, 'plaintext is refused');
    });

    test('hubble list nodes and namespaces', async () => {
      const nodes = await hubble(['list', 'nodes']);
      assert.match(nodes, /^hubble\s+Connected\s/m);
      const namespaces = await hubble(['list', 'namespaces']);
      assert.match(namespaces, /^hubns$/m);
    });
  });

  describe("kitnet's own gRPC client", () => {
    const flows = (req: object) =>
      new Promise<Rec[]>((resolve, reject) => {
        const out: Rec[] = [];
        const s = grpc.stream('observer', 'GetFlows', req);
        s.on('data', (m: Rec) => out.push(m));
        s.on('end', () => resolve(out));
        s.on('error', reject);
      });

    test('health, ServerStatus, GetNodes, GetNamespaces, Peer.Notify', async () => {
      assert.deepEqual(await grpc.call('health', 'Check', { service: 'hubble.server.Observer' }), { status: 'SERVING' });
      const st = await grpc.call('observer', 'ServerStatus');
      assert.equal(st.max_flows, 4095);
      assert.ok((st.num_flows as number) > 0 && (st.seen_flows as number) >= (st.num_flows as number));
      const nodes = (await grpc.call('observer', 'GetNodes')).nodes as Array<{ name: string; state: string }>;
      assert.deepEqual(nodes.map((n) => [n.name, n.state]), [['hubble', 'NODE_CONNECTED']]);
      const ns = (await grpc.call('observer', 'GetNamespaces')).namespaces as Array<{ namespace: string }>;
      assert.ok(ns.some((n) => n.namespace === 'hubns'));
      const peer = await new Promise<Record<string, unknown>>((resolve, reject) => {
        const s = grpc.stream('peer', 'Notify');
        s.once('data', (m: Record<string, unknown>) => (s.cancel(), resolve(m)));
        s.once('error', reject);
      });
      assert.equal(peer.name, 'hubble');
      assert.equal(peer.type, 'PEER_ADDED');
    });

    test('GetFlows: number, first, filters as on GET /v1/flows; time and is_reply as Hubble sends them', async () => {
      // Each pair of calls is repeated until both saw the same ring (a housekeeping flow may come between).
      const same = (what: string, grpcCall: () => Promise<Rec[]>, restCall: () => Promise<string[]>) =>
        waitFor(what, async () => {
          const [g, r] = [uuids(await grpcCall()), await restCall()];
          return JSON.stringify(g) === JSON.stringify(r) && g.length > 0;
        }, 20_000);
      await same('the last 5', () => flows({ number: 5 }), async () => uuids(await rest('')).slice(-5));
      await same('the first 3', () => flows({ number: 3, first: true }), async () => uuids(await rest('')).slice(0, 3));
      await same('drops to the server', () => flows({ number: 4095, whitelist: [{ verdict: ['DROPPED'], destination_pod: ['hubns/server'] }] }), async () =>
        uuids(await rest('verdict=DROPPED&destination_pod=hubns/server')));
      await same('all but IPv6', () => flows({ number: 4095, blacklist: [{ ip_version: ['IPv6'] }] }), async () =>
        uuids(await rest(`blacklist=${encodeURIComponent('[{"ip_version":["IPv6"]}]')}`)));
      const last5 = await flows({ number: 5 });
      const f = last5[0]!.flow! as unknown as { time: { seconds: number; nanos: number }; is_reply: { value?: boolean } };
      assert.ok(f.time.seconds > 1_700_000_000);
      assert.equal(typeof f.is_reply, 'object');
    });

    test('hostile requests: garbage filters, huge numbers, bad combinations', async () => {
      await assert.rejects(flows({ whitelist: [{ source_ip: ['not-an-ip'] }] }), /INVALID_ARGUMENT|not an IP address/);
      await assert.rejects(flows({ whitelist: [{ destination_port: ['70000'] }] }), /not a port number/);
      await assert.rejects(flows({ whitelist: [{ source_label: ['a in (b'] }] }), /label selector/);
      await assert.rejects(flows({ whitelist: Array.from({ length: 65 }, () => ({})) }), /at most 64 filters/);
      await assert.rejects(flows({ whitelist: [{ node_name: Array.from({ length: 65 }, () => 'x') }] }), /at most 64 values/);
      await assert.rejects(flows({ whitelist: [{ protocol: ['x'.repeat(300)] }] }), /longer than 256/);
      await assert.rejects(flows({ first: true, follow: true }), /first: cannot be combined with follow/);
      // The largest uint64 is clamped to the ring: every flow, no error.
      await waitFor('every flow for the largest number', async () => (await flows({ number: '18446744073709551615' })).length === (await rest('')).length, 20_000);
      // A filter on data kitnet never has matches nothing (it does not match everything).
      assert.deepEqual(await flows({ number: 100, whitelist: [{ source_fqdn: ['example.com'] }] }), []);
      // The agent still serves.
      assert.deepEqual(await grpc.call('health', 'Check', { service: '' }), { status: 'SERVING' });
      await assert.rejects(grpc.call('health', 'Check', { service: 'x' }), /NOT_FOUND|unknown service/);
    });

    test('TLS: a client with the CA and a certificate is served; without a certificate refused; Peer names the TCP address', async () => {
      const peer = await new Promise<Record<string, unknown>>((resolve, reject) => {
        const s = grpc.stream('peer', 'Notify');
        s.once('data', (m: Record<string, unknown>) => (s.cancel(), resolve(m)));
        s.once('error', reject);
      });
      assert.equal(peer.address, tcp);
      assert.deepEqual(peer.tls, { server_name: 'kitnet.test' });
      const opts = { 'grpc.ssl_target_name_override': 'kitnet.test' };
      const mtls = hubbleClient(tcp, credentials.createSsl(readFileSync(ca.ca), readFileSync(ca.clientKey), readFileSync(ca.clientCert)), opts);
      const anon = hubbleClient(tcp, credentials.createSsl(readFileSync(ca.ca)), opts);
      try {
        assert.deepEqual(await mtls.call('health', 'Check', { service: 'hubble.server.Observer' }), { status: 'SERVING' });
        const nodes = (await mtls.call('observer', 'GetNodes')).nodes as Array<{ address: string; tls: { enabled: boolean; server_name: string } }>;
        assert.deepEqual(nodes[0]!.tls, { enabled: true, server_name: 'kitnet.test' });
        await assert.rejects(anon.call('health', 'Check', { service: '' }), /UNAVAILABLE|handshake|certificate|Connection/i);
      } finally {
        mtls.close();
        anon.close();
      }
    });

    test('a follower gets new flows; stopping the agent ends the stream', async () => {
      const got: Rec[] = [];
      const s = grpc.stream('observer', 'GetFlows', { follow: true, whitelist: [{ destination_port: ['81'] }] });
      s.on('data', (m: Rec) => got.push(m));
      const ended = new Promise<void>((resolve) => (s.on('error', () => resolve()), s.on('end', () => resolve())));
      const before = fx.agent.flows.listenerCount('flow');
      await waitFor('the follower to subscribe', async () => fx.agent.flows.listenerCount('flow') > before, 10_000);
      assert.deepEqual(await probe(server.ipv6, 81), [false]);
      await waitFor('the new flow', async () => got.some((r) => (r.flow?.destination as { pod_name?: string } | undefined)?.pod_name === 'server'), 10_000);
      await fx.stop();
      await ended;
    });
  });
});
