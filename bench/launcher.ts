// Starts the processes a benchmark needs while an agent runs in the benchmark's own process (load
// generators, followers), from a small helper process started before the agent.
//
// Why: libuv starts a child with fork() on Linux (Node 20). A fork write-protects every page of the
// parent; after it, the parent's first write to each page faults, also once the child has exec'd
// (100 MB written after spawning `true`: 25,700 faults, 458 ms here, against 2 ms without the spawn).
// dns-agent.bench.ts started a load generator from the agent's process for every phase: ~2,000 of the
// proxy phase's ~2,600 faults fell into its first 250 ms (~11-18 µs each on this VM, ~30 ms of the
// agent's thread in the burst of new names); through this launcher the phase takes 600-1,300. A
// production agent forks nothing while it runs (only systeminformation's commands at start), so those
// faults were the benchmark's. (hubble.bench.ts's follower is started once, before the sweep: its
// warm-up's ~15,000 faults are the allocator's heap growing, the same with or without the launcher.)
//
//   const l = launcherStart();               // first, while the process is small
//   const out = await l.run('ip', ['netns', 'exec', ns, ...]);
//   const p = l.spawn(cmd, args); p.on('line', ...); p.write('report\n'); p.kill();
//
// Protocol (JSON lines): to the helper {op: 'run'|'spawn'|'write'|'end'|'kill', id, ...}; from it
// {id, stdout, stderr, code} for a run, {id, line} for a spawned process's stdout line, {id, exit}.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

type Request =
  | { op: 'run'; id: number; cmd: string; args: string[]; timeoutMs: number }
  | { op: 'spawn'; id: number; cmd: string; args: string[] }
  | { op: 'write'; id: number; data: string }
  | { op: 'end'; id: number }
  | { op: 'kill'; id: number; signal: NodeJS.Signals };

type Reply = { id: number; stdout: string; stderr: string; code: number | string | null } | { id: number; line: string } | { id: number; exit: number | null };

/** A process started through the launcher: its stdout by line, its stdin, its end. */
export interface LaunchedProcess extends EventEmitter<{ line: [string]; exit: [number | null] }> {
  write(data: string): void;
  end(): void;
  kill(signal?: NodeJS.Signals): void;
}

export interface Launcher {
  /** Runs a command to its end; resolves with its stdout, rejects with its stderr (as sh() in lib.ts). */
  run(cmd: string, args: string[], opts?: { timeoutMs?: number }): Promise<string>;
  spawn(cmd: string, args: string[]): LaunchedProcess;
  stop(): void;
}

export function launcherStart(): Launcher {
  const helper = spawn(process.execPath, [fileURLToPath(import.meta.url), '--serve'], { stdio: ['pipe', 'pipe', 'inherit'] });
  let nextId = 1;
  const runs = new Map<number, { resolve: (s: string) => void; reject: (e: Error) => void; what: string }>();
  const procs = new Map<number, LaunchedProcess>();
  const send = (r: Request) => helper.stdin!.write(`${JSON.stringify(r)}\n`);
  createInterface({ input: helper.stdout! }).on('line', (l) => {
    const r = JSON.parse(l) as Reply;
    if ('code' in r) {
      const run = runs.get(r.id);
      runs.delete(r.id);
      if (r.code === 0) run?.resolve(r.stdout);
      else run?.reject(new Error(`${run.what}: exit ${r.code}: ${r.stderr.trim()}`));
    } else if ('line' in r) procs.get(r.id)?.emit('line', r.line);
    else {
      procs.get(r.id)?.emit('exit', r.exit);
      procs.delete(r.id);
    }
  });
  helper.on('exit', (code) => {
    for (const run of runs.values()) run.reject(new Error(`the launcher exited (${code}) before ${run.what} ended`));
    runs.clear();
  });
  return {
    run: (cmd, args, opts = {}) =>
      new Promise((resolve, reject) => {
        const id = nextId++;
        runs.set(id, { resolve, reject, what: `${cmd} ${args.join(' ')}` });
        send({ op: 'run', id, cmd, args, timeoutMs: opts.timeoutMs ?? 120_000 });
      }),
    spawn: (cmd, args) => {
      const id = nextId++;
      const p: LaunchedProcess = Object.assign(new EventEmitter<{ line: [string]; exit: [number | null] }>(), {
        write: (data: string) => void send({ op: 'write', id, data }),
        end: () => void send({ op: 'end', id }),
        kill: (signal: NodeJS.Signals = 'SIGTERM') => void send({ op: 'kill', id, signal }),
      });
      procs.set(id, p);
      send({ op: 'spawn', id, cmd, args });
      return p;
    },
    // Its children go with it: it kills them when its stdin closes.
    stop: () => helper.stdin!.end(),
  };
}

function serve(): void {
  const children = new Map<number, ChildProcess>();
  const reply = (r: Reply) => process.stdout.write(`${JSON.stringify(r)}\n`);
  const input = createInterface({ input: process.stdin });
  input.on('line', (l) => {
    const r = JSON.parse(l) as Request;
    switch (r.op) {
      case 'run':
        execFile(r.cmd, r.args, { timeout: r.timeoutMs, maxBuffer: 256 << 20 }, (err, stdout, stderr) => {
          reply({ id: r.id, stdout, stderr: err && !stderr ? err.message : stderr, code: err ? ((err as { code?: number | string }).code ?? 1) : 0 });
        });
        return;
      case 'spawn': {
        const c = spawn(r.cmd, r.args, { stdio: ['pipe', 'pipe', 'inherit'] });
        children.set(r.id, c);
        createInterface({ input: c.stdout! }).on('line', (line) => reply({ id: r.id, line }));
        c.on('close', (code) => {
          children.delete(r.id);
          reply({ id: r.id, exit: code });
        });
        return;
      }
      case 'write':
        children.get(r.id)?.stdin!.write(r.data);
        return;
      case 'end':
        children.get(r.id)?.stdin!.end();
        return;
      case 'kill':
        children.get(r.id)?.kill(r.signal);
    }
  });
  input.on('close', () => {
    for (const c of children.values()) c.kill('SIGKILL');
    process.exit(0);
  });
}

if (process.argv[2] === '--serve' && process.argv[1] === fileURLToPath(import.meta.url)) serve();
