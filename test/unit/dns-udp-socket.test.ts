// The DNS proxy's UDP sockets (agent/dns/udp-socket.ts, bpf/native/src/udp.c): datagrams received into
// shared slabs must each keep their own bytes (never overwritten by later ones, across slabs too), any
// sender's datagram up to the largest UDP payload arrives whole, a flood is taken in bounded bursts
// without losing what the socket buffer held, a connected socket hears only its peer and reports its
// ICMP errors, and bad arguments or a closed socket fail with an error that says so.
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { after, test } from 'node:test';
import { UdpSocket } from '../../agent/dns/udp-socket.js';
import type { UdpPeer } from '../../agent/dns/udp-socket.js';

const open: UdpSocket[] = [];
const senders: dgram.Socket[] = [];
after(() => {
  for (const s of open) s.close();
  for (const s of senders) s.close();
});

function listen(onMessage: (data: Buffer, from: UdpPeer) => void, opts: { address?: string; port?: number; connect?: UdpPeer; onError?: (e: NodeJS.ErrnoException) => void } = {}): UdpSocket {
  const s = new UdpSocket({ address: opts.address ?? '127.0.0.1', port: opts.port ?? 0, recvBufferSize: 4 << 20, onMessage, ...(opts.connect ? { connect: opts.connect } : {}), ...(opts.onError ? { onError: opts.onError } : {}) });
  open.push(s);
  return s;
}

async function sender(type: 'udp4' | 'udp6' = 'udp4'): Promise<dgram.Socket> {
  const s = dgram.createSocket({ type, sendBufferSize: 4 << 20 });
  senders.push(s);
  await new Promise<void>((resolve) => s.bind(0, type === 'udp4' ? '127.0.0.1' : '::1', resolve));
  return s;
}

function send(s: dgram.Socket, data: Buffer, port: number, address = '127.0.0.1'): Promise<void> {
  return new Promise((resolve, reject) => s.send(data, port, address, (err) => (err ? reject(err) : resolve())));
}

/** Resolves once `cond` holds, checking on every turn of the event loop (no fixed sleep). */
async function until(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

/** A datagram whose every byte says which one it is: n, length and position mixed. */
function pattern(n: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (n * 31 + i * 7) & 0xff;
  return b;
}

test('UDP socket: datagrams kept across slabs keep their own bytes, the largest arrives whole, sources are reported', async () => {
  const got: Array<{ data: Buffer; from: UdpPeer }> = [];
  const sock = listen((data, from) => got.push({ data, from }));
  const a = await sender();
  // 3,000 datagrams of 1-700 bytes fill several 256 KB slabs; one of 65,507 bytes (the largest IPv4
  // UDP payload) and an empty one are among them. All are kept, and checked only at the end.
  const sizes = Array.from({ length: 3000 }, (_, n) => (n === 1234 ? 65_507 : n === 2000 ? 0 : 1 + ((n * 97) % 700)));
  for (let n = 0; n < sizes.length; n++) {
    await send(a, pattern(n, sizes[n]!), sock.port);
    // paced so the socket buffer never overflows, whatever the machine's load or net.core.rmem_max
    // (at most ~40 datagrams of <= 700 bytes, and the one of 64 KB, wait in it)
    if (n % 20 === 19) await until(() => got.length > n - 20, 'the receiver to catch up');
  }
  await until(() => got.length === sizes.length, `${sizes.length} datagrams`);
  for (let n = 0; n < sizes.length; n++) {
    assert.equal(got[n]!.data.length, sizes[n], `datagram ${n}: length`);
    assert.ok(got[n]!.data.equals(pattern(n, sizes[n]!)), `datagram ${n}: bytes changed after later datagrams were received`);
    assert.deepEqual(got[n]!.from, { address: '127.0.0.1', port: a.address().port });
  }
  // views: writing one (the upstream pool writes the workload's id back in place) touches no other
  got[0]!.data.fill(0xee);
  assert.ok(got[1]!.data.equals(pattern(1, sizes[1]!)));
});

test('UDP socket: a flood from many senders is taken whole (bounded bursts per wakeup), IPv6 too', async () => {
  let count = 0;
  let bytes = 0;
  const sock = listen((data) => {
    count++;
    bytes += data.length;
  }, { address: '::1' });
  const from = await Promise.all(Array.from({ length: 8 }, () => sender('udp6')));
  const perSender = 500;
  let sent = 0;
  await Promise.all(
    from.map(async (s) => {
      for (let n = 0; n < perSender; n++) {
        await send(s, pattern(n, 100), sock.port, '::1');
        sent++;
        // at most 200 waiting in the socket buffer: none is dropped by the kernel, whatever the load
        await until(() => count >= sent - 200, 'the receiver to catch up');
      }
    }),
  );
  await until(() => count === 8 * perSender, `${8 * perSender} datagrams`);
  assert.equal(bytes, 8 * perSender * 100);
});

test('UDP socket: a connected socket hears only its peer, and reports ICMP port unreachable as ECONNREFUSED', async () => {
  const peer = await sender();
  const stranger = await sender();
  const got: Buffer[] = [];
  const errors: NodeJS.ErrnoException[] = [];
  const sock = listen((d) => got.push(d), { address: '0.0.0.0', connect: { address: '127.0.0.1', port: peer.address().port }, onError: (e) => errors.push(e) });
  await send(stranger, Buffer.from('forged'), sock.port);
  await send(peer, Buffer.from('answer'), sock.port);
  await until(() => got.length === 1, 'the peer\'s datagram');
  assert.equal(got[0]!.toString(), 'answer');
  // the peer goes away: the next send draws an ICMP port unreachable, seen by the socket's next receive
  const gone = peer.address().port;
  peer.close();
  senders.splice(senders.indexOf(peer), 1);
  const heard: Buffer[] = [];
  const bound = listen((d) => heard.push(d), { address: '0.0.0.0', connect: { address: '127.0.0.1', port: gone }, onError: (e) => errors.push(e) });
  bound.send(Buffer.from('query'));
  await until(() => errors.length > 0, 'the ICMP error');
  assert.equal(errors[0]!.code, 'ECONNREFUSED');
  assert.match(errors[0]!.message, /ECONNREFUSED/);
  // the error is taken off the socket and it goes on receiving (libuv stops a poll on POLLERR)
  const reborn = dgram.createSocket('udp4');
  senders.push(reborn);
  await new Promise<void>((resolve) => reborn.bind(gone, '127.0.0.1', resolve));
  await send(reborn, Buffer.from('late answer'), bound.port);
  await until(() => heard.length === 1, 'a datagram after the error');
  assert.equal(heard[0]!.toString(), 'late answer');
});

test('UDP socket: bad addresses, a taken port and a closed socket fail with errors that say so', async () => {
  assert.throws(() => new UdpSocket({ address: 'not-an-address', port: 0, onMessage: () => {} }), /address must be an IP address/);
  assert.throws(() => new UdpSocket({ address: '127.0.0.1', port: 70_000, onMessage: () => {} }), /port 0-65535/);
  assert.throws(() => new UdpSocket({ address: '127.0.0.1', port: 0, connect: { address: '::1', port: 53 }, onMessage: () => {} }), /connectAddress must be an IP address of the bound address's family/);
  const s = listen(() => {});
  assert.throws(() => new UdpSocket({ address: '127.0.0.1', port: s.port, onMessage: () => {} }), (e: NodeJS.ErrnoException) => e.code === 'EADDRINUSE' && /UDP_BIND/.test(e.message));
  assert.throws(() => s.send(Buffer.from('x'), { address: '::1', port: 53 }), /address must be an IP address of the socket's family/);
  s.close();
  s.close();
  assert.equal(s.closed, true);
  // closed at once: its port can be bound again in the same turn (the proxy restarts on a fixed port)
  listen(() => {}, { port: s.port }).close();
  assert.throws(() => s.send(Buffer.from('x'), { address: '127.0.0.1', port: 53 }), (e: NodeJS.ErrnoException) => e.code === 'EBADF');
});

test('UDP socket: closed from its own callback, it delivers nothing more', async () => {
  const a = await sender();
  let calls = 0;
  const sock: UdpSocket = listen(() => {
    calls++;
    sock.close();
  });
  const port = sock.port;
  // queued together, so one wakeup finds them all
  for (let n = 0; n < 20; n++) a.send(pattern(n, 10), port, '127.0.0.1');
  await until(() => calls > 0, 'the first datagram');
  // a receiver that would hear anything sent now shows the loop kept turning
  const probe: Buffer[] = [];
  const other = listen((d) => probe.push(d));
  await send(a, Buffer.from('probe'), other.port);
  await until(() => probe.length === 1, 'the probe');
  assert.equal(calls, 1);
});
