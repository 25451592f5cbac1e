import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { SqliteStore } from '../../agent/store/sqlite-store.js';

test('store: durable commits by default; a relaxed transaction commits without sync and restores FULL', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-store-'));
  try {
    const store = new SqliteStore(join(dir, 'state.db'));
    const sync = () => store.db.pragma('synchronous', { simple: true }) as number;
    assert.equal(store.db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(sync(), 2, 'FULL');
    let inside = -1;
    store.transaction(() => {
      inside = sync();
      store.metaSet('a', '1');
    }, { durable: false });
    assert.equal(inside, 1, 'NORMAL while the relaxed transaction commits');
    assert.equal(sync(), 2, 'FULL again afterwards');
    assert.throws(() => store.transaction(() => {
      store.metaSet('b', '2');
      throw new Error('boom');
    }, { durable: false }), /boom/);
    assert.equal(sync(), 2, 'FULL again after a rollback');
    assert.equal(store.metaGet('b'), undefined);
    // Nested in a durable transaction, the outer one decides.
    store.transaction(() => store.transaction(() => store.metaSet('c', '3'), { durable: false }));
    assert.equal(sync(), 2);
    assert.equal(store.metaGet('a'), '1');
    assert.equal(store.metaGet('c'), '3');
    store.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
