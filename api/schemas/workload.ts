import { z } from 'zod';
import { Dns1123Label, Labels } from './common.js';

export const WorkloadCreate = z
  .object({
    name: Dns1123Label.describe('Workload name, unique within its namespace'),
    namespace: Dns1123Label.default('default').describe('Kubernetes-style namespace'),
    labels: Labels.default({}).describe('Labels; keys may carry a source prefix such as `k8s:`'),
    kind: z.literal('netns').default('netns').describe('`netns`: a process in an existing network namespace'),
    netns: z
      .string()
      .min(1)
      .max(4096)
      .regex(/^\//, 'must be an absolute path such as /var/run/netns/NAME or /proc/PID/ns/net')
      .describe('Path of the workload network namespace'),
    ipv4: z.ipv4({ message: 'must be an IPv4 address without prefix' }).optional().describe('Requested IPv4 address (else allocated)'),
    ipv6: z.ipv6({ message: 'must be an IPv6 address without prefix' }).optional().describe('Requested IPv6 address (else allocated)'),
    mode: z.enum(['auto', 'veth', 'netkit']).default('auto').describe('Device mode; `auto` picks netkit when the kernel has it'),
    interface: z
      .string()
      .min(1)
      .max(15, 'interface names are at most 15 bytes')
      .regex(/^[A-Za-z0-9_.-]+$/, 'interface name may contain letters, digits, "_", "." and "-"')
      .optional()
      .describe('Interface name inside the namespace (default from config, usually eth0)'),
    ports: z
      .array(
        z
          .object({
            name: z.string().min(1).max(15).regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'port names are IANA service names: lower-case letters, digits and "-"'),
            port: z.number().int().min(1).max(65535),
            protocol: z.enum(['TCP', 'UDP', 'SCTP']).default('TCP'),
          })
          .strict(),
      )
      .max(64)
      .optional()
      .describe('Named ports the workload serves (for policies that name ports)'),
  })
  .strict()
  .superRefine((w, ctx) => {
    const seen = new Set<string>();
    w.ports?.forEach((p, i) => {
      if (seen.has(p.name)) ctx.addIssue({ code: 'custom', message: `port name "${p.name}" is used twice`, path: ['ports', i, 'name'] });
      seen.add(p.name);
    });
  });

export type WorkloadCreate = z.infer<typeof WorkloadCreate>;

export const Workload = z.object({
  name: z.string(),
  namespace: z.string(),
  kind: z.string(),
  labels: z.record(z.string(), z.string()),
  netns: z.string(),
  ports: z.array(z.object({ name: z.string(), port: z.number(), protocol: z.string() })),
  mode: z.string().describe('Device mode in use'),
  requestedMode: z.string(),
  state: z.enum(['pending', 'ready', 'error']),
  error: z.string().nullable(),
  endpointId: z.number(),
  identity: z.number(),
  identityLabels: z.array(z.string()),
  ipv4: z.string(),
  ipv6: z.string(),
  interfaces: z.object({
    host: z.object({ name: z.string(), ifindex: z.number().nullable(), mac: z.string().nullable() }),
    workload: z.object({ name: z.string(), ifindex: z.number().nullable(), mac: z.string().nullable() }),
  }),
  gateway: z.object({ ipv4: z.string(), ipv6: z.string() }),
  createdAt: z.string(),
  updatedAt: z.string(),
});

export type Workload = z.infer<typeof Workload>;

export const WorkloadRef = z.object({ namespace: Dns1123Label, name: Dns1123Label });
export const WorkloadListQuery = z.object({ namespace: Dns1123Label.optional() }).strict();

export const WorkloadPatch = z.object({ labels: Labels.describe('The new, complete label set') }).strict();
