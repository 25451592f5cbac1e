// mapDumpBatch (bpf/native/src/maps.c) on real maps: an LPM trie, whose batch token (the kernel's
// generic_map_lookup_batch) is the last key read — key_size bytes, here 24 — and a hash, whose token is
// a u32 bucket number. Every entry must come back exactly once with its value, across several batches
// of 4,096 and the partial last one, and an empty map must give none. Maps are created with bpftool
// under a temporary pin directory, used through their fds, and removed in after().
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { native } from '../../common/native.js';
import { uniq } from '../helpers/sys.js';

const BPF_F_NO_PREALLOC = 1;
/** Keys of the trie: u32 prefix length, then 20 bytes of data (as wide as an IPv6 policy key's tail). */
const TRIE_KEY = 24;
const TRIE_VALUE = 12;
const HASH_KEY = 20;
const HASH_VALUE = 8;
const N = 10_000;

interface TestMap {
  fd: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

function trieKey(i: number): Buffer {
  const k = Buffer.alloc(TRIE_KEY);
  k.writeUInt32LE(8 * (TRIE_KEY - 4), 0); // full-length prefixes: every key its own entry
  k.writeUInt32BE(0xfd00_0000 + (i >>> 16), 4);
  k.writeUInt32BE(Math.imul(i, 2654435761) >>> 0, 16); // spread over the trie, not in insertion order
  k.writeUInt32BE(i, 20);
  return k;
}

function hashKey(i: number): Buffer {
  const k = Buffer.alloc(HASH_KEY);
  k.writeUInt32BE(i, 0);
  k.writeUInt32BE(~i >>> 0, 16);
  return k;
}

function valueOf(i: number, size: number): Buffer {
  const v = Buffer.alloc(size, 0xa5);
  v.writeUInt32LE(i, 0);
  v.writeUInt32LE(i ^ 0x5a5a5a5a, size - 4);
  return v;
}

/** Asserts the dump holds each of the n entries once, with its value. */
function assertEntries(m: TestMap, d: { count: number; keys: Buffer; values: Buffer }, n: number, keyOf: (i: number) => Buffer): void {
  assert.equal(d.keys.length, d.count * m.keySize);
  assert.equal(d.values.length, d.count * m.valueSize);
  const want = new Map<string, number>();
  for (let i = 0; i < n; i++) want.set(keyOf(i).toString('hex'), i);
  const seen = new Set<string>();
  for (let j = 0; j < d.count; j++) {
    const key = d.keys.subarray(j * m.keySize, (j + 1) * m.keySize).toString('hex');
    const i = want.get(key);
    assert.ok(i !== undefined, `entry ${j}: key ${key} was never written`);
    assert.ok(!seen.has(key), `entry ${j}: key ${key} returned twice`);
    seen.add(key);
    assert.deepEqual(d.values.subarray(j * m.valueSize, (j + 1) * m.valueSize), valueOf(i, m.valueSize), `value of key ${key}`);
  }
  assert.equal(d.count, n, `${d.count} entries dumped, ${n} written`);
}

describe('mapDumpBatch on real maps (root)', { timeout: 120_000 }, () => {
  const dir = `/sys/fs/bpf/kitnet-test-dumpbatch-${process.pid}-${uniq()}`;
  const fds: number[] = [];

  function create(name: string, type: string, keySize: number, valueSize: number, maxEntries: number, flags = 0): TestMap {
    const pin = join(dir, name);
    execFileSync('bpftool', ['map', 'create', pin, 'type', type, 'key', String(keySize), 'value', String(valueSize), 'entries', String(maxEntries), 'name', name, 'flags', String(flags)]);
    const fd = native().objGet(pin);
    fds.push(fd);
    return { fd, keySize, valueSize, maxEntries };
  }

  function fill(m: TestMap, n: number, keyOf: (i: number) => Buffer): void {
    for (let i = 0; i < n; i++) native().mapUpdate(m.fd, keyOf(i), valueOf(i, m.valueSize), 0);
  }

  const dump = (m: TestMap) => native().mapDumpBatch(m.fd, m.keySize, m.valueSize, m.maxEntries);

  before(() => mkdirSync(dir, { recursive: true }));
  after(() => {
    for (const fd of fds) native().fdClose(fd);
    rmSync(dir, { recursive: true, force: true });
  });

  test(`LPM trie, ${N} entries of a ${TRIE_KEY}-byte key: each once, with its value`, () => {
    const m = create('dump_trie', 'lpm_trie', TRIE_KEY, TRIE_VALUE, N + 100, BPF_F_NO_PREALLOC);
    fill(m, N, trieKey);
    assertEntries(m, dump(m), N, trieKey);
    // the same as the key-by-key dump
    const plain = native().mapDump(m.fd, m.keySize, m.valueSize, m.maxEntries);
    assertEntries(m, plain, N, trieKey);
  });

  test('LPM trie holding exactly one batch (4,096) and one more than that', () => {
    for (const n of [4096, 4097]) {
      const m = create(`dump_trie_${n}`, 'lpm_trie', TRIE_KEY, TRIE_VALUE, n, BPF_F_NO_PREALLOC);
      fill(m, n, trieKey);
      assertEntries(m, dump(m), n, trieKey);
    }
  });

  test(`hash, ${N} entries: each once, with its value`, () => {
    const m = create('dump_hash', 'hash', HASH_KEY, HASH_VALUE, N + 100);
    fill(m, N, hashKey);
    assertEntries(m, dump(m), N, hashKey);
  });

  test('maxEntries below the fill: at most that many, all real entries', () => {
    const m = create('dump_trie_cap', 'lpm_trie', TRIE_KEY, TRIE_VALUE, N, BPF_F_NO_PREALLOC);
    fill(m, 5000, trieKey);
    const d = native().mapDumpBatch(m.fd, m.keySize, m.valueSize, 4100);
    assert.equal(d.count, 4100);
    const all = new Set(Array.from({ length: 5000 }, (_, i) => trieKey(i).toString('hex')));
    const seen = new Set<string>();
    for (let j = 0; j < d.count; j++) seen.add(d.keys.subarray(j * TRIE_KEY, (j + 1) * TRIE_KEY).toString('hex'));
    assert.equal(seen.size, 4100);
    for (const k of seen) assert.ok(all.has(k));
  });

  test('empty trie and empty hash: no entries', () => {
    for (const m of [create('dump_empty_trie', 'lpm_trie', TRIE_KEY, TRIE_VALUE, 16, BPF_F_NO_PREALLOC), create('dump_empty_hash', 'hash', HASH_KEY, HASH_VALUE, 16)]) {
      const d = dump(m);
      assert.equal(d.count, 0);
      assert.equal(d.keys.length, 0);
      assert.equal(d.values.length, 0);
    }
  });

  test('a map type without batch lookups (devmap): EOPNOTSUPP from BPF_MAP_LOOKUP_BATCH, for the fallback to mapDump', () => {
    const m = create('dump_devmap', 'devmap', 4, 4, 4);
    assert.throws(() => dump(m), (err: Error & { op?: string; code?: string }) => {
      assert.equal(err.op, 'BPF_MAP_LOOKUP_BATCH');
      assert.equal(err.code, 'EOPNOTSUPP');
      return true;
    });
  });
});
