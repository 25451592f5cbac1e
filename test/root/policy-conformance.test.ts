import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { datapathUnpinAll } from '../../bpf/index.js';
import { daemonRun } from '../../agent/daemon.js';
import { ApiClient } from '../../api/cli/client.js';
import type { PolicySummary, TraceResponse } from '../../api/schemas/policy.js';
import type { Workload } from '../../api/schemas/workload.js';
import { CASES, NAMESPACES, PORTS, PROTOCOLS, WORKLOADS, WORLD, WORLD_ADDRESSES, type Probe } from '../fixtures/policy/conformance-cases.js';
import { Prober, type ProbeSpec } from '../helpers/prober-client.js';
import { netnsAdd, netnsDel, run, uniq } from '../helpers/sys.js';

/**
 * Network-policy conformance with real traffic, in the spirit of the upstream Kubernetes e2e suite:
 * namespaces x, y, z with workloads a, b, c serving TCP and UDP on 80 and 81, plus an outside peer
 * (world). For every case the policies are applied through the API, every pair is probed over IPv4
 * and IPv6, and the observed matrix must equal the expected one. `policy trace` must agree with the
 * datapath on every probe.
 */
describe('policy conformance with real traffic (root)', { timeout: 600_000 }, () => {
  const id = uniq();
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-conf-'));
  const pinRoot = `/sys/fs/bpf/kitnet-conf-${id}`;
  const socket = join(dir, 'kitnet.sock');
  const netnsOf = (peer: string) => `kitnet-cf-${peer.replace('/', '')}-${id}`;
  const worldHostIf = `kncw${id}`.slice(0, 15);
  const peers = [...WORKLOADS.map((w) => w.name), WORLD];
  const api = new ApiClient({ socket });
  const probers = new Map<string, Prober>();
  const addresses = new Map<string, { ipv4: string; ipv6: string }>();
  let agent: Awaited<ReturnType<typeof daemonRun>> | undefined;

  before(async () => {
    for (const p of peers) await netnsAdd(netnsOf(p));
    // The outside peer: a plain veth into its namespace, no kitnet programs, documentation addresses.
    const wns = netnsOf(WORLD);
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

    agent = await daemonRun({
      overrides: {
        stateDir: join(dir, 'state'),
        bpfPinRoot: pinRoot,
        logLevel: 'error',
        nodeName: 'conformance',
        api: { socket },
        ipam: { ipv4Pool: '10.202.0.0/16', ipv6Pool: 'fd00:202::/64' },
        datapath: { mode: 'veth' },
      },
    });
    for (const ns of NAMESPACES) await api.call('PUT', `/v1/namespaces/${ns}`, { labels: WORKLOADS.find((w) => w.namespace === ns)!.namespaceLabels });
    for (const w of WORKLOADS) {
      const rec = await api.call<Workload>('POST', '/v1/workloads', {
        name: w.pod,
        namespace: w.namespace,
        labels: w.labels,
        netns: `/var/run/netns/${netnsOf(w.name)}`,
        ports: w.ports,
      });
      addresses.set(w.name, { ipv4: rec.ipv4, ipv6: rec.ipv6 });
    }
    for (const p of peers) probers.set(p, new Prober(netnsOf(p), [...PORTS]));
    await Promise.all([...probers.values()].map((p) => p.ready));
  });

  after(async () => {
    for (const p of probers.values()) p.close();
    await agent?.stop().catch(() => undefined);
    await run('ip', ['link', 'del', worldHostIf]).catch(() => undefined);
    for (const l of JSON.parse(await run('ip', ['-j', 'link', 'show'])) as Array<{ ifname: string; ifalias?: string }>) {
      if (NAMESPACES.some((ns) => l.ifalias?.startsWith(`kitnet:${ns}/`))) await run('ip', ['link', 'del', l.ifname]).catch(() => undefined);
    }
    for (const p of peers) await netnsDel(netnsOf(p));
    await datapathUnpinAll(pinRoot).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  const probesFrom = (from: string): Probe[] =>
    peers.filter((to) => to !== from).flatMap((to) => PORTS.flatMap((port) => PROTOCOLS.map((protocol) => ({ from, to, port, protocol }))));

  async function policiesReplace(yaml: string): Promise<void> {
    for (const p of await api.call<PolicySummary[]>('GET', '/v1/policies')) {
      await api.call('DELETE', `/v1/policies/${p.kind}/${p.namespace || '-'}/${p.name}`);
    }
    if (yaml.trim()) await api.call('PUT', '/v1/policies', yaml, 'application/yaml');
    // Connections of the previous case must not let this case's probes through.
    agent!.agent.kernel.datapath.conntrackFlush();
  }

  const tracePeer = (peer: string, family: 'ipv4' | 'ipv6') =>
    peer === WORLD ? { ip: addresses.get(WORLD)![family] } : { workload: peer };

  for (const c of CASES) {
    test(c.name, async () => {
      await policiesReplace(c.policies);
      const mismatches: string[] = [];
      for (const family of ['ipv4', 'ipv6'] as const) {
        const results = await Promise.all(
          peers.map(async (from) => {
            const probes = probesFrom(from);
            const specs: ProbeSpec[] = probes.map((p) => ({ addr: addresses.get(p.to)![family], port: p.port, protocol: p.protocol }));
            const seen = await probers.get(from)!.probe(specs, 600);
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
