import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Registry } from 'prom-client';
import pino from 'pino';
import { DropSuppressionLog, dropSuppressionMetricRegister } from '../../agent/flows/drop-suppression.js';
import type { HubbleEndpoint } from '../../agent/flows/hubble.js';
import { dropLimitSuppressed } from '../../bpf/maps/drop-limit.js';
import { DROP_LIMIT } from '../../bpf/layout.gen.js';

const endpoints = new Map<number, HubbleEndpoint>([
  [7, { ID: 7, identity: 300, namespace: 'prod', labels: [], pod_name: 'flood', workloads: [] }],
  [8, { ID: 8, identity: 301, namespace: 'prod', labels: [], pod_name: 'quiet', workloads: [] }],
]);

function logCapture(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
  return { log, lines };
}

describe('suppressed drop events', () => {
  test('one warning per workload whose count grew since the last look, naming it and the growth', () => {
    let counts = new Map<number, bigint>([[7, 1000n]]);
    const { log, lines } = logCapture();
    const w = new DropSuppressionLog({ read: () => counts, endpointById: (id) => endpoints.get(id) }, log);
    assert.deepEqual(w.check(), [{ endpointId: 7, namespace: 'prod', workload: 'flood', suppressed: 1000 }]);
    assert.match(String(lines[0]!.msg), /prod\/flood: 1000 dropped packets not reported/);
    assert.deepEqual(w.check(), [], 'nothing new, nothing logged');
    counts = new Map([[7, 1500n], [9, 3n]]);
    assert.deepEqual(w.check(), [
      { endpointId: 7, namespace: 'prod', workload: 'flood', suppressed: 500 },
      { endpointId: 9, namespace: '', workload: 'endpoint-9', suppressed: 3 },
    ]);
    assert.equal(lines.length, 3);
    // an endpoint deleted and its id given again starts from 0: its first count is all new
    counts = new Map([[9, 2n]]);
    assert.deepEqual(w.check(), [{ endpointId: 9, namespace: '', workload: 'endpoint-9', suppressed: 2 }]);
  });

  test('a counter per workload on /metrics; a closed datapath leaves it alone', async () => {
    const registry = new Registry();
    let read = (): Map<number, bigint> => new Map([[7, 42n]]);
    dropSuppressionMetricRegister(registry, { read: () => read(), endpointById: (id) => endpoints.get(id) });
    assert.match(await registry.metrics(), /^kitnet_workload_drop_events_suppressed_total\{namespace="prod",workload="flood"\} 42$/m);
    read = () => {
      throw new Error('datapath is closed');
    };
    assert.match(await registry.metrics(), /workload="flood"\} 42$/m);
  });

  test('a drop_limit value: both directions counted; an earlier object\'s 16-byte value (one budget) reads as before', () => {
    const v = Buffer.alloc(DROP_LIMIT.size);
    v.writeBigUInt64LE(123_456_789n, DROP_LIMIT.fields.ingress_tat_ns.offset);
    v.writeBigUInt64LE(40n, DROP_LIMIT.fields.ingress_suppressed.offset);
    v.writeBigUInt64LE(987_654_321n, DROP_LIMIT.fields.egress_tat_ns.offset);
    v.writeBigUInt64LE(2n, DROP_LIMIT.fields.egress_suppressed.offset);
    assert.equal(dropLimitSuppressed(v), 42n);
    // the layout before budgets per direction: { tat_ns, suppressed }
    const old = Buffer.alloc(16);
    old.writeBigUInt64LE(123_456_789n, 0);
    old.writeBigUInt64LE(7n, 8);
    assert.equal(dropLimitSuppressed(old), 7n);
  });
});
