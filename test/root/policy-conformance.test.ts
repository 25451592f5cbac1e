import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { PolicySummary, TraceResponse } from '../../api/schemas/policy.js';
import type { Workload } from '../../api/schemas/workload.js';
import { CASES, NAMESPACES, PORTS, PROTOCOLS, WORKLOADS, WORLD, WORLD_ADDRESSES, type Probe } from '../fixtures/policy/conformance-cases.js';
import { Prober, type ProbeSpec } from '../helpers/prober-client.js';
import { AgentFixture } from '../helpers/fixture.js';
import { run } from '../helpers/sys.js';
import { timeLimit } from '../helpers/timeouts.js';

/**
 * Network-policy conformance with real traffic, in the spirit of the upstream Kubernetes e2e suite:
 * namespaces x, y, z with workloads a, b, c serving TCP and UDP on 80 and 81, plus an outside peer
 * (world). For every case the policies are applied through the API, every pair is probed over IPv4
 * and IPv6, and the observed matrix must equal the expected one. `policy trace` must agree with the
 * datapath on every probe.
 */
describe('policy conformance with real traffic (root)', { timeout: timeLimit(600_000) }, () => {
  const fx = new AgentFixture({
    tag: 'conf',
    ipv4Pool: '10.202.0.0/16',
    ipv6Pool: 'fd00:202::/64',
    namespaces: [...NAMESPACES],
    overrides: { nodeName: 'conformance' },
  });
  const api = fx.api;
  const netnsOf = new Map<string, string>();
  const worldHostIf = `kncw${fx.id}`.slice(0, 15);
  const peers = [...WORKLOADS.map((w) => w.name), WORLD];
  const probers = new Map<string, Prober>();
  const addresses = new Map<string, { ipv4: string; ipv6: string }>();

  after(async () => {
    for (const p of probers.values()) p.close();
    await run('ip', ['link', 'del', worldHostIf]).catch(() => undefined);
    await fx.cleanup();
  });
  before(async () => {
    for (const p of peers) netnsOf.set(p, await fx.netns(p.replace('/', '')));
    // The outside peer: a plain veth into its namespace, no kitnet programs, documentation addresses.
    const clash = (await run('ip', ['-4', 'route', 'show', '198.51.100.0/24'])).trim();
    assert.equal(clash, '', `another device already routes the world peer's subnet (a leftover of an interrupted run?): ${clash}`);
    const wns = netnsOf.get(WORLD)!;
    await run('ip', ['link', 'add', worldHostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', wns]);
    await run('ip', ['addr', 'add', '198.51.100.1/24', 'dev', worldHostIf]);
    await run('ip', ['addr', 'add', '2001:db8:51::1/64', 'dev', worldHostIf, 'nodad']);
    await run('ip', ['link', 'set', worldHostIf, 'up']);
    await run('ip', ['-n', wns, 'link', 'set', 'lo', 'up']);
    await run('ip', ['-n', wns, 'addr', 'add', `${WORLD_ADDRESSES.ipv4}/24`, 'dev', 'eth0']);
    await run('ip', ['-n', wns, 'addr', 'add', `${WORLD_ADDRESSES.ipv6}/64`, 'dev', 'eth0', 'nodad']);
    await run('ip', ['-n', wns, 'link', 'set', 'eth0', 'up']);
    await run('ip', ['-n', wns, 'route', 'add', 'default', 'via', '198.51.100.1']);
    await run('ip', ['-n', wns, '-6', 'route', 'add', 'default', 'via', '2001:db8:51::1']);
    addresses.set(WORLD, WORLD_ADDRESSES);

    await fx.start();
    for (const ns of NAMESPACES) await api.call('PUT', `/v1/namespaces/${ns}`, { labels: WORKLOADS.find((w) => w.namespace === ns)!.namespaceLabels });
    for (const w of WORKLOADS) {
      const rec = await api.call<Workload>('POST', '/v1/workloads', {
        name: w.pod,
        namespace: w.namespace,
        labels: w.labels,
        netns: `/var/run/netns/${netnsOf.get(w.name)}`,
        ports: w.ports,
        // Fixed addresses: the ipBlock and CIDR cases name them.
        ipv4: w.ipv4,
        ipv6: w.ipv6,
      });
      addresses.set(w.name, { ipv4: rec.ipv4, ipv6: rec.ipv6 });
    }
    for (const p of peers) probers.set(p, new Prober(netnsOf.get(p)!, [...PORTS]));
    await Promise.all([...probers.values()].map((p) => p.ready));
  });

  const probesFrom = (from: string): Probe[] =>
    peers.filter((to) => to !== from).flatMap((to) => PORTS.flatMap((port) => PROTOCOLS.map((protocol) => ({ from, to, port, protocol }))));

  async function policiesReplace(yaml: string): Promise<void> {
    for (const p of await api.call<PolicySummary[]>('GET', '/v1/policies')) {
      await api.call('DELETE', `/v1/policies/${p.kind}/${p.namespace || '-'}/${p.name}`);
    }
    if (yaml.trim()) await api.call('PUT', '/v1/policies', yaml, 'application/yaml');
    // Connections of the previous case must not let this case's probes through.
    fx.agent.kernel.datapath.conntrackFlush();
  }

  const tracePeer = (peer: string, family: 'ipv4' | 'ipv6') =>
    peer === WORLD ? { ip: addresses.get(WORLD)![family] } : { workload: peer };

  // The lab VM (emulated, ~20x slower) runs a subset chosen by name: KITNET_CONFORMANCE_CASES=<regex>.
  const only = process.env.KITNET_CONFORMANCE_CASES ? new RegExp(process.env.KITNET_CONFORMANCE_CASES) : undefined;
  const selected = CASES.filter((c) => !only || only.test(c.name));
  assert.ok(selected.length > 0, `KITNET_CONFORMANCE_CASES=${process.env.KITNET_CONFORMANCE_CASES} matches no case`);
  for (const c of selected) {
    test(c.name, async () => {
      await policiesReplace(c.policies);
      const mismatches: string[] = [];
      for (const family of ['ipv4', 'ipv6'] as const) {
        const results = await Promise.all(
          peers.map(async (from) => {
            const probes = probesFrom(from);
            const specs: ProbeSpec[] = probes.map((p) => ({ addr: addresses.get(p.to)![family], port: p.port, protocol: p.protocol }));
            const seen = await probers.get(from)!.probe(specs, timeLimit(600));
            // A denied probe always waits out its timeout, so the first pass is short. An allowed
            // connection on a busy machine can take longer: probes that should have passed but did
            // not get one slower second look (a real denial fails it again).
            const again = probes.map((_, i) => i).filter((i) => !seen[i] && c.expected(probes[i]!));
            if (again.length) {
              const second = await probers.get(from)!.probe(again.map((i) => specs[i]!), timeLimit(3000));
              again.forEach((i, k) => (seen[i] = second[k]!));
            }
            return probes.map((p, i) => ({ p, seen: seen[i]! }));
          }),
        );
        for (const { p, seen } of results.flat()) {
          const want = c.expected(p);
          const label = `${family} ${p.from} -> ${p.to} ${p.port}/${p.protocol}`;
          if (seen !== want) mismatches.push(`${label}: datapath ${seen ? 'allowed' : 'denied'}, expected ${want ? 'allowed' : 'denied'}`);
          const trace = await api.call<TraceResponse>('POST', '/v1/policy/trace', {
            from: p.from === WORLD ? tracePeer(WORLD, family) : tracePeer(p.from, family),
            to: { ip: addresses.get(p.to)![family] },
            protocol: p.protocol,
            port: p.port,
          });
          if ((trace.verdict === 'ALLOWED') !== seen) mismatches.push(`${label}: trace says ${trace.verdict}, datapath ${seen ? 'allowed' : 'denied'}`);
        }
      }
      assert.deepEqual(mismatches.slice(0, 30), [], `${mismatches.length} mismatches`);
    });
  }
});
