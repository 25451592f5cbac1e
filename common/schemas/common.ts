import { z } from 'zod';
import { workloadLabelKeyForbidden } from '../labels.js';

/** DNS-1123 label, as Kubernetes requires for namespace and pod names. */
export const Dns1123Label = z
  .string()
  .min(1, 'must not be empty')
  .max(63, 'must be at most 63 characters')
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'must be a DNS-1123 label: lower-case letters, digits and "-", starting and ending with a letter or digit');

const LABEL_NAME = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** Why a Kubernetes label key (optionally preceded by a Cilium source, `k8s:app`) is invalid, if it is. */
export function labelKeyProblem(raw: string): string | undefined {
  const key = raw.replace(/^(k8s|reserved|container|vm|kitnet|any|unspec):/, '');
  const slash = key.lastIndexOf('/');
  const prefix = slash >= 0 ? key.slice(0, slash) : undefined;
  const name = slash >= 0 ? key.slice(slash + 1) : key;
  if (prefix !== undefined && (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) {
    return `label key "${raw}": prefix must be a DNS subdomain`;
  }
  if (name.length === 0 || name.length > 63 || !LABEL_NAME.test(name)) {
    return `label key "${raw}": name must be 1-63 characters of [A-Za-z0-9-_.], alphanumeric at both ends`;
  }
  return undefined;
}

export const LabelValue = z
  .string()
  .max(63, 'label value must be at most 63 characters')
  .regex(/^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/, 'label value must be empty or [A-Za-z0-9-_.], alphanumeric at both ends');

/**
 * Labels of one workload or namespace, at most. Kubernetes sets no number; Cilium puts every label of an
 * identity into its kvstore key and every flow carries them, so an unbounded set (a 1 MiB body holds
 * ~8,000) made a ~1 MiB etcd key and a ~1 MiB Hubble message per flow of that workload.
 */
export const LABELS_MAX = 64;

export const Labels = z.record(z.string(), LabelValue).superRefine((labels, ctx) => {
  const keys = Object.keys(labels);
  if (keys.length > LABELS_MAX) {
    ctx.addIssue({ code: 'custom', message: `at most ${LABELS_MAX} labels (got ${keys.length})` });
    return;
  }
  for (const key of keys) {
    const problem = labelKeyProblem(key);
    if (problem) ctx.addIssue({ code: 'custom', message: problem, path: [key] });
  }
});

/** A workload's labels: also none of the keys and sources kitnet derives itself (a forged identity). */
export const WorkloadLabels = Labels.superRefine((labels, ctx) => {
  for (const key of Object.keys(labels)) {
    const problem = workloadLabelKeyForbidden(key);
    if (problem) ctx.addIssue({ code: 'custom', message: problem, path: [key] });
  }
});

/**
 * An interface name the kernel accepts (dev_valid_name): 1-15 bytes, no "/", ":" or whitespace, not
 * "." or "..". The character class is narrower still, so names stay easy to type and to quote.
 */
export const Ifname = z
  .string()
  .min(1)
  .max(15, 'interface names are at most 15 bytes')
  .regex(/^[A-Za-z0-9_.-]+$/, 'interface name may contain letters, digits, "_", "." and "-"')
  .refine((n) => n !== '.' && n !== '..', 'interface name cannot be "." or ".." (the kernel refuses them)');

export const ErrorBody = z.object({
  statusCode: z.number(),
  code: z.string(),
  error: z.string(),
  message: z.string(),
  field: z.string().optional(),
});
