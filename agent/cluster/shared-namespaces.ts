import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { z } from 'zod';
import { KitnetError } from '../../common/errors.js';
import { Dns1123Label, Labels } from '../../common/schemas/common.js';
import type { NamespaceRecord } from '../store/types.js';
import { PrefixFollower } from './prefix-follower.js';
import { clusterUnavailable, SHARED_VALUE_MAX_BYTES, type SharedProblem } from './shared-policy.js';
import { ValidatedPrefixSink, type Judged } from './validated-prefix.js';

/** kitnet's own prefix for namespace labels: `<name>` = `{"name": ..., "labels": {...}}`. */
export const NAMESPACES_PREFIX = 'kitnet/state/namespaces/v1';
const APPLY_WAIT_MS = 60_000;

const SharedNamespaceValue = z.object({ name: Dns1123Label, labels: Labels }).strict();

export function namespaceKey(name: string): string {
  return `${NAMESPACES_PREFIX}/${name}`;
}

/** One namespace key and value, judged like the API's PUT /v1/namespaces/:name (written by anyone with etcd access). */
export function sharedNamespaceJudge(key: string, value: string): { name: string; labels: Record<string, string> } | { reason: string } {
  if (Buffer.byteLength(value) > SHARED_VALUE_MAX_BYTES) return { reason: `value is larger than ${SHARED_VALUE_MAX_BYTES} bytes` };
  let raw: unknown;
  try {
    raw = JSON.parse(value);
  } catch {
    return { reason: 'value is not JSON' };
  }
  const parsed = SharedNamespaceValue.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    return { reason: `${i.path.join('.') || 'value'}: ${i.message}` };
  }
  if (namespaceKey(parsed.data.name) !== key) return { reason: `the value names namespace "${parsed.data.name}", not the key's` };
  return { name: parsed.data.name, labels: parsed.data.labels };
}

/** What the shared namespaces need from this host's policy service (PolicyService implements it). */
export interface NamespaceHost {
  stored(): NamespaceRecord[];
  /** Sets the labels here (identities re-derived, policy follows); throws and restores the previous labels when refused. */
  install(name: string, labels: Record<string, string>): Promise<void>;
}

function sameLabels(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}

/**
 * Namespace labels shared through etcd, as SharedPolicies shares policies: written to etcd, applied by
 * every host from its watch, the local store the cache. A key deleted from etcd means no labels.
 */
export class SharedNamespaces extends ValidatedPrefixSink<Record<string, string>> {
  /** Namespaces this host could not relabel, with the error. */
  private readonly notApplied = new Map<string, Error>();
  readonly follower: PrefixFollower;

  constructor(
    private readonly client: Etcd3,
    private readonly host: NamespaceHost,
    log: Logger,
  ) {
    super(log, 'namespace labels');
    this.follower = new PrefixFollower(client, `${NAMESPACES_PREFIX}/`, this, log);
  }

  protected judgeValue(key: string, value: string): Judged<Record<string, string>> {
    const verdict = sharedNamespaceJudge(key, value);
    return 'labels' in verdict ? { value: verdict.labels } : verdict;
  }

  protected hostCurrent(): Map<string, Record<string, string>> {
    return new Map(this.host.stored().map((n) => [namespaceKey(n.name), n.labels]));
  }

  protected async reconcile(): Promise<void> {
    this.notApplied.clear();
    const want = new Map<string, Record<string, string>>();
    for (const n of this.host.stored()) want.set(n.name, {}); // not in etcd: no labels
    for (const [key, labels] of this.desired) want.set(key.slice(NAMESPACES_PREFIX.length + 1), labels);
    const stored = new Map(this.host.stored().map((n) => [n.name, n.labels]));
    for (const [name, labels] of want) {
      if (sameLabels(stored.get(name) ?? {}, labels)) continue;
      try {
        await this.host.install(name, labels);
      } catch (err) {
        this.notApplied.set(name, err as Error);
        this.log.error({ err, namespace: name, labels }, `cluster labels of namespace ${name} not applied on this host; it keeps its previous labels`);
        // etcd out of reach while allocating identities: try again; a refusal waits for the next change.
        if (err instanceof KitnetError && err.code === 'AGENT_ERR_CLUSTER_UNAVAILABLE') this.follower.relistLater(5000);
      }
    }
  }

  /**
   * Writes a namespace's labels to etcd and waits for this host to apply them. When this host refuses
   * them (its policy map has no room), the previous value is put back and the refusal is the answer.
   */
  async write(name: string, labels: Record<string, string>): Promise<NamespaceRecord> {
    const key = namespaceKey(name);
    let res;
    try {
      res = await this.client.kv.txn({ success: [{ request_put: { key: Buffer.from(key), value: Buffer.from(JSON.stringify({ name, labels })), prev_kv: true } }] });
    } catch (err) {
      throw clusterUnavailable(`setting the labels of namespace ${name}`, err);
    }
    const revision = BigInt(res.header.revision);
    if (!(await this.follower.waitApplied(revision, APPLY_WAIT_MS))) {
      this.log.warn({ namespace: name, revision: String(revision) }, 'written to the cluster; this host has not applied it yet (its watch catches up)');
    }
    const refused = this.notApplied.get(name);
    if (refused) {
      const prev = res.responses[0]?.response_put?.prev_kv;
      // Only if nobody wrote the key since: the previous value (or none) goes back.
      await this.client
        .if(key, 'Mod', '==', Number(revision))
        .then(prev ? this.client.put(key).value(prev.value) : this.client.delete().key(key))
        .commit()
        .catch((err: unknown) => this.log.error({ err, namespace: name }, 'putting the previous namespace labels back in etcd failed'));
      throw refused;
    }
    this.log.info({ namespace: name, labels, revision: String(revision) }, 'namespace labels written to the cluster');
    return this.host.stored().find((n) => n.name === name) ?? { name, labels, createdAt: new Date().toISOString(), updatedAt: new Date().toISOString() };
  }

  problems(): SharedProblem[] {
    return [
      ...[...this.ignoredKeys].map(([key, reason]) => ({ key: 'cluster-namespace-ignored', message: `etcd key ${key} is ignored: ${reason}` })),
      ...[...this.notApplied].map(([name, err]) => ({ key: 'cluster-namespace-not-applied', message: `cluster labels of namespace ${name} are not applied on this host: ${err.message}` })),
    ];
  }
}
