import { z } from 'zod';

export const Status = z.object({
  version: z.string(),
  nodeName: z.string(),
  uptimeSeconds: z.number(),
  host: z.object({
    hostname: z.string(),
    os: z.object({ distro: z.string(), release: z.string(), kernel: z.string(), arch: z.string() }),
    cpu: z.object({ brand: z.string(), cores: z.number(), physicalCores: z.number() }),
    memoryBytes: z.number(),
    uplinks: z.array(
      z.object({ name: z.string(), ipv4: z.string(), ipv6: z.string(), mac: z.string(), speedMbps: z.number().nullable(), default: z.boolean() }),
    ),
  }),
  kernel: z.object({
    release: z.string(),
    netkit: z.boolean(),
    netkitDetail: z.string(),
    tcx: z.boolean(),
    tcClsact: z.boolean(),
  }),
  datapath: z.object({
    configuredMode: z.string(),
    /** What `auto` resolves to on this kernel, and why. */
    autoMode: z.string(),
    reason: z.string(),
    pinRoot: z.string(),
  }),
  ipam: z.object({ ipv4Pool: z.string(), ipv6Pool: z.string() }),
  /** What an operator should look at, e.g. workloads left outside a pool that changed. */
  warnings: z.array(z.object({ key: z.string(), workload: z.string().optional(), message: z.string() })),
  counts: z.object({
    workloads: z.number(),
    workloadsByMode: z.record(z.string(), z.number()),
    workloadsByState: z.record(z.string(), z.number()),
    identities: z.number(),
    flowsInRing: z.number(),
    flowsProcessed: z.number(),
    lostEvents: z.number(),
  }),
  /** Fill of the BPF maps that grow with state: entries now and max_entries. */
  maps: z.array(z.object({ map: z.string(), entries: z.number(), capacity: z.number() })),
});
export type Status = z.infer<typeof Status>;
