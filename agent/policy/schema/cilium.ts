/** CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (cilium.io/v2). */
import { z } from 'zod';
import { ENTITY_NAMES } from '../entities.js';
import { fqdnSelectorProblem } from '../fqdn.js';
import { icmpTypeNumber } from '../ports.js';
import { CidrSchema, CiliumPortSchema, EndPortSchema, exceptsCheck, LabelSelectorSchema, MetadataSchema, unsupported } from './common.js';

export const CIDRRuleSchema = z
  .strictObject({
    cidr: CidrSchema.optional(),
    except: z.array(CidrSchema).nullish(),
    cidrGroupRef: unsupported('cidrGroupRef'),
    cidrGroupSelector: unsupported('cidrGroupSelector'),
  })
  .superRefine((r, ctx) => {
    if (r.cidr === undefined) ctx.addIssue({ code: 'custom', path: ['cidr'], message: 'is required' });
    else exceptsCheck(r.cidr, r.except ?? [], ctx, false);
  });

export const EntitySchema = z.enum(ENTITY_NAMES, { error: `must be one of ${ENTITY_NAMES.join(', ')}` });

export const PortProtocolSchema = z
  .strictObject({
    port: CiliumPortSchema.optional(),
    endPort: EndPortSchema.optional(),
    protocol: z
      .string()
      .transform((s) => s.toUpperCase())
      .pipe(z.enum(['TCP', 'UDP', 'SCTP', 'ICMP', 'ICMPV6', 'ANY'], { error: 'must be TCP, UDP, SCTP, ICMP, ICMPv6 or ANY' }))
      .optional(),
  })
  .superRefine((p, ctx) => {
    if (p.endPort !== undefined) {
      if (typeof p.port !== 'number') {
        ctx.addIssue({ code: 'custom', path: ['endPort'], message: 'requires a numeric port' });
      } else if (p.endPort < p.port) {
        ctx.addIssue({ code: 'custom', path: ['endPort'], message: `must be >= port (${p.port})` });
      }
    }
    if ((p.protocol === 'ICMP' || p.protocol === 'ICMPV6') && p.port !== undefined && p.port !== 0) {
      ctx.addIssue({ code: 'custom', path: ['port'], message: 'ICMP has no ports; use icmps to match ICMP types' });
    }
  });

/** One FQDN selector (`toFQDNs[]`, `rules.dns[]`): exactly one of matchName / matchPattern. */
export const FQDNSelectorSchema = z
  .strictObject({
    matchName: z.string({ error: 'must be a string' }).optional(),
    matchPattern: z.string({ error: 'must be a string' }).optional(),
  })
  .superRefine((s, ctx) => {
    const problem = fqdnSelectorProblem(s);
    if (problem) ctx.addIssue({ code: 'custom', path: problem.field ? [problem.field] : [], message: problem.message });
  });

/** L7 rules: only `dns` (egress, checked in PortRuleSchema's users); HTTP, Kafka and generic L7 are refused. */
export const L7RulesSchema = z.strictObject({
  dns: z.array(FQDNSelectorSchema).max(1000).nullish(),
  http: unsupported('L7 rule type http'),
  kafka: unsupported('L7 rule type kafka'),
  l7proto: unsupported('L7 rule type l7proto'),
  l7: unsupported('L7 rule type l7'),
});

export const PortRuleSchema = z
  .strictObject({
    ports: z.array(PortProtocolSchema).nullish(),
    rules: L7RulesSchema.nullish(),
    serverNames: unsupported('serverNames'),
    terminatingTLS: unsupported('terminatingTLS'),
    originatingTLS: unsupported('originatingTLS'),
    listener: unsupported('listener'),
  })
  .superRefine((pr, ctx) => {
    if ((pr.rules?.dns?.length ?? 0) === 0) return;
    const ports = pr.ports ?? [];
    // Cilium wants the DNS port spelled out (no port 0, no range); kitnet's proxy listens for port 53 only.
    if (ports.length === 0) ctx.addIssue({ code: 'custom', path: ['ports'], message: 'port 53 must be specified for DNS rules' });
    ports.forEach((p, i) => {
      if (p.port !== 53) ctx.addIssue({ code: 'custom', path: ['ports', i, 'port'], message: 'DNS rules apply to port 53 only' });
      if (p.endPort !== undefined && p.endPort !== p.port) ctx.addIssue({ code: 'custom', path: ['ports', i, 'endPort'], message: 'DNS rules do not support port ranges' });
      if (p.protocol !== undefined && p.protocol !== 'UDP' && p.protocol !== 'TCP' && p.protocol !== 'ANY') {
        ctx.addIssue({ code: 'custom', path: ['ports', i, 'protocol'], message: 'DNS rules apply to UDP, TCP or ANY' });
      }
    });
  });

/** Ingress port rules: Cilium refuses DNS rules there. */
const IngressPortRuleSchema = PortRuleSchema.superRefine((pr, ctx) => {
  if ((pr.rules?.dns?.length ?? 0) > 0) ctx.addIssue({ code: 'custom', path: ['rules', 'dns'], message: 'DNS rules are not allowed on ingress' });
});

export const PortDenyRuleSchema = z.strictObject({ ports: z.array(PortProtocolSchema).nullish() });

export const ICMPFieldSchema = z
  .strictObject({
    family: z.enum(['IPv4', 'IPv6'], { error: 'must be IPv4 or IPv6' }).optional(),
    type: z.union([z.number(), z.string()], { error: 'is required (a number 0-255 or a type name)' }),
    code: unsupported('ICMP code'),
  })
  .superRefine((f, ctx) => {
    if (icmpTypeNumber(f.type, f.family ?? 'IPv4') === undefined) {
      ctx.addIssue({ code: 'custom', path: ['type'], message: `must be 0-255 or an ${f.family ?? 'IPv4'} ICMP type name` });
    }
  });

export const ICMPRuleSchema = z.strictObject({ fields: z.array(ICMPFieldSchema).max(40) });

const ingressCommon = {
  fromEndpoints: z.array(LabelSelectorSchema).nullish(),
  fromCIDR: z.array(CidrSchema).nullish(),
  fromCIDRSet: z.array(CIDRRuleSchema).nullish(),
  fromEntities: z.array(EntitySchema).nullish(),
  fromRequires: unsupported('fromRequires'),
  fromNodes: unsupported('fromNodes'),
  fromGroups: unsupported('fromGroups'),
  icmps: z.array(ICMPRuleSchema).nullish(),
};

const egressCommon = {
  toEndpoints: z.array(LabelSelectorSchema).nullish(),
  toCIDR: z.array(CidrSchema).nullish(),
  toCIDRSet: z.array(CIDRRuleSchema).nullish(),
  toEntities: z.array(EntitySchema).nullish(),
  toRequires: unsupported('toRequires'),
  toNodes: unsupported('toNodes'),
  toGroups: unsupported('toGroups'),
  toServices: unsupported('toServices'),
  icmps: z.array(ICMPRuleSchema).nullish(),
};

const L3_FIELDS = ['toEndpoints', 'toCIDR', 'toCIDRSet', 'toEntities', 'toFQDNs'] as const;

/** Cilium refuses toFQDNs next to another L3 selector in one egress rule ("combining ... is not supported yet"). */
function fqdnAlone(r: Partial<Record<(typeof L3_FIELDS)[number], unknown[] | null | undefined>>, ctx: z.RefinementCtx): void {
  if ((r.toFQDNs?.length ?? 0) === 0) return;
  const other = L3_FIELDS.find((f) => f !== 'toFQDNs' && (r[f]?.length ?? 0) > 0);
  if (other) ctx.addIssue({ code: 'custom', path: ['toFQDNs'], message: `combining toFQDNs and ${other} in one rule is not supported (as in Cilium); use two rules` });
}

function icmpPortsExclusive(r: { toPorts?: unknown[] | null; icmps?: unknown[] | null }, ctx: z.RefinementCtx): void {
  if ((r.toPorts?.length ?? 0) > 0 && (r.icmps?.length ?? 0) > 0) {
    ctx.addIssue({ code: 'custom', path: ['icmps'], message: 'icmps and toPorts cannot be used in the same rule' });
  }
}

export const IngressRuleSchema = z
  .strictObject({ ...ingressCommon, toPorts: z.array(IngressPortRuleSchema).nullish(), authentication: unsupported('authentication') })
  .superRefine(icmpPortsExclusive);
export const IngressDenyRuleSchema = z
  .strictObject({ ...ingressCommon, toPorts: z.array(PortDenyRuleSchema).nullish() })
  .superRefine(icmpPortsExclusive);
export const EgressRuleSchema = z
  .strictObject({
    ...egressCommon,
    toFQDNs: z.array(FQDNSelectorSchema).max(1000).nullish(),
    toPorts: z.array(PortRuleSchema).nullish(),
    authentication: unsupported('authentication'),
  })
  .superRefine(icmpPortsExclusive)
  .superRefine(fqdnAlone);
export const EgressDenyRuleSchema = z
  .strictObject({
    ...egressCommon,
    toFQDNs: z
      .any()
      .refine(() => false, { message: 'toFQDNs is not allowed in egressDeny (Cilium has no FQDN deny rules)' })
      .optional(),
    toPorts: z.array(PortDenyRuleSchema).nullish(),
  })
  .superRefine(icmpPortsExclusive);

export const CiliumRuleSchema = z
  .strictObject({
    endpointSelector: LabelSelectorSchema.optional(),
    nodeSelector: unsupported('nodeSelector (host policies)'),
    ingress: z.array(IngressRuleSchema).nullish(),
    ingressDeny: z.array(IngressDenyRuleSchema).nullish(),
    egress: z.array(EgressRuleSchema).nullish(),
    egressDeny: z.array(EgressDenyRuleSchema).nullish(),
    enableDefaultDeny: z.strictObject({ ingress: z.boolean().optional(), egress: z.boolean().optional() }).optional(),
    labels: z.array(z.unknown()).optional(),
    description: z.string().optional(),
    log: z.unknown().optional(),
  })
  .superRefine((r, ctx) => {
    if (r.endpointSelector === undefined) ctx.addIssue({ code: 'custom', path: ['endpointSelector'], message: 'is required' });
  });

function specOrSpecs(d: { spec?: unknown; specs?: unknown[] | null }, ctx: z.RefinementCtx): void {
  if (d.spec == null && (d.specs == null || d.specs.length === 0)) {
    ctx.addIssue({ code: 'custom', path: ['spec'], message: 'spec or specs is required' });
  }
}

export const CiliumNetworkPolicySchema = z
  .looseObject({
    apiVersion: z.literal('cilium.io/v2'),
    kind: z.literal('CiliumNetworkPolicy'),
    metadata: MetadataSchema,
    spec: CiliumRuleSchema.nullish(),
    specs: z.array(CiliumRuleSchema).nullish(),
  })
  .superRefine(specOrSpecs);

export const CiliumClusterwideNetworkPolicySchema = z
  .looseObject({
    apiVersion: z.literal('cilium.io/v2'),
    kind: z.literal('CiliumClusterwideNetworkPolicy'),
    metadata: MetadataSchema,
    spec: CiliumRuleSchema.nullish(),
    specs: z.array(CiliumRuleSchema).nullish(),
  })
  .superRefine(specOrSpecs);

export type CiliumRule = z.infer<typeof CiliumRuleSchema>;
export type CiliumPortProtocol = z.infer<typeof PortProtocolSchema>;
export type CiliumFQDNSelector = z.infer<typeof FQDNSelectorSchema>;
export type CiliumCIDRRule = z.infer<typeof CIDRRuleSchema>;
export type CiliumICMPRule = z.infer<typeof ICMPRuleSchema>;
export type CiliumPolicyDoc = z.infer<typeof CiliumNetworkPolicySchema>;
