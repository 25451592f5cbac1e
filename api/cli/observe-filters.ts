export interface ObserveOptions {
  last?: number;
  follow?: boolean;
  output: string;
  since?: string;
  until?: string;
  [flag: string]: unknown;
}

/**
 * Builds Hubble-style filters from flags, as `hubble observe` does: directional flags (--from-*,
 * --to-*) and the others form one filter; each symmetric flag (--ip, --workload, ...) matches either
 * side, so it forks the filter into a source variant and a destination variant (OR).
 */
export function observeFilters(o: ObserveOptions): Array<Record<string, unknown>> {
  const base: Record<string, unknown> = {};
  const put = (field: string, v: unknown) => {
    if (v !== undefined && !(Array.isArray(v) && v.length === 0)) base[field] = v;
  };
  const ns = (list?: string[]) => list?.map((n) => `${n}/`);
  put('source_ip', o.fromIp); put('destination_ip', o.toIp);
  put('source_workload', o.fromWorkload); put('destination_workload', o.toWorkload);
  put('source_pod', [...((o.fromPod as string[]) ?? []), ...(ns(o.fromNamespace as string[]) ?? [])]);
  put('destination_pod', [...((o.toPod as string[]) ?? []), ...(ns(o.toNamespace as string[]) ?? [])]);
  put('source_label', o.fromLabel); put('destination_label', o.toLabel);
  put('source_identity', (o.fromIdentity as string[] | undefined)?.map(Number));
  put('destination_identity', (o.toIdentity as string[] | undefined)?.map(Number));
  put('source_port', o.fromPort); put('destination_port', o.toPort);
  put('source_fqdn', o.fromFqdn); put('destination_fqdn', o.toFqdn);
  put('verdict', (o.verdict as string[] | undefined)?.map((v) => v.toUpperCase()));
  put('drop_reason_desc', o.dropReason);
  put('protocol', o.protocol);
  put('traffic_direction', (o.trafficDirection as string[] | undefined)?.map((v) => v.toUpperCase()));
  put('tcp_flags', o.tcpFlags);
  put('node_name', o.node);
  const versions = [...(o.ipv4 ? ['IPv4'] : []), ...(o.ipv6 ? ['IPv6'] : [])];
  put('ip_version', versions);
  let filters: Array<Record<string, unknown>> = [base];
  const fork = (flag: unknown, src: string, dst: string, map: (v: string[]) => unknown = (v) => v) => {
    const values = flag as string[] | undefined;
    if (!values?.length) return;
    filters = filters.flatMap((f) => [{ ...f, [src]: map(values) }, { ...f, [dst]: map(values) }]);
  };
  fork(o.ip, 'source_ip', 'destination_ip');
  fork(o.workload, 'source_workload', 'destination_workload');
  fork(o.namespace, 'source_pod', 'destination_pod', (v) => v.map((n) => `${n}/`));
  fork(o.label, 'source_label', 'destination_label');
  fork(o.identity, 'source_identity', 'destination_identity', (v) => v.map(Number));
  fork(o.port, 'source_port', 'destination_port');
  fork(o.fqdn, 'source_fqdn', 'destination_fqdn');
  return filters.filter((f) => Object.keys(f).length > 0);
}

