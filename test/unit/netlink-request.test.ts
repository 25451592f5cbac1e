// The timeout of a netlink request (netkit/socket.ts netlinkRequest) against a blocked event loop: a
// reply that reached the socket in time is taken even when the loop only gets to it after the timeout
// (Node runs expired timers before it reads sockets); a reply that never comes is a timeout, and the
// request left behind rejects later without an unhandled rejection. The requester here answers through
// a real UDP socket, so the reply is a real I/O event (the same path a netlink socket's data takes).
import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { after, before, test } from 'node:test';
import { netlinkRequest } from '../../netkit/socket.js';

type Reply = [Array<{ type: number; flags: number; data: Buffer }>, unknown];

let rx: Socket;
let tx: Socket;
let port = 0;
const waiting: Array<(r: Reply) => void> = [];

before(async () => {
  rx = createSocket('udp4');
  tx = createSocket('udp4');
  rx.on('message', (data) => waiting.shift()?.([[{ type: 16, flags: 0, data }], null]));
  await new Promise<void>((resolve) => rx.bind(0, '127.0.0.1', () => resolve()));
  port = rx.address().port;
});
after(() => {
  rx.close();
  tx.close();
});

/** A requester whose reply is the next datagram rx reads; `answer` sends it (or not). */
function requester(answer: boolean) {
  let forgotten: ((err: Error) => void) | undefined;
  let sent!: () => void;
  const handedOver = new Promise<void>((resolve) => (sent = resolve));
  return {
    /** Resolves once the reply datagram is in the kernel (then only the loop's read of it is left). */
    handedOver,
    request: (_type: number, data: Buffer, options: { timeout: number }) =>
      new Promise<Reply>((resolve, reject) => {
        waiting.push(resolve);
        forgotten = reject;
        setTimeout(() => reject(new Error('Timeout has been reached')), options.timeout).unref();
        if (answer) tx.send(data, port, '127.0.0.1', () => sent());
      }),
    forget: () => forgotten?.(new Error('Timeout has been reached')),
  };
}

function block(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until);
}

test('a reply in the socket before the timeout is taken though the loop was blocked past it', async () => {
  const sock = requester(true);
  const pending = netlinkRequest(sock, 20, Buffer.from('addr dump'), 0, 100);
  // the datagram is in the kernel; the loop does not read it for 300 ms, three times the timeout
  await sock.handedOver;
  block(300);
  const msgs = await pending;
  assert.equal(msgs.length, 1);
  assert.equal(msgs[0]!.data.toString(), 'addr dump');
});

test('no reply: a timeout, and the request the library still holds rejects later without an unhandled rejection', async () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (err: unknown) => unhandled.push(err);
  process.on('unhandledRejection', onUnhandled);
  try {
    const sock = requester(false);
    const started = Date.now();
    await assert.rejects(netlinkRequest(sock, 20, Buffer.from('lost'), 0, 50), /Timeout has been reached/);
    assert.ok(Date.now() - started >= 50);
    waiting.length = 0;
    sock.forget();
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(unhandled, []);
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});
