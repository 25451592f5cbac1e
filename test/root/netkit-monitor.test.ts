// netkit/monitor.ts against the real kernel: link removals are reported, and when the kernel drops
// events (the socket buffer overflows while the event loop is busy) the monitor survives and lists
// the links present instead. Runs in a namespace of its own, in a child process. Needs root.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { netnsDelQuiet, rand } from './netkit-helpers.js';
import { run } from '../helpers/sys.js';
import { timeLimit } from '../helpers/timeouts.js';

const execFileP = promisify(execFile);
const skip = process.getuid?.() !== 0 && 'needs root';

/**
 * The child: a monitor, then (event loop blocked) `pairs` veth pairs made and removed by `ip -batch`
 * plus the removal of `watched`; afterwards it prints what the monitor reported. The pairs are made in
 * link group 7 and removed in one `link del group 7` (one unregister batch in the kernel): removed one
 * by one, 1,500 pairs took ~25 s (an RCU grace period each).
 */
const CHILD = `
const { execFileSync } = await import('node:child_process');
const { writeFileSync, mkdtempSync } = await import('node:fs');
const { linkRemovalsWatch } = await import(process.argv[1]);
const pairs = Number(process.argv[2]);
const gone = new Set();
let resyncs = 0;
let present;
const m = linkRemovalsWatch((l) => gone.add(l.ifname), (p) => { resyncs++; present = p; });
const dir = mkdtempSync('/tmp/kitnet-monitor-');
let add = 'link add watched type veth peer name watched-p\\n';
let del = 'link del watched\\n';
for (let i = 0; i < pairs; i++) add += 'link add b' + i + ' group 7 type veth peer name c' + i + '\\n';
del += 'link del group 7\\n';
writeFileSync(dir + '/add', add);
writeFileSync(dir + '/del', del);
execFileSync('ip', ['-batch', dir + '/add']);
execFileSync('ip', ['-batch', dir + '/del']);
execFileSync('rm', ['-r', dir]);
setTimeout(() => {
  console.log(JSON.stringify({ watchedGone: gone.has('watched'), resyncs, watchedPresent: present ? present.has('watched') : null, loPresent: present ? present.has('lo') : null }));
  m.close();
}, 1000);
`;

async function childRun(ns: string, pairs: number): Promise<{ watchedGone: boolean; resyncs: number; watchedPresent: boolean | null; loPresent: boolean | null }> {
  const monitor = new URL('../../netkit/monitor.js', import.meta.url).href;
  const { stdout } = await execFileP('ip', ['netns', 'exec', ns, process.execPath, '--input-type=module', '-e', CHILD, monitor, String(pairs)], { timeout: timeLimit(120_000) });
  return JSON.parse(stdout.trim().split('\n').pop()!) as never;
}

test('link removals are reported; an overflow of the monitor socket ends in a resync, not an abort', { skip, timeout: timeLimit(180_000) }, async (t) => {
  const ns = `kitnet-t${rand()}mon`;
  t.after(() => netnsDelQuiet(ns));
  await run('ip', ['netns', 'add', ns]);
  // A few links: every removal arrives as an event, nothing is dropped.
  const few = await childRun(ns, 5);
  assert.deepEqual(few, { watchedGone: true, resyncs: 0, watchedPresent: null, loPresent: null });
  // Thousands while the loop is blocked: the kernel drops events (ENOBUFS); the monitor lists the links.
  const many = await childRun(ns, 1500);
  assert.ok(many.resyncs >= 1, `no overflow was provoked: ${JSON.stringify(many)}`);
  assert.equal(many.loPresent, true, 'the resync lists the links that are there');
  assert.equal(many.watchedPresent, false, 'and not the removed one, whether or not its event came through');
});
