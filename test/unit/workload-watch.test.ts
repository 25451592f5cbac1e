import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import type { KernelOps } from '../../agent/kernel-ops.js';
import type { Store } from '../../agent/store/index.js';
import { WorkloadWatch } from '../../agent/workload-watch.js';
import type { WorkloadService } from '../../agent/workloads.js';
import type { LinkGone } from '../../netkit/index.js';

/**
 * When the kernel dropped link events (the monitor's buffer overflowed), the watch compares every
 * ready workload's device with the links present and handles the missing ones as if their removal
 * had been reported. The monitor's overflow itself is provoked for real in test/root/netkit-monitor.
 */
test('a resync after lost link events checks exactly the ready workloads whose device is gone', async () => {
  const records = [
    { spec: { namespace: 'n', name: 'alive', kind: 'netns', netns: '/run/netns/alive' }, hostIfname: 'kn-alive', state: 'ready', identity: 1 },
    { spec: { namespace: 'n', name: 'gone', kind: 'netns', netns: '/run/netns/gone' }, hostIfname: 'kn-gone', state: 'ready', identity: 1 },
    { spec: { namespace: 'n', name: 'relinked', kind: 'netns', netns: '/run/netns/relinked' }, hostIfname: 'kn-relinked', state: 'ready', identity: 1 },
    { spec: { namespace: 'n', name: 'registering', kind: 'netns', netns: '/run/netns/registering' }, hostIfname: 'kn-reg', state: 'pending', identity: 1 },
  ];
  let resync: ((present: ReadonlySet<string>) => void) | undefined;
  const kernel = {
    linkRemovalsWatch: (_onGone: (l: LinkGone) => void, onResync: (present: ReadonlySet<string>) => void) => {
      resync = onResync;
      return { close: () => undefined };
    },
    // the namespace of "gone" went away; the one of "relinked" is there (its link was deleted by hand)
    netnsValidate: async (path: string) => {
      if (path.endsWith('/gone')) throw new Error('does not exist');
    },
  } as unknown as KernelOps;
  const removed: string[] = [];
  const repaired: string[] = [];
  const workloads = {
    remove: async (ns: string, name: string) => void removed.push(`${ns}/${name}`),
    repair: async (ns: string, name: string) => void repaired.push(`${ns}/${name}`),
  } as unknown as WorkloadService;
  const store = { workloadList: () => records } as unknown as Store;
  let changes = 0;
  const watch = new WorkloadWatch(store, kernel, workloads, pino({ level: 'silent' }), () => changes++);
  watch.start();
  try {
    assert.ok(resync, 'the watch asked for resyncs');
    resync(new Set(['lo', 'kn-alive']));
    await new Promise((r) => setTimeout(r, 400));
    assert.deepEqual(removed, ['n/gone'], 'namespace gone: the workload is removed');
    assert.deepEqual(repaired, ['n/relinked'], 'namespace there: the device is made again');
    assert.equal(changes, 2);
  } finally {
    watch.stop();
  }
});
