// The DNS proxy's port 0 ("any free port") when the number the kernel picks for UDP is taken on TCP.
// In a network namespace of its own (so its port range and sockets are the test's alone), the range is
// narrowed to two ports and the first is taken on TCP: every start must end on the other one, never
// fail, and a fixed port that is taken must fail naming EADDRINUSE with nothing left bound.
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { nodeInOwnNetns } from '../helpers/sys.js';

const proxyModule = fileURLToPath(new URL('../../agent/dns/proxy.js', import.meta.url));

const script = `
import net from 'node:net';
import dgram from 'node:dgram';
import { DnsProxy } from ${JSON.stringify(proxyModule)};
const log = { warn() {}, info() {}, debug() {}, child() { return log; } };
const taken = net.createServer();
await new Promise((r) => taken.listen({ port: 40000, host: '127.0.0.1' }, r));
const options = (port) => ({
  listen: { address: '127.0.0.1', port },
  upstream: () => undefined,
  verdict: () => ({ allowed: false }),
  learn: async () => {},
  log,
});
const ports = [];
for (let i = 0; i < 12; i++) {
  const p = new DnsProxy(options(0));
  ports.push((await p.start()).port);
  await p.stop();
}
let fixed;
try {
  await new DnsProxy(options(40000)).start();
  fixed = 'started';
} catch (e) {
  fixed = e.code;
}
// Nothing of the failed start stays bound: UDP 40000 is free again.
const u = dgram.createSocket('udp4');
const udpFree = await new Promise((r) => { u.once('error', () => r(false)); u.bind(40000, '127.0.0.1', () => r(true)); });
u.close();
taken.close();
console.log(JSON.stringify({ ports, fixed, udpFree }));
`;

test('DNS proxy, port 0: a UDP port whose number is taken on TCP is traded for another; a taken fixed port fails cleanly (root)', { timeout: 120_000 }, async () => {
  const out = await nodeInOwnNetns<{ ports: number[]; fixed: string; udpFree: boolean }>('sysctl -q -w net.ipv4.ip_local_port_range="40000 40001"', script);
  // With 12 starts, a proxy that does not try again would have met 40000 (taken on TCP) with
  // probability 1 - 2^-12.
  assert.deepEqual(out.ports, Array(12).fill(40001));
  assert.equal(out.fixed, 'EADDRINUSE');
  assert.equal(out.udpFree, true);
});
