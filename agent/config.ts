import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { yamlFileRead, yamlNestingProblem } from '../common/yaml-guard.js';
import { cidrParse } from './ipam.js';

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
    etcd: z
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
            if (t.cert && !t.key) ctx.addIssue({ code: 'custom', path: ['key'], message: 'required with cluster.etcd.tls.cert (the client certificate\'s private key)' });
            if (t.key && !t.cert) ctx.addIssue({ code: 'custom', path: ['cert'], message: 'required with cluster.etcd.tls.key (the client certificate)' });
          })
          .optional(),
      })
      .strict()
      .superRefine((e, ctx) => {
        const https = e.endpoints.filter((u) => u.startsWith('https:')).length;
        if (e.tls && https !== e.endpoints.length) {
          ctx.addIssue({ code: 'custom', path: ['endpoints'], message: 'with cluster.etcd.tls set, every endpoint must be https://' });
        }
        if (!e.tls && https > 0) {
          ctx.addIssue({ code: 'custom', path: ['tls'], message: 'required for https:// endpoints: set cluster.etcd.tls.ca (and cert, key for client authentication)' });
        }
      }),
  })
  .strict();

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
              .object({ cert: z.string().min(1, 'must be the path of a PEM certificate'), key: z.string().min(1, 'must be the path of a PEM private key') })
              .strict()
              .optional(),
            /** YAML list of {name, secretSha256 | secret, scopes, namespaces}. */
            tokensFile: z.string().min(1).optional(),
          })
          .strict()
          .superRefine((t, ctx) => {
            if (!t.tls) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'required: the TCP listener only serves TLS; set api.tcp.tls.cert and api.tcp.tls.key (PEM files)' });
            if (!t.tokensFile) ctx.addIssue({ code: 'custom', path: ['tokensFile'], message: 'required: the TCP listener needs bearer tokens; set api.tcp.tokensFile (see `kitnet token create`)' });
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
        /** DNS servers handed to guests (option 6). */
        dnsServers: z.array(z.ipv4({ message: 'must be an IPv4 address' })).max(4).default([]),
        /** DNS search domains (option 119); the first is also the domain name (option 15). */
        searchDomains: z
          .array(z.string().max(253).regex(/^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*\.?$/i, 'must be a DNS name such as example.com'))
          .max(6)
          .refine((d) => d.reduce((n, x) => n + x.replace(/\.$/, '').length + 2, 0) <= 160, 'all search domains together must stay within 160 bytes (the reply must fit 576 bytes)')
          .default([]),
        /** Lease time; guests renew at half of it while the workload exists. */
        leaseSeconds: z.number().int().min(60).max(31_536_000).default(86_400),
      })
      .strict()
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
          })
          .strict()
          .optional(),
      })
      .strict()
      .superRefine((h, ctx) => {
        if (h.listen !== undefined && !h.tls) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'required: the Hubble TCP listener only serves TLS; set hubble.tls.cert and hubble.tls.key (PEM files)' });
      })
      .prefault({}),
    /** Cluster mode (README, Cluster): identities shared with other hosts through etcd, in Cilium's layout. */
    cluster: ClusterSchema.optional(),
  })
  .strict();

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
