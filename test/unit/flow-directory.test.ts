// The flow directory follows single workload changes in place (register, relabel, remove); after
// any sequence of them it must answer exactly as one rebuilt from the store, by address string and by
// IPv4 number alike.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EndpointDirectory, ipv4Number } from '../../agent/flows/directory.js';
import { IdentityAllocator } from '../../agent/identity/allocator.js';
import { sqliteStoreOpen } from '../../agent/store/index.js';
import type { WorkloadRecord } from '../../agent/store/types.js';

test('incremental directory updates answer as a rebuild from the store', async () => {
  let seed = 11;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 4) % n;
  const store = sqliteStoreOpen(':memory:');
  const ids = new IdentityAllocator();
  const dir = new EndpointDirectory(store);
  const labelsOf = () => ({ app: ['a', 'b', 'c', 'd', 'e'][rnd(5)]!, ...(rnd(2) ? { tier: 'x' } : {}) });
  const set = (w: WorkloadRecord) => dir.workloadSet(w, store.identityLabels(w.identity)!);
  let n = 0;
  for (let step = 0; step < 300; step++) {
    const all = store.workloadList();
    const op = all.length === 0 ? 0 : rnd(3);
    if (op === 0) {
      const i = ++n;
      const labels = labelsOf();
      const w = await store.transaction((tx) =>
        tx.workloadInsert({
          spec: { name: `w${i}`, namespace: 'ns', kind: rnd(2) ? 'netns' : 'vm', labels, netns: '/x', requestedMode: 'auto', interface: 'eth0' },
          mode: 'veth', endpointId: i, identity: ids.acquire(tx, labels, 'ns'), ipv4: `10.0.${i >> 8}.${i & 255}`, ipv6: `fd00::${i}`, hostIfname: `kn${i}`,
        }),
      );
      set(w);
    } else if (op === 1) {
      const w = all[rnd(all.length)]!;
      const labels = labelsOf();
      const updated = await store.transaction((tx) => {
        tx.workloadUpdate(w.spec.namespace, w.spec.name, { ...w.spec, labels }, ids.acquire(tx, labels, 'ns'));
        tx.identitiesReleaseUnused();
        return tx.workloadGet(w.spec.namespace, w.spec.name)!;
      });
      set(updated);
    } else {
      const w = all[rnd(all.length)]!;
      await store.transaction((tx) => {
        tx.workloadDelete(w.spec.namespace, w.spec.name);
        tx.identitiesReleaseUnused();
      });
      dir.workloadRemove(w);
    }
    const fresh = new EndpointDirectory(store);
    for (let i = 1; i <= n; i++) assert.deepEqual(dir.endpointById(i), fresh.endpointById(i), `step ${step}: endpoint ${i}`);
    for (const w of store.workloadList()) {
      for (const addr of [w.ipv4, w.ipv6]) assert.deepEqual(dir.endpointForPeer(addr, 0), fresh.endpointForPeer(addr, 0), `step ${step}: ${addr}`);
    }
    // by number (the flow hot path), also for the addresses of removed workloads
    for (let i = 1; i <= n; i++) {
      const addr = `10.0.${i >> 8}.${i & 255}`;
      assert.equal(dir.endpointForPeerIpv4(ipv4Number(addr), 7), dir.endpointForPeer(addr, 7), `step ${step}: ${addr} by number`);
    }
    for (const id of [2, ...Array.from({ length: 120 }, (_, k) => 256 + k)]) {
      assert.deepEqual(dir.endpointForPeer('192.0.2.1', id), fresh.endpointForPeer('192.0.2.1', id), `step ${step}: remote identity ${id}`);
    }
    assert.deepEqual(dir.endpointForPeer('fd00::9999', 2), { identity: 2, labels: ['reserved:world'] });
  }
});

test('link MACs by the host-side ifindex: veth, netkit L2, vm and tap have them, netkit L3 none; a new device is found', async () => {
  const store = sqliteStoreOpen(':memory:');
  const ids = new IdentityAllocator();
  const add = async (i: number, mode: WorkloadRecord['mode'], kind: WorkloadRecord['spec']['kind'], extra: Partial<WorkloadRecord['spec']> = {}) => {
    const spec = { name: `w${i}`, namespace: 'ns', kind, labels: { app: 'a' }, netns: '/x', requestedMode: 'auto' as const, interface: 'eth0', ...extra };
    await store.transaction((tx) => tx.workloadInsert({ spec, mode, endpointId: i, identity: ids.acquire(tx, { app: 'a' }, 'ns'), ipv4: `10.0.0.${i}`, ipv6: `fd00::${i}`, hostIfname: `kn${i}` }));
    store.workloadStatusSet('ns', `w${i}`, { state: 'ready', error: null, observed: { hostIfindex: 100 + i, hostMac: `02:00:00:00:01:0${i}`, peerIfindex: 200 + i, peerMac: mode === 'netkit' ? '' : `02:00:00:00:02:0${i}` } });
  };
  await add(1, 'veth', 'netns');
  await add(2, 'netkit', 'netns');
  await add(3, 'netkit-l2', 'vm', { vm: { tap: 'tap0', bridge: 'br0', mac: '52:54:00:AB:CD:EF' } });
  await add(4, 'tap', 'tap', { tap: { device: 'tap4', mac: '52:54:00:00:00:04' } });
  const dir = new EndpointDirectory(store);
  assert.deepEqual(dir.l2Of(101)?.egress, { source: '02:00:00:00:02:01', destination: '02:00:00:00:01:01' });
  assert.deepEqual(dir.l2Of(101)?.ingress, { source: '02:00:00:00:01:01', destination: '02:00:00:00:02:01' });
  assert.equal(dir.l2Of(102), undefined, 'netkit in L3 mode: no MACs');
  assert.equal(dir.l2Of(103)?.workload, '52:54:00:ab:cd:ef', "vm: the guest NIC's MAC, not the bridged peer's");
  assert.equal(dir.l2Of(104)?.workload, '52:54:00:00:00:04');
  assert.equal(dir.l2Of(104)?.gateway, '02:00:00:00:01:04');
  // the reconciler re-creates w1's device: a new ifindex and MACs, found without a directory rebuild
  store.workloadStatusSet('ns', 'w1', { state: 'ready', error: null, observed: { hostIfindex: 301, hostMac: '02:00:00:00:03:01', peerIfindex: 302, peerMac: '02:00:00:00:03:02' } });
  const deadline = Date.now() + 10_000;
  while (!dir.l2Of(301) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(dir.l2Of(301)?.egress, { source: '02:00:00:00:03:02', destination: '02:00:00:00:03:01' });
  const w4 = store.workloadGet('ns', 'w4')!;
  await store.transaction((tx) => tx.workloadDelete('ns', 'w4'));
  dir.workloadRemove(w4);
  assert.equal(dir.l2Of(104), undefined);
});
