import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { icmpTypeNumber, portRangePrefixes, protocolNumber } from '../../agent/policy/index.js';
import { isPortName, portPrefixContains } from '../../agent/policy/ports.js';

function covered(lo: number, hi: number): void {
  const prefixes = portRangePrefixes(lo, hi);
  for (let port = 0; port <= 65535; port++) {
    const n = prefixes.filter((p) => portPrefixContains(p, port)).length;
    const want = port >= lo && port <= hi ? 1 : 0;
    if (n !== want) assert.fail(`range ${lo}-${hi}: port ${port} covered ${n} times, want ${want} (${JSON.stringify(prefixes)})`);
  }
  for (const p of prefixes) {
    const size = 2 ** (16 - p.prefixLen);
    assert.equal(p.port % size, 0, `prefix ${p.port}/${p.prefixLen} is aligned`);
  }
}

describe('port ranges as LPM prefixes', () => {
  for (const [lo, hi] of [
    [80, 80],
    [0, 65535],
    [1, 65535],
    [1, 1023],
    [0, 1023],
    [80, 81],
    [1000, 2000],
    [32768, 60999],
    [65535, 65535],
    [1024, 65535],
    [7, 9],
  ] as const) {
    test(`${lo}-${hi} is covered exactly (exhaustive over all ports)`, () => covered(lo, hi));
  }
  test('known decompositions are minimal', () => {
    assert.deepEqual(portRangePrefixes(0, 65535), [{ port: 0, prefixLen: 0 }]);
    assert.deepEqual(portRangePrefixes(80, 80), [{ port: 80, prefixLen: 16 }]);
    assert.deepEqual(portRangePrefixes(80, 81), [{ port: 80, prefixLen: 15 }]);
    assert.deepEqual(portRangePrefixes(1024, 65535), [
      { port: 1024, prefixLen: 6 },
      { port: 2048, prefixLen: 5 },
      { port: 4096, prefixLen: 4 },
      { port: 8192, prefixLen: 3 },
      { port: 16384, prefixLen: 2 },
      { port: 32768, prefixLen: 1 },
    ]);
    assert.equal(portRangePrefixes(1, 65535).length, 16);
    assert.ok(portRangePrefixes(1, 65534).length <= 30);
  });
  test('random ranges are covered exactly', () => {
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % 65536);
    for (let i = 0; i < 5; i++) {
      const a = rnd();
      const b = rnd();
      covered(Math.min(a, b), Math.max(a, b));
    }
  });
  test('bad ranges throw', () => {
    assert.throws(() => portRangePrefixes(10, 9));
    assert.throws(() => portRangePrefixes(-1, 9));
    assert.throws(() => portRangePrefixes(0, 65536));
  });
});

describe('protocols, port names, ICMP types', () => {
  test('protocol names', () => {
    assert.equal(protocolNumber('TCP'), 6);
    assert.equal(protocolNumber('udp'), 17);
    assert.equal(protocolNumber('SCTP'), 132);
    assert.equal(protocolNumber('ICMPv6'), 58);
    assert.equal(protocolNumber(1), 1);
    assert.throws(() => protocolNumber('GRE'));
  });
  test('port names follow IANA_SVC_NAME', () => {
    for (const ok of ['http', 'serve-80-tcp', 'a1', 'dns-tcp']) assert.ok(isPortName(ok), ok);
    for (const bad of ['', '80', 'HTTP', '-http', 'http-', 'a--b', 'abcdefghijklmnop']) assert.ok(!isPortName(bad), bad);
  });
  test('ICMP type names per family', () => {
    assert.equal(icmpTypeNumber('EchoRequest', 'IPv4'), 8);
    assert.equal(icmpTypeNumber('Echo', 'IPv4'), 8);
    assert.equal(icmpTypeNumber('EchoRequest', 'IPv6'), 128);
    assert.equal(icmpTypeNumber('EchoReply', 'IPv4'), 0);
    assert.equal(icmpTypeNumber('PacketTooBig', 'IPv4'), undefined);
    assert.equal(icmpTypeNumber('PacketTooBig', 'IPv6'), 2);
    assert.equal(icmpTypeNumber('13', 'IPv4'), 13);
    assert.equal(icmpTypeNumber(256, 'IPv4'), undefined);
  });
});
