import { Counter, type Registry } from 'prom-client';

/** A counter whose value lives elsewhere: reset and set from `read` on every scrape. */
export function mirroredCounter<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[],
  read: () => Array<[Partial<Record<L, string>>, number]> | undefined,
): Counter<L> {
  return new Counter<L>({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      const values = read();
      if (!values) return;
      this.reset();
      for (const [labels, v] of values) this.inc(labels, v);
    },
  });
}
