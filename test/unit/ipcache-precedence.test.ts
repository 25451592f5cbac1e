import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import type { IpcacheEntry } from '../../bpf/index.js';
import { IpcacheOwners, RemoteIpcache, remoteHostId } from '../../agent/cluster/remote-ipcache.js';
import type { KernelOps } from '../../agent/kernel-ops.js';
import { HOST_RANGES } from '../../agent/policy/host-destinations.js';
import type { CompiledPolicy } from '../../agent/policy/index.js';
import { ipcacheLocalView, ipcacheSyncSteps } from '../../agent/policy/ipcache-sync.js';
import { stepsRun } from '../../agent/policy/slices.js';
import type { Store } from '../../agent/store/store.js';

/**
 * The two writers of one BPF ipcache: this host's sync (workloads, host destinations, policy CIDRs)
 * and the writer of other nodes' workload entries, wired as the agent wires them (the remote writer
 * asks the same local view the sync writes by). Every write is logged by writer, so a flap (one
 * writing over the other in turn) shows.
 */
function bench() {
  const ipcache = new Map<string, IpcacheEntry>();
  const writes: Array<{ by: 'sync' | 'remote'; cidr: string; entry?: IpcacheEntry }> = [];
  let by: 'sync' | 'remote' = 'remote';
  const datapath = {
    ipcacheList: () => [...ipcache],
    ipcacheUpsert: (cidr: string, entry: IpcacheEntry) => {
      writes.push({ by, cidr, entry });
      ipcache.set(cidr, entry);
    },
    ipcacheDelete: (cidr: string) => {
      writes.push({ by, cidr });
      ipcache.delete(cidr);
    },
    mapCapacity: () => ({ ipcache: 1000 }),
  };
  const kernel = { datapath } as unknown as KernelOps;
  const state = {
    workloads: [] as Array<{ ipv4: string; ipv6: string; identity: number }>,
    hosts: [...HOST_RANGES, '192.0.2.1/32'],
    cidrs: [] as Array<{ cidr: string; identity: number }>,
  };
  const store = { workloadList: () => state.workloads } as unknown as Store;
  const compiled = () => ({ ipcache: state.cidrs, ipBlocks: [] }) as unknown as CompiledPolicy;
  const sync = () => {
    by = 'sync';
    try {
      stepsRun(ipcacheSyncSteps(kernel, store, compiled(), [], state.hosts));
    } finally {
      by = 'remote';
    }
  };
  const remote = new RemoteIpcache(
    {
      exclusive: (fn) => fn(),
      local: () => ipcacheLocalView(store, compiled(), () => [], state.hosts),
      ipcacheUpsert: (cidr, e) => datapath.ipcacheUpsert(cidr, e),
      ipcacheDelete: (cidr) => datapath.ipcacheDelete(cidr),
      ipcacheRemoteList: () => [],
      identityLabels: async (id) => [`k8s:app=a${id}`],
      remoteIdentitiesUpdate: async () => undefined,
      owners: { table: new IpcacheOwners(), rank: 0, name: 'this cluster' },
    },
    pino({ level: 'silent' }),
  );
  return { ipcache, writes, state, sync, remote };
}

const NODE_B = '192.0.2.20';
const entry = (ip: string, identity: number) => ({ ip, identity, hostIP: NODE_B, namespace: 'shop', podName: 'p' });
const remoteAt = (identity: number) => ({ identity, hostId: remoteHostId(NODE_B) });

describe('ipcache precedence: this host\'s sync and other nodes\' entries agree on every key', () => {
  test('a policy CIDR /32 never replaces another node\'s workload, and comes back when it goes', async () => {
    const { ipcache, writes, state, sync, remote } = bench();
    const cidr = '10.88.1.5/32';
    state.cidrs = [{ cidr, identity: 16777300 }, { cidr: '10.88.0.0/16', identity: 16777301 }];
    sync();
    assert.deepEqual(ipcache.get(cidr), { identity: 16777300, hostId: 0 }, 'no remote entry yet: the policy\'s');
    await remote.apply([entry('10.88.1.5', 196700)], []);
    assert.deepEqual(ipcache.get(cidr), remoteAt(196700), 'the workload\'s identity wins over the CIDR\'s');
    writes.length = 0;
    sync();
    assert.deepEqual(ipcache.get(cidr), remoteAt(196700), 'the sync leaves it to the remote entry');
    assert.deepEqual(writes.filter((w) => w.cidr === cidr), [], 'and never writes the key');
    await remote.apply([entry('10.88.1.5', 196701)], []);
    sync();
    assert.deepEqual(ipcache.get(cidr), remoteAt(196701));
    await remote.apply([], ['10.88.1.5']);
    assert.deepEqual(ipcache.get(cidr), { identity: 16777300, hostId: 0 }, 'the remote entry went: the policy\'s /32 is back at once');
    writes.length = 0;
    sync();
    assert.deepEqual(writes, [], 'nothing left to correct');
    assert.equal(ipcache.get('10.88.0.0/16')?.identity, 16777301);
  });

  test('an address the host takes after another node claimed it is the host\'s: the claim neither writes over it nor deletes it', async () => {
    const { ipcache, writes, state, sync, remote } = bench();
    const cidr = '10.88.2.6/32';
    await remote.apply([entry('10.88.2.6', 196700)], []);
    assert.deepEqual(ipcache.get(cidr), remoteAt(196700));
    state.hosts = [...state.hosts, cidr];
    sync();
    assert.deepEqual(ipcache.get(cidr), { identity: 1, hostId: 0 }, 'the host\'s own address is host');
    writes.length = 0;
    await remote.apply([entry('10.88.2.6', 196701)], []);
    assert.deepEqual(writes, [], 'the claim\'s change is not written over the host');
    assert.equal(remote.identityOf('10.88.2.6'), undefined, 'and the remote source holds nothing there');
    sync();
    await remote.apply([], ['10.88.2.6']);
    assert.deepEqual(ipcache.get(cidr), { identity: 1, hostId: 0 }, 'the claim\'s withdrawal leaves the host\'s entry');
    assert.deepEqual(writes, []);
  });

  test('a local workload\'s own address is local, whatever another node claims', async () => {
    const { ipcache, writes, state, sync, remote } = bench();
    state.workloads = [{ ipv4: '10.88.3.7', ipv6: 'fd00:88::7', identity: 300 }];
    sync();
    await remote.apply([entry('10.88.3.7', 196700), entry('fd00:88::7', 196700)], []);
    await remote.apply([], ['10.88.3.7', 'fd00:88::7']);
    assert.deepEqual(ipcache.get('10.88.3.7/32'), { identity: 300, hostId: 0 });
    assert.deepEqual(ipcache.get('fd00:88::7/128'), { identity: 300, hostId: 0 });
    assert.deepEqual(writes.filter((w) => w.by === 'remote'), []);
  });
});
