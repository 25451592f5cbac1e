import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

export interface ProbeSpec {
  addr: string;
  port: number;
  protocol: 'TCP' | 'UDP';
}

export interface ProbeOutcome {
  results: boolean[];
  /** Attempts each probe took (the last one succeeded, or all failed). */
  tries: number[];
}

/** Drives a prober process inside a network namespace (see prober.ts). */
export class Prober {
  private readonly child: ChildProcess;
  private nextId = 1;
  private readonly waiting = new Map<number, (r: ProbeOutcome) => void>();
  readonly ready: Promise<void>;

  constructor(readonly netns: string, ports: number[] = [80, 81]) {
    const script = fileURLToPath(new URL('./prober.js', import.meta.url));
    this.child = spawn('ip', ['netns', 'exec', netns, process.execPath, script, ports.join(',')], { stdio: ['pipe', 'pipe', 'inherit'] });
    const rl = createInterface({ input: this.child.stdout! });
    this.ready = new Promise((resolve, reject) => {
      this.child.once('exit', (code) => reject(new Error(`prober in ${netns} exited with ${code}`)));
      rl.on('line', (line) => {
        const msg = JSON.parse(line) as { ready?: boolean; id?: number; results?: boolean[]; tries?: number[] };
        if (msg.ready) return resolve();
        const cb = this.waiting.get(msg.id!);
        this.waiting.delete(msg.id!);
        cb?.({ results: msg.results!, tries: msg.tries! });
      });
    });
  }

  /** One attempt per probe: true when it got through within timeoutMs. */
  async probe(probes: ProbeSpec[], timeoutMs = 500): Promise<boolean[]> {
    return (await this.probeRetrying(probes, timeoutMs, 1)).results;
  }

  /**
   * Up to `attempts` attempts per probe, the timeout doubling each time (prober.ts); a probe stops at
   * its first success, so only denied probes pay the whole timeoutMs * (2^attempts - 1).
   */
  probeRetrying(probes: ProbeSpec[], timeoutMs: number, attempts: number): Promise<ProbeOutcome> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.child.stdin!.write(`${JSON.stringify({ id, timeoutMs, attempts, probes })}\n`);
    });
  }

  close(): void {
    this.child.stdin?.end();
    this.child.kill('SIGTERM');
  }
}
