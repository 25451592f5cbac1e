import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { clusterIdentityLabels, kvstoreLabelsKey } from '../../agent/cluster/cilium-labels.js';
import { etcdClientCreate } from '../../agent/cluster/etcd-client.js';
import {
  ClusterIdentityAllocator, ClusterIdentityError, ClusterIdentityExhaustedError, ClusterUnavailableError, IDENTITIES_PREFIX,
} from '../../agent/cluster/identity-allocator.js';
import { errorToKitnet } from '../../agent/workload-errors.js';
import { IdentityGc } from '../../agent/cluster/identity-gc.js';
import { clusterIdentityRange, type IdentityRange } from '../../agent/cluster/identity-range.js';
import { ClusterSession } from '../../agent/cluster/session.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { waitFor } from '../helpers/sys.js';
import { timeLimit } from '../helpers/timeouts.js';

const log = pino({ level: 'silent' });
const CLUSTER = 'kit3';
const RANGE = clusterIdentityRange(3);

/** The exact label key of a workload in cluster `kit3`. */
const keyOf = (labels: Record<string, string>, namespace = 'shop') => kvstoreLabelsKey(clusterIdentityLabels(CLUSTER, labels, namespace));

describe('Cilium label keys and ranges', () => {
  test('label keys are formatted as Cilium formats them: source:key=value; sorted by key, trailing ;', () => {
    // CLUSTER.md: what Cilium v1.19 wrote for cluster cilium1.
    const labels = [
      { source: 'k8s', key: 'io.kubernetes.pod.namespace', value: 'shop' },
      { source: 'k8s', key: 'io.cilium.k8s.policy.cluster', value: 'cilium1' },
      { source: 'k8s', key: 'app', value: 'frontend' },
    ];
    assert.equal(kvstoreLabelsKey(labels), 'k8s:app=frontend;k8s:io.cilium.k8s.policy.cluster=cilium1;k8s:io.kubernetes.pod.namespace=shop;');
    // Ordered by key, not by the formatted text (the source would sort vm: after k8s: otherwise).
    assert.equal(kvstoreLabelsKey([{ source: 'vm', key: 'a', value: '1' }, { source: 'k8s', key: 'b', value: '2' }]), 'vm:a=1;k8s:b=2;');
  });

  test('a workload gains k8s:io.cilium.k8s.policy.cluster=<name>, and cannot forge it', () => {
    const key = keyOf({ app: 'fe', 'io.cilium.k8s.policy.cluster': 'other' });
    assert.equal(
      key,
      'k8s:app=fe;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop;k8s:io.cilium.k8s.policy.cluster=kit3;k8s:io.kubernetes.pod.namespace=shop;',
    );
  });

  test('cluster id N owns N<<16 ... ((N+1)<<16)-1', () => {
    assert.deepEqual(clusterIdentityRange(1), { min: 65536, max: 131071 });
    assert.deepEqual(clusterIdentityRange(3), { min: 196608, max: 262143 });
    assert.deepEqual(clusterIdentityRange(255), { min: 255 << 16, max: (256 << 16) - 1 });
    assert.throws(() => clusterIdentityRange(0), /not in 1-255/);
  });
});

describe('identity allocation against a real etcd, in Cilium\'s layout', () => {
  let etcd: EtcdServer;
  let raw: Etcd3;
  const sessions: ClusterSession[] = [];

  /** One "host": its own client, lease and node address. */
  async function host(nodeIP: string, opts: { ttl?: number; range?: IdentityRange } = {}) {
    const session = await ClusterSession.open(etcdClientCreate({ endpoints: [etcd.endpoint] }, undefined), log, opts.ttl);
    sessions.push(session);
    return { session, alloc: new ClusterIdentityAllocator(session, { range: opts.range ?? RANGE, nodeSuffix: nodeIP, log }) };
  }
  const get = (key: string) => raw.get(key).exec().then((r) => r.kvs[0]);

  before(async () => {
    etcd = await etcdStart();
    raw = new Etcd3({ hosts: etcd.endpoint });
  });
  after(async () => {
    for (const s of sessions) await s.close({ revoke: true }).catch(() => undefined);
    raw?.close();
    await etcd?.stop();
  });

  test('same labels on two hosts get one number; keys and values byte for byte as Cilium writes them', async () => {
    const a = await host('192.0.2.1');
    const b = await host('192.0.2.2');
    const key = keyOf({ app: 'frontend' });
    const fromA = await a.alloc.acquire(key);
    const fromB = await b.alloc.acquire(key);
    assert.equal(fromA.isNew, true);
    assert.deepEqual(fromB, { id: fromA.id, isNew: false });
    assert.ok(fromA.id >= RANGE.min && fromA.id <= RANGE.max, `${fromA.id} in the cluster's range`);

    const master = await get(`${IDENTITIES_PREFIX}/id/${fromA.id}`);
    assert.equal(master?.value.toString(), key);
    assert.equal(master?.lease, '0', 'the master key has no lease');
    for (const [h, ip] of [[a, '192.0.2.1'], [b, '192.0.2.2']] as const) {
      const slave = await get(`cilium/state/identities/v1/value/${key}/${ip}`);
      assert.equal(slave?.value.toString(), String(fromA.id));
      assert.equal(slave?.lease, await h.session.nodeLeaseId(), 'the value key lives under its node\'s lease');
    }
    // Only the three keys: no lock is left behind.
    const all = await raw.getAll().prefix(`${IDENTITIES_PREFIX}/`).keys();
    assert.deepEqual(all.sort(), [
      `${IDENTITIES_PREFIX}/id/${fromA.id}`,
      `${IDENTITIES_PREFIX}/value/${key}/192.0.2.1`,
      `${IDENTITIES_PREFIX}/value/${key}/192.0.2.2`,
    ]);
  });

  test('concurrent allocation of many label sets on two hosts: one number per set, one set per number', async () => {
    const a = await host('192.0.2.11');
    const b = await host('192.0.2.12');
    const keys = Array.from({ length: 60 }, (_, i) => keyOf({ app: `conc-${i}` }, 'conc'));
    const shuffled = [...keys].reverse();
    const [fromA, fromB] = await Promise.all([Promise.all(keys.map((k) => a.alloc.acquire(k))), Promise.all(shuffled.map((k) => b.alloc.acquire(k)))]);
    const byKey = new Map(keys.map((k, i) => [k, fromA[i]!.id]));
    shuffled.forEach((k, i) => assert.equal(fromB[i]!.id, byKey.get(k), `both hosts agree on ${k}`));
    assert.equal(new Set(byKey.values()).size, keys.length, 'distinct label sets got distinct numbers');
    assert.equal(fromA.filter((r) => r.isNew).length + fromB.filter((r) => r.isNew).length, keys.length, 'each set was created once');
    const masters = await raw.getAll().prefix(`${IDENTITIES_PREFIX}/id/`).strings();
    for (const [k, id] of byKey) assert.equal(masters[`${IDENTITIES_PREFIX}/id/${id}`], k);
  });

  test('references are counted; the last release deletes the node\'s value key; the number is reused', async () => {
    const a = await host('192.0.2.21');
    const key = keyOf({ app: 'refs' });
    const first = await a.alloc.acquire(key);
    assert.deepEqual(await a.alloc.acquire(key), { id: first.id, isNew: false });
    const valueKey = `${IDENTITIES_PREFIX}/value/${key}/192.0.2.21`;
    assert.equal(await a.alloc.release(key), false);
    assert.ok(await get(valueKey), 'one reference left: the value key stays');
    assert.equal(await a.alloc.release(key), true);
    assert.equal(await get(valueKey), undefined);
    assert.ok(await get(`${IDENTITIES_PREFIX}/id/${first.id}`), 'the master key stays until garbage collection');
    // The same labels again (on another host): the master key not yet collected gives the same number.
    const b = await host('192.0.2.22');
    assert.deepEqual(await b.alloc.acquire(key), { id: first.id, isNew: false });
  });

  test('a host whose lease expires loses its value keys', async () => {
    const c = await host('192.0.2.31', { ttl: 2 });
    const key = keyOf({ app: 'lease' });
    await c.alloc.acquire(key);
    const valueKey = `${IDENTITIES_PREFIX}/value/${key}/192.0.2.31`;
    assert.ok(await get(valueKey));
    // Stop the keepalives without revoking, as a crashed agent would.
    await c.session.close();
    await waitFor('the value key to expire with its lease', async () => (await get(valueKey)) === undefined, timeLimit(30_000));
  });

  test('a lost node lease is granted again and the node\'s value keys are written again under it', async () => {
    const d = await host('192.0.2.51', { ttl: 5 });
    const key = keyOf({ app: 'lost-lease' });
    const { id } = await d.alloc.acquire(key);
    const valueKey = `${IDENTITIES_PREFIX}/value/${key}/192.0.2.51`;
    const oldLease = await d.session.nodeLeaseId();
    // Someone (or an expiry while the agent was unreachable) ends the lease: its keys go at once.
    await raw.leaseClient.leaseRevoke({ ID: oldLease });
    const back = await waitFor('the value key under a new lease', async () => {
      const kv = await get(valueKey);
      return kv && kv.lease !== oldLease && kv.lease !== '0' ? kv : undefined;
    }, timeLimit(30_000));
    assert.equal(back.value.toString(), String(id));
    assert.equal(back.lease, await d.session.nodeLeaseId());
  });

  test('garbage collection: unused master keys go on the second round, unless reused or changed meanwhile; other clusters\' stay', async () => {
    // A range of its own, so the other tests' keys are not this collector's.
    const min = RANGE.min + 50_000;
    const range = { min, max: min + 99 };
    const g = await host('192.0.2.71', { range });
    const gc = new IdentityGc(g.session, range, log);
    const [unused, reused, changed, kept] = ['gc-unused', 'gc-reused', 'gc-changed', 'gc-kept'].map((app) => keyOf({ app }));
    const ids: Record<string, number> = {};
    for (const k of [unused!, reused!, changed!, kept!]) ids[k] = (await g.alloc.acquire(k)).id;
    for (const k of [unused!, reused!, changed!]) await g.alloc.release(k);
    await raw.put(`${IDENTITIES_PREFIX}/id/${min + 200}`).value('k8s:foreign=1;'); // outside the range
    await raw.put(`${IDENTITIES_PREFIX}/id/0${min}`).value('k8s:odd=1;'); // not a number as Cilium writes it
    assert.deepEqual(await gc.round(), [], 'the first round only marks');
    // Between the rounds: one number is taken again, one master key is rewritten.
    assert.deepEqual(await g.alloc.acquire(reused!), { id: ids[reused!], isNew: false });
    await raw.put(`${IDENTITIES_PREFIX}/id/${ids[changed!]}`).value(changed!);
    assert.deepEqual(await gc.round(), [ids[unused!]]);
    assert.equal(await get(`${IDENTITIES_PREFIX}/id/${ids[unused!]}`), undefined);
    for (const k of [reused!, changed!, kept!]) assert.ok(await get(`${IDENTITIES_PREFIX}/id/${ids[k]}`), k);
    assert.ok(await get(`${IDENTITIES_PREFIX}/id/${min + 200}`));
    assert.deepEqual(await gc.round(), [ids[changed!]], 'the rewritten one goes a round later');
  });

  test('malformed keys and values written by someone else neither crash nor corrupt allocation', async () => {
    // A range of four numbers, three of them occupied by garbage master keys: the fourth is the only answer.
    const min = RANGE.min + 40_000;
    const range = { min, max: min + 3 };
    const key = keyOf({ app: 'hostile' });
    const other = keyOf({ app: 'victim' });
    const vp = `${IDENTITIES_PREFIX}/value/${key}`;
    await raw.put(`${IDENTITIES_PREFIX}/id/${min}`).value('garbage without a semicolon');
    await raw.put(`${IDENTITIES_PREFIX}/id/${min + 1}`).value(Buffer.from([0xff, 0xfe, 0x00, 0x2f]));
    await raw.put(`${IDENTITIES_PREFIX}/id/${min + 2}`).value(other);
    await raw.put(`${IDENTITIES_PREFIX}/id/not-a-number`).value(key);
    await raw.put(`${IDENTITIES_PREFIX}/id/0${min + 3}`).value(key);
    await raw.put(`${vp}/evil-text`).value('not a number');
    await raw.put(`${vp}/evil-mismatch`).value(String(min + 2)); // names the victim's number
    await raw.put(`${vp}/evil-reserved`).value('2');
    await raw.put(`${vp}/evil-huge`).value('99999999999999999999999');
    await raw.put(`${vp}/nested/deeper`).value(String(min + 1));
    await raw.put(`${IDENTITIES_PREFIX}/value/${key}k8s:x=y;/evil-longer`).value(String(min + 2));
    const h = await host('192.0.2.41', { range });
    const got = await h.alloc.acquire(key);
    assert.deepEqual(got, { id: min + 3, isNew: true });
    assert.equal((await get(`${IDENTITIES_PREFIX}/id/${min + 3}`))?.value.toString(), key);
    assert.equal((await get(`${IDENTITIES_PREFIX}/id/${min + 2}`))?.value.toString(), other, 'the victim\'s master key is untouched');
    // The range is full now: a new set is refused with a clear error, not given a taken number.
    await assert.rejects(h.alloc.acquire(keyOf({ app: 'one-too-many' })), (err: Error) => err instanceof ClusterIdentityExhaustedError && /no free identity left in/.test(err.message));
    // Label keys that are not Cilium's format, or that a path join would rewrite, are refused.
    for (const bad of ['k8s:app=x', 'k8s:app=../../id/5;', 'k8s:a=b//c;']) {
      await assert.rejects(h.alloc.acquire(bad), ClusterIdentityError);
    }
  });
});

describe('etcd out of reach', () => {
  test('allocation fails with ClusterUnavailableError (503 AGENT_ERR_CLUSTER_UNAVAILABLE), the number held locally stays', async () => {
    const etcd = await etcdStart();
    let session: ClusterSession | undefined;
    try {
      session = await ClusterSession.open(etcdClientCreate({ endpoints: [etcd.endpoint] }, undefined), log);
      const alloc = new ClusterIdentityAllocator(session, { range: RANGE, nodeSuffix: '192.0.2.61', log });
      const held = await alloc.acquire(keyOf({ app: 'before-outage' }));
      await etcd.stop();
      const err = await alloc.acquire(keyOf({ app: 'during-outage' })).then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof ClusterUnavailableError, String(err));
      const k = errorToKitnet(err, 'workload ns/x');
      assert.equal(k.code, 'AGENT_ERR_CLUSTER_UNAVAILABLE');
      assert.equal(k.statusCode, 503);
      // A label set this node already holds needs no etcd round trip.
      assert.deepEqual(await alloc.acquire(keyOf({ app: 'before-outage' })), { id: held.id, isNew: false });
    } finally {
      await session?.close().catch(() => undefined);
      await etcd.stop();
    }
  });
});
