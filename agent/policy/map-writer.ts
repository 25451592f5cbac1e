/**
 * The policy map as the agent last wrote it, per endpoint, and the writes that move it to a new
 * desired state: each endpoint's difference in the safe order (policyEntriesDiff), endpoints that
 * shrink before those that grow, and a refusal before anything is written when the growth would not
 * fit the map.
 */
import type { KernelOps } from '../kernel-ops.js';
import type { WorkloadRecord } from '../store/types.js';
import { PolicyCapacityError } from './budget.js';
import { policyEntriesDiffSteps, policyKeyDecode, policyValueDecode, type PolicyEntry, type PolicyMapOp } from './index.js';
import type { EndpointPolicyChange } from './incremental.js';
import { STEP, type Steps } from './slices.js';

const NO_ENTRIES: readonly PolicyEntry[] = [];

/** The map operations turning `before` into `after`, computed once per distinct pair of (shared) arrays. */
class DiffMemo {
  private readonly m = new Map<readonly PolicyEntry[], Map<readonly PolicyEntry[], PolicyMapOp[]>>();
  *ops(before: readonly PolicyEntry[], after: readonly PolicyEntry[]): Steps<PolicyMapOp[]> {
    if (before === after) return [];
    let byAfter = this.m.get(before);
    if (!byAfter) this.m.set(before, (byAfter = new Map()));
    let ops = byAfter.get(after);
    if (!ops) byAfter.set(after, (ops = (yield* policyEntriesDiffSteps(0, before, after)).ops));
    return ops;
  }
}

export class PolicyMapWriter {
  /** Entries in the kernel map, per endpoint, as last written (or read back at start). */
  private inMap = new Map<number, readonly PolicyEntry[]>();
  private inMapEntries = 0;

  constructor(private readonly kernel: KernelOps) {}

  /** Reads back what the kernel map holds (the rules are not in the map: they stay empty). */
  load(): void {
    const inMap = new Map<number, PolicyEntry[]>();
    for (const { key, value } of this.kernel.datapath.policyList()) {
      const k = policyKeyDecode(key);
      const portPrefixLen = k.protocol === 0 ? 0 : Math.max(0, k.prefixLen - 80);
      const entry: PolicyEntry = {
        direction: k.direction,
        identity: k.identity,
        protocol: k.protocol,
        port: k.port,
        portPrefixLen,
        deny: policyValueDecode(value).deny,
        rules: [],
      };
      const list = inMap.get(k.endpointId) ?? [];
      list.push(entry);
      inMap.set(k.endpointId, list);
    }
    this.inMap = inMap;
    this.inMapEntries = [...inMap.values()].reduce((n, l) => n + l.length, 0);
  }

  /** Endpoints that have entries in the map. */
  endpointIds(): IterableIterator<number> {
    return this.inMap.keys();
  }

  get endpoints(): number {
    return this.inMap.size;
  }

  /** Policy map entries currently written for all endpoints. */
  get entries(): number {
    return this.inMapEntries;
  }

  /**
   * Refuses (AGENT_ERR_POLICY_CAPACITY) an incremental change whose entries would not fit the policy
   * map, before anything is written: the entries the changed endpoints hold after it, less those they
   * hold now, on top of what the map holds (the agent's own count: it writes every entry). `upserted`
   * are the workloads the change is for, named in the error.
   */
  roomCheck(changes: readonly EndpointPolicyChange[], upserted: readonly WorkloadRecord[] | undefined): void {
    let growth = 0;
    let largest: EndpointPolicyChange | undefined;
    for (const c of changes) {
      const n = c.after?.entries.length ?? 0;
      growth += n - (this.inMap.get(c.endpointId)?.length ?? 0);
      if (n > (largest?.after?.entries.length ?? 0)) largest = c;
    }
    const capacity = this.kernel.datapath.mapCapacity().policy;
    if (growth <= 0 || this.inMapEntries + growth <= capacity) return;
    const names = [...(upserted ?? [])].map((w) => `${w.spec.namespace}/${w.spec.name}`);
    const who = names.length === 1 ? `workload ${names[0]}` : `workloads ${names.join(', ')}`;
    const rules = largest?.after?.entries.flatMap((e) => e.rules).filter((r, i, a) => a.indexOf(r) === i).slice(0, 3) ?? [];
    throw new PolicyCapacityError(
      `${who} would add ${growth} policy map entries (${changes.length} endpoint(s) change; endpoint ${largest?.endpointId} alone holds ${largest?.after?.entries.length}${rules.length ? `, from ${rules.join('; ')}` : ''}), but the policy map holds ${this.inMapEntries} of ${capacity} (limit: policy max_entries ${capacity}); nothing was changed. Remove workloads or policies that select them, narrow their peers x ports, or raise POLICY_MAP_MAX in tools/gen/bpf-layout/constants.ts`,
    );
  }

  /**
   * Writes each changed endpoint's difference; `inMap` follows what reached the kernel. Large
   * differences go in batches of STEP ops with a yield point between them: the ops are in the safe
   * order (policyEntriesDiff), and every prefix of it is safe, so the datapath may run in between.
   */
  *writeSteps(changes: readonly EndpointPolicyChange[]): Steps<{ upserts: number; deletes: number }> {
    const dp = this.kernel.datapath;
    const memo = new DiffMemo();
    let upserts = 0;
    let deletes = 0;
    // Endpoints that lose entries first: near a full map, what they free makes room for those that grow
    // (and a change that only shrinks, such as a policy delete, never needs room at all).
    const growth = (c: EndpointPolicyChange) => (c.after?.entries.length ?? 0) - (this.inMap.get(c.endpointId)?.length ?? 0);
    const ordered = changes.some((c) => growth(c) > 0) ? [...changes].sort((a, b) => growth(a) - growth(b)) : changes;
    for (const { endpointId, after } of ordered) {
      const before = this.inMap.get(endpointId) ?? NO_ENTRIES;
      const next = after?.entries ?? NO_ENTRIES;
      const ops = yield* memo.ops(before, next);
      for (let i = 0; i < ops.length; i += STEP) {
        if (i > 0) yield;
        try {
          dp.policyApply(endpointId, ops.length <= STEP ? ops : ops.slice(i, i + STEP));
        } catch (err) {
          // Part of the ops may have been written: read back what the kernel holds for this endpoint.
          this.inMapSet(endpointId, dp.policyList(endpointId).map((e) => ({ ...e, rules: [] })));
          throw err;
        }
      }
      for (const o of ops) if (o.op === 'upsert') upserts++; else deletes++;
      this.inMapSet(endpointId, next.length > 0 ? next : undefined);
    }
    return { upserts, deletes };
  }

  private inMapSet(endpointId: number, entries: readonly PolicyEntry[] | undefined): void {
    this.inMapEntries -= this.inMap.get(endpointId)?.length ?? 0;
    if (entries) {
      this.inMap.set(endpointId, entries);
      this.inMapEntries += entries.length;
    } else {
      this.inMap.delete(endpointId);
    }
  }
}
