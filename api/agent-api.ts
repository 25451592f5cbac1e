import type { FlowRecord, FlowSelection, FlowSnapshot } from '../common/schemas/flows.js';
import type { Identity } from '../common/schemas/identity.js';
import type { Namespace, PolicyApplyResult, PolicySummary, TraceRequest, TraceResponse, WorkloadPolicy } from '../common/schemas/policy.js';
import type { Status } from '../common/schemas/status.js';
import type { ClusterStatus } from '../common/schemas/cluster.js';
import type { Workload, WorkloadCreate } from '../common/schemas/workload.js';

// The flow types are part of the API's contract, shared with the agent (common/schemas/flows.ts).
export type { FlowRecord, FlowSelection, FlowSnapshot } from '../common/schemas/flows.js';

/**
 * What the HTTP layer needs from the agent. The API never touches the kernel itself. The agent does
 * not import this (it sits below the API): the composition root (main/daemon.ts) hands the agent to
 * the server, which checks that it fits.
 */
export interface AgentApi {
  /** `caller.admin`: the unix socket or an admin token (may use a namespace with foreign interfaces). */
  workloadRegister(input: WorkloadCreate, caller?: { admin: boolean }): Promise<Workload>;
  workloadList(namespace?: string): Workload[];
  workloadGet(namespace: string, name: string): Workload;
  workloadRemove(namespace: string, name: string): Promise<Workload>;
  /** Replaces a workload's labels (and so its identity). */
  workloadLabelsSet(namespace: string, name: string, labels: Record<string, string>): Promise<Workload>;
  /** The endpoint's effective policy map entries. */
  workloadPolicy(namespace: string, name: string): WorkloadPolicy;
  identityList(): Identity[];
  namespaceList(): Namespace[];
  namespacePut(name: string, labels: Record<string, string>): Promise<Namespace>;
  policyList(): PolicySummary[];
  /** Body: YAML/JSON text, or an already parsed JSON value. */
  policiesApply(body: unknown, contentType?: string): Promise<PolicyApplyResult>;
  policyDelete(kind: string, namespace: string, name: string): Promise<PolicySummary>;
  policyTrace(req: TraceRequest): TraceResponse;
  status(): Promise<Status>;
  /** Cluster mode: etcd, lease, heartbeat, nodes, counts and peers; or that cluster mode is off. */
  clusterStatus(): Promise<ClusterStatus>;
  /**
   * The flows in the ring matching the selection, oldest first, read a slice at a time (nothing is
   * copied up front). Throws a 400 KitnetError for a bad filter.
   */
  flowsSnapshot(sel: FlowSelection): FlowSnapshot;
  /** Subscribes to new matching flows and lost_events records; returns the unsubscribe function. */
  flowsFollow(sel: FlowSelection, onRecord: (r: FlowRecord) => void): () => void;
  /** Accounts flows a slow follower missed; returns the lost_events record to send it. */
  flowsLost(count: number): FlowRecord;
}
