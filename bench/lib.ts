// Shared helpers for the benchmarks: arguments, timing statistics, the human table, the JSON result
// file, machine facts, commands, network namespaces made in bulk, and cleanup that runs on failure and
// on Ctrl-C. Benchmarks print figures; they never assert on timings.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { commandRun, commandStatus, type CommandOptions } from '../common/command.js';

/** The repository root (dist/bench/lib.js -> ../..). */
export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const RESULTS_DIR = join(REPO_ROOT, 'bench', 'results');

/** A short unique suffix for names of namespaces, links, chains and pin roots of this run. */
export const RUN_ID = `${process.pid.toString(36)}${Math.floor(Math.random() * 36 ** 2).toString(36)}`;

export interface BenchArgs {
  /** Positional sizes (e.g. `1000` or `10,1000`), empty when none were given. */
  sizes: number[];
  /** --quick: the reduced sizes used by `npm run bench`. */
  quick: boolean;
  /** --key=value options. */
  opts: Record<string, string>;
}

/** `node dist/bench/x.bench.js [size[,size...]] [--quick] [--key=value]`. */
export function argsParse(argv = process.argv.slice(2)): BenchArgs {
  const sizes: number[] = [];
  const opts: Record<string, string> = {};
  let quick = false;
  for (const a of argv) {
    if (a === '--quick') quick = true;
    else if (a.startsWith('--')) {
      const [k, v] = a.slice(2).split('=', 2) as [string, string | undefined];
      opts[k] = v ?? 'true';
    } else {
      for (const s of a.split(',')) {
        const n = Number(s.replace(/k$/i, '000'));
        if (!Number.isFinite(n) || n <= 0) throw new Error(`bad size "${s}"`);
        sizes.push(n);
      }
    }
  }
  return { sizes, quick, opts };
}

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export interface Stats {
  n: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export function stats(values: number[]): Stats {
  const s = [...values].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  return { n: s.length, min: s[0] ?? NaN, p50: percentile(s, 50), p90: percentile(s, 90), p99: percentile(s, 99), max: s[s.length - 1] ?? NaN, mean };
}

export function median(values: number[]): number {
  return percentile([...values].sort((a, b) => a - b), 50);
}

/** Human number: 1234567 -> "1.23M", 12345 -> "12.3k", 12.345 -> "12.3". */
export function fmt(x: number | undefined | null, digits = 3): string {
  if (x === undefined || x === null || Number.isNaN(x)) return '-';
  const a = Math.abs(x);
  if (a >= 1e9) return `${(x / 1e9).toPrecision(digits)}G`;
  if (a >= 1e6) return `${(x / 1e6).toPrecision(digits)}M`;
  if (a >= 1e4) return `${(x / 1e3).toPrecision(digits)}k`;
  if (a >= 100) return x.toFixed(0);
  return x.toPrecision(digits);
}

/** Prints rows as an aligned text table (and returns the text). */
export function table(title: string, header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => (typeof c === 'number' ? fmt(c) : c)))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => String(r[i] ?? '').length)));
  const line = (r: (string | number)[]) => r.map((c, i) => String(c ?? '').padStart(widths[i]!)).join('  ');
  const text = [`\n${title}`, line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
  console.log(text);
  return text;
}

export interface Machine {
  nproc: number;
  cpuModel: string;
  kernel: string;
  memGiB: number;
  node: string;
  loadavg: string;
}

export function machine(): Machine {
  return {
    nproc: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
    memGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    loadavg: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
  };
}

/** Writes bench/results/<name>.json with the machine and the figures. */
export function resultWrite(name: string, data: unknown): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const path = join(RESULTS_DIR, `${name}.json`);
  writeFileSync(path, `${JSON.stringify({ bench: name, at: new Date().toISOString(), machine: machine(), ...(data as object) }, null, 2)}\n`);
  console.log(`\nresults: ${path}`);
  return path;
}

/** Runs a command; resolves with stdout, rejects with stderr in the message. */
export const sh = (cmd: string, args: string[], opts: CommandOptions = {}): Promise<string> =>
  commandRun(cmd, args, { timeoutMs: 120_000, ...opts });

/** Like sh, but never throws; returns the exit status. */
export const shStatus = commandStatus;

/** Creates named namespaces in bulk (one `ip -batch`); lo stays down (kitnet sets it up on register). */
export async function netnsAddMany(names: string[]): Promise<void> {
  if (!names.length) return;
  await sh('ip', ['-batch', '-'], { input: names.map((n) => `netns add ${n}\n`).join(''), timeoutMs: 600_000 });
}

/** Deletes named namespaces in bulk; missing ones are ignored (-force keeps going after errors). */
export async function netnsDelMany(names: string[]): Promise<void> {
  if (!names.length) return;
  await sh('ip', ['-force', '-batch', '-'], { input: names.map((n) => `netns del ${n}\n`).join(''), timeoutMs: 600_000 }).catch(() => undefined);
}

type Cleanup = () => unknown;
const cleanups: { what: string; fn: Cleanup }[] = [];
let cleaning: Promise<void> | undefined;

/** Registers an undo step; steps run last-in first-out by {@link cleanupAll}, also on SIGINT/SIGTERM. */
export function onCleanup(what: string, fn: Cleanup): void {
  cleanups.push({ what, fn });
}

export function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    while (cleanups.length) {
      const c = cleanups.pop()!;
      try {
        await c.fn();
      } catch (err) {
        console.error(`cleanup "${c.what}" failed: ${(err as Error).message}`);
      }
    }
  })();
  return cleaning;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    console.error(`\n${sig}: cleaning up`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

/** Runs a benchmark's main with cleanup on every exit path; sets the exit code on failure. */
export async function benchMain(fn: () => Promise<void>): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.error('benchmarks need root (network namespaces, BPF)');
    process.exitCode = 2;
    return;
  }
  try {
    await fn();
  } catch (err) {
    console.error(err);
    process.exitCode = 1;
  } finally {
    await cleanupAll();
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** True when `cmd` is on PATH. */
export async function have(cmd: string): Promise<boolean> {
  return (await shStatus('sh', ['-c', `command -v ${cmd} >/dev/null`])) === 0;
}

/** Installs Debian packages that are missing (apt-get, quietly). */
export async function aptEnsure(pkgs: { cmd: string; pkg: string }[]): Promise<void> {
  const missing: string[] = [];
  for (const p of pkgs) if (!(await have(p.cmd))) missing.push(p.pkg);
  if (!missing.length) return;
  console.log(`installing Debian packages: ${missing.join(' ')}`);
  const env = 'DEBIAN_FRONTEND=noninteractive';
  await sh('sh', ['-c', `${env} apt-get install -y -q --no-install-recommends ${missing.join(' ')} >/dev/null 2>&1 || (apt-get update -q >/dev/null && ${env} apt-get install -y -q --no-install-recommends ${missing.join(' ')} >/dev/null)`], { timeoutMs: 600_000 });
}

/**
 * The calling thread's scheduler figures from /proc/thread-self/schedstat: ns it ran on a CPU, ns it
 * was runnable and waited for one (woken and not yet running, or preempted; bench/README.md §8 has
 * where the long waits come from on this VM), and how many times it was switched in. Differences over a
 * phase say how much of a thread's wall time the machine, not the code, took.
 */
export interface ThreadSched {
  runNs: number;
  waitNs: number;
  slices: number;
}

export function threadSched(): ThreadSched {
  const [run, wait, slices] = readFileSync('/proc/thread-self/schedstat', 'utf8').trim().split(/\s+/).map(Number);
  return { runNs: run ?? 0, waitNs: wait ?? 0, slices: slices ?? 0 };
}

/** What changed from `before` to now (threadSched on the same thread). */
export function threadSchedSince(before: ThreadSched): ThreadSched {
  const now = threadSched();
  return { runNs: now.runNs - before.runNs, waitNs: now.waitNs - before.waitNs, slices: now.slices - before.slices };
}

export const MACHINE_LINE = (m = machine()) => `${m.nproc} x ${m.cpuModel}, ${m.memGiB} GiB, Linux ${m.kernel}, Node ${m.node}, load ${m.loadavg}`;

/** The inspector on this thread: a session and a promise-returning post. */
async function inspectorSession(): Promise<{ post: (method: string, params?: object) => Promise<unknown>; close: () => void }> {
  const { Session } = await import('node:inspector');
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object) =>
    new Promise<unknown>((resolve, reject) => session.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res))));
  return { post, close: () => session.disconnect() };
}

/**
 * CPU profile of a phase (--profile): the inspector's sampler, started after the BPF object is loaded
 * (its SIGPROF ticks make the verifier give up with EAGAIN, so `node --cpu-prof` cannot profile a
 * datapath load). Writes bench/results/<name>.cpuprofile for Chrome DevTools / speedscope.
 */
export async function profiled<T>(enabled: boolean, name: string, fn: () => Promise<T>): Promise<T> {
  if (!enabled) return fn();
  const { post, close } = await inspectorSession();
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 200 });
  await post('Profiler.start');
  try {
    return await fn();
  } finally {
    const { profile } = (await post('Profiler.stop')) as { profile: unknown };
    mkdirSync(RESULTS_DIR, { recursive: true });
    const path = join(RESULTS_DIR, `${name}.cpuprofile`);
    writeFileSync(path, JSON.stringify(profile));
    close();
    console.log(`profile: ${path}`);
  }
}

interface HeapSampleNode {
  selfSize: number;
  children: HeapSampleNode[];
}

/**
 * What a phase allocates (--heap): V8's sampling heap profiler over fn, counting objects whether a
 * collection freed them since or not (a sample every 4 KiB allocated on average, so the total is an
 * estimate). Writes bench/results/<name>.heapprofile (Chrome DevTools: Memory, allocation sampling) and
 * returns fn's result with the bytes allocated; undefined when not enabled. The sampling slows the
 * thread: latencies measured meanwhile are not comparable with runs without it.
 */
export async function heapSampled<T>(enabled: boolean, name: string, fn: () => Promise<T>): Promise<[T, number | undefined]> {
  if (!enabled) return [await fn(), undefined];
  const { post, close } = await inspectorSession();
  await post('HeapProfiler.enable');
  await post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
  let allocated = 0;
  const walk = (n: HeapSampleNode): void => {
    allocated += n.selfSize;
    for (const c of n.children) walk(c);
  };
  let result: T;
  try {
    result = await fn();
  } finally {
    const { profile } = (await post('HeapProfiler.stopSampling')) as { profile: { head: HeapSampleNode } };
    mkdirSync(RESULTS_DIR, { recursive: true });
    const path = join(RESULTS_DIR, `${name}.heapprofile`);
    writeFileSync(path, JSON.stringify(profile));
    close();
    console.log(`heap profile: ${path}`);
    walk(profile.head);
  }
  return [result, allocated];
}

/**
 * What outlives a young collection (--survivors): V8's sampling heap profiler from afterMs into fn to
 * its end, keeping the samples of objects a young collection did not free (a major one may have: they
 * were copied at least once). Before the profile is read a young collection is forced (node
 * --expose-gc), so that what the last interval allocated and dropped is not counted. The copying of
 * these bytes is most of a scavenge's pause. Writes bench/results/<name>.survivors.heapprofile and
 * returns the bytes counted (an estimate: a sample every 1 KiB on average) and the window's length in ms.
 */
export async function heapSurvivors<T>(enabled: boolean, name: string, afterMs: number, fn: () => Promise<T>): Promise<[T, { bytes: number; ms: number } | undefined]> {
  if (!enabled) return [await fn(), undefined];
  const gc = (globalThis as { gc?: (o: { type: 'minor' | 'major'; execution: 'sync' }) => void }).gc;
  if (!gc) throw new Error('--survivors needs node --expose-gc');
  const { post, close } = await inspectorSession();
  await post('HeapProfiler.enable');
  let t0 = 0;
  let t1 = 0;
  // A sampler that does not start fails the round (not a wait for ever).
  const started = new Promise<void>((resolve, reject) => setTimeout(() => {
    gc({ type: 'minor', execution: 'sync' });
    t0 = performance.now();
    post('HeapProfiler.startSampling', { samplingInterval: 1024, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: false }).then(() => resolve(), reject);
  }, afterMs));
  let result: T;
  let survived = 0;
  try {
    result = await fn();
  } finally {
    await started;
    t1 = performance.now();
    gc({ type: 'minor', execution: 'sync' });
    const { profile } = (await post('HeapProfiler.stopSampling')) as { profile: { head: HeapSampleNode } };
    mkdirSync(RESULTS_DIR, { recursive: true });
    const path = join(RESULTS_DIR, `${name}.survivors.heapprofile`);
    writeFileSync(path, JSON.stringify(profile));
    close();
    console.log(`survivors profile: ${path}`);
    const walk = (n: HeapSampleNode): void => {
      survived += n.selfSize;
      for (const c of n.children) walk(c);
    };
    walk(profile.head);
  }
  return [result, { bytes: survived, ms: t1 - t0 }];
}
