import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { hubbleCliOrSkip, hubbleRun } from '../helpers/hubble-cli.js';
import { kernelHasNetkit } from '../helpers/mode.js';
import { Prober } from '../helpers/prober-client.js';
import { waitFor } from '../helpers/sys.js';

type Flow = {
  uuid: string;
  verdict: string;
  ethernet?: { source: string; destination: string };
  IP?: { source: string; destination: string };
  source: { pod_name?: string };
  destination: { pod_name?: string };
  traffic_direction: string;
  interface?: { index: number; name?: string };
};
type Rec = { flow?: Flow };

/**
 * The upstream `hubble` CLI over the agent's unix socket, for workloads on each kind of device: a veth
 * pair (flows carry the link's MACs in `ethernet`, as Cilium fills them) and, where the kernel has
 * netkit (the lab VM, test/lab/suite.sh), a netkit pair in L3 mode (no MACs, so no `ethernet`, as
 * Cilium shows L3 devices). Real traffic between the two, flows read back through the CLI.
 */
describe('hubble CLI: flows of veth and netkit workloads', { timeout: 600_000 }, () => {
  const cli = hubbleCliOrSkip();
  const fx = new AgentFixture({ tag: 'hbdev', ipv4Pool: '10.251.0.0/16', ipv6Pool: 'fd00:251::/64', namespaces: ['hbdev'] });
  const probers: Prober[] = [];
  let target: string;
  let vethWl: Workload;
  let netkitWl: Workload | undefined;
  let peerWl: Workload;
  let netkitSkip: string | false = false;

  const observe = async (args: string[]): Promise<Flow[]> => {
    if (!('path' in cli)) throw new Error('no CLI');
    const r = await hubbleRun(cli.path, ['observe', '--last', '4095', '-o', 'json', ...args, '--server', target], 120_000);
    assert.equal(r.code, 0, `hubble observe ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return r.stdout.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as Rec).flow).filter((f): f is Flow => !!f);
  };
  const restFlows = async (query: string): Promise<Flow[]> => {
    const lines: string[] = [];
    await fx.api.stream(`/v1/flows?${query}`, (l) => lines.push(l));
    return lines.map((l) => (JSON.parse(l) as Rec).flow).filter((f): f is Flow => !!f);
  };

  after(async () => {
    for (const p of probers) p.close();
    await fx.cleanup();
  });

  before(async () => {
    if (!('path' in cli)) return;
    // The CLI unpacks itself on first use (xz, ~50 MB): slow under the lab VM's emulation, so done here
    // and not inside a deadline below.
    const version = await hubbleRun(cli.path, ['version'], 240_000);
    assert.equal(version.code, 0, `hubble version: ${version.stderr}`);
    const hasNetkit = await kernelHasNetkit();
    if (!hasNetkit) netkitSkip = 'no netkit in this kernel (the veth path is covered here; the lab VM runs the netkit part)';
    const nsVeth = await fx.netns('veth');
    const nsPeer = await fx.netns('peer');
    const nsNetkit = hasNetkit ? await fx.netns('netkit') : undefined;
    await fx.start();
    target = `unix://${join(fx.dir, 'hubble.sock')}`;
    const register = (name: string, netns: string, mode: 'veth' | 'netkit') =>
      fx.api.call<Workload>('POST', '/v1/workloads', { name, namespace: 'hbdev', labels: { app: name }, netns: `/var/run/netns/${netns}`, mode });
    vethWl = await register('on-veth', nsVeth, 'veth');
    peerWl = await register('peer', nsPeer, 'veth');
    if (nsNetkit) netkitWl = await register('on-netkit', nsNetkit, 'netkit');
    assert.equal(vethWl.mode, 'veth');
    if (netkitWl) assert.equal(netkitWl.mode, 'netkit');
    // The peer serves; each workload connects to it (no policy: everything is allowed).
    const server = new Prober(nsPeer, [80]);
    probers.push(server);
    const clients = [new Prober(nsVeth, [7]), ...(nsNetkit ? [new Prober(nsNetkit, [7])] : [])];
    probers.push(...clients);
    await Promise.all([server.ready, ...clients.map((c) => c.ready)]);
    for (const c of clients) {
      assert.deepEqual(await c.probe([{ addr: peerWl.ipv4, port: 80, protocol: 'TCP' }], 2000), [true]);
      assert.deepEqual(await c.probe([{ addr: peerWl.ipv6, port: 80, protocol: 'TCP' }], 2000), [true]);
    }
  });

  test('veth: hubble observe -o json shows the link MACs in ethernet, each way, as GET /v1/flows does', { skip: cli.skip || false }, async () => {
    const wl = vethWl.interfaces.workload.mac!;
    const gw = vethWl.interfaces.host.mac!;
    assert.ok(wl && gw, 'the veth workload reports both MACs');
    const flows = await waitFor('flows from and to the veth workload', async () => {
      const fs = await observe(['--pod', 'hbdev/on-veth']);
      return fs.some((f) => f.traffic_direction === 'EGRESS') && fs.some((f) => f.traffic_direction === 'INGRESS') ? fs : undefined;
    }, 60_000);
    const unicast = flows.filter((x) => x.interface?.index === vethWl.interfaces.host.ifindex && x.IP && !x.IP.destination.startsWith('ff'));
    assert.ok(['EGRESS', 'INGRESS'].every((d) => unicast.some((f) => f.traffic_direction === d)), 'unicast flows both ways on the veth device');
    for (const f of unicast) {
      const want = f.traffic_direction === 'EGRESS' ? { source: wl, destination: gw } : { source: gw, destination: wl };
      assert.deepEqual(f.ethernet, want, `${f.traffic_direction} ${f.IP!.source} -> ${f.IP!.destination}`);
    }
    // The peer's own link has its own MACs: its ingress flow from on-veth is from its gateway to it.
    const atPeer = (await observe(['--to-pod', 'hbdev/peer', '--from-pod', 'hbdev/on-veth', '--port', '80'])).filter((f) => f.interface?.index === peerWl.interfaces.host.ifindex);
    assert.ok(atPeer.length > 0, 'flows at the peer device');
    for (const f of atPeer) assert.deepEqual(f.ethernet, { source: peerWl.interfaces.host.mac, destination: peerWl.interfaces.workload.mac });
    // the REST stream carries the same field for the same flows
    const byUuid = new Map((await restFlows('last=4095')).map((f) => [f.uuid, f]));
    for (const f of flows) if (byUuid.has(f.uuid)) assert.deepEqual(byUuid.get(f.uuid)!.ethernet, f.ethernet);
  });

  test('netkit: hubble observe shows the flows of a netkit workload (L3: no ethernet)', { skip: cli.skip || false }, async (t) => {
    if (netkitSkip || !netkitWl) {
      t.skip(netkitSkip || 'no netkit workload');
      return;
    }
    const wl = netkitWl;
    const flows = await waitFor('flows from the netkit workload to the peer, both families', async () => {
      const fs = await observe(['--from-pod', 'hbdev/on-netkit', '--to-pod', 'hbdev/peer', '--port', '80']);
      return fs.some((f) => f.IP?.source === wl.ipv4) && fs.some((f) => f.IP?.source === wl.ipv6) ? fs : undefined;
    }, 60_000);
    const egress = flows.filter((f) => f.interface?.index === wl.interfaces.host.ifindex);
    assert.ok(egress.length > 0, 'flows seen on the netkit device');
    for (const f of egress) {
      assert.equal(f.verdict, 'FORWARDED');
      assert.equal(f.source.pod_name, 'on-netkit');
      assert.equal(f.interface?.name, wl.interfaces.host.name);
      assert.equal(f.ethernet, undefined, 'an L3 device has no MACs');
    }
    // The compact view names it too.
    if (!('path' in cli)) return;
    const compact = await hubbleRun(cli.path, ['observe', '--last', '4095', '-o', 'compact', '--from-pod', 'hbdev/on-netkit', '--server', target], 120_000);
    assert.equal(compact.code, 0, compact.stderr);
    assert.match(compact.stdout, /hbdev\/on-netkit:\d+ \(ID:\d+\) -> hbdev\/peer:80 .*FORWARDED/);
  });
});
