// `npm run bench`: every benchmark in quick mode, one after the other, each in its own process (a
// failing one does not stop the others). `npm run bench -- --full` runs the full sizes instead.
// Each benchmark can also run alone: node dist/bench/<name>.bench.js [sizes] [--quick] [...].
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const full = process.argv.includes('--full');
const mode = full ? [] : ['--quick'];
/** Order: cheapest first. Quick: ~15 min on 2 cores (control plane ~5 min, netpath ~5 min, see README). */
const benches: { name: string; quick: string[] }[] = [
  { name: 'datapath', quick: ['10,1000,10000,100000'] },
  { name: 'flows', quick: ['40000'] },
  { name: 'flow-latency', quick: ['40'] },
  { name: 'hubble', quick: ['50000,200000'] },
  { name: 'dns-proxy', quick: ['1000'] },
  { name: 'dns-agent', quick: ['5000', '--rounds=2'] },
  { name: 'controlplane', quick: ['1000', '--helper=10'] },
  { name: 'agent-rss', quick: ['1000'] },
  { name: 'reconcile-resync', quick: ['300'] },
  { name: 'cluster', quick: ['40', '--entries=1000', '--alloc=30'] },
  { name: 'netpath', quick: ['10,1000,10000,30000'] },
];
const only = process.argv.slice(2).filter((a) => !a.startsWith('--'));
let failed = 0;
for (const b of benches) {
  if (only.length && !only.includes(b.name)) continue;
  console.log(`\n=== ${b.name} ===`);
  const t = Date.now();
  const r = spawnSync(process.execPath, [join(here, `${b.name}.bench.js`), ...(full ? [] : b.quick), ...mode], { stdio: 'inherit' });
  console.log(`=== ${b.name}: ${r.status === 0 ? 'done' : `FAILED (${r.status ?? r.signal})`} in ${((Date.now() - t) / 1000).toFixed(0)} s`);
  if (r.status !== 0) failed++;
}
process.exitCode = failed ? 1 : 0;
