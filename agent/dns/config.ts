/**
 * The `dns` config section (issue #17): the DNS proxy the datapath steers selected workloads' DNS to.
 * Errors name the key (zod paths under `dns.proxy`).
 */
import { isIP } from 'node:net';
import { z } from 'zod';

/** `upstream`: an address, with an optional port (`10.0.0.2`, `10.0.0.2:5353`, `[fd00::2]:53`, `fd00::2`). */
export function upstreamParse(v: string): { address: string; port: number } | undefined {
  const bracket = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(v);
  const plain4 = /^([0-9.]+)(?::(\d{1,5}))?$/.exec(v);
  const m = bracket ?? plain4;
  const address = m ? m[1]! : v;
  const port = m?.[2] !== undefined ? Number(m[2]) : 53;
  if (!isIP(address) || port < 1 || port > 65535) return undefined;
  return { address, port };
}

export const DnsConfigSchema = z
  .object({
    proxy: z
      .object({
        /** Off: toFQDNs and DNS rules are still accepted but nothing is steered or learned (they allow nothing). */
        enabled: z.boolean().default(true),
        /** UDP and TCP port of the proxy on its host-local addresses; 0 = a free port picked at start. */
        port: z.number().int().min(0).max(65535).default(0),
        /** Forward every query here instead of the resolver the workload addressed. */
        upstream: z
          .string()
          .refine((v) => upstreamParse(v) !== undefined, 'must be an IP address with an optional port, such as 10.0.0.2, 10.0.0.2:5353 or [fd00::2]:53')
          .optional(),
        /** Floor on learned TTLs in seconds (Cilium --tofqdns-min-ttl). */
        minTTL: z.number().int().min(0).max(86_400).default(0),
        /**
         * Ceiling on learned TTLs in seconds: an answer's TTL may be 2^31-1 (~68 years), which would
         * keep its addresses (and the asking workload's share of dns.proxy.maxLearnedAddresses) for good.
         */
        maxTTL: z.number().int().min(1).max(604_800).default(86_400),
        /** Addresses kept per name (Cilium --tofqdns-endpoint-max-ip-per-hostname). */
        maxIPsPerName: z.number().int().min(1).max(100_000).default(1000),
        /**
         * Names kept per address: beyond it a new name is not associated with the address (the answer
         * is still released). Bounds what one address costs (a workload resolving random names of a
         * wildcard it controls to one address).
         */
        maxNamesPerIP: z.number().int().min(1).max(100_000).default(1000),
        /** Queries the proxy waits on at once (each proxy: IPv4, IPv6); beyond it new ones are dropped. */
        maxQueriesInFlight: z.number().int().min(1).max(1_000_000).default(4096),
        /** The same for one workload address, so that one flooding workload leaves the others theirs. */
        maxQueriesInFlightPerWorkload: z.number().int().min(1).max(1_000_000).default(512),
        /**
         * Addresses the proxy keeps learned at once (each an ipcache entry when a toFQDNs selector
         * matches its name; the map holds 65,536 for the whole host). Beyond it, answers with new
         * addresses are SERVFAIL until some expire.
         */
        maxLearnedAddresses: z.number().int().min(1).max(1_000_000).default(32_768),
        /** The share of one workload: the addresses its answers brought in, until they expire. */
        maxLearnedAddressesPerWorkload: z.number().int().min(1).max(1_000_000).default(8192),
        /**
         * UDP lookups whose verdict and answer the agent already knows (an allowed name asked again, an
         * answer whose addresses the maps hold) are forwarded and answered by a thread of the agent's
         * addon, not its JavaScript thread (agent/dns/fast-path.ts); flows, metrics and expiry follow
         * as for every lookup. Off: every lookup goes through the agent's thread.
         */
        fastPath: z.boolean().default(true),
        /** Open DNS-over-TCP connections at once (each proxy). */
        maxTcpConnections: z.number().int().min(1).max(65_535).default(256),
        /** The same for one workload address. */
        maxTcpConnectionsPerWorkload: z.number().int().min(1).max(65_535).default(16),
      })
      .strict()
      .superRefine((v, ctx) => {
        for (const [each, all] of [['maxQueriesInFlightPerWorkload', 'maxQueriesInFlight'], ['maxLearnedAddressesPerWorkload', 'maxLearnedAddresses'], ['maxTcpConnectionsPerWorkload', 'maxTcpConnections']] as const) {
          if (v[each] > v[all]) ctx.addIssue({ code: 'custom', path: [each], message: `${v[each]} is more than dns.proxy.${all} (${v[all]}): one workload could take every slot` });
        }
        if (v.minTTL > v.maxTTL) ctx.addIssue({ code: 'custom', path: ['minTTL'], message: `${v.minTTL} is more than dns.proxy.maxTTL (${v.maxTTL})` });
      })
      .prefault({}),
  })
  .strict()
  .prefault({});

export type DnsConfig = z.infer<typeof DnsConfigSchema>;
