// The nsfs inode of a network namespace does not name it over time: the kernel gives a freed
// namespace's inode number to the next namespace made, and anyone can make one (an unprivileged user
// namespace suffices). A workload bound by device and inode alone went, at the agent's restore, to the
// first namespace made at its path after its own died: a /proc/PID/ns/net path whose PID was reused by
// a process in such a namespace got the workload's device, addresses and identity. The cookie
// (SO_NETNS_COOKIE) is never given twice until reboot. Here a /var/run/netns name stands in for the
// reused PID: the namespace is deleted while the agent is down, and one of the same name is made until
// it gets the deleted one's inode.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import type { ApiError } from '../../common/api-client.js';
import type { Workload } from '../../common/schemas/workload.js';
import { netnsHelpersClose } from '../../netkit/netns-pool.js';
import { AgentFixture } from '../helpers/fixture.js';
import { links, netnsAdd, netnsDel, waitFor } from '../helpers/sys.js';

interface StoredId { dev: number; ino: number; cookie?: string; boot?: string }

describe('a workload is bound to its namespace by cookie, not by its reusable nsfs inode (root)', { timeout: 240_000 }, () => {
  const fx = new AgentFixture({ tag: 'ncreuse', ipv4Pool: '10.161.0.0/16', ipv6Pool: 'fd00:161::/64', namespaces: ['reuse'] });
  after(async () => {
    for (const c of probes) await probeStop(c);
    await fx.cleanup();
  });

  const storedId = (name: string): StoredId | undefined => {
    const db = new Database(join(fx.dir, 'state', 'kitnet.db'), { readonly: true });
    try {
      const row = db.prepare("SELECT spec FROM workloads WHERE namespace = 'reuse' AND name = ?").get(name) as { spec: string } | undefined;
      return row && (JSON.parse(row.spec) as { netnsId?: StoredId }).netnsId;
    } finally {
      db.close();
    }
  };

  /** What a release before the cookie stored: device and inode only (the agent is down). */
  const cookieForget = (name: string): void => {
    const db = new Database(join(fx.dir, 'state', 'kitnet.db'));
    try {
      const row = db.prepare("SELECT spec FROM workloads WHERE namespace = 'reuse' AND name = ?").get(name) as { spec: string };
      const spec = JSON.parse(row.spec) as { netnsId: StoredId };
      spec.netnsId = { dev: spec.netnsId.dev, ino: spec.netnsId.ino };
      db.prepare("UPDATE workloads SET spec = ? WHERE namespace = 'reuse' AND name = ?").run(JSON.stringify(spec), name);
    } finally {
      db.close();
    }
  };

  /** UTS namespaces held by processes while looking for a freed number, killed at the end. */
  const probes: ChildProcess[] = [];
  const probeStop = async (c: ChildProcess) => {
    if (c.exitCode !== null || c.signalCode !== null) return;
    const exited = once(c, 'exit');
    c.kill('SIGKILL');
    await exited;
  };
  /** A process in a UTS namespace of its own (one inode number, nothing else): its number. */
  const probeStart = async (): Promise<{ c: ChildProcess; ino: number }> => {
    const own = statSync('/proc/self/ns/uts').ino;
    const c = spawn('unshare', ['--uts', '--', 'sleep', 'infinity'], { stdio: 'ignore' });
    probes.push(c);
    const ino = await waitFor('the probe in its UTS namespace', async () => {
      try {
        const i = statSync(`/proc/${c.pid}/ns/uts`).ino;
        return i !== own && i;
      } catch {
        return false;
      }
    });
    return { c, ino };
  };

  /**
   * Deletes the namespace `ns` (the agent is down) and makes a network namespace of the same name
   * until it gets the deleted one's nsfs device and inode. The kernel hands out the lowest free number,
   * to namespaces and to /proc entries alike (a network namespace takes dozens for /proc/net), and
   * frees a network namespace's asynchronously. So UTS namespaces, one number each, probe: one below
   * the freed number fills a hole and is kept; one above it means the number is not free yet and is
   * dropped; the one that gets it is dropped (freed at once) and the network namespace made, which
   * then takes it as the lowest free number. Paths under /var/run/netns, a shared mount: a copy of the
   * bind mount in another process's mount namespace would keep the namespace (and its number).
   */
  const inodeReuse = async (ns: string): Promise<void> => {
    const path = `/var/run/netns/${ns}`;
    const st = statSync(path);
    const was = { dev: st.dev, ino: st.ino };
    await netnsDel(ns);
    await waitFor(`a namespace given the freed nsfs inode ${was.dev}:${was.ino}`, async () => {
      netnsHelpersClose(); // pooled sockets of the in-process agent pin a namespace (until idle)
      const probe = await probeStart();
      if (probe.ino < was.ino) return false; // a hole below, filled
      await probeStop(probe.c);
      if (probe.ino > was.ino) return false;
      const net = statSync(await netnsAdd(ns));
      if (net.dev === was.dev && net.ino === was.ino) return true;
      await netnsDel(ns);
      return false;
    }, 60_000);
  };

  const gone = (name: string) => waitFor(`workload ${name} removed`, async () =>
    fx.api.call('GET', `/v1/workloads/reuse/${name}`).then(() => false, (e: ApiError) => e.statusCode === 404), 30_000);

  test('kept across a restart in the same namespace; a namespace made after it with the same inode at its path: removed, nothing made there', async () => {
    const first = await fx.netns('first');
    const path = `/var/run/netns/${first}`;
    await fx.start();
    const w = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'web', namespace: 'reuse', netns: path });
    const id = storedId('web');
    assert.match(id?.cookie ?? '', /^[1-9][0-9]*$/, `the namespace's cookie is stored: ${JSON.stringify(id)}`);

    await fx.stop();
    await fx.start();
    const kept = await fx.api.call<Workload>('GET', '/v1/workloads/reuse/web');
    assert.equal(kept.state, 'ready', 'an agent restart in the same namespace keeps the workload');
    assert.ok((await links(first)).some((l) => l.ifname === 'eth0'));

    await fx.stop();
    await inodeReuse(first);
    await fx.start();
    await gone('web');
    assert.deepEqual((await links(first)).map((l) => l.ifname), ['lo'], 'nothing of the workload is made in the namespace that got its inode');
    assert.deepEqual(await fx.ownLinks(), [], `no host side of ${w.interfaces.host.name} left`);
  });

  test('a record of a release before the cookie: bound to it when its device pair proves the namespace; removed when the pair is gone', async () => {
    const ns = await fx.netns('legacy');
    const path = `/var/run/netns/${ns}`;
    if (!fx.daemon) await fx.start();
    await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'legacy', namespace: 'reuse', netns: path });
    const cookie = storedId('legacy')?.cookie;

    await fx.stop();
    cookieForget('legacy');
    await fx.start();
    assert.equal((await fx.api.call<Workload>('GET', '/v1/workloads/reuse/legacy')).state, 'ready');
    assert.equal(storedId('legacy')?.cookie, cookie, 'the first reconcile after the upgrade stored the cookie of the namespace its pair is in');

    await fx.stop();
    cookieForget('legacy');
    await inodeReuse(ns);
    await fx.start();
    await gone('legacy');
    assert.deepEqual((await links(ns)).map((l) => l.ifname), ['lo'], 'nothing of the workload is made in the namespace that got its inode');
    assert.deepEqual(await fx.ownLinks(), []);
  });
});
