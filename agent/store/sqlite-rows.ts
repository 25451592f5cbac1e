// Rows of the SQLite store's tables and the records they stand for (JSON columns parsed).
import type { IdentityRecord, NamespaceRecord, PolicyRecord, WorkloadMode, WorkloadRecord, WorkloadSpec, WorkloadState } from './types.js';

export interface WorkloadRow {
  namespace: string;
  name: string;
  spec: string;
  mode: string;
  endpoint_id: number;
  identity: number;
  ipv4: string;
  ipv6: string;
  host_ifname: string;
  state: string;
  observed: string | null;
  error: string | null;
  created_at: string;
  updated_at: string;
}

export function rowToRecord(r: WorkloadRow): WorkloadRecord {
  return {
    spec: JSON.parse(r.spec) as WorkloadSpec,
    mode: r.mode as WorkloadMode,
    endpointId: r.endpoint_id,
    identity: r.identity,
    ipv4: r.ipv4,
    ipv6: r.ipv6,
    hostIfname: r.host_ifname,
    state: r.state as WorkloadState,
    observed: r.observed ? (JSON.parse(r.observed) as WorkloadRecord['observed']) : null,
    error: r.error,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

export interface NamespaceRow {
  name: string;
  labels: string;
  created_at: string;
  updated_at: string;
}

export interface PolicyRow {
  kind: string;
  namespace: string;
  name: string;
  document: string;
  created_at: string;
  updated_at: string;
}

export function namespaceFromRow(r: NamespaceRow): NamespaceRecord {
  return { name: r.name, labels: JSON.parse(r.labels) as Record<string, string>, createdAt: r.created_at, updatedAt: r.updated_at };
}

export function policyFromRow(r: PolicyRow): PolicyRecord {
  return {
    kind: r.kind,
    namespace: r.namespace,
    name: r.name,
    document: JSON.parse(r.document) as Record<string, unknown>,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

export interface IdentityRow {
  id: number;
  labels_key: string;
  labels: string;
  created_at: string;
  refs: number;
}

export function identityFromRow(r: IdentityRow): IdentityRecord {
  return {
    id: r.id,
    labelsKey: r.labels_key,
    labels: JSON.parse(r.labels) as string[],
    references: r.refs,
    createdAt: r.created_at,
  };
}
