// Parsers of the CLI's arguments and repeated options: each gives commander a value or throws
// InvalidArgumentError naming what is wrong.
import { InvalidArgumentError } from 'commander';
import { fqdnNameProblem } from '../../agent/policy/trace-fqdn-name.js';

/** A repeated option's values, in order. */
export const collect = (v: string, prev: string[] = []) => [...prev, v];

export function labelsParse(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`label "${value}" must look like key=value`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

export function portsParse(value: string, previous: unknown[] = []): unknown[] {
  const m = value.match(/^([a-z0-9-]+):(\d+)(?:\/(tcp|udp|sctp))?$/i);
  if (!m) throw new InvalidArgumentError(`port "${value}" must look like NAME:PORT or NAME:PORT/PROTO (e.g. http:80/TCP)`);
  return [...previous, { name: m[1], port: Number(m[2]), protocol: (m[3] ?? 'TCP').toUpperCase() }];
}

/** `NS/NAME` -> workload; `IP` -> address; `k=v,k2=v2` (optionally `NS:k=v`) -> label set. */
export function tracePeerParse(value: string): Record<string, unknown> {
  if (/^[0-9.]+$/.test(value) || value.includes(':') && !value.includes('=')) return { ip: value };
  if (value.includes('=')) {
    const nsSplit = value.match(/^([a-z0-9-]+):(.*)$/);
    const [ns, rest] = nsSplit && !nsSplit[2]!.startsWith('/') ? [nsSplit[1], nsSplit[2]!] : [undefined, value];
    const labels: Record<string, string> = {};
    for (const part of rest.split(',')) {
      const eq = part.indexOf('=');
      if (eq <= 0) throw new InvalidArgumentError(`"${part}" must look like key=value`);
      labels[part.slice(0, eq)] = part.slice(eq + 1);
    }
    return { labels, ...(ns ? { namespace: ns } : {}) };
  }
  return { workload: value };
}

/** `--to-fqdn`: one DNS name (the agent checks it again and answers with the same words). */
export function fqdnArgParse(value: string): string {
  const problem = fqdnNameProblem(value);
  if (problem) throw new InvalidArgumentError(`--to-fqdn: ${problem}`);
  return value;
}

export function refParse(ref: string): { namespace: string; name: string } {
  const parts = ref.split('/');
  if (parts.length === 1 && parts[0]) return { namespace: 'default', name: parts[0] };
  if (parts.length === 2 && parts[0] && parts[1]) return { namespace: parts[0], name: parts[1] };
  throw new InvalidArgumentError(`"${ref}" must be NAME or NAMESPACE/NAME`);
}

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`"${value}" must be a positive integer`);
  return n;
}
