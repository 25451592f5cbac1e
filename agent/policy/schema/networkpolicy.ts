/** Kubernetes NetworkPolicy (networking.k8s.io/v1). */
import { z } from 'zod';
import { CidrSchema, EndPortSchema, exceptsCheck, K8sPortSchema, LabelSelectorSchema, MetadataSchema } from './common.js';

export const IPBlockSchema = z
  .strictObject({ cidr: CidrSchema, except: z.array(CidrSchema).nullish() })
  .superRefine((b, ctx) => exceptsCheck(b.cidr, b.except ?? [], ctx, true));

export const NetworkPolicyPeerSchema = z
  .strictObject({
    podSelector: LabelSelectorSchema.nullish(),
    namespaceSelector: LabelSelectorSchema.nullish(),
    ipBlock: IPBlockSchema.nullish(),
  })
  .superRefine((p, ctx) => {
    const sel = p.podSelector != null || p.namespaceSelector != null;
    if (p.ipBlock != null && sel) {
      ctx.addIssue({ code: 'custom', message: 'ipBlock cannot be combined with podSelector or namespaceSelector in one peer' });
    }
    if (p.ipBlock == null && !sel) {
      ctx.addIssue({ code: 'custom', message: 'a peer needs podSelector, namespaceSelector or ipBlock' });
    }
  });

export const NetworkPolicyPortSchema = z
  .strictObject({
    protocol: z.enum(['TCP', 'UDP', 'SCTP'], { error: 'must be TCP, UDP or SCTP' }).nullish(),
    port: K8sPortSchema.nullish(),
    endPort: EndPortSchema.nullish(),
  })
  .superRefine((p, ctx) => {
    if (p.endPort == null) return;
    if (typeof p.port !== 'number') {
      ctx.addIssue({ code: 'custom', path: ['endPort'], message: 'requires a numeric port' });
    } else if (p.endPort < p.port) {
      ctx.addIssue({ code: 'custom', path: ['endPort'], message: `must be >= port (${p.port})` });
    }
  });

export const NetworkPolicyIngressRuleSchema = z.strictObject({
  from: z.array(NetworkPolicyPeerSchema).nullish(),
  ports: z.array(NetworkPolicyPortSchema).nullish(),
});

export const NetworkPolicyEgressRuleSchema = z.strictObject({
  to: z.array(NetworkPolicyPeerSchema).nullish(),
  ports: z.array(NetworkPolicyPortSchema).nullish(),
});

export const NetworkPolicySpecSchema = z.strictObject({
  podSelector: LabelSelectorSchema,
  policyTypes: z.array(z.enum(['Ingress', 'Egress'], { error: 'must be Ingress or Egress' })).nullish(),
  ingress: z.array(NetworkPolicyIngressRuleSchema).nullish(),
  egress: z.array(NetworkPolicyEgressRuleSchema).nullish(),
});

export const NetworkPolicySchema = z.looseObject({
  apiVersion: z.literal('networking.k8s.io/v1'),
  kind: z.literal('NetworkPolicy'),
  metadata: MetadataSchema,
  spec: NetworkPolicySpecSchema,
});
export type NetworkPolicyDoc = z.infer<typeof NetworkPolicySchema>;
export type NetworkPolicyPeer = z.infer<typeof NetworkPolicyPeerSchema>;
export type NetworkPolicyPort = z.infer<typeof NetworkPolicyPortSchema>;
