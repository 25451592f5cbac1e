// The flows' names for learned addresses (destination_names / source_names) while new names keep
// arriving: a cache holding N addresses takes a new name's answer, then a flow looks an address up,
// over and over (a workload resolving many new names with traffic between the answers). µs per
// (answer + lookup), median of the rounds with min-max; the figure should not grow with N.
//
//   node dist/bench/fqdn-names.bench.js [N=1000,10000,50000] [--answers=2000] [--rounds=5]
import { FqdnCache } from '../agent/dns/fqdn-cache.js';
import { MACHINE_LINE, argsParse, benchMain, fmt, median, resultWrite, table } from './lib.js';

const v4 = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;

async function main(): Promise<void> {
  const args = argsParse();
  const sizes = args.sizes.length ? args.sizes : [1000, 10_000, 50_000];
  const answers = Number(args.opts.answers ?? 2000);
  const rounds = Number(args.opts.rounds ?? 5);
  console.log(`FQDN names for flows: ${answers} new answers, each followed by a flow's lookup, over caches of ${sizes.join(', ')} addresses; ${rounds} rounds; ${MACHINE_LINE()}`);
  const rows: Array<{ addresses: number; us: number[] }> = [];
  for (const n of sizes) {
    const us: number[] = [];
    for (let round = 0; round < rounds; round++) {
      const c = new FqdnCache();
      for (let i = 0; i < n; i++) c.learn(`name-${i}.test`, [v4(i)], 3600, 0);
      c.namesByAddress(v4(0)); // the index as a running agent has it
      const t0 = performance.now();
      for (let j = 0; j < answers; j++) {
        const i = n + j;
        c.learn(`new-${round}-${j}.test`, [v4(i)], 3600, 0);
        if (c.namesByIpv4(((10 << 24) | i) >>> 0)?.length !== 1) throw new Error(`no name for ${v4(i)}`);
      }
      us.push(((performance.now() - t0) * 1000) / answers);
    }
    rows.push({ addresses: n, us });
  }
  table('µs per new answer and the flow lookup after it', ['addresses cached', 'µs, median', 'min-max'], rows.map((r) => [r.addresses, fmt(median(r.us)), `${fmt(Math.min(...r.us))}-${fmt(Math.max(...r.us))}`]));
  resultWrite('fqdn-names', { answers, rounds, rows });
}

await benchMain(main);
