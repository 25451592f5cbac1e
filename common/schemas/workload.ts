import { z } from 'zod';
import { Dns1123Label, Ifname, WorkloadLabels } from './common.js';

export const WorkloadCreate = z
  .object({
    name: Dns1123Label.describe('Workload name, unique within its namespace'),
    namespace: Dns1123Label.default('default').describe('Kubernetes-style namespace'),
    labels: WorkloadLabels.default({}).describe('Labels; keys may carry a source prefix such as `k8s:`; the keys kitnet derives (io.kubernetes.pod.namespace, io.cilium.k8s.namespace.labels.*, io.cilium.k8s.policy.*) and the reserved:, cidr: and fqdn: sources are refused'),
    kind: z
      .enum(['netns', 'vm', 'tap'])
      .default('netns')
      .describe('`netns`: a process in an existing network namespace; `vm`: a VM behind a tap in a namespace kitnet makes (or adopts); `tap`: an existing tap/vnet device in the host namespace'),
    netns: z
      .string()
      .min(1)
      .max(4096)
      .regex(/^\//, 'must be an absolute path such as /var/run/netns/NAME or /proc/PID/ns/net')
      // Token netns patterns match the path as written: one spelling per path, no ".." to climb out.
      .refine((p) => p.split('/').slice(1).every((seg) => seg !== '' && seg !== '.' && seg !== '..'), 'must be a plain absolute path (no "//", "." or ".." segments, no trailing "/")')
      .optional()
      .describe('Path of the workload network namespace (required for `netns`; for `vm` an existing namespace to adopt instead of one kitnet makes)'),
    device: Ifname
      .optional()
      .describe('`tap` only: the existing tap/vnet device in the host namespace to adopt (e.g. vnet3)'),
    mac: z
      .string()
      .regex(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/, 'must be a MAC address such as 52:54:00:12:34:56')
      .refine((m) => (parseInt(m.slice(0, 2), 16) & 1) === 0 && !/^(00:){5}00$/.test(m), 'must be a unicast MAC address')
      .optional()
      .describe("The guest NIC's MAC: required for `tap`; for `vm` optional (default: a fixed locally administered MAC)"),
    ipv4: z.ipv4({ message: 'must be an IPv4 address without prefix' }).optional().describe('Requested IPv4 address (else allocated)'),
    ipv6: z.ipv6({ message: 'must be an IPv6 address without prefix' }).optional().describe('Requested IPv6 address (else allocated)'),
    mode: z.enum(['auto', 'veth', 'netkit']).default('auto').describe('Device mode; `auto` picks netkit when the kernel has it'),
    interface: Ifname
      .optional()
      .describe('Interface name inside the namespace (default from config, usually eth0)'),
    addressing: z
      .enum(['dhcp', 'static'])
      .optional()
      .describe('`vm` and `tap`: `dhcp` (default) answers the guest\'s DHCP; `static`: the guest is configured by hand'),
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
    if (w.kind === 'netns' && w.netns === undefined) ctx.addIssue({ code: 'custom', message: 'netns is required for kind netns', path: ['netns'] });
    if (w.kind === 'tap') {
      if (w.device === undefined) ctx.addIssue({ code: 'custom', message: 'device is required for kind tap', path: ['device'] });
      if (w.mac === undefined) ctx.addIssue({ code: 'custom', message: "mac (the guest's MAC) is required for kind tap", path: ['mac'] });
      for (const f of ['netns', 'interface'] as const) {
        if (w[f] !== undefined) ctx.addIssue({ code: 'custom', message: `${f} does not apply to kind tap (the device lives in the host namespace)`, path: [f] });
      }
      if (w.mode !== 'auto') ctx.addIssue({ code: 'custom', message: 'mode does not apply to kind tap (programs attach with tcx)', path: ['mode'] });
    } else if (w.device !== undefined) {
      ctx.addIssue({ code: 'custom', message: 'device applies to kind tap only', path: ['device'] });
    }
    if (w.kind === 'netns' && w.addressing !== undefined) ctx.addIssue({ code: 'custom', message: 'addressing applies to kinds vm and tap only', path: ['addressing'] });
    if (w.kind === 'netns' && w.mac !== undefined) ctx.addIssue({ code: 'custom', message: 'mac applies to kinds vm and tap only', path: ['mac'] });
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
  error: z.string().nullable().describe('The last error of the workload (state error), kept until it converges'),
  retries: z.number().describe('Failed reconciles since the workload last converged'),
  nextRetryAt: z.string().nullable().describe('When the reconcile loop tries again after a failure (RFC 3339); null when none is due'),
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
  vm: z
    .object({
      netnsPath: z.string(),
      netnsCreated: z.boolean().describe('kitnet made the namespace (and deletes it with the workload)'),
      tap: z.string().describe('The tap device inside the namespace, for the hypervisor'),
      bridge: z.string(),
      mac: z.string().describe("The guest NIC's MAC (the only source MAC the datapath accepts from the VM)"),
      gatewayMac: z.string().nullable().describe('MAC the guest sends to for its gateways (host side of the pair)'),
      gateway: z.object({ ipv4: z.string(), ipv6: z.string() }),
      addresses: z.object({ ipv4: z.string(), ipv6: z.string() }).describe('Static guest addresses with prefix length'),
      qemuNetdev: z.string().describe('qemu arguments for the NIC'),
      runHint: z.string().describe('How to start the hypervisor inside the namespace'),
    })
    .optional()
    .describe('kind vm: what the hypervisor and the guest need'),
  tap: z
    .object({ device: z.string(), mac: z.string() })
    .optional()
    .describe('kind tap: the adopted device and the guest MAC'),
  addressing: z.enum(['dhcp', 'static']).optional().describe('kinds vm and tap: whether kitnet answers the guest\'s DHCP'),
  createdAt: z.string(),
  updatedAt: z.string(),
});

export type Workload = z.infer<typeof Workload>;

export const WorkloadRef = z.object({ namespace: Dns1123Label, name: Dns1123Label });
export const WorkloadListQuery = z.object({ namespace: Dns1123Label.optional() }).strict();

export const WorkloadPatch = z.object({ labels: WorkloadLabels.describe('The new, complete label set') }).strict();
