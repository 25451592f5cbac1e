import { z } from 'zod';

const Age = z.object({ at: z.string().describe('RFC 3339'), ageSeconds: z.number() });

export const ClusterNode = z.object({
  name: z.string(),
  cluster: z.string(),
  addresses: z.array(z.object({ type: z.string(), ip: z.string() })),
  ipv4AllocCIDR: z.string().optional(),
  ipv6AllocCIDR: z.string().optional(),
});

const EtcdState = z.enum(['synced', 'connecting', 'unreachable']);

export const ClusterPeer = z.object({
  name: z.string(),
  id: z.number(),
  endpoints: z.array(z.string()),
  state: EtcdState.describe('synced: listed and watched; unreachable: its etcd does not answer, its entries are kept until it does'),
  lastError: z.string().nullable(),
  heartbeat: Age.nullable().describe('the peer\'s cilium/.heartbeat'),
  identities: z.number(),
  ipcacheEntries: z.number(),
  ignored: z.object({ identities: z.number(), ipcache: z.number(), nodes: z.number() }),
  nodes: z.array(ClusterNode),
});

export const ClusterStatus = z.discriminatedUnion('mode', [
  z.object({ mode: z.literal('off'), message: z.string() }),
  z.object({
    mode: z.literal('on'),
    name: z.string(),
    id: z.number(),
    identityRange: z.object({ min: z.number(), max: z.number() }),
    nodeIP: z.string(),
    etcd: z.object({ endpoints: z.array(z.string()), state: z.enum(['connected', 'unreachable']), lastError: z.string().nullable() }),
    lease: z.object({ id: z.string(), ttlSeconds: z.number(), grantedTtlSeconds: z.number() }).nullable().describe('this node\'s lease; null when etcd does not answer'),
    heartbeat: Age.nullable().describe('when this node last wrote cilium/.heartbeat'),
    canaries: z.record(z.string(), z.string().nullable()).describe('sync canary per state prefix: when this node wrote it'),
    nodes: z.array(ClusterNode).describe('cilium/state/nodes/v1/<cluster>/'),
    identities: z.object({ local: z.number(), remote: z.number() }),
    ipcache: z.object({ local: z.number(), remote: z.number() }),
    peers: z.array(ClusterPeer),
  }),
]);
export type ClusterStatus = z.infer<typeof ClusterStatus>;
export type ClusterStatusOn = Extract<ClusterStatus, { mode: 'on' }>;
