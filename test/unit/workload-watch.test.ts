import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import type { KernelOps } from '../../agent/kernel-ops.js';
import type { Store } from '../../agent/store/index.js';
import { WorkloadWatch } from '../../agent/workload-watch.js';
import type { LinkGone } from '../../netkit/index.js';

/**
 * The watch only enqueues: a removed link of a workload puts that workload in the reconcile queue
 * (what happens then is the plan's, test/unit/reconcile-plan.test.ts). When the kernel dropped link
 * events (the monitor's buffer overflowed), every ready workload whose device is missing is enqueued.
 * The monitor's overflow itself is provoked for real in test/root/netkit-monitor.
 */
test('link removals and a resync after lost events enqueue exactly the workloads concerned', () => {
  const records = [
    { spec: { namespace: 'n', name: 'alive', kind: 'netns', netns: '/run/netns/alive' }, hostIfname: 'kn-alive', state: 'ready', identity: 1 },
    { spec: { namespace: 'n', name: 'gone', kind: 'netns', netns: '/run/netns/gone' }, hostIfname: 'kn-gone', state: 'ready', identity: 1 },
    { spec: { namespace: 'n', name: 'relinked', kind: 'netns', netns: '/run/netns/relinked' }, hostIfname: 'kn-relinked', state: 'ready', identity: 1 },
    { spec: { namespace: 'n', name: 'registering', kind: 'netns', netns: '/run/netns/registering' }, hostIfname: 'kn-reg', state: 'pending', identity: 1 },
  ];
  let resync: ((present: ReadonlySet<string>) => void) | undefined;
  let gone: ((l: LinkGone) => void) | undefined;
  const kernel = {
    linkRemovalsWatch: (onGone: (l: LinkGone) => void, onResync: (present: ReadonlySet<string>) => void) => {
      gone = onGone;
      resync = onResync;
      return { close: () => undefined };
    },
  } as unknown as KernelOps;
  const enqueued: string[] = [];
  const controller = { enqueueAfter: (ns: string, name: string) => void enqueued.push(`${ns}/${name}`) };
  const store = { workloadList: () => records } as unknown as Store;
  const watch = new WorkloadWatch(store, kernel, controller, pino({ level: 'silent' }));
  watch.start();
  try {
    assert.ok(resync && gone, 'the watch asked for link removals and resyncs');
    resync(new Set(['lo', 'kn-alive']));
    assert.deepEqual(enqueued, ['n/gone', 'n/relinked'], 'ready workloads whose device is missing; not one still registering');
    enqueued.length = 0;
    gone({ ifname: 'kn-alive' } as LinkGone);
    gone({ ifname: 'eth7' } as LinkGone);
    assert.deepEqual(enqueued, ['n/alive'], "a workload's link; not a foreign one");
  } finally {
    watch.stop();
  }
});
