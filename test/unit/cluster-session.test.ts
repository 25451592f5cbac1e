import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { etcdClientCreate } from '../../agent/cluster/etcd-client.js';
import { ClusterSession } from '../../agent/cluster/session.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { waitFor } from '../helpers/sys.js';
import { tcpGateStart, type TcpGate } from '../helpers/tcp-gate.js';

const log = pino({ level: 'silent' });

/** Timers that keep the process alive (unref'd ones are not listed). */
const liveTimers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

describe('cluster session against a real etcd', () => {
  let etcd: EtcdServer;
  let gate: TcpGate;
  before(async () => {
    etcd = await etcdStart();
    gate = await tcpGateStart(etcd.endpoint);
  });
  after(async () => {
    await gate?.close();
    await etcd?.stop();
  });

  test('closed between a keepalive and its answer: nothing of the session holds the process open', async () => {
    const baseline = liveTimers();
    // A node lease of 6 s: a keepalive every 2 s.
    const session = await ClusterSession.open(etcdClientCreate({ endpoints: [gate.endpoint] }, undefined), log, 6);
    let closed: Promise<void> | undefined;
    try {
      gate.hold();
      await waitFor('a keepalive sent while etcd\'s answers are held', async () => gate.sentWhileHeld() > 0, 10_000);
      closed = session.close({ revoke: true });
      // The answer arrives after close began (a keepalive answered late, as after a reconnect under load).
      setTimeout(() => gate.release(), 200);
      await closed;
    } finally {
      gate.release();
      // closed even when the test failed before: an open session would hold the file open for its lease
      await (closed ?? session.close({ revoke: true })).catch(() => undefined);
    }
    // etcd3 re-arms a lease's keepalive timeout (6 s here, 15 minutes by default) for an answer that
    // arrives after the lease was closed: a test file, or `kitnet` run once, then waited that long to exit.
    await waitFor('the session\'s timers gone', async () => liveTimers() <= baseline, 3000);
  });
});
