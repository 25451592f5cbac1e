/**
 * Drops the datapath did not report one by one because they were over their endpoint's drop event
 * budget in their direction (flows.dropEvents, bpf/include/events.h; one budget for packets to the
 * workload, one for what it sent), both directions counted together. Hubble users would otherwise see a flood shrink to
 * a trickle of events with nothing saying so: the counts are a Prometheus counter per workload, and a
 * warning per workload at most once per interval names it and says how many of its drops went
 * unreported since the last one.
 */
import type { Registry } from 'prom-client';
import type { Logger } from 'pino';
import { mirroredCounter } from '../metrics/mirror.js';
import type { HubbleEndpoint } from './hubble.js';

export interface DropSuppressionSources {
  /** Per endpoint id, drops not reported since the datapath was loaded (KitnetDatapath.dropEventsSuppressed). */
  read: () => Map<number, bigint>;
  endpointById: (id: number) => HubbleEndpoint | undefined;
}

function workloadOf(ep: HubbleEndpoint | undefined, id: number): { namespace: string; workload: string } {
  // an endpoint the directory no longer knows (deleted a moment ago) is still named by its id
  return { namespace: ep?.namespace ?? '', workload: ep?.pod_name ?? `endpoint-${id}` };
}

export function dropSuppressionMetricRegister(registry: Registry, src: DropSuppressionSources): void {
  mirroredCounter(
    registry,
    'kitnet_workload_drop_events_suppressed_total',
    'Dropped packets of a workload not reported as flows because they were over its drop event budget in their direction (flows.dropEvents); still dropped',
    ['namespace', 'workload'] as const,
    () => {
      try {
        return [...src.read()].map(([id, n]) => [workloadOf(src.endpointById(id), id), Number(n)]);
      } catch {
        return undefined; // a closed datapath (agent stopping)
      }
    },
  );
}

/** Logs, at most once per `intervalMs`, each workload whose count grew since the last look. */
export class DropSuppressionLog {
  private readonly seen = new Map<number, bigint>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly src: DropSuppressionSources,
    private readonly log: Logger,
    private readonly intervalMs = 10_000,
  ) {}

  start(): void {
    this.timer ??= setInterval(() => this.check(), this.intervalMs).unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One look (the timer's); returns what it logged. */
  check(): Array<{ endpointId: number; namespace: string; workload: string; suppressed: number }> {
    let now: Map<number, bigint>;
    try {
      now = this.src.read();
    } catch {
      return [];
    }
    const out: Array<{ endpointId: number; namespace: string; workload: string; suppressed: number }> = [];
    for (const [id, n] of now) {
      const prev = this.seen.get(id) ?? 0n;
      // lower than last time: the endpoint was deleted and its id given again, counting from 0
      const grew = n >= prev ? n - prev : n;
      if (grew <= 0n) continue;
      const w = workloadOf(this.src.endpointById(id), id);
      out.push({ endpointId: id, ...w, suppressed: Number(grew) });
      this.log.warn(
        { endpointId: id, namespace: w.namespace, workload: w.workload, suppressed: Number(grew), total: Number(n) },
        `workload ${w.namespace}/${w.workload}: ${grew} dropped packets not reported as flows (over flows.dropEvents); still dropped`,
      );
    }
    this.seen.clear();
    for (const [id, n] of now) this.seen.set(id, n);
    return out;
  }
}
