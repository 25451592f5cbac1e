import { sharedMetricsRegister, type ClusterServices, type SharedNamespaces, type SharedPolicies } from './cluster/index.js';
import { clusterStatusOf, remoteCounts, remoteLabelsOf, remoteOrphansDrop, remoteSourcesCreate, type RemoteSources } from './cluster/remote-sources.js';
import type { ClusterStatus } from '../common/schemas/cluster.js';
import type { Logger } from 'pino';
import type { FlowRecord, FlowSelection, FlowSnapshot } from '../common/schemas/flows.js';
import { flowsFollow, flowsSnapshot } from './flows/selection.js';
import type { Identity } from '../common/schemas/identity.js';
import type { Namespace, PolicyApplyResult, PolicySummary, TraceRequest, TraceResponse, WorkloadPolicy } from '../common/schemas/policy.js';
import type { Status } from '../common/schemas/status.js';
import type { Workload, WorkloadCreate } from '../common/schemas/workload.js';
import { GATEWAY_V4, GATEWAY_V6 } from '../netkit/index.js';
import type { Config } from './config.js';
import { EndpointDirectory } from './flows/directory.js';
import { DropSuppressionLog, dropSuppressionMetricRegister } from './flows/drop-suppression.js';
import { FlowPipeline } from './flows/pipeline.js';
import { hostFactsFallback } from './host-facts.js';
import type { HostFacts } from './host-facts.js';
import { ReservedIdentity } from './identity/reserved.js';
import type { KernelOps } from './kernel-ops.js';
import { Reconciler } from './reconciler.js';
import type { Store } from './store/store.js';
import type { WorkloadRecord } from './store/types.js';
import { WorkloadService } from './workloads.js';
import { AgentMetrics } from './metrics.js';
import { Mutex } from './mutex.js';
import { MONITOR_AGG_DEFAULT, MONITOR_AGG_NONE } from '../bpf/layout.gen.js';
import { PolicyEngine } from './policy/engine.js';
import { DnsSteering } from './dns/steering.js';
import { dnsMetricsRegister, dnsProxyMetricsRegister } from './dns/metrics.js';
import { dnsFlowsAttach } from './dns/flows.js';
import { PolicyService } from './policy/service.js';
import { workloadsOutsidePools } from './pool-check.js';
import { WorkloadWatch } from './workload-watch.js';
import { HostAddressWatch } from './host-address-watch.js';
import { WorkloadController } from './reconcile/controller.js';
import { Dhcp4Server, dhcpServedKind } from './addressing/dhcp4-server.js';
import { addressingMetricsRegister } from './addressing/metrics.js';

export const KITNET_VERSION = '0.1.0';

/** kind vm: what the hypervisor and the guest need, ready to paste. */
function vmView(rec: WorkloadRecord, vm: NonNullable<WorkloadRecord['spec']['vm']>): NonNullable<Workload['vm']> {
  const qemuNetdev = `-netdev tap,id=net0,ifname=${vm.tap},script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=${vm.mac}`;
  const enter = vm.netnsOwnedName !== undefined ? `ip netns exec ${vm.netnsOwnedName}` : `nsenter --net=${rec.spec.netns}`;
  return {
    netnsPath: rec.spec.netns,
    netnsCreated: vm.netnsOwnedName !== undefined,
    tap: vm.tap,
    bridge: vm.bridge,
    mac: vm.mac,
    gatewayMac: rec.observed?.hostMac ?? null,
    gateway: { ipv4: GATEWAY_V4, ipv6: GATEWAY_V6 },
    addresses: { ipv4: `${rec.ipv4}/32`, ipv6: `${rec.ipv6}/128` },
    qemuNetdev,
    runHint: `${enter} qemu-system-x86_64 -m 512 ${qemuNetdev} ... ; in the guest: ` +
      (dhcpServedKind(rec)
        ? 'nothing (IPv4 by DHCP, IPv6 by DHCPv6 and router advertisements)'
        : `address ${rec.ipv4}/32, routes ${GATEWAY_V4} dev eth0 scope link, default via ${GATEWAY_V4}, ` +
          `address ${rec.ipv6}/128, default via ${GATEWAY_V6}` +
          (rec.observed?.hostMac ? `, neighbours ${GATEWAY_V4} and ${GATEWAY_V6} lladdr ${rec.observed.hostMac}` : '')),
  };
}

/** The agent's parts wired together, and the view of them the API gets. */
export class Agent {
  readonly workloads: WorkloadService;
  readonly reconciler: Reconciler;
  /** The reconcile loop: work queue, retries with backoff, periodic resync. */
  readonly controller: WorkloadController;
  readonly directory: EndpointDirectory;
  private readonly dropSuppression: DropSuppressionLog;
  readonly flows: FlowPipeline;
  /** Prometheus metrics (GET /metrics); the policy engine reports map sizes with metrics.policyMapEntriesSet. */
  readonly metrics: AgentMetrics;
  readonly policyEngine: PolicyEngine;
  readonly policies: PolicyService;
  /** DHCPv4 for vm and tap guests (agent/addressing/). */
  readonly dhcp: Dhcp4Server;
  private readonly watch: WorkloadWatch;
  /** The host's addresses, followed into the ipcache (agent/host-address-watch.ts). */
  private readonly hostWatch: HostAddressWatch;
  /** One lock for every change of desired state: workloads, labels, namespaces, policies. */
  private readonly mutex = new Mutex();
  private readonly startedAt = Date.now();
  /** The DNS proxy and its steering, for toFQDNs and DNS rules (agent/dns/steering.ts). */
  readonly dns: DnsSteering;
  /** Being gathered while the agent starts (agent/host-facts.ts); never rejects. */
  readonly hostFacts: Promise<HostFacts>;
  /** Cluster mode: other nodes' workload addresses and identities (agent/cluster/). */
  readonly remote?: RemoteSources;
  /** Cluster mode: policies and namespace labels shared through etcd (agent/cluster/shared-*.ts). */
  readonly shared?: { policies: SharedPolicies; namespaces: SharedNamespaces };

  constructor(
    readonly config: Config,
    readonly store: Store,
    readonly kernel: KernelOps,
    hostFacts: HostFacts | Promise<HostFacts>,
    readonly log: Logger,
    /** Cluster mode: identities and the ipcache shared through etcd (agent/cluster/). */
    readonly cluster?: ClusterServices,
  ) {
    this.hostFacts = Promise.resolve(hostFacts).catch((err: unknown) => {
      log.warn({ err }, 'gathering host facts failed; status shows what node:os tells');
      return hostFactsFallback();
    });
    this.policyEngine = new PolicyEngine(store, kernel, log.child({ component: 'policy' }));
    // Cluster mode: peer clusters' identities are selected only by selectors that name their cluster
    if (cluster) this.policyEngine.localCluster = cluster.identities.clusterName;
    this.reconciler = new Reconciler(store, config, kernel, log.child({ component: 'reconciler' }), this.policyEngine);
    this.controller = new WorkloadController(
      store,
      this.reconciler,
      this.mutex,
      async (namespace, name) => {
        await this.workloads.removeLocked(namespace, name);
        this.dhcp.sync();
      },
      log.child({ component: 'reconcile' }),
      { resyncMs: config.reconcile.resyncSeconds * 1000, backoff: { baseMs: 1000, maxMs: config.reconcile.retryMaxSeconds * 1000 } },
      () => {
        this.directory.refresh();
        this.dhcp.sync();
      },
    );
    this.workloads = new WorkloadService(store, config, kernel, this.reconciler, log.child({ component: 'workloads' }), this.mutex, this.policyEngine, this.controller, cluster);
    if (cluster) {
      this.remote = remoteSourcesCreate({ cluster, config, store, kernel, policyEngine: this.policyEngine, exclusive: (fn) => this.workloads.exclusive(fn), log });
    }
    this.dns = new DnsSteering({ config: config.dns, store, engine: this.policyEngine, datapath: kernel.datapath, exclusive: (fn) => this.workloads.exclusive(fn), stateDir: config.stateDir, log: log.child({ component: 'dns' }) });
    this.watch = new WorkloadWatch(store, kernel, this.controller, log.child({ component: 'watch' }));
    this.hostWatch = new HostAddressWatch(kernel, () => this.policyEngine.hostDestinationsFollow(), (fn) => this.workloads.exclusive(fn), log.child({ component: 'host-addresses' }));
    this.policies = new PolicyService(store, this.policyEngine, this.workloads, this.mutex, log.child({ component: 'policy' }));
    this.directory = new EndpointDirectory(store);
    if (this.remote) this.directory.remotePeer = (ip) => this.remote?.ipcache.peerOf(ip);
    const remote = this.remote;
    if (remote) this.directory.remoteLabels = (id) => remoteLabelsOf(remote, id);
    this.dhcp = new Dhcp4Server(store, config, log.child({ component: 'dhcp' }));
    this.flows = new FlowPipeline(this.directory, config.nodeName, config.flows.ringCapacity, log.child({ component: 'flows' }));
    this.metrics = new AgentMetrics({
      flows: this.flows,
      datapath: kernel.datapath,
      workloads: () => store.workloadList(),
      identities: () => store.identityList().length,
      reconcileQueueDepth: () => this.controller.depth,
      ...(remote ? { clusterIpcache: () => remoteCounts(remote) } : {}),
      policyEntries: () => this.policyEngine.entryCount(),
      mapFill: () => kernel.datapath.mapFill({ policy: this.policyEngine.entryCount() }),
    });
    if (cluster?.shared) {
      const namespaces = this.policies.namespaceHost();
      this.shared = cluster.shared({
        policies: this.policies.policyHost(),
        // Labels set from the watch change identities: the flow directory follows as after an API call.
        namespaces: { ...namespaces, install: (name, labels) => namespaces.install(name, labels).finally(() => this.directory.refresh()) },
      });
      this.policies.sharedSet(this.shared);
      sharedMetricsRegister(this.metrics.registry, this.shared);
    }
    addressingMetricsRegister(this.metrics.registry, this.dhcp.stats);
    const suppressed = { read: () => kernel.datapath.dropEventsSuppressed(), endpointById: (id: number) => this.directory.endpointById(id) };
    dropSuppressionMetricRegister(this.metrics.registry, suppressed);
    this.dropSuppression = new DropSuppressionLog(suppressed, log.child({ component: 'flows' }));
    dnsFlowsAttach(this.dns, this.flows, this.directory, config.nodeName, log.child({ component: 'dns' }), dnsMetricsRegister(this.metrics.registry));
    dnsProxyMetricsRegister(this.metrics.registry, this.dns.proxyStats);
  }

  /** Restores the datapath from the store, then starts reading flows. */
  /** Writes the flow reporting settings into the datapath's config map (takes effect at once). */
  flowReportingApply(flows: Config['flows']): void {
    this.kernel.datapath.configSet({
      monitorAggregation: flows.aggregation === 'every-packet' ? MONITOR_AGG_NONE : MONITOR_AGG_DEFAULT,
      reportIntervalS: flows.reportIntervalSeconds,
      dropEventsPerSecond: flows.dropEvents.perSecond,
      dropEventsBurst: flows.dropEvents.burst,
    });
  }

  /** Restores the stored workloads (`onProgress` after each), then starts flows and the watch. */
  async start(onProgress?: (done: number, total: number) => void): Promise<void> {
    this.flowReportingApply(this.config.flows);
    await this.dns.start();
    // Other nodes' workloads, before the restore compiles policy: their identities are in its first
    // compile, so rules selecting them hold across a restart. Listed once (a failure is retried in
    // the background), then watched; entries left from the previous run that etcd no longer has go.
    if (this.remote) remoteOrphansDrop(this.cluster!, this.remote, this.kernel, this.log);
    if (this.remote) await this.remote.watcher.start(this.remote.ipcache, this.remote.ipcache.adopt());
    // Peer clusters likewise (in parallel: one that does not answer delays the start by its deadline once).
    if (this.remote) await Promise.all(this.remote.peers.map((p) => p.start()));
    await this.hostWatch.prime(); // the host's addresses for the ipcache's host entries, all devices
    const result = await this.workloads.exclusive(async () => {
      // Before anything allocates: this host's references to its cluster identities, under the new lease.
      await this.cluster?.identities.restore(this.store);
      await this.cluster?.markSynced('identities');
      const synced = await this.reconciler.syncAll(onProgress, (rec) => this.controller.reconcileLocked(rec, { makeOwnedNetns: true }));
      await this.workloads.forgedLabelsScrub();
      await this.workloads.ipcachePublish(this.store.workloadList());
      await this.cluster?.markSynced('ip');
      return synced;
    });
    // The cluster's namespace labels and policies over the restored cache (etcd is authoritative:
    // what was deleted while the agent was down goes), then followed by watch.
    await this.shared?.namespaces.follower.start();
    await this.shared?.policies.follower.start();
    this.directory.refresh();
    this.log.info(result, 'state restored from store');
    for (const m of workloadsOutsidePools(this.store.workloadList(), this.config.ipam)) {
      this.log.warn(m, `workload ${m.workload} keeps ${m.address}, outside the configured pool ${m.pool} (${m.key} changed)`);
    }
    this.dhcp.sync();
    this.dhcp.start();
    this.flows.start(this.kernel.datapath);
    this.dropSuppression.start();
    this.watch.start();
    this.hostWatch.start();
    this.controller.start();
  }

  stop(): void {
    void this.dns.stop();
    void this.remote?.watcher.close();
    void this.shared?.policies.follower.close();
    void this.shared?.namespaces.follower.close();
    for (const p of this.remote?.peers ?? []) void p.close();
    this.dhcp.close();
    this.watch.stop();
    this.hostWatch.stop();
    void this.controller.stop();
    this.flows.stop();
    this.dropSuppression.stop();
    this.metrics.close();
  }

  private view(rec: WorkloadRecord): Workload {
    const identity = this.store.identityGet(rec.identity);
    return {
      name: rec.spec.name,
      namespace: rec.spec.namespace,
      kind: rec.spec.kind,
      labels: rec.spec.labels,
      netns: rec.spec.netns,
      ports: rec.spec.ports ?? [],
      mode: rec.mode,
      requestedMode: rec.spec.requestedMode,
      state: rec.state,
      error: rec.error,
      ...this.controller.statusOf(rec.spec.namespace, rec.spec.name),
      endpointId: rec.endpointId,
      identity: rec.identity,
      identityLabels: identity?.labels ?? [],
      ipv4: rec.ipv4,
      ipv6: rec.ipv6,
      interfaces: {
        host: { name: rec.hostIfname, ifindex: rec.observed?.hostIfindex ?? null, mac: rec.observed?.hostMac ?? null },
        workload: { name: rec.spec.interface, ifindex: rec.observed?.peerIfindex ?? null, mac: rec.observed?.peerMac ?? null },
      },
      gateway: { ipv4: GATEWAY_V4, ipv6: GATEWAY_V6 },
      ...(rec.spec.vm ? { vm: vmView(rec, rec.spec.vm) } : {}),
      ...(rec.spec.tap ? { tap: { device: rec.spec.tap.device, mac: rec.spec.tap.mac } } : {}),
      ...(rec.spec.kind !== 'netns' ? { addressing: rec.spec.addressing ?? 'dhcp' } : {}),
      createdAt: rec.createdAt,
      updatedAt: rec.updatedAt,
    };
  }

  /** The directory follows single workload changes in place; anything unexpected rebuilds it. */
  private directorySet(rec: WorkloadRecord): WorkloadRecord {
    const labels = this.store.identityLabels(rec.identity);
    if (labels) this.directory.workloadSet(rec, labels);
    else this.directory.refresh();
    return rec;
  }

  async workloadRegister(input: WorkloadCreate, caller: { admin: boolean } = { admin: true }): Promise<Workload> {
    const rec = this.directorySet(await this.workloads.register(input, caller));
    this.dhcp.sync();
    return this.view(rec);
  }

  workloadList(namespace?: string): Workload[] {
    return this.workloads.list(namespace).map((r) => this.view(r));
  }

  workloadGet(namespace: string, name: string): Workload {
    return this.view(this.workloads.get(namespace, name));
  }

  async workloadRemove(namespace: string, name: string): Promise<Workload> {
    const view = this.view(this.workloads.get(namespace, name));
    try {
      this.directory.workloadRemove(await this.workloads.remove(namespace, name));
      this.dhcp.sync();
    } catch (err) {
      this.directory.refresh();
      throw err;
    }
    return view;
  }

  async workloadLabelsSet(namespace: string, name: string, labels: Record<string, string>): Promise<Workload> {
    try {
      return this.view(this.directorySet(await this.workloads.labelsSet(namespace, name, labels)));
    } catch (err) {
      this.directory.refresh();
      throw err;
    }
  }

  workloadPolicy(namespace: string, name: string): WorkloadPolicy {
    const rec = this.workloads.get(namespace, name);
    const { policy, text } = this.policyEngine.endpointPolicy(rec.endpointId);
    return {
      endpointId: rec.endpointId,
      identity: rec.identity,
      ingressEnforced: policy?.ingressEnforced ?? false,
      egressEnforced: policy?.egressEnforced ?? false,
      entries: (policy?.entries ?? []).map((e) => ({ ...e })),
      text,
    };
  }

  namespaceList(): Namespace[] {
    return this.policies.namespaceList();
  }

  async namespacePut(name: string, labels: Record<string, string>): Promise<Namespace> {
    try {
      return await this.policies.namespacePut(name, labels);
    } finally {
      this.directory.refresh();
    }
  }

  policyList(): PolicySummary[] {
    return this.policies.policyList();
  }

  policiesApply(body: unknown, contentType?: string): Promise<PolicyApplyResult> {
    return this.policies.apply(body, contentType);
  }

  policyDelete(kind: string, namespace: string, name: string): Promise<PolicySummary> {
    return this.policies.delete(kind, namespace, name);
  }

  policyTrace(req: TraceRequest): TraceResponse {
    if ('fqdn' in req.to) {
      const { result, text } = this.policies.traceFqdn(req.from, req.to.fqdn, req, req.resolver, this.dns.traceFacts());
      return { verdict: result.verdict, text, result: result as unknown as Record<string, unknown> };
    }
    const { result, text } = this.policies.trace(req.from, req.to, req.protocol, req.port!);
    return { verdict: result.verdict, text, result: result as unknown as Record<string, unknown> };
  }

  identityList(): Identity[] {
    const reserved: Identity[] = Object.entries(ReservedIdentity)
      .filter(([, id]) => id !== 0)
      .map(([name, id]) => ({ id, labels: [`reserved:${name}`], references: 0, reserved: true, createdAt: null }));
    const allocated = this.store.identityList().map((i) => ({
      id: i.id,
      labels: i.labels,
      references: i.references,
      reserved: false,
      createdAt: i.createdAt,
    }));
    return [...reserved, ...allocated];
  }

  /** GET /v1/cluster: cluster mode's state, or that it is off. */
  clusterStatus(): Promise<ClusterStatus> {
    return clusterStatusOf(this.cluster, this.remote, this.store);
  }

  async status(): Promise<Status> {
    const f = await this.kernel.features();
    const records = this.store.workloadList();
    const countBy = (key: (r: WorkloadRecord) => string) =>
      records.reduce<Record<string, number>>((acc, r) => ((acc[key(r)] = (acc[key(r)] ?? 0) + 1), acc), {});
    const autoMode = f.netkit ? 'netkit' : f.tcx ? 'veth' : 'unsupported';
    const reason = f.netkit
      ? 'the kernel can create netkit devices'
      : `netkit unavailable (${f.netkitDetail}); veth with ${f.tcx ? 'tcx' : 'no tcx'}`;
    return {
      version: KITNET_VERSION,
      nodeName: this.config.nodeName,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      host: await this.hostFacts,
      kernel: { release: f.kernelRelease, netkit: f.netkit, netkitDetail: f.netkitDetail, tcx: f.tcx, tcClsact: f.tcClsact },
      datapath: { configuredMode: this.config.datapath.mode, autoMode, reason, pinRoot: this.config.bpfPinRoot },
      ipam: { ipv4Pool: this.config.ipam.ipv4Pool, ipv6Pool: this.config.ipam.ipv6Pool },
      warnings: [
        ...workloadsOutsidePools(records, this.config.ipam).map((m) => ({
          key: m.key,
          workload: m.workload,
          message: `workload ${m.workload} has ${m.address}, outside the configured pool ${m.pool}`,
        })),
        ...(this.shared ? [...this.shared.namespaces.problems(), ...this.shared.policies.problems()] : []),
      ],
      counts: {
        workloads: records.length,
        workloadsByMode: countBy((r) => r.mode),
        workloadsByState: countBy((r) => r.state),
        identities: this.store.identityList().length,
        flowsInRing: this.flows.ring.length,
        flowsProcessed: this.flows.processed,
        lostEvents: Number(this.flows.lostEvents()),
      },
      maps: this.kernel.datapath.mapFill({ policy: this.policyEngine.entryCount() }),
    };
  }

  flowsSnapshot(sel: FlowSelection): FlowSnapshot {
    return flowsSnapshot(this.flows, sel);
  }

  flowsFollow(sel: FlowSelection, onRecord: (r: FlowRecord) => void): () => void {
    return flowsFollow(this.flows, sel, onRecord);
  }

  flowsLost(count: number): FlowRecord {
    return this.flows.lostRecord('OBSERVER_EVENTS_QUEUE', count);
  }
}
