import type { Identity } from './schemas/identity.js';
import type { Status } from './schemas/status.js';
import type { Workload, WorkloadCreate } from './schemas/workload.js';

/** A flow line as `hubble observe -o json` prints it. */
export type FlowRecord = { flow: unknown; node_name: string; time: string };

/** What the HTTP layer needs from the agent. The API never touches the kernel itself. */
export interface AgentApi {
  workloadRegister(input: WorkloadCreate): Promise<Workload>;
  workloadList(namespace?: string): Workload[];
  workloadGet(namespace: string, name: string): Workload;
  workloadRemove(namespace: string, name: string): Promise<Workload>;
  identityList(): Identity[];
  status(): Promise<Status>;
  flowsLast(n?: number): FlowRecord[];
  /** Subscribes to new flows; returns the unsubscribe function. */
  flowsFollow(onFlow: (f: FlowRecord) => void): () => void;
}
