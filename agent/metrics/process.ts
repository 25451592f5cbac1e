/**
 * Metrics kept per process rather than per registry, so the services that observe them (workload
 * registration, the reconcile loop) need not hold the metrics object; every AgentMetrics registry
 * exports them.
 */
import { Counter, Histogram, type Registry } from 'prom-client';

export const REGISTRATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * Registration duration, kept per process so the WorkloadService can observe without holding the
 * metrics object; every AgentMetrics registry exports it.
 */
const registrationDuration = new Histogram({
  name: 'kitnet_workload_registration_duration_seconds',
  help: 'Time to register a workload: allocation, device, addresses, routes, BPF attach and map writes',
  labelNames: ['outcome', 'mode'] as const,
  buckets: REGISTRATION_BUCKETS,
  registers: [],
});

/** Records one registration; `seconds` from request to ready (or to the rolled-back failure). */
export function workloadRegistrationObserve(seconds: number, outcome: 'success' | 'failure' = 'success', mode = ''): void {
  registrationDuration.observe({ outcome, mode }, seconds);
}

export type ReconcileResult = 'unchanged' | 'changed' | 'removed' | 'error';

/** The reconcile loop's counters, per process like registrationDuration. */
const reconcileTotal = new Counter({
  name: 'kitnet_reconcile_total',
  help: 'Workload reconciles by result: unchanged (kernel already as desired), changed, removed (namespace or tap gone), error',
  labelNames: ['result'] as const,
  registers: [],
});
const reconcileRetries = new Counter({
  name: 'kitnet_reconcile_retries_total',
  help: 'Failed workload reconciles scheduled again after their backoff',
  registers: [],
});

/** Counts one reconcile; `retried`: a failure scheduled for retry. */
export function reconcileObserve(result: ReconcileResult, retried: boolean): void {
  reconcileTotal.inc({ result });
  if (retried) reconcileRetries.inc();
}

/** Adds the per-process metrics to a registry, from zero (a new agent in the same process starts over). */
export function processMetricsRegister(registry: Registry): void {
  registrationDuration.reset();
  registry.registerMetric(registrationDuration);
  for (const m of [reconcileTotal, reconcileRetries]) {
    m.reset();
    registry.registerMetric(m);
  }
}
