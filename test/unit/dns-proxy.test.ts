// The DNS proxy against a real (tiny, in-test) DNS server over loopback sockets, UDP and TCP, IPv4 and
// IPv6, with hostile clients and upstreams. No datapath here (the steering has its root tests: dns-policy).
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import v8 from 'node:v8';
import vm from 'node:vm';
import { pino } from 'pino';
import { dnsParse, dnsQueryBuild, DnsRcode, dnsReplyBuild, DnsType } from '../../agent/dns/codec.js';
import type { AnswerRecordInput, LearnedName } from '../../agent/dns/codec.js';
import { DnsProxy } from '../../agent/dns/proxy.js';
import type { DnsEndpoint, DnsProxyOptions } from '../../agent/dns/proxy.js';
import { fqdnMatcher } from '../../agent/policy/fqdn.js';
import { dgramBind, udpTcpListen } from '../../common/udp-tcp-listen.js';
import { waitFor } from '../helpers/sys.js';

const ZONE: Record<string, AnswerRecordInput[]> = {
  'api.test': [{ name: 'api.test', ttl: 2, address: '192.0.2.10' }],
  'www.test': [
    { name: 'www.test', ttl: 300, cname: 'edge.test' },
    { name: 'edge.test', ttl: 60, address: '192.0.2.20' },
    { name: 'edge.test', ttl: 60, address: '2001:db8::20' },
  ],
  'spoof.test': [{ name: 'spoof.test', ttl: 60, address: '192.0.2.66' }],
  'forever.test': [{ name: 'forever.test', ttl: 0x7fffffff, address: '192.0.2.77' }],
  'special.test': ['127.0.0.1', '0.0.0.0', '255.255.255.255', '224.0.0.1', '169.254.169.254', '192.0.2.88', '::', '::1', 'ff02::1', 'fe80::1', '::ffff:c000:201', '2001:db8::88']
    .map((address) => ({ name: 'special.test', ttl: 60, address })),
  'loopback.test': [{ name: 'loopback.test', ttl: 60, address: '127.0.0.1' }],
  'resolver.test': [{ name: 'resolver.test', ttl: 60, address: '192.0.2.99' }],
};

/** A tiny authoritative server for ZONE on UDP and TCP; `spoof.test` is answered with a wrong id. */
class TestDnsServer {
  readonly heard: string[] = [];
  private udp!: dgram.Socket;
  private tcp!: net.Server;
  port = 0;
  constructor(readonly address: string) {}
  private reply(msg: Buffer): Buffer {
    const q = dnsParse(msg).questions[0]!;
    this.heard.push(q.name);
    const reply = dnsReplyBuild(msg, (ZONE[q.name] ?? []).filter((r) => r.cname !== undefined || (q.type === DnsType.AAAA) === r.address!.includes(':')), ZONE[q.name] ? 0 : DnsRcode.NXDOMAIN);
    if (q.name === 'spoof.test') reply.writeUInt16BE((reply.readUInt16BE(0) + 1) & 0xffff, 0);
    return reply;
  }
  async start(): Promise<void> {
    // UDP and TCP on one port, picked again where the TCP side is taken (as the proxy does).
    const { udp, tcp, port } = await udpTcpListen({
      address: this.address,
      port: 0,
      udpBind: dgramBind(),
      tcpServer: () =>
        net.createServer((s) => {
          let buf = Buffer.alloc(0);
          s.on('data', (c) => {
            buf = Buffer.concat([buf, c]);
            if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
              const r = this.reply(buf.subarray(2, 2 + buf.readUInt16BE(0)));
              const f = Buffer.alloc(2);
              f.writeUInt16BE(r.length);
              s.end(Buffer.concat([f, r]));
            }
          });
          s.on('error', () => s.destroy());
        }),
      onTcpError: () => undefined,
    });
    this.udp = udp;
    this.tcp = tcp;
    this.port = port;
    this.udp.on('message', (m, ri) => this.udp.send(this.reply(m), ri.port, ri.address));
  }
  async stop(): Promise<void> {
    await new Promise<void>((r) => this.udp.close(() => r()));
    await new Promise<void>((r) => this.tcp.close(() => r()));
  }
}

/** A client socket that collects replies, read in order with a deadline. */
class UdpClient {
  private readonly queue: Buffer[] = [];
  private waiter?: () => void;
  readonly sock: dgram.Socket;
  constructor(private readonly proxy: DnsEndpoint) {
    this.sock = dgram.createSocket(net.isIPv6(proxy.address) ? 'udp6' : 'udp4');
    this.sock.on('message', (m) => {
      this.queue.push(m);
      this.waiter?.();
    });
  }
  send(msg: Buffer): void {
    this.sock.send(msg, this.proxy.port, this.proxy.address);
  }
  async next(deadlineMs = 10_000): Promise<Buffer> {
    const end = Date.now() + deadlineMs;
    while (this.queue.length === 0) {
      if (Date.now() > end) throw new Error('no reply before the deadline');
      await new Promise<void>((r) => {
        this.waiter = r;
        setTimeout(r, 100);
      });
    }
    return this.queue.shift()!;
  }
  close(): void {
    this.sock.close();
  }
}

async function tcpQuery(proxy: DnsEndpoint, msg: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: proxy.address, port: proxy.port });
    let buf = Buffer.alloc(0);
    s.on('connect', () => {
      const f = Buffer.alloc(2);
      f.writeUInt16BE(msg.length);
      s.write(Buffer.concat([f, msg]));
    });
    s.on('data', (c) => {
      buf = Buffer.concat([buf, c]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        s.destroy();
        resolve(buf.subarray(2, 2 + buf.readUInt16BE(0)));
      }
    });
    s.on('error', reject);
    s.setTimeout(10_000, () => reject(new Error('no TCP reply before the deadline')));
  });
}

const allowed = [fqdnMatcher({ matchName: 'api.test' }), fqdnMatcher({ matchPattern: '*.test' })];

for (const family of ['127.0.0.1', '::1']) {
  describe(`DNS proxy over ${family}`, () => {
    const upstream = new TestDnsServer(family);
    let proxy: DnsProxy;
    let at: DnsEndpoint;
    const learned: LearnedName[][] = [];
    let learnGate: Promise<void> = Promise.resolve();
    let learnFails = false;
    let learnEntered: (() => void) | undefined;
    const options = (): DnsProxyOptions => ({
      listen: { address: family, port: 0 },
      upstream: () => ({ address: family, port: upstream.port }),
      verdict: (_c, name) => (name === 'resolver.test' ? { allowed: false, refusal: 'resolver', rule: 'resolver 127.0.0.53 is a loopback address' } : { allowed: allowed.some((m) => m(name)), rule: 'test' }),
      learn: async (_c, l) => {
        learnEntered?.();
        await learnGate;
        if (learnFails) throw new Error('map write failed');
        learned.push(l);
      },
      minTtl: 10,
      maxTtl: 3600,
      upstreamTimeoutMs: 2000,
      log: pino({ level: 'silent' }),
    });
    before(async () => {
      await upstream.start();
      proxy = new DnsProxy(options());
      at = await proxy.start();
    });
    after(async () => {
      await proxy.stop();
      await upstream.stop();
    });

    test('allowed name over UDP: forwarded, learned (min TTL applied), answered', async () => {
      const c = new UdpClient(at);
      try {
        c.send(dnsQueryBuild(1, 'API.test', DnsType.A));
        const r = dnsParse(await c.next());
        assert.equal(r.id, 1);
        assert.equal(r.rcode, DnsRcode.NOERROR);
        assert.deepEqual(r.answers.map((a) => a.data), [{ kind: 'address', address: '192.0.2.10' }]);
        assert.deepEqual(learned.at(-1), [{ name: 'api.test', addresses: ['192.0.2.10'], ttl: 10 }]);
      } finally {
        c.close();
      }
    });

    test('a TTL of 2^31-1 is learned as dns.proxy.maxTTL; the answer keeps its own', async () => {
      const c = new UdpClient(at);
      try {
        c.send(dnsQueryBuild(21, 'forever.test', DnsType.A));
        const r = dnsParse(await c.next());
        assert.equal(r.answers[0]!.ttl, 0x7fffffff, 'released as sent');
        assert.deepEqual(learned.at(-1), [{ name: 'forever.test', addresses: ['192.0.2.77'], ttl: 3600 }]);
      } finally {
        c.close();
      }
    });

    test('special addresses in an answer are released but not learned; an answer with nothing else learns nothing', async () => {
      const c = new UdpClient(at);
      try {
        c.send(dnsQueryBuild(22, 'special.test', DnsType.A));
        const r = dnsParse(await c.next());
        assert.deepEqual(r.answers.map((a) => a.data.kind === 'address' && a.data.address), ['127.0.0.1', '0.0.0.0', '255.255.255.255', '224.0.0.1', '169.254.169.254', '192.0.2.88']);
        assert.deepEqual(learned.at(-1), [{ name: 'special.test', addresses: ['169.254.169.254', '192.0.2.88'], ttl: 60 }], 'IPv4 link-local is learned: the host routes it (metadata.google.internal)');
        c.send(dnsQueryBuild(23, 'special.test', DnsType.AAAA));
        const r6 = dnsParse(await c.next());
        assert.equal(r6.answers.length, 6);
        assert.deepEqual(learned.at(-1), [{ name: 'special.test', addresses: ['2001:db8::88'], ttl: 60 }]);
        const before = learned.length;
        c.send(dnsQueryBuild(24, 'loopback.test', DnsType.A));
        const lo = dnsParse(await c.next());
        assert.equal(lo.rcode, DnsRcode.NOERROR);
        assert.deepEqual(lo.answers.map((a) => a.data.kind === 'address' && a.data.address), ['127.0.0.1']);
        assert.equal(learned.length, before, 'nothing to learn');
      } finally {
        c.close();
      }
    });

    test('a query to a resolver address the proxy never forwards to: REFUSED, counted apart, the upstream never hears it', async () => {
      const c = new UdpClient(at);
      const before = proxy.stats.refusedResolver;
      try {
        c.send(dnsQueryBuild(25, 'resolver.test', DnsType.A));
        const r = dnsParse(await c.next());
        assert.equal(r.rcode, DnsRcode.REFUSED);
        assert.ok(!upstream.heard.includes('resolver.test'));
        assert.equal(proxy.stats.refusedResolver, before + 1);
      } finally {
        c.close();
      }
    });

    test('denied name: REFUSED, the upstream never hears it', async () => {
      const c = new UdpClient(at);
      try {
        c.send(dnsQueryBuild(2, 'other.example', DnsType.A));
        const r = dnsParse(await c.next());
        assert.equal(r.rcode, DnsRcode.REFUSED);
        assert.deepEqual(r.questions.map((q) => q.name), ['other.example']);
        assert.ok(!upstream.heard.includes('other.example'));
        assert.ok(proxy.stats.refused >= 1);
      } finally {
        c.close();
      }
    });

    test('the answer is not released before learning finished', async () => {
      const c = new UdpClient(at);
      let release!: () => void;
      learnGate = new Promise<void>((r) => (release = r));
      const entered = new Promise<void>((r) => (learnEntered = r));
      const before = learned.length;
      try {
        c.send(dnsQueryBuild(3, 'api.test', DnsType.A));
        // Bounded: a query that never reaches learning (an upstream timeout, say) fails the test, not hangs it.
        let deadline: NodeJS.Timeout | undefined;
        await Promise.race([
          entered,
          new Promise<never>((_, reject) => {
            deadline = setTimeout(() => reject(new Error('learning never began (no upstream answer?)')), 10_000);
          }),
        ]).finally(() => clearTimeout(deadline));
        // Learning has begun and is held. A denied query from the same client is answered at once; had
        // the first answer been released before learning finished, it would have been sent before this
        // query was, and arrive first (loopback keeps the order of one socket's sends).
        c.send(dnsQueryBuild(4, 'denied.example', DnsType.A));
        const first = dnsParse(await c.next());
        assert.equal(first.id, 4);
        assert.equal(learned.length, before);
        release();
        const second = dnsParse(await c.next());
        assert.equal(second.id, 3);
        assert.equal(learned.length, before + 1);
      } finally {
        learnGate = Promise.resolve();
        learnEntered = undefined;
        c.close();
      }
    });

    test('TCP with a CNAME chain: the name asked learned with the chain\'s addresses (not the chain\'s names), AAAA too', async () => {
      const r = dnsParse(await tcpQuery(at, dnsQueryBuild(5, 'www.test', DnsType.AAAA)));
      assert.equal(r.rcode, DnsRcode.NOERROR);
      assert.equal(r.answers.length, 2, 'the answer is released whole, CNAME included');
      assert.deepEqual(learned.at(-1), [{ name: 'www.test', addresses: ['2001:db8::20'], ttl: 60 }]);
      const refused = dnsParse(await tcpQuery(at, dnsQueryBuild(6, 'x.example', DnsType.A)));
      assert.equal(refused.rcode, DnsRcode.REFUSED);
    });

    test('learning fails: SERVFAIL, the answer is withheld', async () => {
      learnFails = true;
      const c = new UdpClient(at);
      try {
        c.send(dnsQueryBuild(7, 'api.test', DnsType.A));
        const r = dnsParse(await c.next());
        assert.equal(r.rcode, DnsRcode.SERVFAIL);
        assert.deepEqual(r.answers, []);
      } finally {
        learnFails = false;
        c.close();
      }
    });

    test('hostile upstream: a reply with another id is not passed on nor learned', async () => {
      const c = new UdpClient(at);
      const before = learned.length;
      try {
        c.send(dnsQueryBuild(8, 'spoof.test', DnsType.A));
        const r = dnsParse(await c.next());
        assert.equal(r.id, 8);
        assert.equal(r.rcode, DnsRcode.SERVFAIL);
        assert.equal(learned.length, before);
      } finally {
        c.close();
      }
    });

    test('hostile clients: garbage, responses, several questions; the proxy keeps answering', async () => {
      const c = new UdpClient(at);
      try {
        c.send(Buffer.from([1, 2, 3])); // shorter than a header: no answer
        const twoQ = Buffer.concat([dnsQueryBuild(9, 'api.test', DnsType.A), dnsQueryBuild(0, 'api.test', DnsType.A).subarray(12)]);
        twoQ.writeUInt16BE(2, 4);
        c.send(twoQ);
        assert.equal(dnsParse(await c.next()).rcode, DnsRcode.FORMERR);
        const loop = Buffer.concat([dnsQueryBuild(10, 'a', DnsType.A).subarray(0, 12), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
        c.send(loop);
        const r = dnsParse(await c.next());
        assert.equal(r.id, 10);
        assert.equal(r.rcode, DnsRcode.FORMERR);
        const response = dnsReplyBuild(dnsQueryBuild(11, 'api.test', DnsType.A), []);
        c.send(response); // a response is not a query: ignored
        c.send(dnsQueryBuild(12, 'api.test', DnsType.A));
        assert.equal(dnsParse(await c.next()).id, 12);
        // TCP: a frame announcing more than is sent, then close: nothing breaks.
        await new Promise<void>((resolve) => {
          const s = net.connect({ host: at.address, port: at.port }, () => s.end(Buffer.from([0xff, 0xff, 1, 2])));
          s.on('close', () => resolve());
          s.on('error', () => resolve());
        });
        assert.equal(dnsParse(await tcpQuery(at, dnsQueryBuild(13, 'api.test', DnsType.A))).id, 13);
      } finally {
        c.close();
      }
    });
  });
}

/** A proxy that allows every name and learns nothing, forwarding to `upstream`, with `limits`. */
function allowAllProxy(upstream: DnsProxyOptions['upstream'], limits: Partial<DnsProxyOptions> = {}): DnsProxy {
  return new DnsProxy({ listen: { address: '127.0.0.1', port: 0 }, upstream, verdict: () => ({ allowed: true }), learn: async () => {}, log: pino({ level: 'silent' }), ...limits });
}

test('DNS proxy: floods are bounded (queries in flight, TCP connections) and it keeps answering', async () => {
  const upstream = new TestDnsServer('127.0.0.1');
  await upstream.start();
  const proxy = allowAllProxy(() => ({ address: '127.0.0.1', port: upstream.port }), { maxInFlight: 4, maxTcpConnections: 2 });
  const at = await proxy.start();
  const held: net.Socket[] = [];
  const c = new UdpClient(at);
  try {
    // 50 pipelined queries in one TCP write: beyond 4 in flight the connection is dropped.
    await new Promise<void>((resolve) => {
      const frames = Array.from({ length: 50 }, (_, i) => {
        const q = dnsQueryBuild(i, 'api.test', DnsType.A);
        const f = Buffer.alloc(2);
        f.writeUInt16BE(q.length);
        return Buffer.concat([f, q]);
      });
      const s = net.connect({ host: at.address, port: at.port }, () => s.write(Buffer.concat(frames)));
      s.on('close', () => resolve());
      s.on('error', () => resolve());
      s.resume();
    });
    assert.ok(proxy.stats.dropped >= 1);
    // Two idle connections held open: a third is closed by the proxy without an answer.
    for (let i = 0; i < 2; i++) {
      held.push(await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ host: at.address, port: at.port }, () => resolve(s));
        s.once('error', reject);
      }));
    }
    const third = await new Promise<string>((resolve) => {
      const s = net.connect({ host: at.address, port: at.port });
      s.on('close', () => resolve('closed'));
      s.on('error', () => resolve('closed'));
      // Deadline for the failure case only (a proxy without the cap keeps it open).
      setTimeout(() => {
        resolve('still open');
        s.destroy();
      }, 10_000).unref();
    });
    assert.equal(third, 'closed');
    // UDP still answers.
    c.send(dnsQueryBuild(99, 'api.test', DnsType.A));
    assert.equal(dnsParse(await c.next()).id, 99);
  } finally {
    for (const s of held) s.destroy();
    c.close();
    await proxy.stop();
    await upstream.stop();
  }
});

/** A UDP socket bound to `address` (another workload's address on loopback) that counts what it hears. */
async function udpBound(address: string): Promise<{ sock: dgram.Socket; port: number; heard: () => number }> {
  const sock = dgram.createSocket('udp4');
  let heard = 0;
  sock.on('message', () => heard++);
  await new Promise<void>((resolve, reject) => sock.once('error', reject).bind(0, address, resolve));
  return { sock, port: sock.address().port, heard: () => heard };
}

function tcpFramed(queries: Buffer[]): Buffer {
  return Buffer.concat(queries.flatMap((q) => {
    const f = Buffer.alloc(2);
    f.writeUInt16BE(q.length);
    return [f, q];
  }));
}

test('DNS proxy: a workload flooding it with queries its upstream never answers leaves the others their share', async () => {
  // 127.0.0.2 is the hostile workload: its upstream swallows every query, so each one it sends stays in
  // flight until the (long) upstream deadline. 127.0.0.1 is a well-behaved one with a real upstream.
  const upstream = new TestDnsServer('127.0.0.1');
  await upstream.start();
  const blackHole = await udpBound('127.0.0.1');
  const hostile = await udpBound('127.0.0.2');
  const proxy = allowAllProxy((client) => ({ address: '127.0.0.1', port: client.address === '127.0.0.2' ? blackHole.port : upstream.port }), { upstreamTimeoutMs: 60_000, maxInFlight: 64, maxInFlightPerClient: 16 });
  const at = await proxy.start();
  const c = new UdpClient(at);
  try {
    // In rounds of 20, each taken or turned away before the next: the socket's buffer never overflows,
    // so every query reaches the proxy however slowly this process runs.
    for (let sent = 0; sent < 200; ) {
      for (const end = sent + 20; sent < end; sent++) hostile.sock.send(dnsQueryBuild(sent, `n${sent}.test`, DnsType.A), at.port, at.address);
      await waitFor('the flood to be taken or turned away', async () => proxy.queriesInFlight + proxy.stats.dropped === sent, 10_000);
    }
    assert.equal(proxy.queriesInFlight, 16, 'the flooding workload holds only its own share');
    assert.equal(proxy.stats.droppedBy['client-in-flight'], 184);
    assert.equal(proxy.stats.droppedBy['in-flight'], 0);
    await waitFor('the black hole to hear the queries taken', async () => blackHole.heard() === 16, 10_000);
    // The other workload is answered, over UDP and TCP, while the flood holds its slots.
    for (let i = 0; i < 20; i++) {
      c.send(dnsQueryBuild(1000 + i, 'api.test', DnsType.A));
      const r = dnsParse(await c.next());
      assert.equal(r.id, 1000 + i);
      assert.equal(r.rcode, DnsRcode.NOERROR);
    }
    assert.equal(dnsParse(await tcpQuery(at, dnsQueryBuild(2000, 'api.test', DnsType.A))).rcode, DnsRcode.NOERROR);
  } finally {
    c.close();
    hostile.sock.close();
    await proxy.stop();
    blackHole.sock.close();
    await upstream.stop();
  }
});

test('DNS proxy: one workload cannot hold every TCP connection; pipelined queries are held back, not dropped', async () => {
  const upstream = new TestDnsServer('127.0.0.1');
  await upstream.start();
  const proxy = allowAllProxy(() => ({ address: '127.0.0.1', port: upstream.port }), { maxTcpConnections: 8, maxTcpConnectionsPerClient: 3 });
  const at = await proxy.start();
  const held: net.Socket[] = [];
  const connect = (localAddress: string) =>
    new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: at.address, port: at.port, localAddress }, () => resolve(s));
      s.once('error', reject);
    });
  const closedByProxy = (s: net.Socket) =>
    new Promise<boolean>((resolve) => {
      s.on('close', () => resolve(true));
      s.on('error', () => undefined);
      // Deadline for the failure case only (a proxy without the cap keeps it open).
      setTimeout(() => resolve(false), 10_000).unref();
    });
  try {
    for (let i = 0; i < 3; i++) held.push(await connect('127.0.0.2'));
    const fourth = await connect('127.0.0.2');
    held.push(fourth);
    assert.equal(await closedByProxy(fourth), true, 'a fourth connection of one workload is closed');
    assert.equal(proxy.stats.droppedBy['client-tcp-connections'], 1);
    // Another workload still gets its connections and answers: 40 queries in one write (more than the
    // proxy takes from one connection at once), every one answered, in order.
    const s = await connect('127.0.0.1');
    held.push(s);
    const answers = await new Promise<number[]>((resolve, reject) => {
      let buf = Buffer.alloc(0);
      const ids: number[] = [];
      s.on('data', (chunk) => {
        buf = Buffer.concat([buf, chunk]);
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          ids.push(dnsParse(buf.subarray(2, 2 + buf.readUInt16BE(0))).id);
          buf = buf.subarray(2 + buf.readUInt16BE(0));
        }
        if (ids.length === 40) resolve(ids);
      });
      s.on('close', () => reject(new Error(`the connection closed after ${ids.length} answers`)));
      s.write(tcpFramed(Array.from({ length: 40 }, (_, i) => dnsQueryBuild(i, 'api.test', DnsType.A))));
    });
    assert.deepEqual(answers, Array.from({ length: 40 }, (_, i) => i));
    assert.equal(proxy.stats.dropped, 1);
  } finally {
    for (const h of held) h.destroy();
    await proxy.stop();
    await upstream.stop();
  }
});

test('DNS proxy: queries pipelined on a TCP connection that closed are not asked upstream', async () => {
  const blackHole = dgram.createSocket('udp4');
  const heard: string[] = [];
  blackHole.on('message', (m) => heard.push(dnsParse(m).questions[0]!.name));
  await new Promise<void>((resolve, reject) => blackHole.once('error', reject).bind(0, '127.0.0.1', resolve));
  // TCP queries go upstream over TCP: a TCP server that reads and never answers.
  const silentTcp = net.createServer((s) => {
    s.on('data', (c) => heard.push(dnsParse(c.subarray(2)).questions[0]!.name));
    s.on('error', () => s.destroy());
  });
  await new Promise<void>((resolve) => silentTcp.listen(blackHole.address().port, '127.0.0.1', resolve));
  const proxy = allowAllProxy(() => ({ address: '127.0.0.1', port: blackHole.address().port }), { upstreamTimeoutMs: 500 });
  const at = await proxy.start();
  try {
    const s = net.connect({ host: at.address, port: at.port });
    await new Promise<void>((resolve, reject) => s.once('connect', resolve).once('error', reject));
    s.write(tcpFramed(Array.from({ length: 10 }, (_, i) => dnsQueryBuild(i, `q${i}.test`, DnsType.A))));
    await waitFor('the proxy to take the queries', async () => proxy.queriesInFlight === 10, 10_000);
    await waitFor('the first query upstream', async () => heard.length === 1, 10_000);
    s.destroy();
    await waitFor('every query to be let go', async () => proxy.queriesInFlight === 0, 20_000);
    assert.deepEqual(heard, ['q0.test'], 'only the query under way when the client left went upstream');
  } finally {
    await proxy.stop();
    blackHole.close();
    await new Promise<void>((r) => silentTcp.close(() => r()));
  }
});

test('DNS proxy: socket errors, one a datagram at worst, are logged once in 10 s, not once each', async () => {
  const lines: string[] = [];
  const log = pino({ level: 'warn' }, { write: (l: string) => lines.push(l) });
  const proxy = new DnsProxy({ listen: { address: '127.0.0.1', port: 0 }, upstream: () => undefined, verdict: () => ({ allowed: true }), learn: async () => {}, log });
  await proxy.start();
  try {
    // As a queued answer's failed send reports it (udp-socket.ts): through the listener's own onError.
    const onError = (proxy as unknown as { udp: { onError: (e: NodeJS.ErrnoException) => void } }).udp.onError;
    for (let i = 0; i < 1000; i++) onError(Object.assign(new Error(`UDP send on 127.0.0.1 to 127.0.0.2:${1000 + i}: EPERM`), { code: 'EPERM' }));
    const logged = lines.filter((l) => l.includes('DNS proxy UDP socket error'));
    assert.equal(logged.length, 1);
    assert.match(logged[0]!, /EPERM/);
  } finally {
    await proxy.stop();
  }
});

test('DNS proxy: queries refused by policy are logged once in 10 s, not once each', async () => {
  const lines: string[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => lines.push(l) });
  const proxy = new DnsProxy({ listen: { address: '127.0.0.1', port: 0 }, upstream: () => ({ address: '127.0.0.1', port: 9 }), verdict: () => ({ allowed: false, rule: 'no rule allows it (test)' }), learn: async () => {}, log });
  const at = await proxy.start();
  const c = new UdpClient(at);
  try {
    for (let i = 0; i < 200; i++) {
      c.send(dnsQueryBuild(i, `n${i}.denied.test`, DnsType.A));
      assert.equal(dnsParse(await c.next()).rcode, DnsRcode.REFUSED);
    }
    const logged = lines.filter((l) => l.includes('DNS query refused by policy'));
    assert.equal(logged.length, 1);
    assert.match(logged[0]!, /n0\.denied\.test/);
    assert.equal(proxy.stats.refused, 200);
  } finally {
    c.close();
    await proxy.stop();
  }
});

test('DNS proxy: the TCP listener\'s errors (a failed accept) are logged once in 10 s and do not end the agent', async () => {
  const lines: string[] = [];
  const log = pino({ level: 'warn' }, { write: (l: string) => lines.push(l) });
  const proxy = new DnsProxy({ listen: { address: '127.0.0.1', port: 0 }, upstream: () => undefined, verdict: () => ({ allowed: true }), learn: async () => {}, log });
  const at = await proxy.start();
  try {
    // As node reports a failed accept: 'error' on the listening server (with no listener: thrown).
    const tcp = (proxy as unknown as { tcp: net.Server }).tcp;
    for (let i = 0; i < 100; i++) tcp.emit('error', Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', syscall: 'accept' }));
    const logged = lines.filter((l) => l.includes('DNS proxy TCP listener error'));
    assert.equal(logged.length, 1);
    assert.match(logged[0]!, /EMFILE/);
    // still listening: a query over TCP is answered (REFUSED: this client was not steered)
    const s = net.connect({ host: at.address, port: at.port });
    await new Promise<void>((resolve, reject) => s.once('connect', resolve).once('error', reject));
    s.write(tcpFramed([dnsQueryBuild(9, 'api.test', DnsType.A)]));
    const reply = await new Promise<Buffer>((resolve, reject) => {
      let buf = Buffer.alloc(0);
      s.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) resolve(buf.subarray(2, 2 + buf.readUInt16BE(0)));
      }).once('error', reject);
    });
    s.destroy();
    assert.equal(dnsParse(reply).rcode, DnsRcode.REFUSED);
  } finally {
    await proxy.stop();
  }
});

test('DNS proxy: an upstream that does not answer gives SERVFAIL', async () => {
  const silent = dgram.createSocket('udp4');
  await new Promise<void>((resolve, reject) => silent.once('error', reject).bind(0, '127.0.0.1', resolve));
  const proxy = allowAllProxy(() => ({ address: '127.0.0.1', port: silent.address().port }), { upstreamTimeoutMs: 200 });
  const at = await proxy.start();
  const c = new UdpClient(at);
  try {
    c.send(dnsQueryBuild(1, 'api.test', DnsType.A));
    assert.equal(dnsParse(await c.next()).rcode, DnsRcode.SERVFAIL);
    assert.equal(proxy.stats.upstreamFailures, 1);
  } finally {
    c.close();
    await proxy.stop();
    silent.close();
  }
});

test('DNS proxy: queries held by a silent upstream keep only their own bytes, not the receive slabs (large junk between them)', async () => {
  // The proxy's UDP socket receives into 256 KB slabs shared by many datagrams (agent/dns/udp-socket.ts).
  // A workload that makes each query wait (its resolver never answers) and sends ~180 KB of junk after
  // each would pin a slab per query if the waiting query were kept as a view of it: 100 queries, 25 MB.
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const silent = dgram.createSocket('udp4');
  await new Promise<void>((resolve, reject) => silent.once('error', reject).bind(0, '127.0.0.1', resolve));
  const proxy = allowAllProxy(() => ({ address: '127.0.0.1', port: silent.address().port }), { upstreamTimeoutMs: 60_000, maxInFlightPerClient: 1000 });
  const at = await proxy.start();
  const c = new UdpClient(at);
  try {
    gc();
    const before = process.memoryUsage().arrayBuffers;
    const junk = Buffer.alloc(60_000, 0xff);
    const queries = 100;
    for (let i = 0; i < queries; i++) {
      c.send(dnsQueryBuild(i, `held${i}.test`, DnsType.A));
      for (let j = 0; j < 3; j++) c.send(junk);
      // paced: the proxy's socket buffer must not drop any of it
      await waitFor(`query ${i} held and its junk refused`, async () => proxy.queriesInFlight === i + 1 && proxy.stats.malformed === 3 * (i + 1), 20_000);
    }
    gc();
    const pinned = process.memoryUsage().arrayBuffers - before;
    assert.ok(pinned < 8 << 20, `${queries} held queries keep ${(pinned / 2 ** 20).toFixed(1)} MB of ArrayBuffers`);
  } finally {
    c.close();
    await proxy.stop();
    silent.close();
  }
});
