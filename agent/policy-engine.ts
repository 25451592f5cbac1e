import { networkInterfaces } from 'node:os';
import type { Logger } from 'pino';
import { KitnetError } from '../common/errors.js';
import { ReservedIdentity, reservedIdentityLabels } from './identity/reserved.js';
import type { KernelOps } from './kernel-ops.js';
import {
  endpointPolicyFormat,
  policiesFromObjects,
  policyCompile,
  policyEntriesDiff,
  policyKeyDecode,
  policyKeyEncode,
  policyTrace,
  policyValueDecode,
  policyValueEncode,
  type CompiledPolicy,
  type EndpointPolicy,
  type NamedPort,
  type ParsedPolicy,
  type PolicyEntry,
  type PolicyMapOp,
  type TracePeer,
  type TraceResult,
} from './policy/index.js';
import type { SqliteStore } from './store/sqlite-store.js';

export interface PolicyApplyStats {
  endpoints: number;
  entries: number;
  upserts: number;
  deletes: number;
  cidrIdentities: number;
  ms: number;
}

/** Addresses of the host's own interfaces: traffic from them carries the reserved host identity. */
function hostAddresses(): string[] {
  const out: string[] = [];
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) {
      if (a.family === 'IPv6' && a.address.startsWith('fe80')) continue;
      out.push(`${a.address}/${a.family === 'IPv4' ? 32 : 128}`);
    }
  }
  return out;
}

/**
 * Ties the policy compiler to the store and the datapath: every change of policies, namespaces or
 * workloads recompiles the whole desired state and writes only the difference into the policy map,
 * in an order that never allows more than either the old or the new state (see policyEntriesDiff).
 * The last applied state is kept for `policy trace` and `workload policy`, so both read exactly what
 * the datapath enforces.
 */
export class PolicyEngine {
  private policies: ParsedPolicy[] = [];
  private applied: CompiledPolicy | undefined;
  /** Entries in the kernel map, per endpoint, as last written (or read back at start). */
  private inMap = new Map<number, PolicyEntry[]>();
  /** The CIDR ipcache entries last written (undefined until the first apply syncs everything). */
  private cidrKeyApplied: string | undefined;

  constructor(
    private readonly store: SqliteStore,
    private readonly kernel: KernelOps,
    private readonly log: Logger,
  ) {}

  /** Loads stored policies (validated when they were applied) and what the kernel map holds. */
  load(): void {
    this.cidrKeyApplied = undefined;
    this.policies = policiesFromObjects(this.store.policyList().map((p) => p.document));
    this.inMap = new Map();
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
      const list = this.inMap.get(k.endpointId) ?? [];
      list.push(entry);
      this.inMap.set(k.endpointId, list);
    }
  }

  get parsed(): readonly ParsedPolicy[] {
    return this.policies;
  }

  /** Replaces the policy set used by the next apply (the caller has stored it). */
  policiesSet(policies: ParsedPolicy[]): void {
    this.policies = policies;
  }

  identities(): Map<number, string[]> {
    const ids = new Map<number, string[]>();
    for (const id of Object.values(ReservedIdentity)) if (id !== 0) ids.set(id, reservedIdentityLabels(id));
    for (const i of this.store.identityList()) ids.set(i.id, i.labels);
    return ids;
  }

  /** Compiles the desired state from the store without touching the kernel. */
  compile(policies: readonly ParsedPolicy[] = this.policies): CompiledPolicy {
    const workloads = this.store.workloadList();
    const namedPortsByIdentity = new Map<number, NamedPort[]>();
    for (const w of workloads) {
      const list = namedPortsByIdentity.get(w.identity) ?? [];
      list.push(...(w.spec.ports ?? []));
      namedPortsByIdentity.set(w.identity, list);
    }
    return policyCompile({
      policies,
      identities: this.identities(),
      endpoints: workloads.map((w) => ({ endpointId: w.endpointId, identity: w.identity, namedPorts: w.spec.ports ?? [] })),
      remoteNamedPorts: namedPortsByIdentity,
      options: { previousCidrIdentities: this.store.cidrIdentities() },
    });
  }

  /** Compiles and writes the difference to the kernel. Endpoints no longer present lose their entries. */
  apply(): PolicyApplyStats {
    const started = performance.now();
    const compiled = this.compile();
    const dp = this.kernel.datapath;
    let upserts = 0;
    let deletes = 0;
    let entries = 0;
    const ops: Array<{ op: 'upsert' | 'delete'; key: Buffer; value?: Buffer }> = [];
    const push = (endpointId: number, list: PolicyMapOp[]) => {
      for (const o of list) {
        const key = policyKeyEncode({ endpointId, ...o.entry });
        if (o.op === 'upsert') {
          ops.push({ op: 'upsert', key, value: policyValueEncode({ deny: o.entry.deny }) });
          upserts++;
        } else {
          ops.push({ op: 'delete', key });
          deletes++;
        }
      }
    };
    const desired = new Map<number, EndpointPolicy>(compiled.endpoints.map((e) => [e.endpointId, e]));
    for (const [endpointId, ep] of desired) {
      entries += ep.entries.length;
      push(endpointId, policyEntriesDiff(endpointId, this.inMap.get(endpointId) ?? [], ep.entries).ops);
    }
    for (const [endpointId, before] of this.inMap) {
      if (!desired.has(endpointId)) push(endpointId, policyEntriesDiff(endpointId, before, []).ops);
    }
    // CIDR identities first, so a new allow never refers to an address that still maps to world.
    // The full sweep (host addresses, a dump of the map) runs only when the CIDR set changed: a
    // workload's own entries are written by the reconciler, and the sweep is O(map) per call.
    const cidrKey = compiled.ipcache.map((c) => `${c.cidr}=${c.identity}`).sort().join(',');
    if (cidrKey !== this.cidrKeyApplied) {
      this.ipcacheSync(compiled);
      this.cidrKeyApplied = cidrKey;
    }
    dp.policyApply(ops);
    this.inMap = new Map([...desired].map(([id, ep]) => [id, ep.entries]));
    this.applied = compiled;
    this.store.cidrIdentitiesSet(compiled.cidrIdentities.map((c) => ({ cidr: c.cidr, identity: c.identity })));
    const stats = {
      endpoints: desired.size,
      entries,
      upserts,
      deletes,
      cidrIdentities: compiled.cidrIdentities.length,
      ms: +(performance.now() - started).toFixed(1),
    };
    this.log.debug(stats, 'policy applied');
    return stats;
  }

  /**
   * Desired ipcache: workload addresses (their identities), host addresses (reserved host) and the
   * CIDR identities of the policies. Anything else local is removed; remote-host entries are kept.
   */
  ipcacheSync(compiled: CompiledPolicy | undefined = this.applied): void {
    const dp = this.kernel.datapath;
    const desired = new Map<string, number>();
    for (const cidr of hostAddresses()) desired.set(cidr, ReservedIdentity.host);
    for (const c of compiled?.ipcache ?? []) desired.set(c.cidr, c.identity);
    for (const w of this.store.workloadList()) {
      desired.set(`${w.ipv4}/32`, w.identity);
      desired.set(`${w.ipv6}/128`, w.identity);
    }
    const present = new Map(dp.ipcacheList());
    for (const [cidr, identity] of desired) {
      const cur = present.get(cidr);
      if (!cur || cur.identity !== identity || cur.hostId !== 0) dp.ipcacheUpsert(cidr, { identity, hostId: 0 });
    }
    for (const [cidr, entry] of present) {
      if (entry.hostId === 0 && !desired.has(cidr)) dp.ipcacheDelete(cidr);
    }
  }

  private state(): CompiledPolicy {
    return (this.applied ??= this.compile());
  }

  endpointPolicy(endpointId: number): { policy: EndpointPolicy | undefined; text: string } {
    const state = this.state();
    const policy = state.endpoints.find((e) => e.endpointId === endpointId);
    return { policy, text: policy ? endpointPolicyFormat(policy, state.identities) : '' };
  }

  trace(from: TracePeer, to: TracePeer, protocol: string | number, port: number): { result: TraceResult; identities: Map<number, string[]> } {
    const state = this.state();
    const workloads = this.store.workloadList();
    const byIp = new Map<string, { identity: number; endpointId: number }>();
    for (const w of workloads) {
      byIp.set(w.ipv4, { identity: w.identity, endpointId: w.endpointId });
      byIp.set(w.ipv6, { identity: w.identity, endpointId: w.endpointId });
    }
    const hostIps = new Set(hostAddresses().map((c) => c.split('/')[0]!));
    try {
      const result = policyTrace(state, { from, to, protocol, port }, {
        resolveIp: (ip) => byIp.get(ip) ?? (hostIps.has(ip) ? { identity: ReservedIdentity.host } : undefined),
      });
      return { result, identities: state.identities };
    } catch (err) {
      throw new KitnetError('AGENT_ERR_TRACE_PEER', (err as Error).message, { cause: err });
    }
  }

  /** Policy map entries currently written for all endpoints (for metrics). */
  entryCount(): number {
    let n = 0;
    for (const list of this.inMap.values()) n += list.length;
    return n;
  }
}
