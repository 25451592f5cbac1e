// The reconcile loop's "programs attached" check against links as the kernel reports them. A netkit
// link made with BPF_NETKIT_PEER on the primary's ifindex lives on the peer (drivers/net/netkit.c:
// netkit_dev_fetch swaps the primary for its peer), so its bpf_link_info carries the peer's ifindex,
// numbered in the peer's namespace. A check that wanted the host side's ifindex there re-attached every
// netkit workload on every resync (seen in the Vagrant lab: `actions: ["attach"]` each minute).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import { LINK_ROLES, linkIsCurrent, type AttachKind, type LinkRole } from '../../bpf/index.js';
import { BPF_LINK_TYPE_NETKIT, BPF_LINK_TYPE_TCX, BPF_NETKIT_PEER, BPF_NETKIT_PRIMARY, BPF_TCX_EGRESS, BPF_TCX_INGRESS } from '../../bpf/layout.gen.js';
import type { LinkInfo } from '../../common/native.js';
import type { Config } from '../../agent/config.js';
import type { KernelOps } from '../../agent/kernel-ops.js';
import type { PolicyEngine } from '../../agent/policy/engine.js';
import { Reconciler } from '../../agent/reconciler.js';
import { endpointInfoFor, reconcilePlan } from '../../agent/reconcile/plan.js';
import type { Store } from '../../agent/store/store.js';
import type { WorkloadRecord } from '../../agent/store/types.js';
import type { EndpointInfo } from '../../bpf/index.js';

const HOST_IFINDEX = 40;
/** The peer's ifindex in its own namespace (lo is 1 there). */
const PEER_IFINDEX = 2;
const progIds = { from_workload: 101, to_workload: 102, to_workload_netkit: 103 } as const;

const netns: WorkloadRecord = {
  spec: { name: 'web', namespace: 'shop', kind: 'netns', labels: { app: 'web' }, netns: '/var/run/netns/web', requestedMode: 'auto', interface: 'eth0' },
  mode: 'veth', endpointId: 7, identity: 300, ipv4: '10.200.0.7', ipv6: 'fd00:200::7', hostIfname: 'kn0123456789a',
  state: 'ready', observed: { hostIfindex: HOST_IFINDEX, hostMac: '02:00:00:00:00:40', peerIfindex: PEER_IFINDEX, peerMac: '02:00:00:00:00:02' }, error: null,
  createdAt: '', updatedAt: '',
};
const vm: WorkloadRecord = {
  ...netns,
  spec: { ...netns.spec, kind: 'vm', netns: '/var/run/netns/kitnet-vm-shop-web', interface: 'uplink0', vm: { netnsOwnedName: 'kitnet-vm-shop-web', tap: 'tap0', bridge: 'br0', mac: '2a:00:00:00:00:01' } },
  mode: 'netkit-l2',
};

/**
 * A kernel with one workload's pair (host side HOST_IFINDEX, peer PEER_IFINDEX in its namespace), in
 * place and correct, whose links behave as tcx and netkit links do: created on the host side's
 * ifindex, reported on the device the kernel put them on.
 */
/** The namespace ids the fake kernel reports: the workload's path, PID 1's and the agent's. */
const NS_WORKLOAD = { dev: 4, ino: 4026532300, cookie: '4096', boot: 'b0' };
const NS_INIT = { dev: 4, ino: 4026531840 };
const NS_AGENT = { dev: 4, ino: 4026531999 };

function fakeKernel(rec: WorkloadRecord, netnsAtPath: { dev: number; ino: number } | null = NS_WORKLOAD): {
  kernel: KernelOps; attaches: () => number; observedDevices: () => number; steps: string[]; links: Partial<Record<LinkRole, LinkInfo>>;
} {
  let observedDevices = 0;
  const links: Partial<Record<LinkRole, LinkInfo>> = {};
  /** What was done to the device and its programs, in order. */
  const steps: string[] = [];
  let closed = false;
  let nextLinkId = 1;
  let attaches = 0;
  const device = { hostIfindex: HOST_IFINDEX, hostMac: '02:00:00:00:00:40', peerIfindex: PEER_IFINDEX, peerMac: '02:00:00:00:00:02', problems: [] };
  let endpoint: EndpointInfo | undefined = endpointInfoFor(rec, device);
  const datapath = {
    linkInfo: () => ({ ...links }),
    progIds: () => progIds,
    endpointGet: (ifindex: number) => (ifindex === HOST_IFINDEX ? endpoint : undefined),
    endpointUpsert: (_ifindex: number, info: EndpointInfo) => { endpoint = info; },
    ipcacheUpsert: () => undefined,
    async attach(ep: { ifname: string; ifindex: number; kind: AttachKind }) {
      attaches++;
      steps.push(closed ? 'attach (closed)' : 'attach (open)');
      assert.equal(ep.ifindex, HOST_IFINDEX, 'links are made on the host side');
      for (const role of LINK_ROLES) {
        const netkit = ep.kind === 'netkit';
        links[role] = {
          id: nextLinkId++,
          type: netkit ? BPF_LINK_TYPE_NETKIT : BPF_LINK_TYPE_TCX,
          attachType: netkit ? (role === 'from_workload' ? BPF_NETKIT_PEER : BPF_NETKIT_PRIMARY) : (role === 'from_workload' ? BPF_TCX_INGRESS : BPF_TCX_EGRESS),
          progId: role === 'from_workload' ? progIds.from_workload : netkit ? progIds.to_workload_netkit : progIds.to_workload,
          ifindex: netkit && role === 'from_workload' ? PEER_IFINDEX : HOST_IFINDEX,
        };
      }
    },
  };
  const kernel = {
    datapath,
    netnsValidate: async () => undefined,
    netnsId: async () => netnsAtPath ?? undefined,
    netnsReserved: () => ({ agent: NS_AGENT, init: NS_INIT }),
    deviceObserve: async () => {
      observedDevices++;
      return { ...device, peerPolicy: closed ? 'drop' : 'forward', closed };
    },
    deviceClose: async () => {
      steps.push('close');
      closed = true;
    },
    deviceOpen: async () => {
      steps.push('open');
      closed = false;
    },
    vmPlumbingObserve: async () => ({ problems: [] }),
  } as unknown as KernelOps;
  return { kernel, attaches: () => attaches, observedDevices: () => observedDevices, steps, links };
}

const config = { stateDir: '/var/lib/kitnet-test-attached', datapath: {} } as unknown as Config;

describe('reconcile: programs attached', () => {
  for (const [what, rec] of [
    ['veth (tcx)', netns],
    ['netns on netkit', { ...netns, mode: 'netkit' }],
    ['vm on netkit L2', vm],
  ] as Array<[string, WorkloadRecord]>) {
    test(`${what}: attached once (the open device closed meanwhile), then nothing to do on every resync`, async () => {
      const { kernel, attaches, steps } = fakeKernel(rec);
      const r = new Reconciler({} as Store, config, kernel, pino({ level: 'silent' }), {} as PolicyEngine);
      const first = await r.workloadObserve(rec);
      assert.equal(first.attached, false);
      assert.equal(first.judged, false);
      const actions = reconcilePlan(rec, first);
      assert.deepEqual(actions.map((a) => a.op), ['deviceClose', 'attach', 'deviceOpen']);
      await r.actionsApply(rec, first, actions);
      assert.deepEqual(steps, ['close', 'attach (closed)', 'open']);
      for (let resync = 0; resync < 3; resync++) {
        const observed = await r.workloadObserve(rec);
        assert.equal(observed.attached, true, `resync ${resync}: the links just made count as attached`);
        assert.deepEqual(reconcilePlan(rec, observed), [], `resync ${resync}: no drift`);
      }
      assert.equal(attaches(), 1);
    });

    test(`${what}: an earlier release's programs on the device are swapped in place, the device stays open`, async () => {
      const { kernel, steps, links } = fakeKernel(rec);
      const r = new Reconciler({} as Store, config, kernel, pino({ level: 'silent' }), {} as PolicyEngine);
      await r.actionsApply(rec, await r.workloadObserve(rec), reconcilePlan(rec, await r.workloadObserve(rec)));
      steps.length = 0;
      for (const role of LINK_ROLES) links[role] = { ...links[role]!, progId: 90 }; // the programs an earlier agent loaded
      const observed = await r.workloadObserve(rec);
      assert.deepEqual([observed.attached, observed.judged], [false, true]);
      const actions = reconcilePlan(rec, observed);
      assert.deepEqual(actions.map((a) => a.op), ['attach']);
      await r.actionsApply(rec, observed, actions);
      assert.deepEqual(steps, ['attach (open)']);
    });
  }
});

describe('reconcile: the namespace a workload was registered into', () => {
  const bound: WorkloadRecord = { ...netns, spec: { ...netns.spec, netnsId: NS_WORKLOAD } };
  const observe = (rec: WorkloadRecord, atPath: { dev: number; ino: number } | null) => {
    const { kernel, observedDevices } = fakeKernel(rec, atPath);
    const r = new Reconciler({} as Store, config, kernel, pino({ level: 'silent' }), {} as PolicyEngine);
    return r.workloadObserve(rec).then((observed) => ({ observed, observedDevices: observedDevices() }));
  };

  test('the same namespace at its path: kept', async () => {
    const { observed } = await observe(bound, NS_WORKLOAD);
    assert.equal(observed.netns, true);
    assert.deepEqual(reconcilePlan(bound, observed).map((a) => a.op), ['deviceClose', 'attach', 'deviceOpen']);
  });

  for (const [what, atPath, why] of [
    ['another namespace at its path (a /proc/PID path after the PID was reused, a bind mount replaced)', { dev: 4, ino: 4026532999 }, /now names another namespace \(nsfs 4:4026532999\) than the one it was registered into \(4:4026532300\)/],
    ["the host's namespace at its path", NS_INIT, /now names the host's \(PID 1's\) network namespace/],
    ["the agent's own namespace at its path", NS_AGENT, /now names the agent's own network namespace/],
  ] as const) {
    test(`${what}: the workload goes, nothing is looked for or made there`, async () => {
      const { observed, observedDevices } = await observe(bound, atPath);
      assert.equal(observed.netns, false);
      assert.equal(observedDevices, 0, 'no device observed in that namespace');
      const actions = reconcilePlan(bound, observed);
      assert.equal(actions.length, 1);
      assert.equal(actions[0]!.op, 'workloadRemove');
      assert.match((actions[0] as { reason: string }).reason, why);
    });
  }

  test("a record from before the id was kept: only the host's and the agent's namespaces are refused", async () => {
    assert.equal((await observe(netns, { dev: 4, ino: 4026532999 })).observed.netns, true);
    const { observed } = await observe(netns, NS_INIT);
    assert.equal(observed.netns, false);
    assert.match((reconcilePlan(netns, observed)[0] as { reason: string }).reason, /host's/);
  });

  test('no namespace at the path: gone, as before', async () => {
    const { observed } = await observe(bound, null);
    assert.equal(observed.netns, false);
    assert.match((reconcilePlan(bound, observed)[0] as { reason: string }).reason, /its network namespace \/var\/run\/netns\/web is gone/);
  });
});

describe('linkIsCurrent', () => {
  const target = { ifindex: HOST_IFINDEX, peerIfindex: PEER_IFINDEX };
  const netkitPeer = { type: BPF_LINK_TYPE_NETKIT, attachType: BPF_NETKIT_PEER, ifindex: PEER_IFINDEX, progId: progIds.from_workload };
  const netkitPrimary = { type: BPF_LINK_TYPE_NETKIT, attachType: BPF_NETKIT_PRIMARY, ifindex: HOST_IFINDEX, progId: progIds.to_workload_netkit };
  const tcxIngress = { type: BPF_LINK_TYPE_TCX, attachType: BPF_TCX_INGRESS, ifindex: HOST_IFINDEX, progId: progIds.from_workload };
  const cases: Array<[string, Parameters<typeof linkIsCurrent>[0], AttachKind, LinkRole, Parameters<typeof linkIsCurrent>[3], boolean]> = [
    ['netkit peer link on the peer', netkitPeer, 'netkit', 'from_workload', target, true],
    ['netkit primary link on the host side', netkitPrimary, 'netkit', 'to_workload', target, true],
    ['tcx link on the host side', tcxIngress, 'tcx', 'from_workload', target, true],
    ['netkit peer link, peer unknown to the caller: a live device will do', netkitPeer, 'netkit', 'from_workload', { ifindex: HOST_IFINDEX }, true],
    ['netkit peer link on another peer', { ...netkitPeer, ifindex: 3 }, 'netkit', 'from_workload', target, false],
    ['netkit peer link whose device is gone', { ...netkitPeer, ifindex: 0 }, 'netkit', 'from_workload', { ifindex: HOST_IFINDEX }, false],
    ['netkit primary link reporting the peer', { ...netkitPrimary, ifindex: PEER_IFINDEX }, 'netkit', 'to_workload', target, false],
    ['tcx link on a device made again', { ...tcxIngress, ifindex: 39 }, 'tcx', 'from_workload', target, false],
    ['an earlier program', { ...netkitPeer, progId: 99 }, 'netkit', 'from_workload', target, false],
    ['a tcx link where netkit is wanted', tcxIngress, 'netkit', 'from_workload', target, false],
    ['the primary link where the peer link is wanted', netkitPrimary, 'netkit', 'from_workload', target, false],
  ];
  for (const [what, info, kind, role, t, want] of cases) {
    test(what, () => assert.equal(linkIsCurrent(info, kind, role, t, progIds), want));
  }
});
