// The DNS proxy's UDP sockets when the kernel has no room for a datagram (EAGAIN: what the socket sent
// has not left yet). In a network namespace of its own (gone with the process), datagrams go out of a
// veth device behind a token bucket of 8 kbit/s that holds them (to a neighbour entry made by hand: no
// ARP to wait for): the socket's send buffer fills, and sends must queue instead of failing (node's
// dgram queued too, and the proxy's answers would otherwise be dropped). Once the device lets them
// through, every waiting datagram must leave; past UDP_SEND_QUEUE_MAX datagrams or
// UDP_SEND_QUEUE_BYTES_MAX bytes a send must fail with EAGAIN naming the limit; nothing is left waiting
// after close().
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { nodeInOwnNetns } from '../helpers/sys.js';

const socketModule = fileURLToPath(new URL('../../agent/dns/udp-socket.js', import.meta.url));

const script = `
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { UdpSocket, UDP_SEND_QUEUE_BYTES_MAX, UDP_SEND_QUEUE_MAX } from ${JSON.stringify(socketModule)};
const slow = ['tbf', 'rate', '8kbit', 'burst', '1600', 'limit', '100000000'];
// /proc/net/dev is the namespace's own (sysfs shows the namespace it was mounted in): q0's packets sent
const tx = () => Number(readFileSync('/proc/net/dev', 'utf8').split('\\n').find((l) => l.trim().startsWith('q0:')).split(':')[1].trim().split(/\\s+/)[9]);
const until = async (cond, what) => {
  const end = Date.now() + 60000;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 5));
  }
};
const errors = [];
const sock = new UdpSocket({ address: '10.251.77.1', port: 0, onMessage() {}, onError: (e) => errors.push(e.code) });
const to = { address: '10.251.77.2', port: 9 };
const payload = (n) => Buffer.alloc(1200, n & 0xff);
let threw = null;
let n = 0;
try {
  while (sock.queued < 200 && n < 20000) sock.send(payload(n++), to);
} catch (e) {
  threw = e.code + ': ' + e.message;
}
const waiting = sock.queued;
const tx0 = tx();
// A queue that lets everything through: what the bucket held is dropped with it, the buffer empties.
execFileSync('tc', ['qdisc', 'replace', 'dev', 'q0', 'root', 'pfifo', 'limit', '100000']);
await until(() => sock.queued === 0, 'the waiting datagrams to be sent');
await until(() => tx() - tx0 >= waiting, 'the waiting datagrams to leave the device');
const left = tx() - tx0;
execFileSync('tc', ['qdisc', 'replace', 'dev', 'q0', 'root', ...slow]);
let bound = null;
for (let m = 0; m < 100000 && !bound; m++) {
  try {
    sock.send(payload(m), to);
  } catch (e) {
    bound = { code: e.code, message: e.message, queued: sock.queued };
  }
}
const port = sock.port;
sock.close();
const queuedAfterClose = sock.queued;
// Datagrams of 60,000 bytes: the bound in bytes comes first.
const big = new UdpSocket({ address: '10.251.77.1', port: 0, onMessage() {} });
let boundBytes = null;
for (let m = 0; m < 10000 && !boundBytes; m++) {
  try {
    big.send(Buffer.alloc(60000, m & 0xff), to);
  } catch (e) {
    boundBytes = { code: e.code, queued: big.queued };
  }
}
big.close();
console.log(JSON.stringify({ threw, sent: n, waiting, left, bound, port, queuedAfterClose, boundBytes, errors, max: UDP_SEND_QUEUE_MAX, maxBytes: UDP_SEND_QUEUE_BYTES_MAX }));
`;

test('DNS proxy UDP socket: a full send buffer queues datagrams, all leave once there is room, the queue is bounded (root)', { timeout: 120_000 }, async () => {
  const setup = [
    'ip link add q0 type veth peer name q1',
    'ip addr add 10.251.77.1/30 dev q0',
    'ip link set q1 up',
    'ip link set q0 up',
    'ip neigh add 10.251.77.2 lladdr 02:00:00:00:00:02 dev q0 nud permanent',
    'tc qdisc add dev q0 root tbf rate 8kbit burst 1600 limit 100000000',
  ].join(' && ');
  const out = await nodeInOwnNetns<{
    threw: string | null; sent: number; waiting: number; left: number; bound: { code: string; message: string; queued: number } | null; port: number;
    queuedAfterClose: number; boundBytes: { code: string; queued: number } | null; errors: string[]; max: number; maxBytes: number;
  }>(setup, script);
  // The buffer filled (the bucket holds nearly all of it), and the sends after that queued without an error.
  assert.equal(out.threw, null);
  assert.equal(out.waiting, 200);
  assert.ok(out.sent > out.waiting, `some datagrams went straight to the kernel first (${out.sent} sent)`);
  // Every datagram that waited left the device once the bucket was gone.
  assert.ok(out.left >= out.waiting, `${out.left} datagrams left the device, ${out.waiting} had waited`);
  assert.deepEqual(out.errors, []);
  // Slow again: the queue fills to its bound, and the next send says so.
  assert.ok(out.bound, 'a send failed once the queue was full');
  assert.equal(out.bound.code, 'EAGAIN');
  assert.equal(out.bound.queued, out.max);
  assert.match(out.bound.message, new RegExp(`send buffer is full and ${out.max} datagrams \\(${out.max * 1200} bytes\\) wait`));
  assert.match(out.bound.message, new RegExp(`^UDP send on 10\\.251\\.77\\.1:${out.port}: EAGAIN`));
  assert.equal(out.queuedAfterClose, 0);
  // 60,000-byte datagrams stop at the bound in bytes, before the one in datagrams.
  assert.equal(out.boundBytes?.code, 'EAGAIN');
  assert.equal(out.boundBytes.queued, Math.floor(out.maxBytes / 60000));
});
