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
  /** Per probe: failed and not retried (further) because its denial was confirmed (ProbeRun.confirmDenied). */
  confirmed: boolean[];
}

/** Probes under way in the prober. */
export interface ProbeRun {
  outcome: Promise<ProbeOutcome>;
  /**
   * The caller knows these probes (by index) are denied, from evidence of its own (the agent's policy
   * drop of exactly their tuple): once such a probe has failed an attempt it is not retried, and a
   * retry under way ends as failed. Probes that already got through, or were answered, are unaffected.
   */
  confirmDenied(indexes: number[]): void;
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
        const msg = JSON.parse(line) as { ready?: boolean; id?: number; results?: boolean[]; tries?: number[]; confirmed?: boolean[] };
        if (msg.ready) return resolve();
        const cb = this.waiting.get(msg.id!);
        this.waiting.delete(msg.id!);
        cb?.({ results: msg.results!, tries: msg.tries!, confirmed: msg.confirmed! });
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
    return this.probeStart(probes, timeoutMs, attempts).outcome;
  }

  /** As probeRetrying, and the caller may confirm denials on the way (ProbeRun.confirmDenied). */
  probeStart(probes: ProbeSpec[], timeoutMs: number, attempts: number): ProbeRun {
    const id = this.nextId++;
    let answered = false;
    const outcome = new Promise<ProbeOutcome>((resolve) => {
      this.waiting.set(id, (r) => {
        answered = true;
        resolve(r);
      });
      this.child.stdin!.write(`${JSON.stringify({ id, timeoutMs, attempts, probes })}\n`);
    });
    return {
      outcome,
      confirmDenied: (indexes) => {
        if (!answered && indexes.length) this.child.stdin!.write(`${JSON.stringify({ id, confirmDenied: indexes })}\n`);
      },
    };
  }

  close(): void {
    this.child.stdin?.end();
    this.child.kill('SIGTERM');
  }
}
