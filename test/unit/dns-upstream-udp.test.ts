// The DNS proxy's shared upstream sockets (agent/dns/upstream-udp.ts) against a real UDP server on
// loopback: the workload's id never goes upstream and comes back on the answer, answers are matched by
// the proxy's id only, forged answers (other port, unknown id) are dropped, ports rotate, idle sockets
// close and their number stays bounded.
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { after, before, describe, test } from 'node:test';
import { dnsParse, dnsQueryBuild, dnsReplyBuild, DnsType } from '../../agent/dns/codec.js';
import { UdpUpstreams } from '../../agent/dns/upstream-udp.js';

/**
 * An upstream that answers every query for NAME with 192.0.2.(N) where NAME is nN.test: at once, or
 * while `held` is set, when the test calls release().
 */
class Upstream {
  readonly seen: Array<{ port: number; id: number; name: string }> = [];
  readonly sock = dgram.createSocket('udp4');
  held: Array<() => void> | undefined;
  port = 0;
  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => this.sock.once('error', reject).bind(0, '127.0.0.1', resolve));
    this.port = this.sock.address().port;
    this.sock.on('message', (m, r) => {
      const q = dnsParse(m).questions[0]!;
      this.seen.push({ port: r.port, id: m.readUInt16BE(0), name: q.name });
      const n = Number(/^n(\d+)\.test$/.exec(q.name)?.[1] ?? 0);
      const reply = dnsReplyBuild(m, [{ name: q.name, ttl: 30, address: `192.0.2.${n % 256}` }]);
      const send = () => this.sock.send(reply, r.port, r.address);
      if (this.held) this.held.push(send);
      else send();
    });
  }
  release(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const send of held) send();
  }
  stop(): void {
    this.sock.close();
  }
}

/** Waits until `cond` holds, re-checking every 10 ms, for at most `ms`. */
async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('DNS proxy upstream sockets (real UDP on loopback)', () => {
  const up = new Upstream();
  const at = () => ({ address: '127.0.0.1', port: up.port });
  before(() => up.start());
  after(() => up.stop());

  test("concurrent queries under one workload id: the upstream sees the proxy's ids, each answer is its query's, with the workload's id back", async () => {
    const pool = new UdpUpstreams();
    try {
      up.seen.length = 0;
      const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => pool.query(dnsQueryBuild(7, `n${i}.test`, DnsType.A), at(), 5000)));
      answers.forEach((raw, i) => {
        const a = dnsParse(raw);
        assert.equal(a.id, 7);
        assert.equal(a.questions[0]!.name, `n${i}.test`);
        assert.deepEqual(a.answers.map((r) => r.data), [{ kind: 'address', address: `192.0.2.${i % 256}` }]);
      });
      const ids = new Set(up.seen.map((s) => s.id));
      assert.ok(up.seen.filter((s) => s.id === 7).length <= 2, "the workload's id does not go upstream");
      assert.ok(ids.size > 150, `ids are random (${ids.size} distinct of 200)`);
    } finally {
      pool.close();
    }
  });

  test('a forged answer from another port, and one under an id not in flight, are dropped; the real one is taken', async () => {
    const pool = new UdpUpstreams();
    const forger = dgram.createSocket('udp4');
    try {
      up.seen.length = 0;
      // The real answer waits until the forged ones have been dealt with.
      up.held = [];
      let settled = false;
      const pending = pool.query(dnsQueryBuild(1, 'n5.test', DnsType.A), at(), 5000).finally(() => (settled = true));
      await until(() => up.seen.length === 1);
      const { port, id } = up.seen[0]!;
      const forged = dnsReplyBuild(dnsQueryBuild(id, 'n5.test', DnsType.A), [{ name: 'n5.test', ttl: 30, address: '203.0.113.66' }]);
      // From another port, right id: the connected socket never delivers it.
      await new Promise<void>((r) => forger.send(forged, port, '127.0.0.1', () => r()));
      // From the upstream's own port, wrong id: delivered, matched to nothing, dropped.
      const wrongId = Buffer.from(forged);
      wrongId.writeUInt16BE((id + 1) & 0xffff, 0);
      await new Promise<void>((r) => up.sock.send(wrongId, port, '127.0.0.1', () => r()));
      await until(() => pool.unmatched === 1);
      // The forger's datagram (sent before the wrong id) never arrived, or it would have answered the query.
      assert.equal(settled, false, 'no forged answer taken while the query waits');
      up.release();
      const answer = dnsParse(await pending);
      assert.deepEqual(answer.answers.map((r) => r.data), [{ kind: 'address', address: '192.0.2.5' }]);
      assert.equal(pool.unmatched, 1);
    } finally {
      up.release();
      forger.close();
      pool.close();
    }
  });

  test('ports rotate after queriesPerSocket; idle sockets close; at most maxSockets stay open', async () => {
    const pool = new UdpUpstreams({ socketsPerUpstream: 2, queriesPerSocket: 4, idleMs: 50, maxSockets: 2 });
    try {
      up.seen.length = 0;
      let most = 0;
      for (let i = 0; i < 40; i++) {
        await pool.query(dnsQueryBuild(i, `n${i}.test`, DnsType.A), at(), 5000);
        most = Math.max(most, pool.sockets);
      }
      const ports = new Set(up.seen.map((s) => s.port));
      assert.ok(ports.size >= 10, `40 queries, 4 per socket: at least 10 ports (${ports.size})`);
      assert.ok(most <= 2, `sockets open at once: ${most}`);
      await until(() => pool.sockets === 0);
      // Many upstreams (answers from other ports count as other upstreams): the cap holds.
      const others = await Promise.all([1, 2, 3, 4].map(async () => {
        const u = new Upstream();
        await u.start();
        return u;
      }));
      try {
        for (const u of others) {
          await pool.query(dnsQueryBuild(1, 'n1.test', DnsType.A), { address: '127.0.0.1', port: u.port }, 5000);
          assert.ok(pool.sockets <= 2, `sockets: ${pool.sockets}`);
        }
      } finally {
        for (const u of others) u.stop();
      }
    } finally {
      pool.close();
    }
  });

  test('no answer: the query fails after its deadline; close() fails those in flight', async () => {
    const silent = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => silent.once('error', reject).bind(0, '127.0.0.1', resolve));
    const pool = new UdpUpstreams();
    try {
      const target = { address: '127.0.0.1', port: silent.address().port };
      await assert.rejects(pool.query(dnsQueryBuild(1, 'n1.test', DnsType.A), target, 100), /no answer from 127\.0\.0\.1:\d+ within 100 ms/);
      const inFlight = pool.query(dnsQueryBuild(2, 'n2.test', DnsType.A), target, 10_000);
      pool.close();
      await assert.rejects(inFlight, /DNS proxy stopped/);
      assert.equal(pool.sockets, 0);
    } finally {
      silent.close();
    }
  });
});
