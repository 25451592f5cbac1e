// The reconcile loop's pure parts: the plan (desired + observed -> actions) and the work queue.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { EP_F_DHCP_TO_HOST, EP_F_ENFORCE_SRC_IP, EP_F_ENFORCE_SRC_MAC } from '../../bpf/layout.gen.js';
import { endpointInfoFor, reconcilePlan, type ObservedDevice, type ObservedWorkload } from '../../agent/reconcile/plan.js';
import { WorkQueue, backoffDelay } from '../../agent/reconcile/queue.js';
import type { WorkloadRecord } from '../../agent/store/types.js';
import { workloadStateText } from '../../common/format.js';

const netns: WorkloadRecord = {
  spec: { name: 'web', namespace: 'shop', kind: 'netns', labels: { app: 'web' }, netns: '/var/run/netns/web', requestedMode: 'auto', interface: 'eth0' },
  mode: 'veth', endpointId: 7, identity: 300, ipv4: '10.200.0.7', ipv6: 'fd00:200::7', hostIfname: 'kn0123456789a',
  state: 'ready', observed: { hostIfindex: 40, hostMac: '02:00:00:00:00:40', peerIfindex: 2, peerMac: '02:00:00:00:00:02' }, error: null,
  createdAt: '', updatedAt: '',
};
const vm: WorkloadRecord = {
  ...netns,
  spec: { ...netns.spec, kind: 'vm', netns: '/var/run/netns/kitnet-vm-shop-web', interface: 'uplink0', vm: { netnsOwnedName: 'kitnet-vm-shop-web', tap: 'tap0', bridge: 'br0', mac: '2a:00:00:00:00:01' } },
  mode: 'netkit-l2',
};
const tap: WorkloadRecord = {
  ...netns,
  spec: { ...netns.spec, kind: 'tap', netns: '', interface: 'vnet3', tap: { device: 'vnet3', mac: '52:54:00:00:00:01' } },
  mode: 'tap', hostIfname: 'vnet3',
};

const device: ObservedDevice = { hostIfindex: 40, hostMac: '02:00:00:00:00:40', peerMac: '02:00:00:00:00:02', peerIfindex: 2, problems: [], closed: false };
/** The kernel exactly as `rec` wants it. */
function converged(rec: WorkloadRecord, over: Partial<ObservedWorkload> = {}): ObservedWorkload {
  const d = rec.spec.kind === 'tap' ? { ...device, peerMac: rec.spec.tap!.mac } : device;
  return {
    netns: true, device: d, endpoint: endpointInfoFor(rec, d), attached: true, judged: true,
    ...(rec.spec.kind === 'vm' ? { vmPlumbing: { problems: [] } } : {}),
    ...over,
  };
}
const ops = (rec: WorkloadRecord, observed: ObservedWorkload, opts?: { makeOwnedNetns?: boolean }) => reconcilePlan(rec, observed, opts).map((a) => a.op);

describe('reconcile plan: desired + observed -> actions', () => {
  const cases: Array<[string, WorkloadRecord, ObservedWorkload, string[], { makeOwnedNetns?: boolean }?]> = [
    ['converged netns workload: nothing to do', netns, converged(netns), []],
    ['converged vm: nothing to do', vm, converged(vm), []],
    ['converged tap: nothing to do', tap, converged(tap), []],
    ['pair missing: make it (closed), then maps, programs, then open it', netns, converged(netns, { device: undefined, endpoint: undefined, attached: false }), ['deviceRepair', 'endpointMapsWrite', 'attach', 'deviceOpen']],
    ['a route or address missing: repair (ifindex may change), then everything on it', netns, converged(netns, { device: { ...device, problems: ['route default via 169.254.1.1 missing in netns'] } }), ['deviceRepair', 'endpointMapsWrite', 'attach', 'deviceOpen']],
    ['endpoint entry missing: write it', netns, converged(netns, { endpoint: undefined }), ['endpointMapsWrite']],
    ['endpoint entry with an old identity: write it', netns, converged(netns, { endpoint: { ...endpointInfoFor(netns, device), identity: 299 } }), ['endpointMapsWrite']],
    ['endpoint entry without the host MAC an older release left out: write it', netns, converged(netns, { endpoint: { ...endpointInfoFor(netns, device), hostMac: undefined } }), ['endpointMapsWrite']],
    ['device re-made earlier with another ifindex: the entry follows', { ...netns, observed: { ...netns.observed!, hostIfindex: 39 } }, converged(netns), ['endpointMapsWrite']],
    // an upgraded agent's first look: the earlier programs judge until the new ones are swapped in, atomically
    ['programs stale (an earlier release\'s, still on the device): attach, the device stays open', netns, converged(netns, { attached: false }), ['attach']],
    // detached or their pins removed behind the agent: traffic passes unjudged until it is closed
    ['veth open without its programs: close it, attach, open it again', netns, converged(netns, { attached: false, judged: false }), ['deviceClose', 'attach', 'deviceOpen']],
    ['netkit open without its programs: close it, attach, open it again', { ...netns, mode: 'netkit' }, converged({ ...netns, mode: 'netkit' }, { attached: false, judged: false }), ['deviceClose', 'attach', 'deviceOpen']],
    ['vm open without its programs: close it, attach, open it again', vm, converged(vm, { attached: false, judged: false }), ['deviceClose', 'attach', 'deviceOpen']],
    ['tap open without its programs: its routes go, attach, they come back', tap, converged(tap, { attached: false, judged: false }), ['deviceClose', 'attach', 'deviceOpen']],
    ['open without its programs and a route missing: closed before the repair (which may fail), then everything on it', netns, converged(netns, { device: { ...device, problems: ['host route 10.200.0.7/32 dev kn0123456789a missing'] }, endpoint: undefined, attached: false, judged: false }), ['deviceClose', 'deviceRepair', 'endpointMapsWrite', 'attach', 'deviceOpen']],
    ['closed and without its programs: nothing to close', netns, converged(netns, { device: { ...device, closed: true }, attached: false, judged: false }), ['attach', 'deviceOpen']],
    // the map reads an all-zero MAC back as '', and a netkit L3 peer's MAC is all zeros (it has none)
    ['netkit L3 peer without a MAC: the entry as the map gives it back is no drift', { ...netns, mode: 'netkit' }, converged({ ...netns, mode: 'netkit' }, { device: { ...device, peerMac: '00:00:00:00:00:00' }, endpoint: { ...endpointInfoFor({ ...netns, mode: 'netkit' }, device), mac: '' } }), []],
    ['endpoint entry with no MAC where the workload has one: write it', netns, converged(netns, { endpoint: { ...endpointInfoFor(netns, device), mac: '' } }), ['endpointMapsWrite']],
    ['netkit peer still blackholed: open it', { ...netns, mode: 'netkit' }, converged({ ...netns, mode: 'netkit' }, { device: { ...device, closed: true } }), ['deviceOpen']],
    // the agent stopped between making the pair and opening it: nothing of it may be skipped
    ['veth made closed, never opened (entry and programs missing): maps, programs, then open', netns, converged(netns, { device: { ...device, closed: true }, endpoint: undefined, attached: false, judged: false }), ['endpointMapsWrite', 'attach', 'deviceOpen']],
    ['veth made closed, programs attached, not opened: open it', netns, converged(netns, { device: { ...device, closed: true } }), ['deviceOpen']],
    ['veth closed and its programs stale: attach before it opens', netns, converged(netns, { device: { ...device, closed: true }, attached: false }), ['attach', 'deviceOpen']],
    ['namespace gone: remove the workload', netns, converged(netns, { netns: false, device: undefined }), ['workloadRemove']],
    ['vm namespace kitnet made gone while running: remove', vm, converged(vm, { netns: false, device: undefined, vmPlumbing: undefined }), ['workloadRemove']],
    ['vm namespace kitnet made gone at restore (reboot): make it all again', vm, converged(vm, { netns: false, device: undefined, vmPlumbing: undefined, endpoint: undefined }), ['vmNetnsEnsure', 'deviceRepair', 'vmPlumbingCreate', 'endpointMapsWrite', 'attach', 'deviceOpen'], { makeOwnedNetns: true }],
    ['adopted vm namespace gone at restore: remove', { ...vm, spec: { ...vm.spec, vm: { ...vm.spec.vm!, netnsOwnedName: undefined } } }, converged(vm, { netns: false, device: undefined }), ['workloadRemove'], { makeOwnedNetns: true }],
    ['vm: tap out of the bridge: plumbing only', vm, converged(vm, { vmPlumbing: { problems: ['tap0 is not enslaved to br0'] } }), ['vmPlumbingCreate']],
    ['vm: pair re-made: the plumbing follows', vm, converged(vm, { device: undefined }), ['deviceRepair', 'vmPlumbingCreate', 'endpointMapsWrite', 'attach', 'deviceOpen']],
    ['tap gone: remove the workload (the VM stopped)', tap, converged(tap, { device: undefined }), ['workloadRemove']],
    ['tap routes missing: add them again; the device stays', tap, converged(tap, { device: { ...device, peerMac: tap.spec.tap!.mac, closed: true } }), ['deviceOpen']],
    ['tap just adopted: its routes only after its entry and programs', tap, converged(tap, { device: { ...device, peerMac: tap.spec.tap!.mac, closed: true }, endpoint: undefined, attached: false, judged: false }), ['endpointMapsWrite', 'attach', 'deviceOpen']],
    ['tap replaced by another kind of device: adopting it again refuses it, before anything is attached', tap, converged(tap, { device: { ...device, peerMac: tap.spec.tap!.mac, problems: ['vnet3 is a veth device, not a tap'], closed: true }, attached: false }), ['tapAdopt', 'attach', 'deviceOpen']],
  ];
  for (const [name, rec, observed, want, opts] of cases) {
    test(name, () => assert.deepEqual(ops(rec, observed, opts), want));
  }

  test('each action says why', () => {
    const actions = reconcilePlan(netns, converged(netns, { device: { ...device, problems: ['host link kn0123456789a is down'] }, endpoint: undefined }));
    assert.deepEqual(actions[0], { op: 'deviceRepair', reason: 'host link kn0123456789a is down' });
    assert.deepEqual(reconcilePlan(netns, converged(netns, { netns: false }))[0], { op: 'workloadRemove', reason: 'its network namespace /var/run/netns/web is gone' });
  });

  test('the endpoint entry: guest MAC for vm and tap, peer MAC otherwise; host MAC except on netkit L3', () => {
    assert.equal(endpointInfoFor(vm, device).mac, '2a:00:00:00:00:01');
    assert.equal(endpointInfoFor(netns, device).mac, device.peerMac);
    assert.equal(endpointInfoFor(netns, device).hostMac, device.hostMac);
    assert.equal(endpointInfoFor({ ...netns, mode: 'netkit' }, device).hostMac, undefined);
  });

  test('a netkit VM pair served by DHCP hands its DHCP broadcasts to the host side; static ones and veth do not', () => {
    assert.equal(endpointInfoFor(vm, device).flags, EP_F_ENFORCE_SRC_IP | EP_F_ENFORCE_SRC_MAC | EP_F_DHCP_TO_HOST);
    assert.equal(endpointInfoFor({ ...vm, spec: { ...vm.spec, addressing: 'static' } }, device).flags, EP_F_ENFORCE_SRC_IP | EP_F_ENFORCE_SRC_MAC);
    assert.equal(endpointInfoFor({ ...vm, mode: 'veth' }, device).flags, EP_F_ENFORCE_SRC_IP | EP_F_ENFORCE_SRC_MAC);
    assert.equal(endpointInfoFor({ ...netns, mode: 'netkit' }, device).flags, EP_F_ENFORCE_SRC_IP);
  });
});

describe('work queue', () => {
  test('a key waits once, is never handed out twice at once, and comes back if added while processed', async () => {
    const q = new WorkQueue({ baseMs: 1000, maxMs: 60_000 });
    q.add('a');
    q.add('b');
    q.add('a');
    assert.equal(q.depth, 2);
    assert.equal(await q.get(), 'a');
    q.add('a'); // while processing: not handed out again now
    assert.equal(await q.get(), 'b');
    assert.equal(q.depth, 0);
    q.done('b');
    q.done('a');
    assert.equal(q.depth, 1, 'a was added while processed: it waits again');
    assert.equal(await q.get(), 'a');
    q.done('a');
    q.close();
    assert.equal(await q.get(), undefined);
  });

  test('failures back off exponentially up to the cap; forget starts afresh; drop takes a key out', () => {
    const b = { baseMs: 1000, maxMs: 60_000 };
    assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 8, 40].map((n) => backoffDelay(n, b)), [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000]);
    const q = new WorkQueue(b);
    const now = Date.now();
    assert.equal(q.addRateLimited('k'), 1000);
    assert.equal(q.addRateLimited('k'), 2000);
    assert.equal(q.failuresOf('k'), 2);
    assert.ok(q.dueAt('k')! >= now + 1000, 'the earlier due time stays');
    assert.equal(q.depth, 0, 'a delayed key does not wait yet');
    q.add('k');
    assert.equal(q.depth, 1, 'an event does not wait for the backoff');
    assert.equal(q.dueAt('k'), undefined);
    q.drop('k');
    assert.equal(q.depth, 0);
    q.forget('k');
    assert.equal(q.addRateLimited('k'), 1000);
    q.close();
  });

  test('the STATE cell shows retries and when the next one is due', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    assert.equal(workloadStateText({ state: 'ready', retries: 0, nextRetryAt: null }, now), 'ready');
    assert.equal(workloadStateText({ state: 'error', retries: 2, nextRetryAt: '2026-01-01T00:00:04Z' }, now), 'error (2 retries, next in 4s)');
    assert.equal(workloadStateText({ state: 'error', retries: 1, nextRetryAt: null }, now), 'error (1 retry)');
  });
});
