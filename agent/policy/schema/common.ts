/** Schema pieces shared by the Kubernetes and Cilium policy kinds. */
import { z } from 'zod';
import { addressParse, cidrParse } from '../../ipam.js';
import { isPortName } from '../ports.js';

export const LabelSelectorRequirementSchema = z
  .strictObject({
    key: z.string().min(1, 'must not be empty'),
    operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
    values: z.array(z.string()).optional(),
  })
  .superRefine((r, ctx) => {
    const n = r.values?.length ?? 0;
    if ((r.operator === 'In' || r.operator === 'NotIn') && n === 0) {
      ctx.addIssue({ code: 'custom', path: ['values'], message: `must not be empty for operator ${r.operator}` });
    }
    if ((r.operator === 'Exists' || r.operator === 'DoesNotExist') && n > 0) {
      ctx.addIssue({ code: 'custom', path: ['values'], message: `must be empty for operator ${r.operator}` });
    }
  });

export const LabelSelectorSchema = z.strictObject({
  matchLabels: z.record(z.string(), z.string({ error: 'label values must be strings (quote numbers and booleans)' })).nullish(),
  matchExpressions: z.array(LabelSelectorRequirementSchema).nullish(),
});
export type LabelSelector = z.infer<typeof LabelSelectorSchema>;

const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export const MetadataSchema = z.looseObject({
  name: z
    .string({ error: 'is required' })
    .min(1, 'is required')
    .max(253)
    .regex(DNS1123_SUBDOMAIN, 'must be a lowercase DNS-1123 subdomain'),
  namespace: z
    .string()
    .max(63)
    .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'must be a lowercase DNS-1123 label')
    .optional(),
});

/** A CIDR (`10.0.0.0/8`, `fd00::/64`) or a bare address (= host prefix), canonicalised. */
export const CidrSchema = z.string().transform((s, ctx) => {
  try {
    if (!s.includes('/')) {
      const a = addressParse(s);
      return `${a.text}/${a.family === 4 ? 32 : 128}`;
    }
    return cidrParse(s).text;
  } catch {
    ctx.addIssue({ code: 'custom', message: `"${s}" is not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/64)` });
    return z.NEVER;
  }
});

/** Checks that every `except` lies inside `cidr` (same family, longer or equal prefix). */
export function exceptsCheck(cidr: string, except: readonly string[], ctx: z.RefinementCtx, strict: boolean): void {
  let outer;
  try {
    outer = cidrParse(cidr);
  } catch {
    return; // reported by CidrSchema
  }
  except.forEach((e, i) => {
    let inner;
    try {
      inner = cidrParse(e);
    } catch {
      return;
    }
    const bits = outer.family === 4 ? 32 : 128;
    const inside =
      inner.family === outer.family &&
      inner.prefixLength >= outer.prefixLength &&
      inner.network >> BigInt(bits - outer.prefixLength) === outer.network >> BigInt(bits - outer.prefixLength);
    if (!inside || (strict && inner.prefixLength === outer.prefixLength)) {
      ctx.addIssue({ code: 'custom', path: ['except', i], message: `${e} is not ${strict ? 'a strict subset' : 'inside'} of ${cidr}` });
    }
  });
}

/** Kubernetes port: number 1-65535 or an IANA service name. */
export const K8sPortSchema = z.union([z.number(), z.string()]).superRefine((p, ctx) => {
  const ok = typeof p === 'number' ? Number.isInteger(p) && p >= 1 && p <= 65535 : isPortName(p);
  if (!ok) ctx.addIssue({ code: 'custom', message: 'must be a port number 1-65535 or a port name' });
});

/** Cilium port: "0"-"65535" (0 = all ports) as string or number, or a port name. */
export const CiliumPortSchema = z
  .union([z.number(), z.string()])
  .superRefine((p, ctx) => {
    const n = typeof p === 'number' ? p : /^\d+$/.test(p) ? Number(p) : undefined;
    const ok = n !== undefined ? Number.isInteger(n) && n >= 0 && n <= 65535 : typeof p === 'string' && isPortName(p.toLowerCase());
    if (!ok) ctx.addIssue({ code: 'custom', message: 'must be a port number 1-65535 or a port name' });
  })
  .transform((p): number | string => (typeof p === 'number' ? p : /^\d+$/.test(p) ? Number(p) : p.toLowerCase()));

export const EndPortSchema = z
  .number({ error: 'must be a port number 1-65535' })
  .int('must be a port number 1-65535')
  .min(1, 'must be a port number 1-65535')
  .max(65535, 'must be a port number 1-65535');

/** A field kitnet knows but does not implement: present -> clear error instead of silent over-allow. */
export const unsupported = (what: string) =>
  z
    .any()
    .refine(() => false, { message: `${what} is not supported by kitnet` })
    .optional();
