import { z } from 'zod';

const strings = z.array(z.string().min(1).max(256)).max(64);
/** Hubble's FQDN filter patterns (agent/flows/filter.ts fqdnPatternCompile). */
const fqdnPattern = z.string().min(1).max(256).regex(/^[-a-zA-Z0-9_.*]+$/, 'must be a name pattern: letters, digits, "-", "_", "." and "*" only');
const fqdnPatterns = z.array(fqdnPattern).max(64);

/** Hubble's FlowFilter fields that kitnet supports (observer.proto names). */
export const FlowFilter = z
  .object({
    source_ip: strings, destination_ip: strings,
    source_pod: strings, destination_pod: strings,
    source_workload: strings, destination_workload: strings,
    source_label: strings, destination_label: strings,
    source_identity: z.array(z.number().int().min(0)).max(64), destination_identity: z.array(z.number().int().min(0)).max(64),
    source_fqdn: fqdnPatterns, destination_fqdn: fqdnPatterns,
    source_port: strings, destination_port: strings,
    protocol: strings, verdict: z.array(z.enum(['FORWARDED', 'DROPPED'])).max(2),
    drop_reason_desc: strings, traffic_direction: z.array(z.enum(['INGRESS', 'EGRESS'])).max(2),
    ip_version: z.array(z.enum(['IPv4', 'IPv6'])).max(2), tcp_flags: strings,
    reply: z.array(z.boolean()).max(2), node_name: strings,
  })
  .partial()
  .strict();
export type FlowFilter = z.infer<typeof FlowFilter>;

/** A repeated query parameter arrives as an array, a single one as a string; commas also separate. */
const listParam = z
  .union([z.string(), z.array(z.string())])
  .transform((v) => (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean));

const jsonFilters = z.string().transform((text, ctx) => {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    ctx.addIssue({ code: 'custom', message: 'must be a JSON array of flow filters' });
    return z.NEVER;
  }
  const r = z.array(FlowFilter).max(64).safeParse(Array.isArray(parsed) ? parsed : [parsed]);
  if (!r.success) {
    ctx.addIssue({ code: 'custom', message: r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') });
    return z.NEVER;
  }
  return r.data;
});

const time = z.string().refine((v) => !Number.isNaN(Date.parse(v)), 'must be an RFC 3339 time such as 2026-01-02T15:04:05Z');

export const FlowsQuery = z
  .object({
    last: z.coerce.number().int().min(1).max(1_000_000).optional().describe('Return the newest N flows'),
    since: time.optional().describe('Only flows at or after this time'),
    until: time.optional().describe('Only flows at or before this time'),
    follow: z
      .enum(['true', 'false', '1', '0'])
      .transform((v) => v === 'true' || v === '1')
      .optional()
      .describe('Keep the response open and stream new flows'),
    whitelist: jsonFilters.optional().describe('JSON array of Hubble flow filters; a flow matching any is shown'),
    blacklist: jsonFilters.optional().describe('JSON array of Hubble flow filters; a flow matching any is hidden'),
    // Shorthand: any FlowFilter field as a parameter; together they form one more whitelist filter.
    source_ip: listParam.optional(), destination_ip: listParam.optional(),
    source_pod: listParam.optional(), destination_pod: listParam.optional(),
    source_workload: listParam.optional(), destination_workload: listParam.optional(),
    source_label: z.union([z.string(), z.array(z.string())]).transform((v) => (Array.isArray(v) ? v : [v])).optional(),
    destination_label: z.union([z.string(), z.array(z.string())]).transform((v) => (Array.isArray(v) ? v : [v])).optional(),
    source_identity: listParam.pipe(z.array(z.string().regex(/^\d+$/, 'must be an identity number').transform(Number))).optional(),
    destination_identity: listParam.pipe(z.array(z.string().regex(/^\d+$/, 'must be an identity number').transform(Number))).optional(),
    source_fqdn: listParam.pipe(fqdnPatterns).optional(), destination_fqdn: listParam.pipe(fqdnPatterns).optional(),
    source_port: listParam.optional(), destination_port: listParam.optional(),
    protocol: listParam.optional(),
    verdict: listParam.pipe(z.array(z.enum(['FORWARDED', 'DROPPED']))).optional(),
    drop_reason_desc: listParam.optional(),
    traffic_direction: listParam.pipe(z.array(z.enum(['INGRESS', 'EGRESS']))).optional(),
    ip_version: listParam.pipe(z.array(z.enum(['IPv4', 'IPv6']))).optional(),
    tcp_flags: z.union([z.string(), z.array(z.string())]).transform((v) => (Array.isArray(v) ? v : [v])).optional(),
    reply: listParam.pipe(z.array(z.enum(['true', 'false']).transform((v) => v === 'true'))).optional(),
    node_name: listParam.optional(),
  })
  .strict();
export type FlowsQuery = z.infer<typeof FlowsQuery>;

export const FLOW_SHORTHAND_FIELDS = Object.keys(FlowFilter.shape) as Array<keyof FlowFilter>;

/** A line as `hubble observe -o json` prints it: a flow or a lost_events record. */
export type FlowRecord = { flow: unknown; node_name: string; time: string } | { lost_events: unknown; node_name: string; time: string };

export interface FlowSelection {
  whitelist?: FlowFilter[];
  blacklist?: FlowFilter[];
  last?: number;
  since?: string;
  until?: string;
}

/**
 * The flows of a selection, read from the ring a slice at a time as the client takes them (GET
 * /v1/flows): nothing is copied when it is made, so a client that does not read holds no flows.
 */
export interface FlowSnapshot {
  /**
   * The next matching flows, at most `max` (at least one unless done), oldest first; [] once done.
   * Flows of the selection the ring overwrote before they were read come as one lost_events record
   * (HUBBLE_RING_BUFFER), where they were, as Hubble tells a ring reader it overtook.
   */
  read(max: number): FlowRecord[];
}
