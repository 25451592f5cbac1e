import type { Logger } from 'pino';
import type { Mutex } from '../mutex.js';
import { WorkloadGoneError, type Observed, type Reconciler } from '../reconciler.js';
import type { Store, StoreChange } from '../store/store.js';
import type { WorkloadRecord } from '../store/types.js';
import { reconcileObserve, type ReconcileResult } from '../metrics/process.js';
import { reconcilePlan } from './plan.js';
import { WorkQueue, type Backoff } from './queue.js';

export interface ControllerOptions {
  /** Every workload is reconciled this often, whatever happened (drift nobody announced). */
  resyncMs: number;
  backoff: Backoff;
}

/** What the loop says about a workload beyond its stored state. */
export interface ReconcileStatus {
  /** Failed attempts since the last success. */
  retries: number;
  /** When the next attempt is due after a failure (ISO time), null when none is scheduled. */
  nextRetryAt: string | null;
}

const keyOf = (namespace: string, name: string): string => `${namespace}/${name}`;

function keySplit(key: string): [string, string] {
  const i = key.indexOf('/');
  return [key.slice(0, i), key.slice(i + 1)];
}

/**
 * The reconcile loop of workloads, in the manner of controller-runtime. A key (namespace/name) enters
 * the work queue from link events (agent/workload-watch.ts), store changes, the periodic resync and
 * failed attempts (with capped exponential backoff); one worker takes keys one at a time and, under
 * the agent's lock, reads the workload afresh, observes the kernel, plans (agent/reconcile/plan.ts)
 * and applies. Nothing else touches a workload's kernel objects outside registration and removal,
 * which run the same steps while holding the lock.
 */
export class WorkloadController {
  private readonly queue: WorkQueue;
  private unsubscribe: (() => void) | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private worker: Promise<void> | undefined;
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly reconciler: Reconciler,
    /** The agent's lock for every change of desired state: a reconcile holds it while it runs. */
    private readonly mutex: Mutex,
    /** Removes a workload whose namespace or tap is gone; called with the lock held. */
    private readonly workloadRemove: (namespace: string, name: string) => Promise<void>,
    private readonly log: Logger,
    private readonly opts: ControllerOptions,
    /** After a workload was removed or changed by the loop (the flow directory follows). */
    private readonly onChange: () => void = () => undefined,
  ) {
    this.queue = new WorkQueue(opts.backoff);
  }

  start(): void {
    this.unsubscribe = this.store.subscribe((c) => this.onStoreChange(c));
    this.resyncTimer = setInterval(() => this.enqueueAll(), this.opts.resyncMs);
    this.resyncTimer.unref();
    this.worker = this.work();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    this.queue.close();
    await this.worker;
  }

  /** Keys waiting to be reconciled now. */
  get depth(): number {
    return this.queue.depth;
  }

  enqueue(namespace: string, name: string): void {
    this.queue.add(keyOf(namespace, name));
  }

  /**
   * After `ms` (link events for one device within that window are handled once). A workload waiting
   * out its backoff keeps waiting: its failed attempts make and remove links themselves, whose events
   * would otherwise retry it at once, again and again.
   */
  enqueueAfter(namespace: string, name: string, ms: number): void {
    const key = keyOf(namespace, name);
    if (this.backingOff(key)) return;
    this.queue.addAfter(key, ms);
  }

  /** The periodic resync (a workload waiting out its backoff is tried when that is over). */
  enqueueAll(): void {
    for (const w of this.store.workloadList()) {
      const key = keyOf(w.spec.namespace, w.spec.name);
      if (!this.backingOff(key)) this.queue.add(key);
    }
  }

  private backingOff(key: string): boolean {
    return this.queue.failuresOf(key) > 0 && this.queue.dueAt(key) !== undefined;
  }

  statusOf(namespace: string, name: string): ReconcileStatus {
    const key = keyOf(namespace, name);
    const due = this.queue.dueAt(key);
    const retries = this.queue.failuresOf(key);
    return { retries, nextRetryAt: retries > 0 && due !== undefined ? new Date(due).toISOString() : null };
  }

  private onStoreChange(c: StoreChange): void {
    // Desired state changed (here or, with a shared store, on another host); status writes are the
    // loop's own, and a deleted workload was torn down by whoever deleted it.
    if (c.kind === 'workload' && c.what === 'spec') this.enqueue(c.namespace, c.name);
  }

  private async work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      try {
        const [namespace, name] = keySplit(key);
        await this.mutex.run(async () => {
          if (this.stopped) return; // the store may be closing
          const rec = this.store.workloadGet(namespace, name);
          if (!rec) {
            this.queue.forget(key);
            return;
          }
          await this.reconcileLocked(rec).catch(() => undefined); // counted, logged and retried inside
        });
      } catch (err) {
        this.log.error({ err, workload: key }, 'reconcile worker failed');
      } finally {
        this.queue.done(key);
      }
    }
  }

  /**
   * One reconcile of a stored workload, with the lock held by the caller: registration (its first
   * attempt, whose error the client gets), restore, repair and the worker. A failure is written to
   * the workload's status, scheduled for retry after its backoff, and thrown. `registering`: the
   * caller rolls a failure back instead (no status, no retry), and a vanished namespace is an error.
   */
  async reconcileLocked(rec: WorkloadRecord, opts: { makeOwnedNetns?: boolean; registering?: boolean } = {}): Promise<Observed | undefined> {
    const { namespace, name } = rec.spec;
    const key = keyOf(namespace, name);
    // This attempt covers whatever asked for one meanwhile (the registration's own store change).
    this.queue.drop(key);
    const log = this.log.child({ workload: key, device: rec.hostIfname, identity: rec.identity });
    let result: ReconcileResult = 'error';
    try {
      const observed = await this.reconciler.workloadObserve(rec);
      const actions = reconcilePlan(rec, observed, { makeOwnedNetns: opts.makeOwnedNetns === true || opts.registering === true });
      const gone = actions.find((a) => a.op === 'workloadRemove');
      if (gone && opts.registering) throw new WorkloadGoneError(`workload ${key}: ${gone.reason}`);
      if (gone) {
        log.warn({ reason: gone.reason }, 'removing the workload: ' + gone.reason);
        await this.workloadRemove(namespace, name);
        this.queue.forget(key);
        result = 'removed';
        this.onChange();
        return undefined;
      }
      if (actions.length > 0) log.info({ actions: actions.map((a) => ('reason' in a ? `${a.op} (${a.reason})` : a.op)) }, 'reconciling');
      const facts = await this.reconciler.actionsApply(rec, observed, actions);
      if (rec.state !== 'ready' || rec.error !== null || !sameFacts(rec.observed, facts)) {
        this.store.workloadStatusSet(namespace, name, { state: 'ready', observed: facts, error: null });
        if (rec.state === 'error') log.info('workload converged');
      }
      this.queue.forget(key);
      result = actions.length > 0 ? 'changed' : 'unchanged';
      return facts;
    } catch (err) {
      const message = (err as Error)?.message ?? String(err);
      if (!opts.registering && this.store.workloadGet(namespace, name)) {
        this.store.workloadStatusSet(namespace, name, { state: 'error', observed: rec.observed, error: message });
        const ms = this.queue.addRateLimited(key);
        log.error({ err, retryInMs: ms, retries: this.queue.failuresOf(key) }, 'reconcile failed; retrying');
      }
      throw err;
    } finally {
      reconcileObserve(result, !opts.registering && result === 'error');
    }
  }

  /** Reconciles one workload now, under the lock (no-op if it is gone); throws the attempt's error. */
  reconcileNow(namespace: string, name: string): Promise<void> {
    return this.mutex.run(async () => {
      const rec = this.store.workloadGet(namespace, name);
      if (rec) await this.reconcileLocked(rec);
    });
  }
}

function sameFacts(a: Observed | null, b: Observed): boolean {
  return !!a && a.hostIfindex === b.hostIfindex && a.hostMac === b.hostMac && a.peerIfindex === b.peerIfindex && a.peerMac === b.peerMac;
}
