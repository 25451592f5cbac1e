import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { IDENTITIES_PREFIX } from '../../agent/cluster/identity-allocator.js';
import { NODES_PREFIX } from '../../agent/cluster/node-registry.js';
import { NODE_CIDRS_PREFIX } from '../../agent/cluster/node-cidr.js';
import type { TraceResponse } from '../../common/schemas/policy.js';
import type { Workload } from '../../common/schemas/workload.js';
import { ClusterHosts, type ClusterHost } from '../helpers/cluster-hosts.js';
import { waitFor } from '../helpers/sys.js';

const NS = 'ir';
const CLUSTER = 'kitir';
const CLUSTER_ID = 22;
const IPCACHE_PREFIX = 'cilium/state/ip/v1/default';
/** API calls in flight per host: enough to race, few enough for a loaded 2-core machine. */
const PER_HOST = 6;

/** Runs fn over items with at most `limit` in flight; all results, in order. */
async function bounded<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

const labelsKey = (w: Workload) => w.identityLabels.map((l) => `${l};`).join('');

/**
 * #14 item 2 under load and item 8's lost lease, with three real agents (each in its own network
 * namespace) on one real etcd: one label set registered concurrently on all hosts gets one number;
 * 500 label sets registered in parallel over the hosts get 500 numbers of the cluster's range, the
 * same on every host; a node lease revoked behind the agent's back is replaced and every key of the
 * node is written again under the new one.
 */
describe('cluster identities under concurrent registration; a lost node lease (root)', { timeout: 600_000 }, () => {
  const cluster = new ClusterHosts({ tag: 'ir', hosts: 3, cluster: { name: CLUSTER, id: CLUSTER_ID, leaseTTLSeconds: 6 }, ipv4Pool: '10.244.0.0/16', ipv6Pool: 'fd00:244::/64' });
  let hosts: ClusterHost[];
  let raw: Etcd3 | undefined;
  /** Every registered workload, with the host it is on. */
  const placed: Array<{ host: ClusterHost; w: Workload }> = [];

  /** Registers `names` on `host` (namespaces made in one batch), at most PER_HOST at a time. */
  const registerMany = async (host: ClusterHost, specs: Array<{ name: string; labels: Record<string, string> }>) => {
    const netns = await cluster.workloadNetnsMany(specs.map((s) => s.name));
    return bounded(specs.map((s, i) => ({ ...s, netns: netns[i]! })), PER_HOST, async (s) => {
      const w = await host.api.call<Workload>('POST', '/v1/workloads', { name: s.name, namespace: NS, labels: s.labels, netns: `/var/run/netns/${s.netns}` });
      placed.push({ host, w });
      return w;
    });
  };
  /** Every master key: number -> label key. */
  const masters = async () => {
    const all = await raw!.getAll().prefix(`${IDENTITIES_PREFIX}/id/`).strings();
    return new Map(Object.entries(all).map(([k, v]) => [Number(k.slice(IDENTITIES_PREFIX.length + 4)), v]));
  };
  /** The identity h's datapath gives packets from `ip` (its ipcache), traced to a local workload of h. */
  const srcIdentity = async (h: ClusterHost, ip: string) => {
    const local = placed.find((p) => p.host === h)!.w;
    const trace = await h.api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { ip }, to: { workload: `${NS}/${local.name}` }, protocol: 'TCP', port: 80 });
    return (trace.result as { srcIdentity: number }).srcIdentity;
  };

  before(async () => {
    await cluster.setup();
    hosts = cluster.hosts;
    await Promise.all(hosts.map((h) => h.start()));
    raw = new Etcd3({ hosts: cluster.etcd!.endpoint });
  });
  after(async () => {
    raw?.close();
    await cluster.cleanup();
  });

  test('one label set registered concurrently on three hosts, 50 times each: one identity number everywhere', async () => {
    const per = await Promise.all(hosts.map((h) => registerMany(h, Array.from({ length: 50 }, (_, i) => ({ name: `same-${h.name}-${i}`, labels: { app: 'same', tier: 'race' } })))));
    const ids = new Set(per.flat().map((w) => w.identity));
    assert.equal(ids.size, 1, `one number for one label set, got ${[...ids].join(', ')}`);
    const [id] = [...ids] as [number];
    assert.ok(id >= CLUSTER_ID << 16 && id < (CLUSTER_ID + 1) << 16, `${id} in cluster ${CLUSTER_ID}'s range`);
    const key = labelsKey(per[0]![0]!);
    const named = [...(await masters())].filter(([, v]) => v === key).map(([n]) => n);
    assert.deepEqual(named, [id], 'exactly one master key names the label set');
    for (const h of hosts) {
      assert.equal(await raw!.get(`${IDENTITIES_PREFIX}/value/${key}/${h.nodeIPv4}`).string(), String(id), `${h.name}'s value key`);
    }
    for (const h of hosts) assert.ok((await h.api.call<Array<{ id: number }>>('GET', '/v1/identities')).some((i) => i.id === id), `${h.name} lists ${id}`);
  });

  test('500 distinct label sets registered in parallel over three hosts: 500 distinct numbers in range, the same on every host', async () => {
    const sets = Array.from({ length: 500 }, (_, i) => ({ name: `set-${i}`, labels: { app: 'many', set: `s${i}` } }));
    const per = await Promise.all(hosts.map((h, hi) => registerMany(h, sets.filter((_, i) => i % hosts.length === hi))));
    const all = per.flat();
    assert.equal(all.length, 500);
    const ids = new Set(all.map((w) => w.identity));
    assert.equal(ids.size, 500, 'no number given to two label sets');
    for (const id of ids) assert.ok(id >= CLUSTER_ID << 16 && id < (CLUSTER_ID + 1) << 16, `${id} in cluster ${CLUSTER_ID}'s range`);

    // etcd: each label set has exactly one master key, and it is the number its host gave it.
    const m = await masters();
    const byKey = new Map<string, number[]>();
    for (const [n, v] of m) byKey.set(v, [...(byKey.get(v) ?? []), n]);
    for (const w of all) assert.deepEqual(byKey.get(labelsKey(w)), [w.identity], `the master keys of ${w.name}'s labels`);
    const values = await raw!.getAll().prefix(`${IDENTITIES_PREFIX}/value/`).strings();
    for (const [hi, ws] of per.entries()) {
      for (const w of ws) assert.equal(values[`${IDENTITIES_PREFIX}/value/${labelsKey(w)}/${hosts[hi]!.nodeIPv4}`], String(w.identity), `${w.name}'s value key`);
    }

    // Every host's ipcache gives the other hosts' workloads the same numbers (a sample per host pair).
    for (const [hi, ws] of per.entries()) {
      const sample = ws.filter((_, i) => i % 17 === 0);
      for (const other of hosts.filter((_, oi) => oi !== hi)) {
        await waitFor(`${other.name} to know ${hosts[hi]!.name}'s workloads by their numbers`, async () => {
          const got = await bounded(sample, 4, (w) => srcIdentity(other, w.ipv4));
          return got.every((id, i) => id === sample[i]!.identity) || undefined;
        }, 60_000);
      }
    }
  });

  test('a node lease revoked in etcd: the agent takes a new lease and writes every key of its node again under it', async () => {
    const [h1, h2] = hosts as [ClusterHost, ClusterHost];
    const nodeKey = `${NODES_PREFIX}/${CLUSTER}/h1`;
    const leaseOf = async (key: string) => (await raw!.get(key).exec()).kvs[0]?.lease;
    const old = await leaseOf(nodeKey);
    assert.ok(old && old !== '0', 'the node entry is leased');
    const everything = async () => (await raw!.getAll().prefix('').exec()).kvs.map((kv) => ({ key: kv.key.toString(), value: kv.value.toString(), lease: kv.lease }));
    const mine = (await everything()).filter((kv) => kv.lease === old);
    const h1Workloads = placed.filter((p) => p.host === h1).map((p) => p.w);
    const expected = [
      nodeKey,
      ...h1Workloads.flatMap((w) => [`${IPCACHE_PREFIX}/${w.ipv4}`, `${IPCACHE_PREFIX}/${w.ipv6}`, `${IDENTITIES_PREFIX}/value/${labelsKey(w)}/${h1.nodeIPv4}`]),
    ];
    const mineKeys = new Set(mine.map((kv) => kv.key));
    for (const k of expected) assert.ok(mineKeys.has(k), `${k} is under h1's lease before`);
    const claims = (await everything()).filter((kv) => kv.key.startsWith(`${NODE_CIDRS_PREFIX}/${CLUSTER}/`) && kv.value === 'h1');
    assert.equal(claims.length, 2, 'h1 claims an IPv4 and an IPv6 CIDR');

    await raw!.leaseClient.leaseRevoke({ ID: old });
    assert.equal(await raw!.get(nodeKey).string(), null, 'the revoke took h1\'s keys with it');

    const renewed = await waitFor('h1\'s node entry under a new lease', async () => {
      const l = await leaseOf(nodeKey);
      return l && l !== old ? l : undefined;
    }, 60_000);
    // Every key that was under the old lease is back with the same value under the new one (the
    // shared ClusterMesh keys, heartbeat and config, may be under another node's lease by now).
    const shared = (k: string) => k === 'cilium/.heartbeat' || k.startsWith('cilium/cluster-config/') || k.startsWith('cilium/synced/');
    try {
      await waitFor('every key of h1 back under its new lease', async () => {
        const now = new Map((await everything()).map((kv) => [kv.key, kv]));
        return mine.every((kv) => {
          const back = now.get(kv.key);
          if (!back) return false;
          return shared(kv.key) ? back.lease !== old : back.lease === renewed && back.value === kv.value;
        }) || undefined;
      }, 60_000);
    } catch (err) {
      const now = new Map((await everything()).map((kv) => [kv.key, kv]));
      const missing = mine.filter((kv) => now.get(kv.key)?.lease !== renewed).map((kv) => `${kv.key} (${now.get(kv.key)?.lease ?? 'absent'})`);
      throw new Error(`${(err as Error).message}; not back under ${renewed}: ${missing.slice(0, 10).join(', ')} (${missing.length} of ${mine.length})`, { cause: err });
    }
    const claimsAfter = (await everything()).filter((kv) => kv.key.startsWith(`${NODE_CIDRS_PREFIX}/${CLUSTER}/`) && kv.value === 'h1');
    assert.deepEqual(claimsAfter, claims, 'the CIDR claims (not leased) are untouched');

    // The other hosts know h1's workloads again, and h1 allocates under its new lease.
    const sample = h1Workloads.filter((_, i) => i % 29 === 0);
    await waitFor('h2 to know h1\'s workloads again', async () => {
      const got = await bounded(sample, 4, (w) => srcIdentity(h2, w.ipv4));
      return got.every((id, i) => id === sample[i]!.identity) || undefined;
    }, 60_000);
    const [fresh] = await registerMany(h1, [{ name: 'after-revoke', labels: { app: 'after-revoke' } }]);
    assert.equal(await leaseOf(`${IDENTITIES_PREFIX}/value/${labelsKey(fresh!)}/${h1.nodeIPv4}`), renewed);
    assert.equal(await leaseOf(`${IPCACHE_PREFIX}/${fresh!.ipv4}`), renewed);
  });
});
