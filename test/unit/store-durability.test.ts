import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { sqliteStoreOpen, type StoreChange } from '../../agent/store/index.js';
// This file tests the SQLite implementation itself (pragmas); everything else uses the Store interface.
import { SqliteStore } from '../../agent/store/sqlite-store.js';

test('store: durable commits by default; a relaxed transaction commits without sync and restores FULL', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-store-'));
  try {
    const store = new SqliteStore(join(dir, 'state.db'));
    const sync = () => store.db.pragma('synchronous', { simple: true }) as number;
    assert.equal(store.db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(sync(), 2, 'FULL');
    let inside = -1;
    store.transactionSync(() => {
      inside = sync();
      store.metaSet('a', '1');
    }, { durable: false });
    assert.equal(inside, 1, 'NORMAL while the relaxed transaction commits');
    assert.equal(sync(), 2, 'FULL again afterwards');
    assert.throws(() => store.transactionSync(() => {
      store.metaSet('b', '2');
      throw new Error('boom');
    }, { durable: false }), /boom/);
    assert.equal(sync(), 2, 'FULL again after a rollback');
    assert.equal(store.metaGet('b'), undefined);
    // Nested in a durable transaction, the outer one decides.
    store.transactionSync(() => store.transactionSync(() => store.metaSet('c', '3'), { durable: false }));
    assert.equal(sync(), 2);
    assert.equal(store.metaGet('a'), '1');
    assert.equal(store.metaGet('c'), '3');
    store.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('store: subscribers see each change once it committed, nothing of a rolled back transaction', async () => {
  const store = sqliteStoreOpen(':memory:');
  const seen: StoreChange[] = [];
  const unsubscribe = store.subscribe((c) => seen.push(c));
  const spec = { name: 'w', namespace: 'ns', kind: 'netns' as const, labels: {}, netns: '/x', requestedMode: 'auto' as const, interface: 'eth0' };
  const insert = { spec, mode: 'veth' as const, endpointId: 1, identity: 256, ipv4: '10.0.0.1', ipv6: 'fd00::1', hostIfname: 'kn1' };
  await assert.rejects(store.transaction((tx) => {
    tx.identityInsert(256, 'k', ['k:a=b']);
    tx.workloadInsert(insert);
    assert.deepEqual(seen, [], 'nothing is announced before the commit');
    throw new Error('boom');
  }), /boom/);
  assert.deepEqual(seen, []);
  assert.equal(store.workloadGet('ns', 'w'), undefined);
  await store.transaction((tx) => {
    tx.identityInsert(256, 'k', ['k:a=b']);
    tx.workloadInsert(insert);
  });
  assert.deepEqual(seen, [
    { kind: 'identity', id: 256, deleted: false },
    { kind: 'workload', namespace: 'ns', name: 'w', what: 'spec' },
  ]);
  seen.length = 0;
  store.workloadStatusSet('ns', 'w', { state: 'ready', observed: null, error: null });
  store.workloadStatusSet('ns', 'gone', { state: 'ready', observed: null, error: null });
  assert.deepEqual(seen, [{ kind: 'workload', namespace: 'ns', name: 'w', what: 'status' }], 'a status write is announced at once; none for a missing workload');
  seen.length = 0;
  await store.transaction((tx) => {
    tx.workloadDelete('ns', 'w');
    tx.identitiesReleaseUnused();
    tx.namespacePut('ns', { team: 'a' });
    tx.policyPut('NetworkPolicy', 'ns', 'p', {});
  });
  assert.deepEqual(seen, [
    { kind: 'workload', namespace: 'ns', name: 'w', what: 'deleted' },
    { kind: 'identity', id: 256, deleted: true },
    { kind: 'namespace', name: 'ns' },
    { kind: 'policy', policyKind: 'NetworkPolicy', namespace: 'ns', name: 'p', deleted: false },
  ]);
  unsubscribe();
  await store.transaction((tx) => tx.policyDelete('NetworkPolicy', 'ns', 'p'));
  assert.equal(seen.length, 4, 'no more after unsubscribe');
  store.close();
});
