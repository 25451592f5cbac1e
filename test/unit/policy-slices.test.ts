import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { policiesFromObjects } from '../../agent/policy/index.js';
import { PolicyState } from '../../agent/policy/incremental.js';
import { SLICE_MS, stepsRun, stepsRunSliced, type Steps } from '../../agent/policy/slices.js';

/** A policy of n CIDRs x ports TCP ports for egress of app=big: n x ports entries on its endpoint. */
function manyPorts(n: number, ports: number) {
  return policiesFromObjects([{
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'big', namespace: 'lim' },
    spec: {
      endpointSelector: { matchLabels: { app: 'big' } },
      egress: [{
        toCIDR: Array.from({ length: n }, (_, i) => `10.${120 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`),
        toPorts: [{ ports: Array.from({ length: ports }, (_, i) => ({ port: String(2000 + i), protocol: 'TCP' })) }],
      }],
    },
  }]);
}
const input = (n: number, ports: number) => ({
  policies: manyPorts(n, ports),
  identities: new Map([[70000, ['k8s:app=big', 'k8s:io.kubernetes.pod.namespace=lim']]]),
  endpoints: [{ endpointId: 1, identity: 70000, namedPorts: [], addresses: ['10.0.0.1', 'fd00::1'] }],
});

describe('policy work in slices', () => {
  test('the sliced runner returns what the generator returns and throws what it throws', async () => {
    function* count(n: number): Steps<number> {
      for (let i = 0; i < n; i++) yield;
      if (n < 0) throw new Error('negative');
      return n;
    }
    assert.equal(stepsRun(count(3)), 3);
    assert.equal(await stepsRunSliced(count(3)), 3);
    await assert.rejects(stepsRunSliced(count(-1)), /negative/);
  });

  test('compiling 200k entries in slices lets timers run in between, with the result of the one-go compile', async () => {
    const whole = new PolicyState(input(200, 1000));
    const sliced = new PolicyState(input(200, 1000), false);
    let ticks = 0;
    let worstGap = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      worstGap = Math.max(worstGap, now - last);
      last = now;
      ticks++;
    }, 1);
    try {
      last = performance.now();
      await stepsRunSliced(sliced.initialSteps());
    } finally {
      clearInterval(timer);
    }
    assert.ok(ticks > 2, `the timer ran ${ticks} times during the compile`);
    // A slice ends after SLICE_MS plus one step; generous for a loaded machine and GC pauses.
    assert.ok(worstGap < SLICE_MS * 25, `the event loop waited ${worstGap.toFixed(0)} ms at most`);
    assert.equal(sliced.endpoint(1)!.entries.length, 200_000 + 1, 'the entries and the allow-all ingress one');
    assert.deepEqual(sliced.endpoint(1), whole.endpoint(1));
  });
});
