import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { yamlFileRead, yamlNestingProblem } from '../common/yaml-guard.js';
import { cidrParse, type Cidr } from './ipam.js';
import { DnsConfigSchema } from './dns/config.js';
import { DROP_EVENTS_BURST_DEFAULT, DROP_EVENTS_RATE_DEFAULT } from '../bpf/layout.gen.js';

/**
 * The smallest pool the agent takes: room for at least 4 workloads once the addresses it never hands
 * out are set aside (the network address, network+1 kept for a gateway, and the IPv4 broadcast): an
 * IPv4 /29 (5 usable) or an IPv6 /125 (6 usable). A smaller pool is a typo more often than a plan.
 */
export const POOL_MIN_ADDRESSES = 4;
export const POOL_MAX_PREFIX = { 4: 29, 6: 125 } as const;

const cidr = (family: 4 | 6) =>
  z.string().superRefine((v, ctx) => {
    let prefixLength: number;
    try {
      const c = cidrParse(v);
      if (c.family !== family) throw new Error('family');
      prefixLength = c.prefixLength;
    } catch {
      ctx.addIssue({ code: 'custom', message: `must be an IPv${family} CIDR such as ${family === 4 ? '10.200.0.0/16' : 'fd00:200::/64'}` });
      return;
    }
    if (prefixLength > POOL_MAX_PREFIX[family]) {
      ctx.addIssue({
        code: 'custom',
        message: `${v} is too small: a pool must leave at least ${POOL_MIN_ADDRESSES} addresses to hand out (IPv${family} /${POOL_MAX_PREFIX[family]} or larger)`,
      });
    }
  });

/** Cilium's rule for a cluster name (it becomes a label value and a kvstore path segment). */
export const CLUSTER_NAME_RE = /^([a-z0-9][-a-z0-9]*)?[a-z0-9]$/;

const etcdEndpoint = z.string().superRefine((v, ctx) => {
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a URL: give an etcd client URL such as https://10.0.0.5:2379` });
    return;
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || !url.port || (url.pathname !== '/' && url.pathname !== '') || url.search || url.username) {
    ctx.addIssue({ code: 'custom', message: `"${v}" must be http(s)://host:port with nothing after the port (an etcd client URL)` });
  }
});

/** An etcd to reach: client URLs, and TLS files when the URLs are https (`at`: its config key, for messages). */
const etcdSchema = (at: string) => z
  .object({
    endpoints: z.array(etcdEndpoint).min(1, 'give at least one etcd client URL'),
    tls: z
      .object({
        ca: z.string().min(1, 'must be the path of the PEM CA certificate that signed etcd\'s server certificate'),
        cert: z.string().min(1, 'must be the path of a PEM client certificate').optional(),
        key: z.string().min(1, 'must be the path of a PEM private key').optional(),
      })
      .strict()
      .superRefine((t, ctx) => {
        if (t.cert && !t.key) ctx.addIssue({ code: 'custom', path: ['key'], message: `required with ${at}.tls.cert (the client certificate's private key)` });
        if (t.key && !t.cert) ctx.addIssue({ code: 'custom', path: ['cert'], message: `required with ${at}.tls.key (the client certificate)` });
      })
      .optional(),
  })
  .strict()
  .superRefine((e, ctx) => {
    const https = e.endpoints.filter((u) => u.startsWith('https:')).length;
    if (e.tls && https !== e.endpoints.length) {
      ctx.addIssue({ code: 'custom', path: ['endpoints'], message: `with ${at}.tls set, every endpoint must be https://` });
    }
    if (!e.tls && https > 0) {
      ctx.addIssue({ code: 'custom', path: ['tls'], message: `required for https:// endpoints: set ${at}.tls.ca (and cert, key for client authentication)` });
    }
  });

/** A Cilium cluster (or another kitnet cluster) whose identities and pod addresses this cluster reads. */
const PeerSchema = z
  .object({
    name: z
      .string()
      .max(32, 'at most 32 characters (Cilium\'s limit for a cluster name)')
      .regex(CLUSTER_NAME_RE, 'lower-case letters, digits and "-", starting and ending with a letter or digit (Cilium\'s rule for a cluster name)'),
    /** The peer's cluster id: only identities in id<<16 ... ((id+1)<<16)-1 are taken from it. */
    id: z.number().int().min(1, 'must be 1-255 (the peer\'s cluster id)').max(255, 'must be 1-255'),
    etcd: etcdSchema('cluster.peers[].etcd'),
  })
  .strict();

const ClusterSchema = z
  .object({
    name: z
      .string()
      .max(32, 'at most 32 characters (Cilium\'s limit for a cluster name)')
      .regex(CLUSTER_NAME_RE, 'lower-case letters, digits and "-", starting and ending with a letter or digit (Cilium\'s rule for a cluster name)'),
    /** Cilium's cluster id: this cluster's identities are id<<16 ... ((id+1)<<16)-1. */
    id: z.number().int().min(1, 'must be 1-255 (0 is a cluster without ClusterMesh)').max(255, 'must be 1-255'),
    /** This host's address as other hosts reach it; the node suffix of its kvstore keys. Default: the first global IPv4 (else IPv6) of the host. */
    nodeIP: z.union([z.ipv4(), z.ipv6()], { error: 'must be an IPv4 or IPv6 address (this host\'s address in the cluster)' }).optional(),
    /** This host's IPv6 address for other nodes' routes to its IPv6 CIDR when nodeIP is IPv4. Default: a global IPv6 of nodeIP's interface. */
    nodeIPv6: z.ipv6({ error: 'must be an IPv6 address (this host\'s IPv6 address in the cluster)' }).optional(),
    /** TTL of this node's lease: its node entry, ipcache entries and routes elsewhere go this long after it dies. */
    leaseTTLSeconds: z.number().int().min(5, 'must be 5-3600 seconds (etcd needs a few seconds to keep a lease alive)').max(3600, 'must be 5-3600 seconds').default(60),
    /** Per-node allocation CIDRs carved from ipam.ipv4Pool / ipam.ipv6Pool (Cilium's cluster-pool mask sizes). */
    ipam: z
      .object({
        ipv4MaskSize: z.number().int().min(1).max(32).default(24),
        ipv6MaskSize: z.number().int().min(1).max(128).default(112),
      })
      .strict()
      .prefault({}),
    /** Routes to every other node's CIDRs via that node's address (Cilium's auto-direct-node-routes; nodes on one L2 segment). */
    autoDirectNodeRoutes: z.boolean().default(true),
    etcd: etcdSchema('cluster.etcd'),
    /** Seconds between writes of cilium/.heartbeat (Cilium writes it every minute; readers call a cluster dead after 2 minutes without one). */
    heartbeatSeconds: z.number().int().min(1).max(60, 'at most 60: Cilium readers call a cluster dead after 2 minutes without a heartbeat').default(60),
    /** Other clusters read read-only (ClusterMesh peers): their identities and addresses join this host's ipcache and policy. */
    peers: z.array(PeerSchema).default([]),
  })
  .strict()
  .superRefine((c, ctx) => {
    const names = new Set<string>([c.name]);
    const ids = new Set<number>([c.id]);
    c.peers.forEach((p, i) => {
      if (names.has(p.name)) ctx.addIssue({ code: 'custom', path: ['peers', i, 'name'], message: p.name === c.name ? `"${p.name}" is this cluster's own name` : `"${p.name}" is given to two peers` });
      if (ids.has(p.id)) ctx.addIssue({ code: 'custom', path: ['peers', i, 'id'], message: p.id === c.id ? `${p.id} is this cluster's own id (identity ranges would overlap)` : `${p.id} is given to two peers (identity ranges would overlap)` });
      names.add(p.name);
      ids.add(p.id);
    });
  });

export const DatapathModeSchema = z.enum(['auto', 'veth', 'netkit']);

export const ConfigSchema = z
  .object({
    /** Name this host reports in flows (Hubble's node_name). */
    nodeName: z.string().min(1).default(hostname()),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    stateDir: z.string().min(1).default('/var/lib/kitnet'),
    bpfPinRoot: z.string().min(1).default('/sys/fs/bpf/kitnet'),
    api: z
      .object({
        socket: z.string().min(1).default('/run/kitnet/kitnet.sock'),
        /** Octal file mode of the socket; root and the socket's group may use it. */
        socketMode: z.number().int().min(0).max(0o777).default(0o660),
        /** Optional TCP listener: always TLS, always bearer tokens (see README, Security model). */
        tcp: z
          .object({
            host: z.string().default('127.0.0.1'),
            port: z.number().int().min(1).max(65535),
            tls: z
              .object({
                cert: z.string().min(1, 'must be the path of a PEM certificate'),
                key: z.string().min(1, 'must be the path of a PEM private key'),
                /** A TLS handshake not done by then closes the connection (before any token is seen). */
                handshakeTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
              })
              .strict()
              .optional(),
            /** YAML list of {name, secretSha256 | secret, scopes, namespaces}. */
            tokensFile: z.string().min(1).optional(),
            /** TCP connections open at once, handshaking or served: one beyond is closed at accept. */
            maxConnections: z.number().int().min(1).max(65_536).default(256),
            /** The same from one client (an IPv4 address, an IPv6 prefix of ipv6ClientPrefix bits). */
            maxConnectionsPerAddress: z.number().int().min(1).max(65_536).default(64),
            /** The IPv6 prefix whose addresses count as one client: 64 (one host's SLAAC range), 128 where hosts share a /64. */
            ipv6ClientPrefix: z.number().int().min(32).max(128).default(64),
          })
          .strict()
          .superRefine((t, ctx) => {
            if (!t.tls) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'required: the TCP listener only serves TLS; set api.tcp.tls.cert and api.tcp.tls.key (PEM files)' });
            if (!t.tokensFile) ctx.addIssue({ code: 'custom', path: ['tokensFile'], message: 'required: the TCP listener needs bearer tokens; set api.tcp.tokensFile (see `kitnet token create`)' });
            if (t.maxConnectionsPerAddress > t.maxConnections)
              ctx.addIssue({ code: 'custom', path: ['maxConnectionsPerAddress'], message: `must not be above api.tcp.maxConnections (${t.maxConnections})` });
          })
          .optional(),
        /** Requests per window per client: per token (or address) on TCP, one bucket for the unix socket. */
        rateLimit: z
          .object({
            enabled: z.boolean().default(true),
            windowMs: z.number().int().min(100).max(3_600_000).default(60_000),
            tcpMax: z.number().int().min(1).default(1200),
            socketMax: z.number().int().min(1).default(60_000),
          })
          .strict()
          .prefault({}),
        /** Audit lines (`audit: true`) go to the log at info level; with `file`, also appended there (mode 0600). */
        audit: z.object({ file: z.string().min(1).optional() }).strict().prefault({}),
      })
      .strict()
      .prefault({}),
    ipam: z
      .object({ ipv4Pool: cidr(4).default('10.200.0.0/16'), ipv6Pool: cidr(6).default('fd00:200::/64') })
      .strict()
      .default({ ipv4Pool: '10.200.0.0/16', ipv6Pool: 'fd00:200::/64' }),
    datapath: z
      .object({
        mode: DatapathModeSchema.default('auto'),
        /** Interface name of the workload side inside its namespace. */
        workloadIfname: z.string().min(1).max(15).default('eth0'),
        mtu: z.number().int().min(1280).max(65535).optional(),
        /**
         * Set /sys/kernel/rcu_expedited=1 (HOST-WIDE) so attaching a workload's programs does not wait
         * for two RCU grace periods (~27 ms of a registration). Costs every RCU user on the host IPIs
         * to all CPUs; off unless the operator opts in. Takes effect on reload.
         */
        expediteRcu: z.boolean().default(false),
      })
      .strict()
      .default({ mode: 'auto', workloadIfname: 'eth0', expediteRcu: false }),
    /** What kitnet tells VM guests (kind vm and tap) by DHCP (agent/addressing/). */
    addressing: z
      .object({
        /** DNS servers handed to guests: IPv4 ones by DHCPv4 (option 6), IPv6 ones by DHCPv6 (option 23). */
        dnsServers: z.array(z.union([z.ipv4(), z.ipv6()], { message: 'must be an IPv4 or IPv6 address' })).max(8)
          .refine((d) => d.filter((x) => !x.includes(':')).length <= 4 && d.filter((x) => x.includes(':')).length <= 4, 'at most 4 IPv4 and 4 IPv6 DNS servers').default([]),
        /** DNS search domains (DHCPv4 option 119, DHCPv6 option 24); the first is also the domain name (option 15). */
        searchDomains: z
          .array(z.string().max(253).regex(/^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*\.?$/i, 'must be a DNS name such as example.com'))
          .max(6)
          .refine((d) => d.reduce((n, x) => n + x.replace(/\.$/, '').length + 2, 0) <= 160, 'all search domains together must stay within 160 bytes (the reply must fit 576 bytes)')
          .default([]),
        /** Lease time (DHCPv4) and valid and preferred lifetime (DHCPv6); guests renew at half of it while the workload exists. */
        leaseSeconds: z.number().int().min(60).max(31_536_000).default(86_400),
        /**
         * When guests renew (T1: DHCPv4 option 58, DHCPv6 IA_NA T1) instead of at half the lease; the
         * rebinding time (T2) stays 7/8 (DHCPv4) and 4/5 (DHCPv6) of the lease, so it must be below 4/5.
         */
        renewalSeconds: z.number().int().min(1).optional(),
      })
      .strict()
      .refine((a) => a.renewalSeconds === undefined || a.renewalSeconds < Math.floor((a.leaseSeconds * 4) / 5), {
        message: 'must be below 4/5 of leaseSeconds (the rebinding time)',
        path: ['renewalSeconds'],
      })
      .prefault({}),
    /** The workload reconcile loop (agent/reconcile/). */
    reconcile: z
      .object({
        /**
         * Every workload is checked against the kernel this often (drift nobody announced). 60 s: a
         * workload's observe is ~1-2 ms and no longer grows with their number (bench/README.md, 4b),
         * so a round over 1,000 is ~1-2 s of the agent's thread, ~3 % of a core at this interval;
         * it was 300 s while a round grew as N^2 (21 s at 1,000).
         */
        resyncSeconds: z.number().int().min(1).max(86_400).default(60),
        /** A failed workload is tried again after 1 s, doubling per failure up to this. */
        retryMaxSeconds: z.number().int().min(1).max(3600).default(60),
      })
      .strict()
      .prefault({}),
    flows: z
      .object({
        ringCapacity: z.number().int().min(1).max(1_000_000).default(4095),
        /**
         * What the datapath reports: `connection` (new connections, first replies, the first FIN / RST
         * each way and every drop — established traffic does not flood the ring) or `every-packet` (for debugging).
         */
        aggregation: z.enum(['connection', 'every-packet']).default('connection'),
        /** Also report established connections every N seconds (0 = never). */
        reportIntervalSeconds: z.number().int().min(0).max(3600).default(0),
        /** Size of the kernel's flow event ring buffer (power of two, >= 4096); default 8 MiB. */
        kernelRingBytes: z
          .number()
          .int()
          .min(4096)
          .max(1 << 30)
          .refine((b) => (b & (b - 1)) === 0, 'must be a power of two')
          .optional(),
        /**
         * Drop events each workload may report, in each direction (bpf/include/events.h): drops beyond
         * are still dropped and counted (kitnet_workload_drop_events_suppressed_total, a warning naming
         * the workload), only not reported one by one, so one workload flooding denied packets cannot
         * crowd the others' flows out of the kernel ring nor keep the agent decoding, and a flood at a
         * workload's denied ingress does not hide its own denied egress. Defaults: bpf-layout constants.ts.
         */
        dropEvents: z
          .object({
            /** Events per second, workload and direction; 0 = report every drop (no limit). */
            perSecond: z.number().int().min(0).max(1_000_000).default(DROP_EVENTS_RATE_DEFAULT),
            /** Events a workload may report at once beyond the rate, in each direction. */
            burst: z.number().int().min(1).max(1_000_000).default(DROP_EVENTS_BURST_DEFAULT),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    /** Hubble's gRPC API (the `hubble` CLI, hubble-relay): see README, "Using Hubble tools". */
    hubble: z
      .object({
        enabled: z.boolean().default(true),
        /** Default: hubble.sock beside api.socket (/run/kitnet/hubble.sock). Same permissions as api.socket. */
        socket: z.string().min(1).optional(),
        /** Optional TCP listener `host:port` (`:4244` every address; port default 4244); TLS only. */
        listen: z
          .string()
          .regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]*)(:\d{1,5})?$/, 'must be host:port, [IPv6]:port or :port, such as 0.0.0.0:4244')
          .refine((v) => !/:\d+$/.test(v) || (Number(v.slice(v.lastIndexOf(':') + 1)) >= 1 && Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535), 'the port must be 1-65535')
          .optional(),
        tls: z
          .object({
            cert: z.string().min(1, 'must be the path of a PEM certificate'),
            key: z.string().min(1, 'must be the path of a PEM private key'),
            /** PEM CA bundle: when set, clients must present a certificate it signed (mTLS). */
            clientCa: z.string().min(1, 'must be the path of a PEM CA bundle').optional(),
            /** The name hubble-relay verifies the certificate against (Peer.Notify); default nodeName. */
            serverName: z.string().min(1).max(253).optional(),
            /** A client that has not finished its TLS handshake this long after connecting is closed. */
            handshakeTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
          })
          .strict()
          .optional(),
        /**
         * Flows a follower (GetFlows --follow) may fall behind before it loses some (counted, then told
         * with a lost_events message, as Hubble does): a flow waits as its record (~0.4 KB) and is encoded
         * as HTTP/2 takes it (at most 4 MB in flight), so the default bounds a slow follower at ~17 MB and
         * absorbs ~160 ms of 200k flows/s (one busy wakeup of the reader).
         */
        followQueue: z.number().int().min(64).max(1_000_000).default(32_768),
        /**
         * Made-up flows run through the flow path (decode, enrich, gRPC encode) when the agent starts
         * serving, so V8 has optimized it before a flood meets it (api/hubble/warm.ts); 0 turns it off.
         */
        warmFlows: z.number().int().min(0).max(1_000_000).default(30_000),
        /**
         * TCP connections (hubble.listen) open at once, handshaking or served: one beyond is closed at
         * accept. A relay or a CLI holds one each.
         */
        maxConnections: z.number().int().min(1).max(65_536).default(128),
        /** The same from one remote IPv4 address or IPv6 /64 (one host's), so that one host cannot take them all. */
        maxConnectionsPerAddress: z.number().int().min(1).max(65_536).default(16),
        /**
         * The IPv6 prefix whose addresses count as one client for maxConnectionsPerAddress: 64 (one host's
         * SLAAC range, from any address of which it may connect), 128 where several hosts share a /64.
         */
        ipv6ClientPrefix: z.number().int().min(32).max(128).default(64),
      })
      .strict()
      .superRefine((h, ctx) => {
        if (h.listen !== undefined && !h.tls) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'required: the Hubble TCP listener only serves TLS; set hubble.tls.cert and hubble.tls.key (PEM files)' });
        if (h.maxConnectionsPerAddress > h.maxConnections)
          ctx.addIssue({ code: 'custom', path: ['maxConnectionsPerAddress'], message: `must not be above hubble.maxConnections (${h.maxConnections})` });
      })
      .prefault({}),
    /** Cluster mode (README, Cluster): identities shared with other hosts through etcd, in Cilium's layout. */
    cluster: ClusterSchema.optional(),
    /** The DNS proxy for toFQDNs and DNS rules (agent/dns/config.ts). */
    dns: DnsConfigSchema,
  })
  .strict()
  .superRefine((c, ctx) => {
    for (const issue of clusterMaskProblems(c)) ctx.addIssue({ code: 'custom', path: ['cluster', 'ipam', issue.key], message: issue.message });
  });

/** A per-node CIDR must fit in the pool and leave a node room for workloads (the pool minimum). */
function clusterMaskProblems(c: { ipam: { ipv4Pool: string; ipv6Pool: string }; cluster?: { ipam: { ipv4MaskSize: number; ipv6MaskSize: number } } }): Array<{ key: string; message: string }> {
  // Runs even when other keys failed (zod checks the whole object): only on what parsed.
  if (typeof c.cluster?.ipam !== 'object' || typeof c.ipam !== 'object') return [];
  const out: Array<{ key: string; message: string }> = [];
  for (const [family, key, poolKey] of [[4, 'ipv4MaskSize', 'ipv4Pool'], [6, 'ipv6MaskSize', 'ipv6Pool']] as const) {
    const size = c.cluster.ipam[key];
    let pool: Cidr;
    try {
      pool = cidrParse(c.ipam[poolKey]);
    } catch {
      continue; // reported against the pool's key
    }
    if (typeof size !== 'number' || pool.family !== family || pool.prefixLength > POOL_MAX_PREFIX[family]) continue;
    if (size < pool.prefixLength) out.push({ key, message: `/${size} is larger than the cluster pool ipam.${poolKey} ${pool.text}: a node's CIDR is carved from it (give /${pool.prefixLength} or longer)` });
    if (size > POOL_MAX_PREFIX[family]) out.push({ key, message: `/${size} leaves a node fewer than ${POOL_MIN_ADDRESSES} addresses for workloads (IPv${family} /${POOL_MAX_PREFIX[family]} or shorter)` });
  }
  return out;
}

export type Config = z.infer<typeof ConfigSchema>;
export type ConfigInput = z.input<typeof ConfigSchema>;

export { ConfigError, zodIssuesFormat } from '../common/config-error.js';
import { ConfigError, zodIssuesFormat } from '../common/config-error.js';

export function configParse(input: unknown, source = 'config'): Config {
  const result = ConfigSchema.safeParse(input ?? {});
  if (!result.success) {
    const keys = result.error.issues.map((i) => i.path.map(String).join('.') || '(root)');
    throw new ConfigError(`${source}: ${zodIssuesFormat(result.error)}`, [...new Set(keys)]);
  }
  return result.data;
}

/** Loads the YAML config file; a missing file at the default path means defaults. */
/** Environment variables that override config keys (file < environment < command-line flags). */
export const CONFIG_ENV: ReadonlyArray<{ env: string; path: string[]; number?: boolean }> = [
  { env: 'KITNET_NODE_NAME', path: ['nodeName'] },
  { env: 'KITNET_LOG_LEVEL', path: ['logLevel'] },
  { env: 'KITNET_STATE_DIR', path: ['stateDir'] },
  { env: 'KITNET_BPF_PIN_ROOT', path: ['bpfPinRoot'] },
  { env: 'KITNET_API_SOCKET', path: ['api', 'socket'] },
  { env: 'KITNET_HUBBLE_SOCKET', path: ['hubble', 'socket'] },
  { env: 'KITNET_IPV4_POOL', path: ['ipam', 'ipv4Pool'] },
  { env: 'KITNET_IPV6_POOL', path: ['ipam', 'ipv6Pool'] },
  { env: 'KITNET_DATAPATH_MODE', path: ['datapath', 'mode'] },
  { env: 'KITNET_FLOW_RING_CAPACITY', path: ['flows', 'ringCapacity'], number: true },
];

export function configFromEnv(env: NodeJS.ProcessEnv = process.env): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const { env: name, path, number } of CONFIG_ENV) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    let node = out;
    for (const key of path.slice(0, -1)) node = (node[key] ??= {}) as Record<string, unknown>;
    // A non-numeric value stays a string, so validation reports it against the key.
    node[path.at(-1)!] = number && /^\d+$/.test(raw) ? Number(raw) : raw;
  }
  return out;
}

export function configLoad(path: string | undefined, overrides: ConfigInput = {}, env: NodeJS.ProcessEnv = process.env): Config {
  let fromFile: Record<string, unknown> = {};
  if (path) {
    let text: string;
    try {
      text = yamlFileRead(path);
    } catch (err) {
      throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
    }
    const nesting = yamlNestingProblem(text);
    if (nesting) throw new ConfigError(`${path}: ${nesting}`);
    let doc: unknown;
    try {
      doc = parseYaml(text);
    } catch (err) {
      throw new ConfigError(`${path}: invalid YAML: ${(err as Error).message}`);
    }
    if (doc !== null && doc !== undefined && (typeof doc !== 'object' || Array.isArray(doc))) {
      throw new ConfigError(`${path}: the top level must be a mapping of keys`);
    }
    fromFile = (doc ?? {}) as Record<string, unknown>;
  }
  const merged = deepMerge(deepMerge(fromFile, configFromEnv(env)), overrides as Record<string, unknown>);
  return configParse(merged, path ?? 'config');
}

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    if (v === undefined) continue;
    const prev = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && prev && typeof prev === 'object' && !Array.isArray(prev)
        ? deepMerge(prev as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}
