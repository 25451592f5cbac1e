// The order in which a workload's kernel objects go. Detaching its programs first left its device, up
// and routed, passing everything unjudged until the device was deleted a few steps later. Without its
// endpoint entry an attached program drops everything (bpf-testrun.test.ts), so the entry goes first,
// then the device (or, for an adopted tap, the routes to its guest), and the programs last.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import type { Config } from '../../agent/config.js';
import type { KernelOps } from '../../agent/kernel-ops.js';
import type { PolicyEngine } from '../../agent/policy/engine.js';
import { Reconciler } from '../../agent/reconciler.js';
import type { Store } from '../../agent/store/store.js';
import type { WorkloadRecord } from '../../agent/store/types.js';

const HOST_IFINDEX = 40;
const netns: WorkloadRecord = {
  spec: { name: 'web', namespace: 'shop', kind: 'netns', labels: { app: 'web' }, netns: '/var/run/netns/web', requestedMode: 'auto', interface: 'eth0' },
  mode: 'veth', endpointId: 7, identity: 300, ipv4: '10.200.0.7', ipv6: 'fd00:200::7', hostIfname: 'kn0123456789a',
  state: 'ready', observed: { hostIfindex: HOST_IFINDEX, hostMac: '02:00:00:00:00:40', peerIfindex: 2, peerMac: '02:00:00:00:00:02' }, error: null,
  createdAt: '', updatedAt: '',
};
const vm: WorkloadRecord = {
  ...netns,
  spec: { ...netns.spec, kind: 'vm', netns: '/var/run/netns/kitnet-vm-shop-web', interface: 'uplink0', vm: { netnsOwnedName: 'kitnet-vm-shop-web', tap: 'tap0', bridge: 'br0', mac: '2a:00:00:00:00:01' } },
};
const tap: WorkloadRecord = {
  ...netns,
  spec: { ...netns.spec, kind: 'tap', netns: '', interface: 'vnet3', tap: { device: 'vnet3', mac: '52:54:00:00:00:01' } },
  mode: 'tap', hostIfname: 'vnet3',
};

/**
 * The workload's device as traffic sees it after each teardown step: a step after which it carries
 * traffic (a pair that exists, a tap the host routes to) without programs is a window in which its
 * packets pass unjudged.
 */
function fakeKernel(rec: WorkloadRecord): { kernel: KernelOps; windows: string[]; state: () => Record<string, boolean> } {
  const s = { device: true, routed: true, attached: true, entry: true, ipcache: true };
  const windows: string[] = [];
  const step = (what: string) => {
    const carries = rec.spec.kind === 'tap' ? s.routed : s.device;
    if (carries && !s.attached) windows.push(`after ${what}: the device passes traffic without programs`);
  };
  const datapath = {
    endpointList: () => (s.entry ? [[HOST_IFINDEX, { endpointId: rec.endpointId }]] : []),
    endpointDelete: (ifindex: number) => {
      if (ifindex === HOST_IFINDEX) s.entry = false;
      step('endpointDelete');
    },
    detach: async () => {
      s.attached = false;
      step('detach');
    },
    ipcacheDelete: () => {
      s.ipcache = false;
      step('ipcacheDelete');
    },
  };
  const kernel = {
    datapath,
    deviceDelete: async () => {
      s.device = false;
      s.routed = false;
      step('deviceDelete');
      return true;
    },
    tapRelease: async () => {
      s.routed = false;
      step('tapRelease');
    },
    vmPlumbingDelete: async () => step('vmPlumbingDelete'),
  } as unknown as KernelOps;
  return { kernel, windows, state: () => ({ ...s }) };
}

const config = { stateDir: '/var/lib/kitnet-test-teardown', datapath: {} } as unknown as Config;

describe('workload teardown', () => {
  for (const [what, rec] of [['veth netns', netns], ['vm', vm], ['adopted tap', tap]] as Array<[string, WorkloadRecord]>) {
    test(`${what}: no step leaves the device passing traffic without programs; everything goes`, async () => {
      const { kernel, windows, state } = fakeKernel(rec);
      await new Reconciler({} as Store, config, kernel, pino({ level: 'silent' }), {} as PolicyEngine).workloadTeardown(rec);
      assert.deepEqual(windows, []);
      const end = state();
      assert.deepEqual({ entry: end.entry, attached: end.attached, routed: end.routed, ipcache: end.ipcache }, { entry: false, attached: false, routed: false, ipcache: false });
      assert.equal(end.device, rec.spec.kind === 'tap', "an adopted tap stays (it is the hypervisor's), a pair goes");
    });
  }
});
