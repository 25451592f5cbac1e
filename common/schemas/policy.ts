import { z } from 'zod';
import { Dns1123Label, Labels } from './common.js';

export const Namespace = z.object({
  name: z.string(),
  labels: z.record(z.string(), z.string()),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type Namespace = z.infer<typeof Namespace>;

export const NamespacePut = z.object({ labels: Labels.default({}) }).strict();
export const NamespaceRef = z.object({ name: Dns1123Label });

export const PolicySummary = z.object({
  kind: z.string(),
  namespace: z.string(),
  name: z.string(),
  document: z.record(z.string(), z.unknown()),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type PolicySummary = z.infer<typeof PolicySummary>;

export const PolicyApplyResult = z.object({
  applied: z.array(z.object({ kind: z.string(), namespace: z.string(), name: z.string(), action: z.enum(['created', 'updated']) })),
  stats: z.object({
    endpoints: z.number(),
    entries: z.number(),
    upserts: z.number(),
    deletes: z.number(),
    cidrIdentities: z.number(),
    ms: z.number(),
  }),
});
export type PolicyApplyResult = z.infer<typeof PolicyApplyResult>;

export const PolicyRef = z.object({
  kind: z.string().min(1).max(64).describe('NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy (or netpol, cnp, ccnp)'),
  namespace: z.string().min(1).max(63).describe('Namespace; `-` for the cluster-wide kind'),
  name: z.string().min(1).max(253),
});

const TracePeerSpec = z.union([
  z.object({ workload: z.string().min(1).max(127).describe('NS/NAME') }).strict(),
  z.object({ labels: Labels, namespace: Dns1123Label.optional() }).strict(),
  z.object({ ip: z.union([z.ipv4(), z.ipv6()]) }).strict(),
  z.object({ identity: z.number().int().min(0) }).strict(),
]);

/** `to` only: a name, answered from what the DNS proxy learned (agent/policy/trace-fqdn.ts validates it). */
const TraceFqdnPeer = z.object({ fqdn: z.string().min(1).max(300).describe('DNS name, e.g. api.example.com') }).strict();

export const TraceRequest = z
  .object({
    from: TracePeerSpec,
    to: z.union([...TracePeerSpec.options, TraceFqdnPeer]),
    protocol: z.string().min(1).max(8).default('TCP').describe('TCP, UDP, SCTP, ICMP, ICMPv6'),
    port: z.number().int().min(0).max(65535).optional().describe('Destination port, or ICMP type; required unless `to` is {fqdn}'),
    resolver: z.union([z.ipv4(), z.ipv6()]).optional().describe('With to.fqdn: the resolver the lookup would go to (default: each one the rules allow on port 53)'),
  })
  .strict()
  .superRefine((v, ctx) => {
    if (v.port === undefined && !('fqdn' in v.to)) ctx.addIssue({ code: 'custom', path: ['port'], message: 'required unless to is {fqdn}' });
    if (v.resolver !== undefined && !('fqdn' in v.to)) ctx.addIssue({ code: 'custom', path: ['resolver'], message: 'only with to: {fqdn}' });
  });
export type TraceRequest = z.infer<typeof TraceRequest>;

export const TraceResponse = z.object({
  /** UNKNOWN: a trace to a name nothing was learned for yet. */
  verdict: z.enum(['ALLOWED', 'DENIED', 'UNKNOWN']),
  text: z.string(),
  result: z.record(z.string(), z.unknown()),
});
export type TraceResponse = z.infer<typeof TraceResponse>;

export const WorkloadPolicy = z.object({
  endpointId: z.number(),
  identity: z.number(),
  ingressEnforced: z.boolean(),
  egressEnforced: z.boolean(),
  entries: z.array(z.record(z.string(), z.unknown())),
  text: z.string(),
});
export type WorkloadPolicy = z.infer<typeof WorkloadPolicy>;
