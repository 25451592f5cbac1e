import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { PrefixFollower, type PrefixChange, type PrefixSink } from '../../agent/cluster/prefix-follower.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { waitFor } from '../helpers/sys.js';

const log = pino({ level: 'silent' });

/** A sink that records every call and holds the first change call until `release`. */
class SlowSink implements PrefixSink {
  readonly calls: Array<{ changes: PrefixChange[]; revision: bigint }> = [];
  readonly state = new Map<string, string>();
  private gate: Promise<void> | undefined;
  release: () => void = () => undefined;
  /** Set once the held call started. */
  holding = false;

  hold(): void {
    this.gate = new Promise((resolve) => (this.release = resolve));
  }

  async resync(all: ReadonlyMap<string, string>): Promise<void> {
    this.state.clear();
    for (const [k, v] of all) this.state.set(k, v);
  }

  async change(changes: readonly PrefixChange[], revision: bigint): Promise<void> {
    this.calls.push({ changes: [...changes], revision });
    const gate = this.gate;
    this.gate = undefined;
    if (gate) {
      this.holding = true;
      await gate;
    }
    for (const c of changes) {
      if (c.value === undefined) this.state.delete(c.key);
      else this.state.set(c.key, c.value);
    }
  }
}

describe('cluster prefix follower: changes that queue up while the sink is busy', () => {
  let etcd: EtcdServer;
  let client: Etcd3;

  before(async () => {
    etcd = await etcdStart();
    client = new Etcd3({ hosts: etcd.endpoint });
  });
  after(async () => {
    client.close();
    await etcd.stop();
  });

  test('go to the sink in one call, in etcd\'s order, up to the last revision', async () => {
    const prefix = 'test/follower/batch/';
    const sink = new SlowSink();
    const follower = new PrefixFollower(client, prefix, sink, log);
    await follower.start();
    try {
      sink.hold();
      // The first change reaches the sink and holds it: everything after queues up meanwhile.
      await client.put(`${prefix}first`).value('1').exec();
      await waitFor('the sink to hold the first change', async () => sink.holding, 10_000);
      let last = 0n;
      const writes: Array<[string, string | undefined]> = [];
      for (let i = 0; i < 200; i++) {
        const key = `${prefix}k${i % 20}`;
        const value = `v${i}`;
        last = BigInt((await client.put(key).value(value).exec()).header.revision);
        writes.push([key, value]);
      }
      // Put then delete (ends deleted), delete then put (ends present), put then put (the last wins).
      await client.put(`${prefix}gone`).value('x').exec();
      await client.delete().key(`${prefix}gone`).exec();
      await client.delete().key(`${prefix}k3`).exec();
      await client.put(`${prefix}k3`).value('back').exec();
      await client.put(`${prefix}k4`).value('once').exec();
      last = BigInt((await client.put(`${prefix}k4`).value('twice').exec()).header.revision);
      writes.push([`${prefix}gone`, 'x'], [`${prefix}gone`, undefined], [`${prefix}k3`, undefined], [`${prefix}k3`, 'back'], [`${prefix}k4`, 'once'], [`${prefix}k4`, 'twice']);
      // Every write reached the follower's watch before the sink is let go.
      await new Promise((resolve) => setTimeout(resolve, 500));
      sink.release();
      assert.ok(await follower.waitApplied(last, 10_000), 'the last revision is applied');
      await follower.settled();

      assert.equal(sink.calls.length, 2, `one call held, then one for everything that queued up (got ${sink.calls.map((c) => c.changes.length).join(', ')})`);
      assert.deepEqual(sink.calls[0]!.changes.map((c) => c.key), [`${prefix}first`]);
      const batch = sink.calls[1]!;
      assert.deepEqual(batch.changes.map((c) => [c.key, c.value]), writes, 'every change, in etcd\'s order');
      assert.equal(batch.revision, last);
      assert.equal(follower.applied, last);
      assert.equal(follower.batches, 2);

      assert.equal(sink.state.has(`${prefix}gone`), false, 'a put then a delete ends deleted');
      assert.equal(sink.state.get(`${prefix}k3`), 'back', 'a delete then a put ends present');
      assert.equal(sink.state.get(`${prefix}k4`), 'twice', 'the last put wins');
      const listed = new Map((await client.getAll().prefix(prefix).exec()).kvs.map((kv) => [kv.key.toString(), kv.value.toString()]));
      assert.deepEqual(new Map([...sink.state].sort()), new Map([...listed].sort()), 'the sink holds what etcd holds');
    } finally {
      sink.release();
      await follower.close();
    }
  });

  test('a change that comes while the sink is idle goes at once, on its own', async () => {
    const prefix = 'test/follower/idle/';
    const sink = new SlowSink();
    const follower = new PrefixFollower(client, prefix, sink, log);
    await follower.start();
    try {
      for (let i = 0; i < 3; i++) {
        const rev = BigInt((await client.put(`${prefix}k${i}`).value(`v${i}`).exec()).header.revision);
        assert.ok(await follower.waitApplied(rev, 10_000));
      }
      assert.deepEqual(sink.calls.map((c) => c.changes.map((x) => x.key)), [[`${prefix}k0`], [`${prefix}k1`], [`${prefix}k2`]]);
    } finally {
      await follower.close();
    }
  });
});
