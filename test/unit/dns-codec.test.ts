import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { dnsErrorReply, dnsLearned, dnsParse, DnsParseError, dnsQueryBuild, DnsRcode, dnsReplyBuild, DnsType, nameRead } from '../../agent/dns/codec.js';

const header = (qd: number, an = 0, flags = 0x0100) => {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(0x1234, 0);
  b.writeUInt16BE(flags, 2);
  b.writeUInt16BE(qd, 4);
  b.writeUInt16BE(an, 6);
  return b;
};
const bad = (buf: Buffer, re: RegExp) => assert.throws(() => dnsParse(buf), (e: unknown) => e instanceof DnsParseError && re.test(e.message));

describe('dns codec: well-formed messages', () => {
  test('query round trip, names lower-cased', () => {
    const m = dnsParse(dnsQueryBuild(7, 'API.Test', DnsType.AAAA));
    assert.equal(m.id, 7);
    assert.equal(m.response, false);
    assert.equal(m.recursionDesired, true);
    assert.deepEqual(m.questions, [{ name: 'api.test', type: DnsType.AAAA, class: 1 }]);
    // The same bytes in a bare Uint8Array (not a Buffer) read the same.
    const bare = Uint8Array.from(dnsQueryBuild(7, 'API.Test-x_1', DnsType.A));
    assert.equal(Buffer.isBuffer(bare), false);
    assert.equal(dnsParse(bare).questions[0]!.name, 'api.test-x_1');
  });
  test('reply with a CNAME chain teaches the question\'s name only: the addresses at the chain\'s end, smallest TTL on the way', () => {
    const q = dnsQueryBuild(9, 'www.test', DnsType.A);
    const r = dnsParse(dnsReplyBuild(q, [
      { name: 'www.test', ttl: 300, cname: 'edge.test' },
      { name: 'edge.test', ttl: 20, cname: 'host.cdn.test' },
      { name: 'host.cdn.test', ttl: 60, address: '192.0.2.7' },
      { name: 'host.cdn.test', ttl: 30, address: '192.0.2.8' },
      { name: 'unrelated.test', ttl: 999, address: '198.51.100.1' },
    ]));
    assert.equal(r.response, true);
    assert.deepEqual(dnsLearned(r), [{ name: 'www.test', addresses: ['192.0.2.7', '192.0.2.8'], ttl: 20 }]);
  });
  test('a resolver cannot teach names nobody asked through a CNAME (one whose TTL never runs out, for a name another workload\'s toFQDNs allows)', () => {
    const q = dnsQueryBuild(9, 'x.allowed.test', DnsType.A);
    const r = dnsParse(dnsReplyBuild(q, [
      { name: 'x.allowed.test', ttl: 0x7fffffff, cname: 'api.bank.example' },
      { name: 'api.bank.example', ttl: 0x7fffffff, address: '6.6.6.6' },
    ]));
    assert.deepEqual(dnsLearned(r), [{ name: 'x.allowed.test', addresses: ['6.6.6.6'], ttl: 0x7fffffff }]);
    assert.ok(!dnsLearned(r).some((l) => l.name === 'api.bank.example'));
    // The smallest TTL wherever it sits on the chain.
    const low = dnsParse(dnsReplyBuild(q, [
      { name: 'x.allowed.test', ttl: 300, cname: 'a.test' },
      { name: 'a.test', ttl: 7, cname: 'b.test' },
      { name: 'b.test', ttl: 60, address: '192.0.2.1' },
    ]));
    assert.deepEqual(dnsLearned(low), [{ name: 'x.allowed.test', addresses: ['192.0.2.1'], ttl: 7 }]);
  });
  test('without a CNAME: the asked name\'s addresses, each once in order, smallest TTL of its records; others ignored', () => {
    const q = dnsQueryBuild(9, 'Www.Test', DnsType.A);
    const r = dnsParse(dnsReplyBuild(q, [
      { name: 'www.test', ttl: 300, address: '192.0.2.7' },
      { name: 'other.test', ttl: 1, address: '198.51.100.1' },
      { name: 'WWW.test', ttl: 40, address: '192.0.2.8' },
      { name: 'www.test', ttl: 20, address: '192.0.2.7' }, // again, with a lower TTL
      { name: 'www.test', ttl: 90, address: '2001:db8::7' },
    ]));
    assert.deepEqual(dnsLearned(r), [{ name: 'www.test', addresses: ['192.0.2.7', '192.0.2.8', '2001:db8::7'], ttl: 20 }]);
    // The same answers behind a CNAME take the chain's way: the same addresses and TTL, for the name asked.
    const viaChain = dnsParse(dnsReplyBuild(dnsQueryBuild(9, 'alias.test', DnsType.A), [
      { name: 'alias.test', ttl: 999, cname: 'www.test' },
      ...[300, 40, 20, 90].map((ttl, i) => ({ name: i === 1 ? 'WWW.test' : 'www.test', ttl, address: ['192.0.2.7', '192.0.2.8', '192.0.2.7', '2001:db8::7'][i]! })),
    ]));
    assert.deepEqual(dnsLearned(viaChain), [{ name: 'alias.test', addresses: ['192.0.2.7', '192.0.2.8', '2001:db8::7'], ttl: 20 }]);
    assert.deepEqual(dnsLearned(dnsParse(dnsReplyBuild(q, []))), []);
  });
  test('AAAA in canonical text', () => {
    const q = dnsQueryBuild(1, 'v6.test', DnsType.AAAA);
    const r = dnsParse(dnsReplyBuild(q, [{ name: 'v6.test', ttl: 5, address: '2001:db8::1' }, { name: 'v6.test', ttl: 5, address: '2001:db8:0:1:0:0:0:0' }]));
    assert.deepEqual(dnsLearned(r)[0]!.addresses, ['2001:db8::1', '2001:db8:0:1::']);
  });
  test('nothing learned from errors, loops or answers for other names', () => {
    const q = dnsQueryBuild(1, 'a.test', DnsType.A);
    assert.deepEqual(dnsLearned(dnsParse(dnsReplyBuild(q, [{ name: 'a.test', ttl: 5, address: '192.0.2.1' }], DnsRcode.NXDOMAIN))), []);
    assert.deepEqual(dnsLearned(dnsParse(dnsReplyBuild(q, [{ name: 'a.test', ttl: 5, cname: 'b.test' }, { name: 'b.test', ttl: 5, cname: 'a.test' }]))), []);
    assert.deepEqual(dnsLearned(dnsParse(dnsReplyBuild(q, [{ name: 'evil.test', ttl: 5, address: '192.0.2.1' }]))), []);
  });
  test('TTL with the top bit set counts as 0', () => {
    const q = dnsQueryBuild(1, 'a.test', DnsType.A);
    const r = dnsReplyBuild(q, [{ name: 'a.test', ttl: 0x80000001, address: '192.0.2.1' }]);
    assert.equal(dnsParse(r).answers[0]!.ttl, 0);
  });
  test('compressed names are followed backwards', () => {
    // question a.test at 12; answer name = pointer to 12; CNAME target = "x" + pointer to 14 ("test").
    const q = dnsQueryBuild(1, 'a.test', DnsType.A);
    const rdata = Buffer.from([1, 0x78, 0xc0, 14]);
    const rr = Buffer.concat([Buffer.from([0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 9, 0, rdata.length]), rdata]);
    const msg = Buffer.concat([header(1, 1, 0x8180), q.subarray(12), rr]);
    assert.deepEqual(dnsParse(msg).answers[0]!.data, { kind: 'cname', target: 'x.test' });
  });
  test('REFUSED reply echoes id and question, no records', () => {
    const q = dnsQueryBuild(0xbeef, 'denied.test', DnsType.A);
    const r = dnsParse(dnsErrorReply(q, DnsRcode.REFUSED));
    assert.equal(r.id, 0xbeef);
    assert.equal(r.response, true);
    assert.equal(r.rcode, DnsRcode.REFUSED);
    assert.deepEqual(r.questions, [{ name: 'denied.test', type: DnsType.A, class: 1 }]);
    assert.deepEqual(r.answers, []);
  });
});

describe('dns codec: hostile messages', () => {
  test('compression loops and forward pointers', () => {
    // Pointer to itself.
    bad(Buffer.concat([header(1), Buffer.from([0xc0, 12, 0, 1, 0, 1])]), /does not point backwards/);
    // Two pointers pointing at each other: the second would go forward again.
    const loop = Buffer.concat([header(1), Buffer.from([1, 0x61, 0xc0, 16, 0xc0, 12, 0, 1, 0, 1])]);
    assert.throws(() => nameRead(loop, 12), /does not point backwards/);
    // Forward pointer.
    bad(Buffer.concat([header(1), Buffer.from([0xc0, 40, 0, 1, 0, 1])]), /does not point backwards/);
  });
  test('truncated anywhere', () => {
    const full = dnsReplyBuild(dnsQueryBuild(1, 'a.test', DnsType.A), [{ name: 'a.test', ttl: 5, address: '192.0.2.1' }]);
    for (let n = 0; n < full.length; n++) assert.throws(() => dnsParse(full.subarray(0, n)), DnsParseError, `cut at ${n}`);
    assert.doesNotThrow(() => dnsParse(full));
  });
  test('trailing bytes, counts beyond the data, oversized', () => {
    const q = dnsQueryBuild(1, 'a.test', DnsType.A);
    bad(Buffer.concat([q, Buffer.from([0])]), /1 bytes after the last record/);
    const lying = Buffer.from(q);
    lying.writeUInt16BE(0xffff, 6);
    bad(lying, /runs past the end/);
    bad(Buffer.alloc(70000), /more than 65535/);
  });
  test('label and name lengths, label types', () => {
    bad(Buffer.concat([header(1), Buffer.from([64]), Buffer.alloc(64, 0x61), Buffer.from([0, 0, 1, 0, 1])]), /unsupported label type|longer than 63/);
    const long = Buffer.concat([header(1), ...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([60]), Buffer.alloc(60, 0x61)])), Buffer.from([0, 0, 1, 0, 1])]);
    bad(long, /longer than 255 bytes/);
    bad(Buffer.concat([header(1), Buffer.from([0x41, 0, 0, 1, 0, 1])]), /unsupported label type 0x40/);
  });
  test('a dot or odd byte inside a label cannot pass for a separator', () => {
    const msg = Buffer.concat([header(1), Buffer.from([8]), Buffer.from('api.test'), Buffer.from([0, 0, 1, 0, 1])]);
    assert.equal(dnsParse(msg).questions[0]!.name, 'api\\046test');
    const nul = Buffer.concat([header(1), Buffer.from([3, 0x61, 0, 0x62, 0, 0, 1, 0, 1])]);
    assert.equal(dnsParse(nul).questions[0]!.name, 'a\\000b');
  });
  test('A and AAAA records with the wrong length', () => {
    const q = dnsQueryBuild(1, 'a.test', DnsType.A);
    const rr = Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 9, 0, 5, 1, 2, 3, 4, 5]);
    bad(Buffer.concat([header(1, 1, 0x8180), q.subarray(12), rr]), /data length 5, expected 4/);
    const rr6 = Buffer.from([0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 9, 0, 4, 1, 2, 3, 4]);
    bad(Buffer.concat([header(1, 1, 0x8180), q.subarray(12), rr6]), /data length 4, expected 16/);
  });
  test('CNAME target spilling past its record', () => {
    const q = dnsQueryBuild(1, 'a.test', DnsType.A);
    // rdlength 2 but the name inside is 3 bytes long.
    const rr = Buffer.from([0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 9, 0, 2, 1, 0x78, 0]);
    bad(Buffer.concat([header(1, 1, 0x8180), q.subarray(12), rr]), /runs past the end|does not fill/);
  });
  test('names of any bytes read as a label-by-label reader reads them: lower case, \\DDD escapes, pointers, errors', () => {
    // The reference: one label at a time, one character at a time (what nameRead did before it wrote
    // into one buffer), with the same limits.
    const reference = (buf: Uint8Array, offset: number): { name: string; next: number } | string => {
      const labels: string[] = [];
      let pos = offset;
      let next = -1;
      let wire = 1;
      let jumps = 0;
      let floor = offset;
      for (;;) {
        if (pos >= buf.length) return 'runs past the end';
        const len = buf[pos]!;
        if (len === 0) {
          if (next < 0) next = pos + 1;
          break;
        }
        if ((len & 0xc0) === 0xc0) {
          if (pos + 1 >= buf.length) return 'truncated compression pointer';
          const target = ((len & 0x3f) << 8) | buf[pos + 1]!;
          if (target >= floor) return 'does not point backwards';
          if (++jumps > 64) return 'too many compression pointers';
          if (next < 0) next = pos + 2;
          pos = floor = target;
          continue;
        }
        if ((len & 0xc0) !== 0) return 'unsupported label type';
        if (pos + 1 + len > buf.length) return 'label runs past the end';
        wire += len + 1;
        if (wire > 255) return 'longer than 255 bytes';
        let label = '';
        for (const b of buf.subarray(pos + 1, pos + 1 + len)) {
          const c = String.fromCharCode(b);
          label += /[-a-z0-9_]/i.test(c) ? c.toLowerCase() : `\\${String(b).padStart(3, '0')}`;
        }
        labels.push(label);
        pos += 1 + len;
      }
      return { name: labels.join('.'), next };
    };
    let seed = 7;
    const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
    const alphabet = Buffer.from('abcXYZ09-_.\\\x00\x7f\xff');
    for (let i = 0; i < 3000; i++) {
      const parts: number[] = [];
      const labels = 1 + rnd(6);
      for (let l = 0; l < labels; l++) {
        const len = rnd(8) === 0 ? 40 + rnd(30) : 1 + rnd(12); // some past 63
        parts.push(len);
        for (let k = 0; k < len; k++) parts.push(rnd(3) === 0 ? rnd(256) : alphabet[rnd(alphabet.length)]!);
      }
      // Sometimes end in a pointer (backwards, or forwards: an error), else the root label.
      if (rnd(3) === 0) parts.push(0xc0, rnd(40));
      else parts.push(0);
      const msg = Buffer.concat([header(1), Buffer.from([3, 0x41, 0x62, 0x43, 0]), Buffer.from(parts.map((b) => b & 0xff))]);
      const want = reference(msg, 17);
      let got: { name: string; next: number } | string;
      try {
        got = nameRead(msg, 17);
      } catch (e) {
        assert.ok(e instanceof DnsParseError, String(e));
        got = (e as Error).message;
      }
      if (typeof want === 'string') assert.ok(typeof got === 'string' && got.includes(want), `${msg.toString('hex')}: ${JSON.stringify(got)}, want an error "${want}"`);
      else assert.deepEqual(got, want, msg.toString('hex'));
    }
  });
  test('random bytes never throw anything but DnsParseError', () => {
    let seed = 42;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 8) & 0xff;
    const base = dnsReplyBuild(dnsQueryBuild(1, 'a.b.test', DnsType.A), [{ name: 'a.b.test', ttl: 5, cname: 'c.test' }, { name: 'c.test', ttl: 5, address: '192.0.2.1' }]);
    for (let i = 0; i < 5000; i++) {
      const m = Buffer.from(base);
      for (let k = 0; k < 1 + (i % 4); k++) m[12 + (rnd() % (m.length - 12))] = rnd();
      try {
        dnsLearned(dnsParse(m));
      } catch (e) {
        assert.ok(e instanceof DnsParseError, String(e));
      }
      // A REFUSED reply can always be made from a message with a whole header.
      assert.equal(dnsParse(dnsErrorReply(m, DnsRcode.REFUSED)).rcode, DnsRcode.REFUSED);
    }
  });
});
