// A veth workload's pair lets nothing through before its programs are attached. Before, the pair came
// up with its routes in the step that made it, and the programs were attached two steps later: a
// process already running in the namespace (registered by path, or a pair re-made by a repair) sent
// and received through the host unjudged meanwhile. Here such a process sends and listens the whole
// time, and just before each attach (at registration, at a repair, at the retry after an attach that
// failed) both directions are tried: the host side's counters must not move, and nothing tried then
// may ever arrive, while the same traffic passes once the workload is up.
// The same holds when the programs of an open pair go behind the agent's back (detached, or their pins
// removed by hand): a resync used to attach them again on the open pair, which passed everything
// unjudged until then; now it closes the pair first (host side down, as at creation) and opens it
// again once they are attached.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { netnsAdd, netnsDel, run, status, uniq, waitFor } from '../helpers/sys.js';

const POOL4 = '10.248.0.0/16';
const POOL6 = 'fd00:248::/64';
const WL4 = '10.248.0.7';
const WL6 = 'fd00:248::7';
const HOST4 = '10.249.0.1';
const HOST6 = 'fd00:249::1';
const PORT = 7311;

/** The workload's process (test/helpers/udp-peer.ts) in its namespace. */
class Peer {
  private readonly child: ChildProcess;
  private nextId = 1;
  private readonly waiting = new Map<number, (msg: Record<string, unknown>) => void>();
  readonly ready: Promise<void>;

  constructor(netns: string) {
    const script = fileURLToPath(new URL('../helpers/udp-peer.js', import.meta.url));
    this.child = spawn('ip', ['netns', 'exec', netns, process.execPath, script, String(PORT)], { stdio: ['pipe', 'pipe', 'inherit'] });
    const rl = createInterface({ input: this.child.stdout! });
    this.ready = new Promise((resolve, reject) => {
      this.child.once('exit', (code) => reject(new Error(`udp-peer in ${netns} exited with ${code}`)));
      rl.on('line', (line) => {
        const msg = JSON.parse(line) as Record<string, unknown>;
        if (msg.ready) return resolve();
        const cb = this.waiting.get(msg.id as number);
        this.waiting.delete(msg.id as number);
        cb?.(msg);
      });
    });
  }

  private ask(req: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.child.stdin!.write(`${JSON.stringify({ id, ...req })}\n`);
    });
  }

  /** Sends `data` to the host's listeners (IPv4, IPv6); the send() errors, once every send returned. */
  async send(data: string): Promise<Array<string | null>> {
    return (await this.ask({ send: [{ addr: HOST4, port: PORT, data }, { addr: HOST6, port: PORT, data }] })).errors as Array<string | null>;
  }

  async received(): Promise<string[]> {
    return (await this.ask({ received: true })).payloads as string[];
  }

  close(): void {
    this.child.stdin?.end();
    this.child.kill('SIGTERM');
  }
}

/** What crossed the pair, counted by its host side: rx from the workload, tx to it. */
function counters(ifname: string): { rx: number; tx: number } {
  const read = (c: string) => Number(readFileSync(`/sys/class/net/${ifname}/statistics/${c}`, 'utf8'));
  return { rx: read('rx_packets'), tx: read('tx_packets') };
}

/** The host side is administratively up (IFF_UP): the pair is open. */
const hostUp = (ifname: string): boolean => (Number(readFileSync(`/sys/class/net/${ifname}/flags`, 'utf8')) & 1) === 1;

describe('veth: nothing crosses a workload pair before its programs are attached (root)', { timeout: 180_000 }, () => {
  const id = uniq();
  const ns = `vo-${id}`;
  const dummy = `vo${id}d`;
  const fx = new AgentFixture({ tag: 'vorder', ipv4Pool: POOL4, ipv6Pool: POOL6, namespaces: ['vorder'], overrides: { datapath: { mode: 'veth' } } });
  const hostSockets: Socket[] = [];
  const hostGot: string[] = [];
  let peer: Peer | undefined;
  /** What each attempt just before an attach saw. */
  const tries: Array<{ tag: string; up: boolean; moved: { rx: number; tx: number }; fromWorkload: Array<string | null>; toWorkload: Array<string | null> }> = [];
  let failNextAttach = false;
  const hostSend = (data: string): Promise<Array<string | null>> => Promise.all(hostSockets.map((s, i) => new Promise<string | null>((resolve) =>
    s.send(data, PORT, i === 0 ? WL4 : WL6, (err) => resolve(err ? ((err as NodeJS.ErrnoException).code ?? err.message) : null)))));
  /** Traffic passes both ways once the workload is up: the probes below are no vacuous silence. */
  const passes = async (tag: string) => {
    await waitFor(`${tag} from the workload at the host`, async () => {
      await peer!.send(tag);
      return hostGot.filter((d) => d === tag).length >= 2;
    }, 30_000);
    await waitFor(`${tag} from the host at the workload`, async () => {
      await hostSend(tag);
      return (await peer!.received()).filter((d) => d === tag).length >= 2;
    }, 30_000);
  };
  /** Every try found the pair closed: down, nothing crossed, and nothing tried then ever arrived. */
  const triesAllClosed = async () => {
    for (const t of tries) {
      assert.equal(t.up, false, `${t.tag}: the host side was down when the programs were attached`);
      assert.deepEqual(t.moved, { rx: 0, tx: 0 }, `${t.tag}: no packet crossed the pair before its programs were attached`);
      assert.ok(t.toWorkload.every((e) => e !== null), `${t.tag}: the host could not send to the workload (${t.toWorkload.join(', ')})`);
    }
    const attacks = (got: string[]) => got.filter((d) => d.startsWith('attack-'));
    assert.deepEqual(attacks(hostGot), [], 'nothing the workload sent before its programs were attached reached the host');
    assert.deepEqual(attacks(await peer!.received()), [], 'nothing the host sent before then reached the workload');
  };

  after(async () => {
    peer?.close();
    for (const s of hostSockets) s.close();
    await fx.cleanup();
    await netnsDel(ns);
    await status('ip', ['link', 'del', dummy]);
    await status('ip', ['route', 'del', 'unreachable', POOL4]);
    await status('ip', ['-6', 'route', 'del', 'unreachable', POOL6]);
  });

  before(async () => {
    // The host's listeners, on addresses of their own; the pool is unreachable from the host but
    // through a workload's own /32 and /128, so a send towards a closed workload fails at once
    // instead of leaving by the default route.
    await run('ip', ['link', 'add', dummy, 'type', 'veth', 'peer', 'name', `${dummy}p`]); // no dummy module here
    await run('ip', ['addr', 'add', `${HOST4}/32`, 'dev', dummy]);
    await run('ip', ['-6', 'addr', 'add', `${HOST6}/128`, 'dev', dummy, 'nodad']);
    await run('ip', ['link', 'set', dummy, 'up']);
    await run('ip', ['route', 'add', 'unreachable', POOL4]);
    await run('ip', ['-6', 'route', 'add', 'unreachable', POOL6]);
    for (const [type, addr] of [['udp4', HOST4], ['udp6', HOST6]] as const) {
      const s = createSocket(type);
      s.on('message', (m) => hostGot.push(m.toString()));
      await new Promise<void>((resolve) => s.bind(PORT, addr, resolve));
      hostSockets.push(s);
    }

    // the workload's process runs before kitnet knows of it
    await netnsAdd(ns);
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    peer = new Peer(ns);
    await peer.ready;

    await fx.start();
    const dp = fx.agent.kernel.datapath;
    const attach = dp.attach.bind(dp);
    dp.attach = async (ep) => {
      const tag = `attack-${tries.length}`;
      const up = hostUp(ep.ifname);
      const before = counters(ep.ifname);
      const fromWorkload = await peer!.send(tag);
      const toWorkload = await hostSend(tag);
      const now = counters(ep.ifname);
      tries.push({ tag, up, moved: { rx: now.rx - before.rx, tx: now.tx - before.tx }, fromWorkload, toWorkload });
      if (failNextAttach) {
        failNextAttach = false;
        throw new Error('attach failed (injected)');
      }
      return attach(ep);
    };
  });

  test('at registration, at a repair that re-makes the pair, and at the retry of a failed attach', async () => {
    const w = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'web', namespace: 'vorder', netns: `/var/run/netns/${ns}`, ipv4: WL4, ipv6: WL6 });
    assert.equal(w.mode, 'veth');
    await passes('control-registered');
    assert.equal(tries.length, 1, 'one attach at registration');

    // a repair re-makes the pair (its peer deleted under the running process); its first attach fails
    failNextAttach = true;
    const ifindexBefore = w.interfaces.host.ifindex;
    await run('ip', ['-n', ns, 'link', 'del', 'eth0']);
    await waitFor('the pair re-made, its attach failed once and retried', async () => {
      const cur = await fx.api.call<Workload>('GET', '/v1/workloads/vorder/web');
      return tries.length >= 3 && cur.state === 'ready' && cur.interfaces.host.ifindex !== ifindexBefore;
    }, 60_000);
    await passes('control-repaired');
    await triesAllClosed();
  });

  test('at a resync that finds the open pair without its programs: detached, or their pins removed by hand', async () => {
    const dp = fx.agent.kernel.datapath;
    const w = await fx.api.call<Workload>('GET', '/v1/workloads/vorder/web');
    const dev = w.interfaces.host.name;
    const linksDir = join(fx.pinRoot, 'links', dev);
    for (const [how, takeAway] of [
      ['detached (BPF_LINK_DETACH)', () => dp.detach(dev)],
      ['pins removed by hand', async () => rmSync(linksDir, { recursive: true })],
    ] as const) {
      assert.ok(hostUp(dev), `${how}: the pair is open before`);
      await takeAway();
      assert.deepEqual(Object.keys(dp.linkInfo(dev)), [], `${how}: no pinned link left`);
      const n = tries.length;
      fx.agent.controller.enqueueAll(); // the periodic resync, now
      // (a reconcile already queued may see the pins half removed and attach too: each attach is checked)
      await waitFor(`${how}: the programs attached again and the pair open`, async () => {
        if (tries.length === n) return false;
        const o = await fx.agent.reconciler.workloadObserve(fx.agent.store.workloadGet('vorder', 'web')!);
        return o.attached && o.judged && o.device?.closed === false && o.device.problems.length === 0 && hostUp(dev);
      }, 30_000);
      const cur = await fx.api.call<Workload>('GET', '/v1/workloads/vorder/web');
      assert.equal(cur.state, 'ready');
      assert.equal(cur.interfaces.host.ifindex, w.interfaces.host.ifindex, `${how}: the same pair, closed and opened in place`);
      const links = dp.linkInfo(dev);
      assert.deepEqual([links.from_workload?.ifindex, links.to_workload?.ifindex], [w.interfaces.host.ifindex, w.interfaces.host.ifindex], `${how}: both links on the pair`);
      await passes(`control-${how}`);
    }
    await triesAllClosed();
  });
});
