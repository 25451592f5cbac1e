import { GRPCDeadlineExceededError, type Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { KitnetError } from '../../common/errors.js';
import { PolicyCapacityError } from '../policy/budget.js';
import type { PolicyApplyStats } from '../policy/engine.js';
import { policiesParseOffThread } from '../policy/parse-offthread.js';
import { PolicyTooLargeError } from '../policy/parse-errors.js';
import type { ParsedPolicy } from '../policy/types.js';
import type { PolicyRecord } from '../store/types.js';
import { PrefixFollower } from './prefix-follower.js';
import { ValidatedPrefixSink, type Judged } from './validated-prefix.js';
import { jsonObjectParse } from './json-value.js';

/** kitnet's own prefix for policies: `<kind>/<namespace>/<name>`, `-` as the cluster-wide kind's namespace. */
export const POLICIES_PREFIX = 'kitnet/state/policies/v1';
/** A value beyond this is ignored, and the API refuses to write one (etcd's own request limit is 1.5 MiB). */
export const SHARED_VALUE_MAX_BYTES = 1024 * 1024;
/** One request's documents go to etcd in one transaction: etcd's defaults, --max-request-bytes 1.5 MiB and --max-txn-ops 128. */
export const SHARED_BATCH_MAX_BYTES = 1400 * 1024;
export const SHARED_BATCH_MAX_DOCUMENTS = 128;
/** How long a writer waits for its own write to come back through this host's watch and be applied. */
const APPLY_WAIT_MS = 60_000;

export function policyKey(kind: string, namespace: string, name: string): string {
  return `${POLICIES_PREFIX}/${kind}/${namespace || '-'}/${name}`;
}

function parsedKey(p: { kind: string; namespace: string; name: string }): string {
  return policyKey(p.kind, p.namespace, p.name);
}

/** etcd did not take a write: 503, and nothing changed anywhere. */
export function clusterUnavailable(what: string, err: unknown): KitnetError {
  // A deadline passed on a reachable etcd is the one case where the write may still have committed.
  const outcome = err instanceof GRPCDeadlineExceededError
    ? 'etcd did not answer in time; the change may still have been taken (then every host applies it): list the policies before retrying'
    : 'nothing was changed on any host';
  return new KitnetError(
    'AGENT_ERR_CLUSTER_UNAVAILABLE',
    `${what}: etcd did not take the change (${(err as Error).message}); ${outcome}. This host keeps enforcing and answering reads from its own copy; retry when etcd is back`,
    { cause: err },
  );
}

/**
 * One `kitnet/state/policies/v1/...` key and value, judged: the policy it holds, or why it is ignored.
 * Anyone with etcd access can write there (etcdctl), so the value is bounded, parsed and validated as
 * the API would, and its kind, namespace and name must be the key's.
 */
export async function sharedPolicyJudge(key: string, value: string): Promise<{ policy: ParsedPolicy } | { reason: string }> {
  if (Buffer.byteLength(value) > SHARED_VALUE_MAX_BYTES) return { reason: `value is larger than ${SHARED_VALUE_MAX_BYTES} bytes` };
  const parts = key.slice(POLICIES_PREFIX.length + 1).split('/');
  if (parts.length !== 3 || parts.some((p) => p === '')) return { reason: 'key is not <kind>/<namespace>/<name>' };
  const json = jsonObjectParse(value);
  if ('reason' in json) return json;
  const doc = json.object;
  let parsed: ParsedPolicy[];
  try {
    parsed = await policiesParseOffThread(doc);
  } catch (err) {
    return { reason: `not a valid policy: ${(err as Error).message}` };
  }
  if (parsed.length !== 1) return { reason: `value holds ${parsed.length} policies, not one` };
  const p = parsed[0]!;
  if (parsedKey(p) !== key) return { reason: `the document is ${p.ref}, not what the key names` };
  return { policy: p };
}

/** What the shared policies need from this host's policy service (PolicyService implements it). */
export interface PolicyHost {
  /** The policies this host enforces. */
  applied(): readonly ParsedPolicy[];
  /** Compiles `next` without touching anything: throws what the compiler refuses (PolicyCapacityError...). */
  check(next: ParsedPolicy[], what: readonly ParsedPolicy[]): Promise<void>;
  /** Under the agent's mutex: compiles `next`, writes the datapath, stores the difference; throws and changes nothing when refused. */
  install(next: ParsedPolicy[]): Promise<PolicyApplyStats>;
  /** The stored (applied) policy, for delete's answer. */
  stored(kind: string, namespace: string, name: string): PolicyRecord | undefined;
}

/** A per-host problem with the shared state, for `kitnet status` warnings. */
export interface SharedProblem {
  key: string;
  message: string;
}

/**
 * Policies shared through etcd. A write goes to etcd (after the same validation and capacity check as
 * on a single host); every host, the writer included, applies what its watch sees, compiled locally.
 * The local store is the cache: it holds what this host enforces, so reads answer while etcd is down,
 * and after a restart the first list removes what etcd no longer has.
 *
 * A value that fails validation is ignored (logged, counted, shown in status) and the key keeps the
 * last valid policy this host had for it: a bad write never evicts a valid policy. A policy that does
 * not fit this host's maps is left out here (the others still apply), logged and shown in status.
 */
export class SharedPolicies extends ValidatedPrefixSink<ParsedPolicy> {
  /** Keys this host could not apply, with the reason. */
  readonly notApplied = new Map<string, string>();
  private lastStats: PolicyApplyStats | undefined;
  readonly follower: PrefixFollower;

  constructor(
    private readonly client: Etcd3,
    private readonly host: PolicyHost,
    log: Logger,
  ) {
    super(log, 'policy');
    this.follower = new PrefixFollower(client, `${POLICIES_PREFIX}/`, this, log);
  }

  protected async judgeValue(key: string, value: string): Promise<Judged<ParsedPolicy>> {
    const verdict = await sharedPolicyJudge(key, value);
    return 'policy' in verdict ? { value: verdict.policy } : verdict;
  }

  protected hostCurrent(): Map<string, ParsedPolicy> {
    return new Map(this.host.applied().map((p) => [parsedKey(p), p]));
  }

  /** Brings this host to the desired policies: all at once, else one change at a time, leaving out those that do not fit. */
  protected async reconcile(): Promise<void> {
    const target = [...this.desired.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, p]) => p);
    if (samePolicies(this.host.applied(), target)) {
      this.notApplied.clear();
      return;
    }
    try {
      this.lastStats = await this.host.install(target);
      this.notApplied.clear();
      return;
    } catch (err) {
      this.log.warn({ err }, 'the cluster\'s policies do not all apply on this host; applying them one at a time');
    }
    // Removals first (they only free room), then each new or changed policy on its own.
    let current = this.host.applied().filter((p) => this.desired.has(parsedKey(p)));
    if (current.length !== this.host.applied().length) this.lastStats = await this.host.install(current);
    this.notApplied.clear();
    for (const p of target) {
      const key = parsedKey(p);
      const now = current.find((c) => parsedKey(c) === key);
      if (now && sameDocument(now, p)) continue;
      const next = [...current.filter((c) => parsedKey(c) !== key), p];
      try {
        this.lastStats = await this.host.install(next);
        current = next;
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        this.notApplied.set(key, reason);
        this.log.error({ err, policy: p.ref }, `cluster policy ${p.ref} not applied on this host (${now ? 'the previous version stays' : 'left out'}); the other policies apply`);
      }
    }
  }

  /** Writes validated policies to etcd and waits for this host to apply them from its watch. */
  async write(parsed: ParsedPolicy[]): Promise<{ applied: Array<{ kind: string; namespace: string; name: string; action: 'created' | 'updated' }>; stats: PolicyApplyStats }> {
    // One etcd transaction (all or nothing on every host), within etcd's default limits.
    const values = parsed.map((p) => JSON.stringify(p.document));
    if (parsed.length > SHARED_BATCH_MAX_DOCUMENTS) throw new PolicyTooLargeError(`${parsed.length} policy documents`, `${SHARED_BATCH_MAX_DOCUMENTS} documents in cluster mode (one etcd transaction)`);
    const big = parsed.findIndex((_, i) => Buffer.byteLength(values[i]!) > SHARED_VALUE_MAX_BYTES);
    if (big >= 0) throw new PolicyTooLargeError(`${parsed[big]!.ref}, ${Buffer.byteLength(values[big]!)} bytes as JSON`, `${SHARED_VALUE_MAX_BYTES} bytes per document in cluster mode`);
    const total = values.reduce((n, v) => n + Buffer.byteLength(v), 0);
    if (total > SHARED_BATCH_MAX_BYTES) throw new PolicyTooLargeError(`${total} bytes of documents as JSON`, `${SHARED_BATCH_MAX_BYTES} bytes in cluster mode (one etcd transaction)`);
    const byKey = new Map(this.host.applied().map((p) => [parsedKey(p), p]));
    for (const p of parsed) byKey.set(parsedKey(p), p);
    try {
      await this.host.check([...byKey.values()], parsed);
    } catch (err) {
      if (err instanceof PolicyCapacityError) throw new PolicyCapacityError(`${parsed.map((p) => p.ref).join(', ')}: ${err.message}; nothing was applied`);
      throw err;
    }
    let res;
    try {
      res = await this.client.kv.txn({
        success: parsed.map((p, i) => ({ request_put: { key: Buffer.from(parsedKey(p)), value: Buffer.from(values[i]!), prev_kv: true } })),
      });
    } catch (err) {
      throw clusterUnavailable(`applying ${parsed.map((p) => p.ref).join(', ')}`, err);
    }
    const applied = parsed.map((p, i) => ({
      kind: p.kind,
      namespace: p.namespace,
      name: p.name,
      action: res.responses[i]?.response_put?.prev_kv ? ('updated' as const) : ('created' as const),
    }));
    await this.appliedWait(BigInt(res.header.revision));
    const refused = parsed.filter((p) => this.notApplied.has(parsedKey(p)));
    if (refused.length > 0) {
      throw new PolicyCapacityError(
        `${refused.map((p) => `${p.ref}: ${this.notApplied.get(parsedKey(p))}`).join('; ')}; stored in the cluster (other hosts apply it where it fits) but not applied on this host; delete it to withdraw it`,
      );
    }
    this.log.info({ policies: applied.map((a) => `${a.kind} ${a.namespace}/${a.name} ${a.action}`), revision: res.header.revision }, 'policies written to the cluster');
    return { applied, stats: this.lastStats ?? { endpoints: 0, entries: 0, upserts: 0, deletes: 0, cidrIdentities: 0, ms: 0 } };
  }

  /** Deletes a policy from etcd and waits for this host to drop it. */
  async remove(kind: string, namespace: string, name: string): Promise<PolicyRecord> {
    const key = policyKey(kind, namespace, name);
    const ref = `${kind} ${namespace ? `${namespace}/` : ''}${name}`;
    const known = this.host.stored(kind, namespace, name) ?? recordOf(this.desired.get(key));
    if (!known) throw new KitnetError('AGENT_ERR_POLICY_NOT_FOUND', `${ref} does not exist`);
    let res;
    try {
      res = await this.client.kv.deleteRange({ key: Buffer.from(key) });
    } catch (err) {
      throw clusterUnavailable(`deleting ${ref}`, err);
    }
    if (Number(res.deleted) === 0) throw new KitnetError('AGENT_ERR_POLICY_NOT_FOUND', `${ref} does not exist in the cluster (deleted meanwhile)`);
    await this.appliedWait(BigInt(res.header.revision));
    this.log.info({ policy: ref, revision: res.header.revision }, 'policy deleted from the cluster');
    return known;
  }

  private async appliedWait(revision: bigint): Promise<void> {
    if (!(await this.follower.waitApplied(revision, APPLY_WAIT_MS))) {
      this.log.warn({ revision: String(revision) }, 'written to the cluster; this host has not applied it yet (its watch catches up)');
    }
  }

  problems(): SharedProblem[] {
    return [
      ...[...this.ignoredKeys].map(([key, reason]) => ({ key: 'cluster-policy-ignored', message: `etcd key ${key} is ignored: ${reason}` })),
      ...[...this.notApplied].map(([key, reason]) => ({ key: 'cluster-policy-not-applied', message: `cluster policy ${key} is not applied on this host: ${reason}` })),
    ];
  }
}

function sameDocument(a: ParsedPolicy, b: ParsedPolicy): boolean {
  return JSON.stringify(a.document) === JSON.stringify(b.document);
}

function samePolicies(a: readonly ParsedPolicy[], b: readonly ParsedPolicy[]): boolean {
  if (a.length !== b.length) return false;
  const byKey = new Map(a.map((p) => [parsedKey(p), p]));
  return b.every((p) => {
    const other = byKey.get(parsedKey(p));
    return !!other && sameDocument(other, p);
  });
}

function recordOf(p: ParsedPolicy | undefined): PolicyRecord | undefined {
  if (!p) return undefined;
  const now = new Date().toISOString();
  return { kind: p.kind, namespace: p.namespace, name: p.name, document: p.document, createdAt: now, updatedAt: now };
}

/** Metrics of the shared policies and namespaces, on the agent's registry (GET /metrics). */
export function sharedMetricsRegister(registry: Registry, shared: { policies: SharedPolicies; namespaces: { ignored: number; problems(): SharedProblem[] } }): void {
  new Counter({
    name: 'kitnet_cluster_shared_ignored_total',
    help: 'Cluster mode: policy and namespace values in etcd ignored (invalid, oversized, key and body disagree)',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(shared.policies.ignored + shared.namespaces.ignored);
    },
  });
  new Gauge({
    name: 'kitnet_cluster_shared_not_applied',
    help: 'Cluster mode: cluster policies and namespace labels this host does not apply (they do not fit its maps)',
    registers: [registry],
    collect() {
      this.set(shared.policies.notApplied.size + shared.namespaces.problems().filter((p) => p.key === 'cluster-namespace-not-applied').length);
    },
  });
}
