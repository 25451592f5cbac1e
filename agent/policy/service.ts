import type { Logger } from 'pino';
import { KitnetError } from '../../common/errors.js';
import { KernelError, isMapFull } from '../../common/kernel-error.js';
import { identityLabels, labelFormat, labelSetKey } from '../../common/labels.js';
import type { Mutex } from '../mutex.js';
import type { PolicyApplyStats, PolicyEngine } from './engine.js';
import { PolicyCapacityError } from './budget.js';
import { policiesParseOffThread } from './parse-offthread.js';
import { policyTraceFormat, type ParsedPolicy, type TracePeer, type TraceResult } from './index.js';
import type { Store, StoreTx } from '../store/store.js';
import { sectionIndex } from '../dns/verdict.js';
import { fqdnSelectorsOf } from './fqdn-identities.js';
import { protocolNumber } from './ports.js';
import { fqdnNameNormalize, fqdnNameProblem, fqdnTrace, fqdnTraceFormat } from './trace-fqdn.js';
import type { FqdnTraceFacts, FqdnTraceResult } from './trace-fqdn.js';
import type { NamespaceHost, SharedNamespaces } from '../cluster/shared-namespaces.js';
import type { PolicyHost, SharedPolicies } from '../cluster/shared-policy.js';
import type { NamespaceRecord, PolicyRecord } from '../store/types.js';
import type { WorkloadService } from '../workloads.js';

/** How a trace names a peer: a workload, a label set (of an existing identity), an address or an identity. */
export type TracePeerSpec =
  | { workload: string }
  | { labels: Record<string, string>; namespace?: string | undefined }
  | { ip: string }
  | { identity: number };

export interface PolicyApplyResult {
  applied: Array<{ kind: string; namespace: string; name: string; action: 'created' | 'updated' }>;
  stats: PolicyApplyStats;
}

/** Kind names as they appear in the DELETE path (`/v1/policies/:kind/:ns/:name`), case-insensitive. */
const KIND_ALIASES: Record<string, string> = {
  networkpolicy: 'NetworkPolicy',
  netpol: 'NetworkPolicy',
  ciliumnetworkpolicy: 'CiliumNetworkPolicy',
  cnp: 'CiliumNetworkPolicy',
  ciliumclusterwidenetworkpolicy: 'CiliumClusterwideNetworkPolicy',
  ccnp: 'CiliumClusterwideNetworkPolicy',
};

export function policyKindResolve(kind: string): string {
  const k = KIND_ALIASES[kind.toLowerCase()];
  if (!k) throw new KitnetError('AGENT_ERR_API_VALIDATION', `kind: "${kind}" is not one of NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy`, { field: 'kind' });
  return k;
}

/**
 * Policies and namespaces: validated as a whole batch, stored, then compiled and written to the
 * datapath under the same lock as workload changes.
 */
export class PolicyService {
  /** Cluster mode: policies and namespace labels are written to etcd and applied from its watch (agent/cluster/shared-*.ts). */
  private shared: { policies: SharedPolicies; namespaces: SharedNamespaces } | undefined;

  constructor(
    private readonly store: Store,
    private readonly engine: PolicyEngine,
    private readonly workloads: WorkloadService,
    private readonly mutex: Mutex,
    private readonly log: Logger,
  ) {}

  namespaceList(): NamespaceRecord[] {
    return this.store.namespaceList();
  }

  /** Cluster mode: from now on writes go through etcd. */
  sharedSet(shared: { policies: SharedPolicies; namespaces: SharedNamespaces }): void {
    this.shared = shared;
  }

  /** Sets a namespace's labels (in cluster mode on every host). */
  namespacePut(name: string, labels: Record<string, string>): Promise<NamespaceRecord> {
    return this.shared ? this.shared.namespaces.write(name, labels) : this.namespaceInstall(name, labels);
  }

  /** Sets a namespace's labels on this host; its workloads get re-derived identities and policy follows them. */
  namespaceInstall(name: string, labels: Record<string, string>): Promise<NamespaceRecord> {
    return this.mutex.run(async () => {
      const previous = this.store.namespaceGet(name)?.labels ?? {};
      await this.store.transaction((tx) => tx.namespacePut(name, labels));
      const members = this.store.workloadList(name);
      let stats: PolicyApplyStats;
      try {
        // The old identities are kept until policy took the new ones, so a refusal (the policy map has
        // no room for the new identities' entries) can go back to them: store, maps and policy.
        const changed = await this.workloads.identitiesRederive(members, false);
        stats = await this.engine.endpointsUpdateSliced({ upsert: changed });
      } catch (err) {
        await this.store.transaction((tx) => tx.namespacePut(name, previous));
        const restored = await this.workloads.identitiesRederive(members);
        await this.engine.endpointsUpdateSliced({ upsert: restored }).catch((e: unknown) =>
          this.log.error({ err: e, namespace: name }, 'policy update after refused namespace labels failed'));
        throw err;
      }
      await this.workloads.identitiesReleaseUnused();
      this.log.info({ namespace: name, labels, workloads: members.length, ...stats }, 'namespace labels set');
      return this.store.namespaceGet(name)!;
    });
  }

  policyList(): PolicyRecord[] {
    return this.store.policyList();
  }

  /** Validates every document first: one invalid document rejects the batch and changes nothing. */
  async apply(body: unknown, contentType?: string): Promise<PolicyApplyResult> {
    // Off the event loop and bounded (agent/policy/limits.ts): a 4 MiB body takes seconds to parse.
    const parsed: ParsedPolicy[] = await policiesParseOffThread(body, contentType);
    if (parsed.length === 0) throw new KitnetError('AGENT_ERR_POLICY_INVALID', 'the request holds no policy document');
    if (this.shared) return this.shared.policies.write(parsed);
    return this.mutex.run(async () => {
      const key = (p: { kind: string; namespace: string; name: string }) => `${p.kind}/${p.namespace}/${p.name}`;
      const byKey = new Map(this.engine.parsed.map((p) => [key(p), p]));
      for (const p of parsed) byKey.set(key(p), p);
      const next = [...byKey.values()];
      const { result: applied, stats } = await this.replaceLocked(next, parsed, (tx) =>
        parsed.map((p) => ({
          kind: p.kind,
          namespace: p.namespace,
          name: p.name,
          action: tx.policyPut(p.kind, p.namespace, p.name, p.document) ? ('created' as const) : ('updated' as const),
        })),
      );
      this.log.info({ policies: applied.map((a) => `${a.kind} ${a.namespace}/${a.name} ${a.action}`), ...stats }, 'policies applied');
      return { applied, stats };
    });
  }

  /**
   * Under the mutex: compiles `next` (the whole policy set), writes the datapath, then the store
   * (`write`); a refusal or failure changes nothing. `what` names the documents in messages.
   */
  private async replaceLocked<T>(next: ParsedPolicy[], what: ReadonlyArray<{ ref: string }>, write: (tx: StoreTx) => T): Promise<{ result: T; stats: PolicyApplyStats }> {
    // Compile before storing: a batch the compiler refuses (or that would not fit the maps) must not
    // reach the store or the kernel either.
    try {
      await this.engine.compileSliced(next);
    } catch (err) {
      if (err instanceof PolicyCapacityError) {
        throw new PolicyCapacityError(`${what.map((p) => p.ref).join(', ')}: ${err.message}; nothing was applied`);
      }
      throw err;
    }
    const previous = [...this.engine.parsed];
    // Store and kernel change together or not at all. The kernel write runs in slices (it may take
    // seconds) and a store transaction cannot span them, so the kernel goes first and the store
    // follows in one transaction; either failing puts the kernel back to the previous
    // policies. The mutex keeps every other change out until then.
    this.engine.policiesSet(next);
    let stats: PolicyApplyStats;
    try {
      stats = await this.engine.applySliced();
    } catch (err) {
      const restored = await this.datapathRestore(previous);
      if (!(err instanceof KernelError)) throw err;
      const state = restored ? 'the store and the maps keep the previous policies' : 'the store keeps the previous policies; the maps converge on the next change';
      throw new KitnetError(isMapFull(err) ? 'AGENT_ERR_MAP_FULL' : 'AGENT_ERR_KERNEL', `writing ${what.map((p) => p.ref).join(', ')} to the datapath: ${err.message}; ${state}`, { cause: err });
    }
    try {
      return { result: await this.store.transaction(write), stats };
    } catch (err) {
      await this.datapathRestore(previous);
      throw err;
    }
  }

  /** Cluster mode: what the shared policies (agent/cluster/shared-policy.ts) apply this host's policies through. */
  policyHost(): PolicyHost {
    const key = (p: { kind: string; namespace: string; name: string }) => `${p.kind}/${p.namespace}/${p.name}`;
    return {
      applied: () => this.engine.parsed,
      check: (next) => this.mutex.run(() => this.engine.compileSliced(next)),
      install: (next) =>
        this.mutex.run(async () => {
          const stored = new Map(this.store.policyList().map((p) => [key(p), p]));
          const changed = next.filter((p) => JSON.stringify(stored.get(key(p))?.document) !== JSON.stringify(p.document));
          const gone = [...stored.values()].filter((s) => !next.some((p) => key(p) === key(s)));
          const { stats } = await this.replaceLocked(next, [...changed, ...gone.map((g) => ({ ref: `${g.kind} ${g.namespace ? `${g.namespace}/` : ''}${g.name}` }))], (tx) => {
            for (const g of gone) tx.policyDelete(g.kind, g.namespace, g.name);
            for (const p of changed) tx.policyPut(p.kind, p.namespace, p.name, p.document);
          });
          this.log.info({ put: changed.map((p) => p.ref), deleted: gone.map((g) => `${g.kind} ${g.namespace}/${g.name}`), ...stats }, 'cluster policies applied on this host');
          return stats;
        }),
      stored: (kind, namespace, name) => this.store.policyList().find((p) => p.kind === kind && p.namespace === namespace && p.name === name),
    };
  }

  /** Cluster mode: what the shared namespaces (agent/cluster/shared-namespaces.ts) set labels through. */
  namespaceHost(): NamespaceHost {
    return {
      stored: () => this.store.namespaceList(),
      install: async (name, labels) => void (await this.namespaceInstall(name, labels)),
    };
  }

  delete(kindRaw: string, namespace: string, name: string): Promise<PolicyRecord> {
    const kind = policyKindResolve(kindRaw);
    const ns = kind === 'CiliumClusterwideNetworkPolicy' ? '' : namespace;
    if (this.shared) return this.shared.policies.remove(kind, ns, name);
    return this.mutex.run(async () => {
      const existing = this.store.policyList().find((p) => p.kind === kind && p.namespace === ns && p.name === name);
      if (!existing) throw new KitnetError('AGENT_ERR_POLICY_NOT_FOUND', `${kind} ${ns ? `${ns}/` : ''}${name} does not exist`);
      await this.store.transaction((tx) => tx.policyDelete(kind, ns, name));
      this.engine.policiesSet(this.engine.parsed.filter((p) => !(p.kind === kind && p.namespace === ns && p.name === name)));
      const stats = await this.engine.applySliced();
      this.log.info({ policy: `${kind} ${ns}/${name}`, ...stats }, 'policy deleted');
      return existing;
    });
  }

  /** Writes the previous policies back into the datapath after a failed apply; false if that failed too. */
  private async datapathRestore(previous: ParsedPolicy[]): Promise<boolean> {
    this.engine.policiesSet(previous);
    try {
      await this.engine.applySliced();
      return true;
    } catch (again) {
      this.log.error({ err: again }, 'restoring the previous policies in the datapath failed; the next change or restart converges it');
      return false;
    }
  }

  private peerResolve(spec: TracePeerSpec, field: string): TracePeer {
    if ('ip' in spec) return { ip: spec.ip };
    if ('identity' in spec) return { identity: spec.identity };
    if ('workload' in spec) {
      const [ns, name] = spec.workload.includes('/') ? spec.workload.split('/', 2) : ['default', spec.workload];
      const w = this.store.workloadGet(ns!, name!);
      if (!w) throw new KitnetError('AGENT_ERR_TRACE_PEER', `${field}: workload ${ns}/${name} is not registered`, { field });
      return { endpointId: w.endpointId };
    }
    const ns = spec.namespace ?? 'default';
    const key = labelSetKey(identityLabels(spec.labels, ns, this.store.namespaceGet(ns)?.labels));
    const id = this.store.identityByKey(key);
    if (!id) {
      const shown = identityLabels(spec.labels, ns).map(labelFormat).join(' ');
      throw new KitnetError('AGENT_ERR_TRACE_PEER', `${field}: no identity has exactly the labels ${shown}; register a workload with them or trace by workload`, { field });
    }
    return { identity: id.id };
  }

  /**
   * `policy trace --to-fqdn`: the source must be a local workload (the proxy and the egress entries
   * are its); answers from what the DNS proxy learned (agent/policy/trace-fqdn.ts).
   */
  traceFqdn(
    from: TracePeerSpec,
    fqdn: string,
    connection: { protocol: string; port?: number | undefined },
    resolver: string | undefined,
    facts: FqdnTraceFacts,
  ): { result: FqdnTraceResult; text: string } {
    const problem = fqdnNameProblem(fqdn);
    if (problem) throw new KitnetError('AGENT_ERR_API_VALIDATION', `to.fqdn: ${problem}`, { field: 'to.fqdn' });
    let protocol: number | undefined;
    if (connection.port !== undefined) {
      try {
        protocol = protocolNumber(connection.protocol);
      } catch (err) {
        throw new KitnetError('AGENT_ERR_API_VALIDATION', `protocol: ${(err as Error).message}; use TCP, UDP, SCTP, ICMP or ICMPv6`, { field: 'protocol' });
      }
    }
    const peer = this.peerResolve(from, 'from');
    const endpointId = 'endpointId' in peer ? peer.endpointId : 'ip' in peer ? this.store.workloadList().find((w) => w.ipv4 === peer.ip || w.ipv6 === peer.ip)?.endpointId : undefined;
    const w = endpointId === undefined ? undefined : this.store.workloadList().find((x) => x.endpointId === endpointId);
    if (!w) throw new KitnetError('AGENT_ERR_TRACE_PEER', 'from: a trace to a name needs a workload of this host as the source (NS/NAME or its address): the DNS proxy and the egress policy are per workload', { field: 'from' });
    const source = this.engine.endpointPolicy(w.endpointId).policy;
    if (!source) throw new KitnetError('AGENT_ERR_TRACE_PEER', `from: workload ${w.spec.namespace}/${w.spec.name} has no compiled policy yet (still being registered); try again`, { field: 'from' });
    const name = fqdnNameNormalize(fqdn);
    const state = this.engine.compiled();
    const result = fqdnTrace({
      name,
      state,
      sections: sectionIndex(this.engine.parsed.flatMap((p) => p.rules)),
      source,
      learned: facts.learned(name),
      nowMs: Date.now(),
      ipcache: facts.ipcache(),
      selectors: fqdnSelectorsOf(this.engine.parsed),
      proxy: facts.proxy,
      steered: facts.steered(w.endpointId),
      resolver: resolver === undefined ? undefined : { address: resolver, identity: facts.resolverIdentity(resolver) },
      port: connection.port,
      protocol,
    });
    return { result, text: fqdnTraceFormat(result, state.identities, `${w.spec.namespace}/${w.spec.name}`) };
  }

  trace(from: TracePeerSpec, to: TracePeerSpec, protocol: string, port: number): { result: TraceResult; text: string } {
    const { result, identities } = this.engine.trace(this.peerResolve(from, 'from'), this.peerResolve(to, 'to'), protocol, port);
    return { result, text: policyTraceFormat(result, identities) };
  }
}
