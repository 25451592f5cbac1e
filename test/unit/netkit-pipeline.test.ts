// requestsPipelined over a fake transport: every request of a batch reaches the socket in call order
// before any reply is awaited, replies may come in any order, the first failure in call order is the
// one thrown, and nothing is left unhandled. No root needed.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KernelError } from '../../common/kernel-error.js';
import { addressAdd } from '../../netkit/address.js';
import { linkSet } from '../../netkit/link.js';
import { routeAdd } from '../../netkit/route.js';
import type { NlMessage, NlTransport } from '../../netkit/socket.js';
import { Rtnl, requestsPipelined } from '../../netkit/socket.js';
import { NLMSG_ERROR, RTM_GETLINK, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE } from '../../netkit/uapi.js';

/** An NLMSG_ERROR payload: s32 -errno, then the request's header (16 bytes). */
function errorReply(errno: number): NlMessage {
  const data = Buffer.alloc(20);
  data.writeInt32LE(-errno, 0);
  return { type: NLMSG_ERROR, flags: 0, data };
}

/** Records what is sent, synchronously; answers only when told to, in any order. */
class FakeTransport implements NlTransport {
  readonly sent: number[] = [];
  private readonly pending: ((m: NlMessage[]) => void)[] = [];

  exchange(type: number): Promise<NlMessage[]> {
    this.sent.push(type);
    return new Promise((resolve) => this.pending.push(resolve));
  }

  answer(i: number, errno = 0): void {
    this.pending[i]!([errorReply(errno)]);
  }

  async sysctlWrite(): Promise<void> {}

  close(): void {}
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

test('a pipelined batch is on the socket, in order, before the first reply', async () => {
  const t = new FakeTransport();
  const nl = new Rtnl(t);
  const done = requestsPipelined([
    () => linkSet(nl, { name: 'kn0', ifindex: 7 }, { up: true }),
    () => addressAdd(nl, 7, '10.0.0.1', 32),
    () => routeAdd(nl, { dst: 'default', family: 'inet', gateway: '169.254.1.1', oif: 7 }),
  ]);
  assert.deepEqual(t.sent, [RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE], 'all sent synchronously, in call order');
  let settled = false;
  void done.then(() => { settled = true; });
  t.answer(2);
  t.answer(0);
  await tick();
  assert.equal(settled, false, 'waits for every reply');
  t.answer(1);
  await done;
});

test('the first failure in call order is thrown, whatever order the replies come in', async () => {
  const t = new FakeTransport();
  const nl = new Rtnl(t, '/var/run/netns/x');
  const done = requestsPipelined([
    () => linkSet(nl, { name: 'eth0', ifindex: 2 }, { up: true }),
    () => addressAdd(nl, 2, 'fd00::1', 128, { ifname: 'eth0' }),
    () => routeAdd(nl, { dst: 'default', family: 'inet6', gateway: 'fe80::1', oif: 2 }, { ifname: 'eth0' }),
  ]);
  t.answer(2, 101); // ENETUNREACH, later in order, answered first
  t.answer(0);
  t.answer(1, 13); // EACCES
  await assert.rejects(done, (e: unknown) => {
    assert.ok(e instanceof KernelError, String(e));
    assert.equal(e.op, 'RTM_NEWADDR');
    assert.equal(e.errnoName, 'EACCES');
    assert.equal(e.device?.netns, '/var/run/netns/x');
    return true;
  });
});

test('a call that fails before sending does not stop the others', async () => {
  const t = new FakeTransport();
  const nl = new Rtnl(t);
  const done = requestsPipelined([
    () => addressAdd(nl, 2, 'not-an-address', 32),
    () => linkSet(nl, { name: 'eth0', ifindex: 2 }, { up: true }),
  ]);
  assert.deepEqual(t.sent, [RTM_NEWLINK]);
  t.answer(0);
  await assert.rejects(done, /invalid IP address "not-an-address"/);
});

test('a dump under way holds the requests after it, in order, until it is answered (no EBUSY, no replies inside its parts)', async () => {
  const t = new FakeTransport();
  const nl = new Rtnl(t);
  const first = nl.dump(RTM_GETLINK, Buffer.alloc(16));
  const set = linkSet(nl, { name: 'kn0', ifindex: 7 }, { up: true });
  const second = nl.dump(RTM_GETROUTE, Buffer.alloc(12));
  await tick();
  assert.deepEqual(t.sent, [RTM_GETLINK], 'nothing sent while the dump is under way');
  t.answer(0, 16); // the dump fails (EBUSY from elsewhere): the queue still moves on
  await assert.rejects(first, (e: unknown) => e instanceof KernelError && e.errnoName === 'EBUSY');
  await tick();
  assert.deepEqual(t.sent, [RTM_GETLINK, RTM_NEWLINK], 'then the next, alone');
  t.answer(1);
  await set;
  await tick();
  assert.deepEqual(t.sent, [RTM_GETLINK, RTM_NEWLINK, RTM_GETROUTE]);
  t.answer(2);
  await second;
  // all answered: requests go out at once again
  const a = addressAdd(nl, 7, '10.0.0.1', 32);
  const b = addressAdd(nl, 7, '10.0.0.2', 32);
  assert.deepEqual(t.sent.slice(3), [RTM_NEWADDR, RTM_NEWADDR], 'both sent before either reply');
  t.answer(3);
  t.answer(4);
  await Promise.all([a, b]);
});
