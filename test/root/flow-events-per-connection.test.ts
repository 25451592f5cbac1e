import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import type { FlowEvent } from '../../bpf/index.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { run, waitFor } from '../helpers/sys.js';

/**
 * The flow events one TCP connection makes between two workloads on this host (real packets through
 * the real programs and the agent's reader): every packet passes a's program and b's, and each end
 * reports its own view. Aggregated (the default), a connect + RST is reported at its start (SYN), its
 * answer (SYN-ACK) and its end (RST) at each end: six events, the handshake's ACK is not one of them.
 * every-packet reports each of the four packets at both ends (the reason still says what aggregation
 * would have made of it).
 */
describe('flow events per connection (root)', { timeout: 120_000 }, () => {
  const PORT = 7171;
  const fx = new AgentFixture({ tag: 'fpc', ipv4Pool: '10.223.0.0/24', ipv6Pool: 'fd00:223::/64', namespaces: ['fpc'] });
  const children: ChildProcess[] = [];
  const seen: FlowEvent[] = [];
  let nsA: string;
  let a: Workload;
  let b: Workload;

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await fx.cleanup();
  });

  /** One connection from a to b, reset by a once connected; returns a's port. */
  const connectReset = async (): Promise<number> => {
    const script = `const s=require('net').connect(${PORT},'${b.ipv4}',()=>{process.stdout.write(String(s.localPort));s.resetAndDestroy()});s.on('error',()=>{})`;
    const out = await run('ip', ['netns', 'exec', nsA, process.execPath, '-e', script], { timeoutMs: 15_000 });
    const port = Number(out.trim());
    assert.ok(port > 0, `client port from ${JSON.stringify(out)}`);
    return port;
  };

  /** The events of a's connection from `port`, once a later connection's SYN reached b's end (so
   * every event of the first one has been read: one ring, written in packet order). */
  const eventsOf = async (port: number): Promise<string[]> => {
    const marker = await connectReset();
    await waitFor('the marker connection at b', async () =>
      seen.some((e) => e.srcPort === marker && e.endpointId === b.endpointId && e.direction === 'INGRESS'), 10_000);
    const mine = seen.filter((e) => e.srcPort === port || e.dstPort === port);
    return mine.map((e) => {
      const end = e.endpointId === a.endpointId ? 'a' : e.endpointId === b.endpointId ? 'b' : `?${e.endpointId}`;
      const flags = ['FIN', 'SYN', 'RST', 'PSH', 'ACK'].filter((_f, i) => e.tcpFlags & (1 << i)).join('|');
      return `${end} ${e.direction} ${flags}${e.isReply ? ' reply' : ''} ${e.reportReason}`;
    });
  };

  before(async () => {
    nsA = await fx.netns('a');
    const nsB = await fx.netns('b');
    await fx.start();
    a = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'a', namespace: 'fpc', netns: `/var/run/netns/${nsA}` });
    b = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'b', namespace: 'fpc', netns: `/var/run/netns/${nsB}` });
    fx.agent.flows.batchObserve((events) => void seen.push(...events));
    // b accepts and keeps every connection open: the client's RST is the only close
    const server = spawn('ip', ['netns', 'exec', nsB, process.execPath, '-e',
      `const k=[];require('net').createServer((s)=>{s.on('error',()=>{});k.push(s)}).listen(${PORT},'::')`], { stdio: 'ignore' });
    children.push(server);
    await waitFor('the TCP server in b', async () => connectReset().then(() => true, () => false), 10_000);
  });

  test('aggregated: SYN, SYN-ACK and RST at each end; the handshake ACK is not reported', async () => {
    const port = await connectReset();
    assert.deepEqual(await eventsOf(port), [
      'a EGRESS SYN NEW',
      'b INGRESS SYN NEW',
      'b EGRESS SYN|ACK reply FIRST_REPLY',
      'a INGRESS SYN|ACK reply FIRST_REPLY',
      'a EGRESS RST|ACK CLOSE',
      'b INGRESS RST|ACK CLOSE',
    ]);
  });

  test('every-packet: all four packets at both ends', async () => {
    const dp = fx.agent.kernel.datapath;
    const before = dp.configGet();
    dp.configSet({ monitorAggregation: 0 });
    try {
      const port = await connectReset();
      assert.deepEqual(await eventsOf(port), [
        'a EGRESS SYN NEW',
        'b INGRESS SYN NEW',
        'b EGRESS SYN|ACK reply FIRST_REPLY',
        'a INGRESS SYN|ACK reply FIRST_REPLY',
        'a EGRESS ACK EVERY',
        'b INGRESS ACK EVERY',
        'a EGRESS RST|ACK CLOSE',
        'b INGRESS RST|ACK CLOSE',
      ]);
    } finally {
      dp.configSet(before);
    }
  });
});
