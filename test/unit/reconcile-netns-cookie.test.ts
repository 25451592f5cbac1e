// A workload is bound to the namespace it was registered into by the namespace's cookie, not its nsfs
// inode: the kernel gives a freed namespace's inode number to the next namespace made, so a path (a
// reused /proc/PID) can name a namespace of the same device and inode that is not the workload's.
// Records of releases before the cookie are bound to it only when their device pair proves the
// namespace. The kernel side is in test/root/netns-cookie.test.ts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import type { Config } from '../../agent/config.js';
import type { KernelOps } from '../../agent/kernel-ops.js';
import type { PolicyEngine } from '../../agent/policy/engine.js';
import { Reconciler } from '../../agent/reconciler.js';
import { reconcilePlan } from '../../agent/reconcile/plan.js';
import type { Store, StoreTx } from '../../agent/store/store.js';
import type { WorkloadRecord, WorkloadSpec } from '../../agent/store/types.js';
import { netnsBindingCheck, type NetnsId } from '../../netkit/index.js';

const REGISTERED: NetnsId = { dev: 4, ino: 4026532300, cookie: '4096', boot: 'boot-a' };
/** Made after the registered one died, given its inode number. */
const TWIN: NetnsId = { dev: 4, ino: 4026532300, cookie: '5120', boot: 'boot-a' };

const rec = (netnsId: NetnsId): WorkloadRecord => ({
  spec: { name: 'web', namespace: 'shop', kind: 'netns', labels: { app: 'web' }, netns: '/proc/4242/ns/net', netnsId, requestedMode: 'auto', interface: 'eth0' },
  mode: 'veth', endpointId: 7, identity: 300, ipv4: '10.200.0.7', ipv6: 'fd00:200::7', hostIfname: 'kn0123456789a',
  state: 'ready', observed: { hostIfindex: 40, hostMac: '02:00:00:00:00:40', peerIfindex: 2, peerMac: '02:00:00:00:00:02' }, error: null,
  createdAt: '', updatedAt: '',
});

const PAIR = { hostIfindex: 40, hostMac: '02:00:00:00:00:40', peerIfindex: 2, peerMac: '02:00:00:00:00:02', problems: [] as string[] };

/** A reconciler over a fake kernel (the path names `atPath`, the pair is `pair`) and a one-record store. */
function setup(stored: WorkloadRecord, atPath: NetnsId | undefined, pair: typeof PAIR | null = PAIR) {
  let current = stored;
  const updates: WorkloadSpec[] = [];
  const tx = {
    workloadGet: () => current,
    workloadUpdate: (_ns: string, _name: string, spec: WorkloadSpec) => {
      updates.push(spec);
      current = { ...current, spec };
    },
  } as unknown as StoreTx;
  const store = { transaction: async <T>(fn: (t: StoreTx) => T) => fn(tx) } as unknown as Store;
  const kernel = {
    datapath: { linkInfo: () => ({}), progIds: () => ({}), endpointGet: () => undefined },
    netnsId: async () => atPath,
    netnsReserved: () => ({ agent: { dev: 4, ino: 4026531999 }, init: { dev: 4, ino: 4026531840 } }),
    deviceObserve: async () => pair ? { ...pair, peerPolicy: 'forward' } : undefined,
    vmPlumbingObserve: async () => ({ problems: [] }),
  } as unknown as KernelOps;
  const config = { stateDir: '/var/lib/kitnet-test-cookie', datapath: {} } as unknown as Config;
  const r = new Reconciler(store, config, kernel, pino({ level: 'silent' }), {} as PolicyEngine);
  return { r, updates, stored: () => current };
}

const removal = (r: WorkloadRecord, observed: Awaited<ReturnType<Reconciler['workloadObserve']>>): string => {
  const actions = reconcilePlan(r, observed);
  assert.deepEqual(actions.map((a) => a.op), ['workloadRemove']);
  return (actions[0] as { reason: string }).reason;
};

describe('netnsBindingCheck', () => {
  const path = '/proc/4242/ns/net';
  test('the same namespace: nothing to say', () => {
    assert.equal(netnsBindingCheck(path, REGISTERED, { ...REGISTERED }), undefined);
  });
  test('another inode: replaced', () => {
    const c = netnsBindingCheck(path, REGISTERED, { ...REGISTERED, ino: 4026532301 });
    assert.match(c && 'replaced' in c ? c.replaced : '', /now names another namespace \(nsfs 4:4026532301\)/);
  });
  test('the same inode, another cookie: replaced (the inode was reused)', () => {
    const c = netnsBindingCheck(path, REGISTERED, TWIN);
    assert.match(c && 'replaced' in c ? c.replaced : '', /\(cookie 5120\) than the one it was registered into \(cookie 4096\).*same nsfs inode 4:4026532300/);
  });
  test('the same inode and cookie of another boot: replaced (cookies start again at boot)', () => {
    const c = netnsBindingCheck(path, REGISTERED, { ...REGISTERED, boot: 'boot-b' });
    assert.match(c && 'replaced' in c ? c.replaced : '', /rebooted/);
  });
  test('no cookie readable now: unknown, neither kept nor replaced', () => {
    const c = netnsBindingCheck(path, REGISTERED, { dev: REGISTERED.dev, ino: REGISTERED.ino });
    assert.ok(c && 'unknown' in c, JSON.stringify(c));
  });
  test("a stored id without a cookie (an older release's): device and inode only", () => {
    assert.equal(netnsBindingCheck(path, { dev: 4, ino: 4026532300 }, TWIN), undefined);
  });
});

describe('reconcile: a workload bound by its namespace cookie', () => {
  test('its own namespace at the path: kept, nothing written', async () => {
    const { r, updates } = setup(rec(REGISTERED), { ...REGISTERED });
    const observed = await r.workloadObserve(rec(REGISTERED));
    assert.equal(observed.netns, true);
    assert.deepEqual(updates, []);
  });

  test('a namespace given its freed inode at the path (a reused PID): removed, no device looked for there', async () => {
    const { r } = setup(rec(REGISTERED), TWIN);
    const observed = await r.workloadObserve(rec(REGISTERED));
    assert.equal(observed.device, undefined);
    assert.match(removal(rec(REGISTERED), observed), /same nsfs inode/);
  });

  test('after a reboot: removed', async () => {
    const { r } = setup(rec(REGISTERED), { ...REGISTERED, boot: 'boot-b' });
    assert.match(removal(rec(REGISTERED), await r.workloadObserve(rec(REGISTERED))), /rebooted/);
  });

  test('the cookie unreadable now: the observation fails (tried again), the workload is not removed', async () => {
    const { r } = setup(rec(REGISTERED), { dev: REGISTERED.dev, ino: REGISTERED.ino });
    await assert.rejects(r.workloadObserve(rec(REGISTERED)), /cannot read the cookie/);
  });
});

describe('reconcile: a record of a release before the cookie', () => {
  const legacy = rec({ dev: REGISTERED.dev, ino: REGISTERED.ino });

  test('its device pair in the namespace at the path: kept, and the cookie stored', async () => {
    const { r, updates, stored } = setup(legacy, { ...REGISTERED });
    assert.equal((await r.workloadObserve(legacy)).netns, true);
    assert.equal(updates.length, 1);
    assert.deepEqual(stored().spec.netnsId, REGISTERED);
    assert.deepEqual(stored().spec.labels, legacy.spec.labels);
  });

  test('a relabel since the observation began is kept', async () => {
    const { r, stored } = setup({ ...legacy, spec: { ...legacy.spec, labels: { app: 'shop' } } }, { ...REGISTERED });
    await r.workloadObserve(legacy);
    assert.deepEqual(stored().spec.labels, { app: 'shop' });
    assert.equal(stored().spec.netnsId?.cookie, REGISTERED.cookie);
  });

  test('its device pair gone (the namespace may be a newer one of the same inode): removed, nothing stored', async () => {
    const { r, updates } = setup(legacy, TWIN, null);
    const observed = await r.workloadObserve(legacy);
    assert.match(removal(legacy, observed), /kept no namespace cookie and its device pair is gone/);
    assert.deepEqual(updates, []);
  });

  test('a device of that name there that is not its peer: removed', async () => {
    const { r, updates } = setup(legacy, TWIN, { ...PAIR, problems: ['eth0 in /proc/4242/ns/net is not the peer of kn0123456789a'] });
    assert.match(removal(legacy, await r.workloadObserve(legacy)), /device pair is gone/);
    assert.deepEqual(updates, []);
  });

  test('no peer in the namespace at the path: removed', async () => {
    const { r } = setup(legacy, TWIN, { ...PAIR, peerIfindex: 0 });
    assert.match(removal(legacy, await r.workloadObserve(legacy)), /device pair is gone/);
  });
});
