import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { datapathLoad, datapathUnpinAll, type FlowEvent, type KitnetDatapath } from '../../bpf/index.js';
import { EP_F_ENFORCE_SRC_IP, TCX_DROP } from '../../bpf/layout.gen.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { run, waitFor } from '../helpers/sys.js';
import { ETH_P_IP, LO, eth, ipv4, udp } from './bpf-helpers.js';

const execFileP = promisify(execFile);
const checkout = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
/** The last main whose `drop_limit` kept one budget per endpoint (a 16-byte value): built from git history. */
const ONE_BUDGET_RELEASE = 'aea96b9';

const RATE = 500;
const BURST = 100;
/** The quiet workload's traffic: allowed datagrams, and denied ones (no more than its burst, so all are reported). */
const ALLOWED = 150;
const DENIED = 60;
/** The flood at the quiet workload's ingress: the flooder may send it, the quiet workload admits only UDP 7000. */
const INGRESS_FLOOD_PORT = 9998;

/** Sends UDP datagrams to argv[1]:argv[2] as fast as it can until the file argv[3] exists; prints the count. */
const FLOOD_PY = `
import os, socket, sys
dst, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = 0
while not os.path.exists(stop):
    for _ in range(1000):
        try:
            s.sendto(b'x', (dst, port)); n += 1
        except OSError:
            pass
print(n, flush=True)
`;
/**
 * One datagram to argv[1]:7000 (allowed) from each source port 20000 + i, and one to :7001 (denied) from
 * each port 30000 + i: a connection of its own each, so each is reported once. Paced a little, so they
 * meet the flood in the kernel ring over its whole length rather than in one burst.
 */
const QUIET_PY = `
import socket, sys, time
dst, allowed, denied = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(max(allowed, denied)):
    for base, port, n in ((20000, 7000, allowed), (30000, 7001, denied)):
        if i < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', base + i)); s.sendto(b'q', (dst, port)); s.close()
    time.sleep(0.002)
`;

/**
 * One workload flooding denied packets must not blind flow reporting for the others. The flooder's
 * drops stay dropped and counted, but it reports at most its budget (flows.dropEvents: burst + rate x
 * time); every flow of the quiet workload, allowed and dropped, still reaches the agent, and no event is
 * lost from the kernel ring. Without the budget the flood's events fill the ring (a small one here) and
 * the count of the flooder's reported drops is the flood's.
 * Each workload has one budget per direction: a flood at the quiet workload's denied ingress uses up its
 * ingress budget only, and what the quiet workload itself tries and is denied (egress) is still reported
 * drop by drop. With one budget per workload the flood, sent by someone else, hid it.
 */
describe('drop event budget per workload (root)', { timeout: 180_000 }, () => {
  const fx = new AgentFixture({
    tag: 'drlimit',
    ipv4Pool: '10.231.0.0/24',
    ipv6Pool: 'fd00:231::/64',
    namespaces: ['drlimit'],
    overrides: {
      flows: { ringCapacity: 1024, kernelRingBytes: 256 * 1024, dropEvents: { perSecond: RATE, burst: BURST } },
      hubble: { warmFlows: 0 },
    },
  });
  const children: ChildProcess[] = [];
  let nsFlood: string;
  let nsQuiet: string;
  let flood: Workload;
  let quiet: Workload;
  // counted, not kept: without the budget the flood makes hundreds of thousands of events
  const counts = { events: 0, dropped: 0, floodDrops: 0, quietIngressDrops: 0, quietAllowed: new Set<number>(), quietDenied: new Set<number>() };
  const observe = (e: FlowEvent) => {
    counts.events++;
    if (e.verdict === 'DROPPED') counts.dropped++;
    if (e.endpointId === flood?.endpointId && e.verdict === 'DROPPED' && e.dstPort === 9999) counts.floodDrops++;
    if (e.endpointId === quiet?.endpointId && e.direction === 'INGRESS' && e.verdict === 'DROPPED' && e.dstPort === INGRESS_FLOOD_PORT) counts.quietIngressDrops++;
    if (e.endpointId === quiet?.endpointId && e.direction === 'EGRESS') {
      if (e.verdict === 'FORWARDED' && e.dstPort === 7000 && e.srcPort >= 20000 && e.srcPort < 20000 + ALLOWED) counts.quietAllowed.add(e.srcPort);
      if (e.verdict === 'DROPPED' && e.dropReason === 133 && e.dstPort === 7001 && e.srcPort >= 30000 && e.srcPort < 30000 + DENIED)
        counts.quietDenied.add(e.srcPort);
    }
  };

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await fx.cleanup();
  });

  before(async () => {
    nsFlood = await fx.netns('flood');
    nsQuiet = await fx.netns('quiet');
    await fx.start();
    // before any workload exists: every event the datapath writes is seen here
    fx.agent.flows.batchObserve((events) => {
      for (const e of events) observe(e);
    });
    flood = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'flood', namespace: 'drlimit', labels: { app: 'flood' }, netns: `/var/run/netns/${nsFlood}` });
    quiet = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'quiet', namespace: 'drlimit', labels: { app: 'quiet' }, netns: `/var/run/netns/${nsQuiet}` });
    // Both may send only UDP 7000 to each other: the flood to 9999 and the quiet one's 7001 are denied at the sender.
    await fx.api.call('PUT', '/v1/policies', `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: udp-7000, namespace: drlimit}
spec:
  endpointSelector: {}
  egress:
  - toEndpoints: [{}]
    toPorts: [{ports: [{port: "7000", protocol: UDP}]}]
`, 'application/yaml');
  });

  test('the flooder reports at most its budget, the quiet workload all its flows; every drop is counted', async () => {
    const stop = join(fx.dir, 'flood-stop');
    const started = process.hrtime.bigint();
    const flooder = spawn('ip', ['netns', 'exec', nsFlood, 'python3', '-c', FLOOD_PY, quiet.ipv4!, '9999', stop], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(flooder);
    let out = '';
    flooder.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => flooder.once('exit', resolve));
    await waitFor('the flood at the datapath', async () => counts.floodDrops > 0, 20_000);
    await run('ip', ['netns', 'exec', nsQuiet, 'python3', '-c', QUIET_PY, flood.ipv4!, String(ALLOWED), String(DENIED)], { timeoutMs: 60_000 });
    writeFileSync(stop, '');
    assert.equal(await exited, 0, 'the flooder ran to its end');
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const sent = Number(out.trim());

    const dp = fx.agent.kernel.datapath;
    await waitFor('the agent read every event the datapath wrote', async () => counts.events === Number(dp.metricsRead().EVENTS_SENT.packets), 20_000);
    const m = dp.metricsRead();
    assert.equal(m.EVENTS_LOST.packets, 0n, 'no event was lost from the kernel ring');

    // the quiet workload: every flow reported
    assert.equal(counts.quietAllowed.size, ALLOWED, 'every allowed datagram of the quiet workload was reported');
    assert.equal(counts.quietDenied.size, DENIED, 'every denied datagram of the quiet workload was reported');

    // the flooder: within its budget, the rest counted (per workload and in all)
    const bound = BURST + RATE * seconds;
    assert.ok(
      counts.floodDrops <= bound,
      `the flooder reported ${counts.floodDrops} drops in ${seconds.toFixed(2)} s of a ${sent}-datagram flood: more than burst + rate x time (${Math.floor(bound)})`,
    );
    assert.ok(counts.floodDrops >= BURST, `the flooder reported its burst at least (${counts.floodDrops})`);
    const suppressed = dp.dropEventsSuppressed();
    const floodSuppressed = Number(suppressed.get(flood.endpointId) ?? 0n);
    assert.ok(floodSuppressed > 0, 'the flooder has suppressed drops');
    assert.ok(floodSuppressed > sent / 2, `most of the flood (${sent} datagrams) was suppressed: ${floodSuppressed}`);
    assert.equal(suppressed.get(quiet.endpointId) ?? 0n, 0n, 'nothing of the quiet workload was suppressed');
    // every drop either reported or counted as suppressed
    assert.equal(Number(m.DROP_EVENTS_SUPPRESSED.packets), floodSuppressed);
    assert.equal(Number(m.INGRESS_DROPPED.packets + m.EGRESS_DROPPED.packets), counts.dropped + floodSuppressed, 'every drop was reported or counted');

    let metrics = '';
    await fx.api.stream('/metrics', (l) => (metrics += `${l}\n`));
    const line = metrics.match(/^kitnet_workload_drop_events_suppressed_total\{namespace="drlimit",workload="flood"\} (\d+)/m);
    assert.ok(line && Number(line[1]) >= floodSuppressed, `the per-workload counter on /metrics (${line?.[0]})`);
    assert.doesNotMatch(metrics, /^kitnet_workload_drop_events_suppressed_total\{[^}]*workload="quiet"/m);
  });

  test('a flood at a workload\'s denied ingress uses up its ingress budget only: its own denied egress is still reported', async () => {
    // The flooder may now send UDP 9998 to the quiet workload, whose ingress admits only UDP 7000: the
    // flood passes the flooder and is dropped (and charged) at the quiet workload's ingress.
    await fx.api.call('PUT', '/v1/policies', `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: flood-to-quiet, namespace: drlimit}
spec:
  endpointSelector: {matchLabels: {app: flood}}
  egress:
  - toEndpoints: [{matchLabels: {app: quiet}}]
    toPorts: [{ports: [{port: "${INGRESS_FLOOD_PORT}", protocol: UDP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: quiet-ingress, namespace: drlimit}
spec:
  endpointSelector: {matchLabels: {app: quiet}}
  ingress:
  - fromEndpoints: [{}]
    toPorts: [{ports: [{port: "7000", protocol: UDP}]}]
`, 'application/yaml');
    const dp = fx.agent.kernel.datapath;
    const quietSuppressedBefore = dp.dropEventsSuppressed().get(quiet.endpointId) ?? 0n;
    assert.equal(quietSuppressedBefore, 0n, 'the quiet workload has not been over a budget yet');
    const floodSuppressedBefore = dp.dropEventsSuppressed().get(flood.endpointId) ?? 0n;
    counts.quietDenied.clear();

    const stop = join(fx.dir, 'ingress-flood-stop');
    const started = process.hrtime.bigint();
    const flooder = spawn('ip', ['netns', 'exec', nsFlood, 'python3', '-c', FLOOD_PY, quiet.ipv4!, String(INGRESS_FLOOD_PORT), stop], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(flooder);
    let out = '';
    flooder.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => flooder.once('exit', resolve));
    // the quiet workload's ingress budget used up before it sends anything
    await waitFor('the flood at the quiet workload\'s ingress over its budget', async () => (dp.dropEventsSuppressed().get(quiet.endpointId) ?? 0n) > 0n, 20_000);
    // what it sends meanwhile: denied at its own egress (only UDP 7000 is allowed)
    await run('ip', ['netns', 'exec', nsQuiet, 'python3', '-c', QUIET_PY, flood.ipv4!, '0', String(DENIED)], { timeoutMs: 60_000 });
    writeFileSync(stop, '');
    assert.equal(await exited, 0, 'the flooder ran to its end');
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const sent = Number(out.trim());

    await waitFor('the agent read every event the datapath wrote', async () => counts.events === Number(dp.metricsRead().EVENTS_SENT.packets), 20_000);
    assert.equal(dp.metricsRead().EVENTS_LOST.packets, 0n, 'no event was lost from the kernel ring');

    assert.equal(counts.quietDenied.size, DENIED, `every denied datagram the quiet workload sent was reported, under a flood at its ingress (${counts.quietDenied.size} of ${DENIED})`);
    // the flood: charged to the quiet workload's ingress, within that budget, the rest counted
    const bound = BURST + RATE * seconds;
    assert.ok(counts.quietIngressDrops >= BURST, `the quiet workload reported its ingress burst at least (${counts.quietIngressDrops})`);
    assert.ok(
      counts.quietIngressDrops <= bound,
      `the quiet workload reported ${counts.quietIngressDrops} ingress drops in ${seconds.toFixed(2)} s of a ${sent}-datagram flood: more than burst + rate x time (${Math.floor(bound)})`,
    );
    const quietSuppressed = Number(dp.dropEventsSuppressed().get(quiet.endpointId) ?? 0n);
    assert.ok(quietSuppressed > sent / 2, `most of the flood (${sent} datagrams) was suppressed at the quiet workload's ingress: ${quietSuppressed}`);
    assert.equal(dp.dropEventsSuppressed().get(flood.endpointId) ?? 0n, floodSuppressedBefore, 'the flooder\'s own budget was not charged: its flood passed it');

    let metrics = '';
    await fx.api.stream('/metrics', (l) => (metrics += `${l}\n`));
    const line = metrics.match(/^kitnet_workload_drop_events_suppressed_total\{namespace="drlimit",workload="quiet"\} (\d+)/m);
    assert.ok(line && Number(line[1]) >= quietSuppressed, `the quiet workload's suppressed drops on /metrics (${line?.[0]})`);
  });
});

/**
 * The agent may run an earlier release's object until the new one replaces it (the upgrade path, see
 * agent-restart.test.ts): its `drop_limit` has one budget per endpoint in a 16-byte value. Its
 * suppressed drops are read as they were, not refused or lost for the value being shorter than this
 * release's.
 */
describe(`drop event budget: the object of ${ONE_BUDGET_RELEASE} (one budget per endpoint) read by this agent (root)`, { timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-drop-limit-old-'));
  const pinRoot = `/sys/fs/bpf/kitnet-test-drold-${process.pid}`;
  let dp: KitnetDatapath | undefined;
  after(async () => {
    dp?.close();
    await datapathUnpinAll(pinRoot);
    rmSync(dir, { recursive: true, force: true });
  });

  test('its suppressed drops counted per endpoint', async () => {
    // The checkout must hold that commit (a full clone does; a shallow one: git fetch --unshallow).
    await execFileP('git', ['-C', checkout, 'cat-file', '-e', `${ONE_BUDGET_RELEASE}^{commit}`]);
    await execFileP('sh', ['-c', `git -C "$1" archive "$2" bpf/src bpf/include | tar -x -C "$3"`, 'sh', checkout, ONE_BUDGET_RELEASE, dir]);
    const objectPath = join(dir, 'kitnet.bpf.o');
    await execFileP('bash', [join(checkout, 'bpf/compile.sh'), dir, objectPath], { timeout: 120_000 });
    await datapathUnpinAll(pinRoot);
    dp = await datapathLoad({ pinRoot, objectPath });
    dp.configSet({ dropEventsPerSecond: 1, dropEventsBurst: 5 });
    const ep = { endpointId: 61, identity: 4161, ipv4: '10.250.61.2', ipv6: 'fd00:250::61:2', mac: '02:00:00:00:00:02', flags: EP_F_ENFORCE_SRC_IP };
    dp.endpointUpsert(LO, ep);
    // from a source that is not the workload's: dropped, 50 times at once, 5 of them reported
    const spoofed = eth(ETH_P_IP, ipv4('10.250.61.99', '10.251.0.9', 17, udp(4000, 53)));
    assert.equal(dp.testRun('from_workload', spoofed, { ifindex: LO, repeat: 50 }).retval, TCX_DROP);
    const n = dp.dropEventsSuppressed().get(ep.endpointId);
    // 45, or one less per second the runs took (the rate is 1/s)
    assert.ok(n !== undefined && n >= 40n && n <= 45n, `the earlier object's count of suppressed drops read: ${n}`);
  });
});
