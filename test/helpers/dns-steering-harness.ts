// The agent's DNS steering (agent/dns/steering.ts) over a real policy engine and an in-memory store,
// with the datapath's maps as plain Maps: for what the learned addresses do to the ipcache and the
// policy, without root. The proxy's sockets are not opened (dns.proxy.enabled: false); answers are
// handed to the steering as the proxy hands them (its `learn`), expiries run as its timer runs them.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { configParse } from '../../agent/config.js';
import type { LearnedName } from '../../agent/dns/codec.js';
import type { DnsEndpoint, DnsTransport, DnsVerdict } from '../../agent/dns/proxy.js';
import { DnsSteering } from '../../agent/dns/steering.js';
import { dnsStateWrite } from '../../agent/dns/state-file.js';
import type { DnsLearnedState } from '../../agent/dns/state-file.js';
import { IdentityAllocator } from '../../agent/identity/allocator.js';
import type { KernelOps } from '../../agent/kernel-ops.js';
import { PolicyEngine } from '../../agent/policy/engine.js';
import { policiesFromObjects, policiesParse, policyKeyEncode } from '../../agent/policy/index.js';
import type { PolicyEntry } from '../../agent/policy/index.js';
import { sqliteStoreOpen } from '../../agent/store/index.js';
import type { Store } from '../../agent/store/store.js';
import type { WorkloadRecord } from '../../agent/store/types.js';
import type { IpcacheEntry } from '../../bpf/index.js';

export interface SteeringHarness {
  steering: DnsSteering;
  engine: PolicyEngine;
  store: Store;
  /** The BPF ipcache. */
  ipcache: Map<string, IpcacheEntry>;
  /** Other nodes' workloads as the cluster watch knows them (address -> identity). */
  remote: Map<string, number>;
  /** The steering map: client "address/port/protocol" -> the resolver it addressed. */
  redirects: Map<string, DnsEndpoint>;
  /** A workload in namespace `prod` (labels app=<app>), its ipcache entries written as the reconciler does. */
  workloadAdd(name: string, app: string, ipv4: string, ipv6: string): Promise<WorkloadRecord>;
  /** What the proxy does with an answer: learn it (resolves once the maps hold it). */
  learn(client: string, learned: LearnedName[]): Promise<void>;
  /** The proxy's verdict and forwarding target for a query from `client` (steered to `resolver`). */
  query(client: DnsEndpoint, resolver: DnsEndpoint, name: string, transport?: DnsTransport): { upstream: DnsEndpoint | undefined; verdict: DnsVerdict };
  /** Stores these policies (replacing those of the same name) and applies the whole set, as the API does. */
  policyPut(policyYaml: string): Promise<void>;
  /** Cluster mode: this cluster's name, and other nodes' identities (and peer clusters') with their labels. */
  clusterJoin(name: string, identities: ReadonlyMap<number, readonly string[]>): Promise<void>;
  /** One expiry tick of the proxy's timer, then waits until the work it queued is done. */
  expire(): Promise<void>;
  /** Until the work queued in setImmediate / the mutex is done. */
  settle(): Promise<void>;
  /** The labels of an identity the policy knows. */
  labels(identity: number): readonly string[] | undefined;
  /** The endpoint's policy entries (the map the datapath reads). */
  entries(endpointId: number): PolicyEntry[];
  close(): Promise<void>;
}

const NAMESPACE = 'prod';

export async function steeringHarness(policyYaml: string, proxy: Record<string, unknown> = {}, state?: DnsLearnedState): Promise<SteeringHarness> {
  const store = sqliteStoreOpen(':memory:');
  await store.transaction((tx) => tx.namespacePut(NAMESPACE, {}));
  const ipcache = new Map<string, IpcacheEntry>();
  const policyMap = new Map<string, boolean>();
  const remote = new Map<string, number>();
  const redirects = new Map<string, DnsEndpoint>();
  const datapath = {
    policyList: () => [],
    policyApply: (endpointId: number, ops: Array<{ op: 'upsert' | 'delete'; entry: PolicyEntry }>) => {
      for (const o of ops) {
        const k = policyKeyEncode({ endpointId, ...o.entry }).toString('hex');
        if (o.op === 'upsert') policyMap.set(k, o.entry.deny);
        else policyMap.delete(k);
      }
      return { upserted: 0, deleted: 0, missing: 0 };
    },
    ipcacheList: () => [...ipcache],
    ipcacheUpsert: (cidr: string, e: IpcacheEntry) => ipcache.set(cidr, { ...e }),
    ipcacheUpsertMany: (entries: ReadonlyArray<readonly [string, IpcacheEntry]>) => {
      for (const [cidr, e] of entries) ipcache.set(cidr, { ...e });
    },
    ipcacheDelete: (cidr: string) => ipcache.delete(cidr),
    mapCapacity: () => ({ ipcache: 65536, policy: 1 << 20 }),
    conntrackList: () => [],
    dnsSteering: () => ({
      proxySet: () => undefined,
      endpointsSet: () => undefined,
      originalDestination: (address: string, port: number, protocol: number) => redirects.get(`${address}/${port}/${protocol}`),
    }),
  };
  const kernel = { datapath } as unknown as KernelOps;
  const log = pino({ level: 'silent' });
  const engine = new PolicyEngine(store, kernel, log);
  for (const p of policiesParse(policyYaml)) await store.transaction((tx) => tx.policyPut(p.kind, p.namespace, p.name, p.document));
  engine.remoteAddressResolve = (ip) => remote.get(ip);
  let lock = Promise.resolve();
  const exclusive = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = lock.then(fn);
    lock = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  };
  const stateDir = mkdtempSync(join(tmpdir(), 'kitnet-dns-harness-'));
  if (state) dnsStateWrite(stateDir, state);
  const config = configParse({ dns: { proxy: { enabled: false, ...proxy } } }).dns;
  const steering = new DnsSteering({ config, store, engine, datapath: datapath as never, exclusive, stateDir, log });
  await steering.start();
  engine.load();
  await exclusive(() => engine.applySliced());
  const allocator = new IdentityAllocator();
  let endpointId = 0;
  const internals = steering as unknown as {
    learn(client: DnsEndpoint, learned: LearnedName[]): Promise<void>;
    upstream(client: DnsEndpoint, transport: DnsTransport): DnsEndpoint | undefined;
    verdict(client: DnsEndpoint, name: string, transport: DnsTransport, upstream?: DnsEndpoint): DnsVerdict;
    expireTick(): void;
  };
  const settle = async () => {
    for (let i = 0; i < 5; i++) {
      await new Promise((r) => setImmediate(r));
      await exclusive(() => Promise.resolve());
    }
  };
  return {
    steering,
    engine,
    store,
    ipcache,
    remote,
    redirects,
    async workloadAdd(name, app, ipv4, ipv6) {
      const rec = await store.transaction((tx) =>
        tx.workloadInsert({
          spec: { name, namespace: NAMESPACE, kind: 'netns', labels: { app }, netns: '/x', requestedMode: 'auto', interface: 'eth0' },
          mode: 'veth',
          endpointId: ++endpointId,
          identity: allocator.acquire(tx, { app }, NAMESPACE, {}),
          ipv4,
          ipv6,
          hostIfname: `kn${endpointId}`,
        }),
      );
      await exclusive(async () => {
        await engine.endpointsUpdateSliced({ upsert: [rec] });
        // The reconciler's endpointMapsWrite.
        ipcache.set(`${ipv4}/32`, { identity: rec.identity, hostId: 0 });
        ipcache.set(`${ipv6}/128`, { identity: rec.identity, hostId: 0 });
      });
      return rec;
    },
    async policyPut(policyYaml) {
      for (const p of policiesParse(policyYaml)) await store.transaction((tx) => tx.policyPut(p.kind, p.namespace, p.name, p.document));
      await exclusive(async () => {
        engine.policiesSet(policiesFromObjects(store.policyList().map((p) => p.document)));
        await engine.applySliced();
      });
      await settle();
    },
    async clusterJoin(name, identities) {
      await exclusive(async () => {
        // set before a compile, as the agent does (a full one here: the state is rebuilt with it)
        engine.localCluster = name;
        await engine.remoteIdentitiesUpdate(identities);
        engine.load();
        await engine.applySliced();
      });
      await settle();
    },
    learn: (client, learned) => internals.learn({ address: client, port: 40000 }, learned),
    query(client, resolver, name, transport = 'udp') {
      redirects.set(`${client.address}/${client.port}/${transport === 'udp' ? 17 : 6}`, resolver);
      const upstream = internals.upstream(client, transport);
      // as the proxy asks it: for the upstream the query would go to
      const verdict = internals.verdict(client, name, transport, upstream);
      return { upstream, verdict };
    },
    async expire() {
      internals.expireTick();
      await settle();
    },
    settle,
    labels: (identity) => engine.compiled().identities.get(identity),
    entries: (id) => engine.endpointPolicy(id).policy?.entries ?? [],
    async close() {
      await settle();
      await steering.stop();
      store.close();
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}
