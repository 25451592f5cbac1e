/**
 * The agent's DNS service (issue #17): binds the DNS proxy, tells the datapath where it is and whose DNS
 * to steer there (bpf/include/dns.h), judges each query with the compiled policy, and turns what the
 * answers teach into FQDN identities, policy entries and ipcache entries before the answer goes back.
 *
 * Proxy addresses: DNS_PROXY_IPV4 / DNS_PROXY_IPV6 on the host's loopback. Every workload reaches them
 * through the routing the host already does for it (veth and netkit alike, L2 and L3), and the host
 * delivers them locally whatever device they came in on; the gateway addresses (169.254.1.1, fe80::1)
 * were not taken: the host does not own them (the datapath answers ARP / ND for them) and fe80::1 is
 * link-scoped, so the host would need it on every host-side device. The workload never sees these
 * addresses: its queries leave for the resolver it chose and the answers come back from it.
 *
 * Order of a lookup's effects: new FQDN identities join the policy (entries written for every endpoint
 * whose rules select them), then the ipcache maps the addresses to them, then the answer is released:
 * a connection opened right after the answer finds both. Removal (TTL expiry with no tracked
 * connection left) goes the other way round.
 */
import ipaddr from 'ipaddr.js';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { DnsSteeringMaps, IpcacheEntry, KitnetDatapath } from '../../bpf/index.js';
import { hostLoopbackAddressEnsure } from '../../netkit/index.js';
import { ConfigError } from '../../common/config-error.js';
import { ReservedIdentity } from '../identity/reserved.js';
import type { Cidr } from '../ipam.js';
import { cidrContainsCidr, cidrParsed, hostPrefix, policyCidrs } from '../policy/cidr.js';
import { HostDestinationSet, hostDestinations, hostDestinationSetListed } from '../policy/host-destinations.js';
import { policiesFromObjects } from '../policy/index.js';
import type { PolicyEngine } from '../policy/engine.js';
import { isLabelDerived } from '../policy/entities.js';
import { dnsSelectedEndpoints, fqdnSelectorsOf } from '../policy/fqdn-identities.js';
import { remoteIngressDecide } from '../policy/remote-ingress.js';
import type { FqdnTraceFacts } from '../policy/trace-fqdn.js';
import type { CompiledPolicy, ParsedPolicy, RuleSection } from '../policy/types.js';
import type { WorkloadRecord } from '../store/types.js';
import type { Store } from '../store/store.js';
import type { DnsConfig } from './config.js';
import { upstreamParse } from './config.js';
import type { LearnedName } from './codec.js';
import { FqdnCache, fqdnAddressCidr, fqdnLabelMatchers } from './fqdn-cache.js';
import type { DnsAddressOwner, FqdnIdentities, FqdnLabelMatcher } from './fqdn-cache.js';
import { DnsLearnLimitError, DnsProxy, dnsProxyStatsCreate } from './proxy.js';
import { DNS_STATE_FILE, dnsStateRead, dnsStateWrite, dnsStateWriteSliced } from './state-file.js';
import type { DnsEndpoint, DnsProxyStats, DnsQueryEvent, DnsTransport, DnsVerdict } from './proxy.js';
import { specialAddressKind } from './special-address.js';
import { dnsPlanNames, dnsPlanVerdict, dnsQueryPlan, sectionIndex } from './verdict.js';
import { DnsFastTables } from './fast-path.js';
import type { DnsQueryPlan } from './verdict.js';

/** Host-local addresses of the DNS proxy (link-local IPv4; a ULA whose global id spells "kitnet"). */
export const DNS_PROXY_IPV4 = '169.254.1.53';
export const DNS_PROXY_IPV6 = 'fd00:6b69:746e:6574::53';

const EXPIRY_TICK_MS = 1000;

export interface DnsSteeringDeps {
  config: DnsConfig;
  store: Store;
  engine: PolicyEngine;
  datapath: KitnetDatapath;
  /** Runs fn under the agent's mutex (every change of desired state). */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  /** Where the learned state is kept over restarts (agent/dns/state-file.ts). */
  stateDir: string;
  log: Logger;
}

/** The longest of `prefixes` covering an address (its text), for the `cidr:` label of FQDN identities. */
function coverFn(prefixes: readonly Cidr[]): (address: string) => string | undefined {
  // With no CIDR in the policies nothing covers an address: no parse per new address in a burst.
  if (prefixes.length === 0) return () => undefined;
  // Asked for every learned address on every refresh: each address is parsed and compared once.
  const memo = new Map<string, string | undefined>();
  return (address) => {
    if (memo.has(address)) return memo.get(address);
    const a = hostPrefix(address);
    let best: Cidr | undefined;
    for (const p of prefixes) if (cidrContainsCidr(p, a) && (!best || p.prefixLength > best.prefixLength)) best = p;
    memo.set(address, best?.text);
    return best?.text;
  };
}

/** A learned address reaches the state file this soon (a crash loses at most this much of them). */
const SAVE_DELAY_MS = 300;
/**
 * An answer that only moves expiries is saved at most this late: writing the whole file is a few ms of
 * the agent's thread per thousands of names, too dear every 300 ms under a steady stream of lookups.
 * Restored expiries are extended by as much (unless a clean stop wrote the file), so an entry is never
 * restored shorter than it was.
 */
const EXPIRY_SAVE_DELAY_MS = 10_000;
const HOST_ADDRESSES_MAX_AGE_MS = 1000;
/** Query plans kept per compiled state (endpoints x resolvers x ports); cleared when full. */
const VERDICT_MEMO_MAX = 10_000;

/** Who else holds an ipcache key a learned address would take (DnsSteering.learnedKeyHolder), and the entry it wants there. */
type LearnedKeyHolder = { kind: 'host' | 'workload' | 'policy-cidr'; identity: number } | { kind: 'remote' };

export class DnsSteering {
  cache: FqdnCache;
  private saveTimer: NodeJS.Timeout | undefined;
  /** When the pending save is due (performance.now()). */
  private saveDue = 0;
  /** The file was written while running (its expiries may lag): a clean stop writes it again, complete. */
  private savedRunning = false;
  /** The save in flight (save()), and whether another is due after it. */
  private saving: Promise<void> | undefined;
  private saveAgain = false;
  /** stop() began: a save in flight gives up, and no other starts. */
  private stopping = false;
  private maps: DnsSteeringMaps | undefined;
  private readonly proxies: DnsProxy[] = [];
  /** What the proxies (both families, every start) counted: the agent's metrics. */
  readonly proxyStats: DnsProxyStats = dnsProxyStatsCreate();
  private port = 0;
  private ids: FqdnIdentities | undefined;
  /** FQDN ipcache entries the proxy wrote and holds (cidr -> identity): only these does it ever give back. */
  private readonly applied = new Map<string, number>();
  /**
   * Learned host prefixes an FQDN identity would have but that another holder has (learnedKeyHolder):
   * not written while it does; looked at again when workloads change and every expiry tick, so the
   * learned entry comes back once the key is free.
   */
  private readonly yielded = new Set<string>();
  /** The policy's own host-prefix entries (cidr -> identity) of a compiled state, for learnedKeyHolder. */
  private policyKeys: { of: CompiledPolicy | undefined; keys: Map<string, number> } | undefined;
  /** While restore() runs (before the cluster's remote entries are adopted): the pinned remote keys. */
  private pinnedRemote: Set<string> | undefined;
  private ownersRecheckQueued = false;
  private selectorsKey = '';
  private endpointsKey = '';
  /** The endpoints written as steered. */
  private steered = new Set<number>();
  private timer: NodeJS.Timeout | undefined;
  private sectionsFor: { policies: readonly ParsedPolicy[]; sections: Map<string, RuleSection> } | undefined;
  private refreshQueued = false;
  /** The covering-prefix lookup of the CIDR identities in force (its answers kept while they are). */
  private cover: { cidrs: readonly unknown[]; fn: (address: string) => string | undefined } | undefined;
  private refreshing = false;
  /** Local workloads by address: rebuilt after a workload change in the store, not read per query. */
  private byAddress: Map<string, WorkloadRecord> | undefined;
  private unsubscribe: (() => void) | undefined;
  /**
   * The host's destinations (its addresses, broadcasts, link-local, multicast: host-destinations.ts) as
   * last read, at most a second ago (getifaddrs is a netlink dump: too dear per query or per learned
   * answer); for the resolver's identity and to keep learned entries off them.
   */
  private hostAddresses: { readAt: number; set: HostDestinationSet } | undefined;
  /** The last query upstream() read the steering map for, and what it read (verdict() reads it back). */
  private lastClient: DnsEndpoint | undefined;
  private lastProtocol = 0;
  private lastOrig: DnsEndpoint | undefined;
  private configuredUpstream: { text: string; endpoint: DnsEndpoint | undefined } | undefined;
  /** Query plans of the compiled state in force (a policy or identity change makes a new one); a name then costs its matchers. */
  private verdicts: { state: CompiledPolicy; sections: Map<string, RuleSection>; byKey: Map<string, DnsQueryPlan>; ingress: Map<string, string | undefined> } | undefined;
  /** The write learned answers wait for, not started yet: answers arriving meanwhile join it. */
  private learnedRefresh: Promise<void> | undefined;
  /** The addresses of the answers waiting for it, with the names they were given. */
  private learnedPending = new Map<string, Set<string>>();
  /** What the last full refresh derived the identities from (learnedApply goes on from it while it holds). */
  private refreshBasis: { policies: readonly ParsedPolicy[]; cidrs: readonly unknown[]; matchers: FqdnLabelMatcher[]; coverOf: (address: string) => string | undefined } | undefined;
  /** Each answered query (flows, metrics). */
  onQuery?: (e: DnsQueryEvent) => void;
  /** What the proxies' fast path may decide alone (agent/dns/fast-path.ts); undefined when it is off. */
  private fast: DnsFastTables | undefined;

  constructor(private readonly deps: DnsSteeringDeps) {
    this.cache = new FqdnCache({ maxAddressesPerName: deps.config.proxy.maxIPsPerName, maxNamesPerAddress: deps.config.proxy.maxNamesPerIP });
  }

  get listenPort(): number {
    return this.port;
  }

  /** Binds the proxy and points the datapath at it. Without the maps (an older object) nothing is steered. */
  async start(): Promise<void> {
    const { config, datapath, engine, log } = this.deps;
    this.stopping = false;
    this.maps = datapath.dnsSteering?.();
    if (!this.maps) {
      log.warn('the loaded datapath has no DNS steering maps: toFQDNs and DNS rules learn nothing');
      return;
    }
    this.unsubscribe = this.deps.store.subscribe((c) => {
      if (c.kind !== 'workload') return;
      this.byAddress = undefined;
      this.fast?.forget({ verdicts: true });
      // A workload that left holds no share of the learned addresses any more (its endpoint id may be reused).
      if (c.what === 'deleted') {
        const live = new Set(this.deps.store.workloadList().map((w) => w.endpointId));
        for (const owner of this.cache.owners()) if (typeof owner === 'number' && !live.has(owner)) this.cache.ownerRelease(owner);
      }
      // A workload registered at a learned address takes its key; one that left frees it.
      if (c.what !== 'status') this.ownersRecheckSoon(true);
    });
    engine.ipcacheExtra = (compiled) => this.ipcacheExtra(compiled);
    engine.onWritten = () => this.policyWritten();
    await this.restore();
    if (!config.proxy.enabled) {
      this.maps.proxySet({ port: 0, ipv4: '0.0.0.0', ipv6: '::' });
      return;
    }
    for (const address of [DNS_PROXY_IPV4, DNS_PROXY_IPV6]) {
      try {
        await hostLoopbackAddressEnsure(address);
      } catch (err) {
        throw new ConfigError(
          `dns.proxy.enabled: the DNS proxy needs ${address} on the host's loopback and adding it failed (${(err as Error).message}); give the agent CAP_NET_ADMIN in the host namespace, or set dns.proxy.enabled: false (toFQDNs then allows nothing)`,
          ['dns.proxy.enabled'],
        );
      }
    }
    if (config.proxy.fastPath) this.fast = new DnsFastTables();
    await this.listen();
    this.maps.proxySet({ port: this.port, ipv4: DNS_PROXY_IPV4, ipv6: DNS_PROXY_IPV6 });
    this.endpointsSync();
    this.timer = setInterval(() => this.expireTick(), EXPIRY_TICK_MS);
    this.timer.unref();
    log.info({ port: this.port, ipv4: DNS_PROXY_IPV4, ipv6: DNS_PROXY_IPV6 }, 'DNS proxy listening');
  }

  private proxyFor(address: string, port: number): DnsProxy {
    const p = new DnsProxy({
      listen: { address, port },
      upstream: (client, transport, addressed) => this.upstream(client, transport, addressed),
      verdict: (client, name, transport, upstream) => this.verdict(client, name, transport, upstream),
      learn: (client, learned) => this.learn(client, learned),
      minTtl: this.deps.config.proxy.minTTL,
      maxTtl: this.deps.config.proxy.maxTTL,
      maxInFlight: this.deps.config.proxy.maxQueriesInFlight,
      maxInFlightPerClient: this.deps.config.proxy.maxQueriesInFlightPerWorkload,
      maxTcpConnections: this.deps.config.proxy.maxTcpConnections,
      maxTcpConnectionsPerClient: this.deps.config.proxy.maxTcpConnectionsPerWorkload,
      stats: this.proxyStats,
      fast: this.fast && { tables: this.fast, redirectMapFd: this.maps!.redirectFd },
      log: this.deps.log.child({ component: 'dns-proxy' }),
    });
    p.onQuery = (e) => this.onQuery?.(e);
    return p;
  }

  /** Both families on one port (the datapath has one); with port 0, tries again when the v6 side is taken. */
  private async listen(): Promise<void> {
    const want = this.deps.config.proxy.port;
    let lastErr: unknown;
    for (let attempt = 0; attempt < (want ? 1 : 5); attempt++) {
      const v4 = this.proxyFor(DNS_PROXY_IPV4, want);
      let port: number;
      try {
        port = (await v4.start()).port;
      } catch (err) {
        throw this.listenError(err, `${DNS_PROXY_IPV4}:${want}`);
      }
      const v6 = this.proxyFor(DNS_PROXY_IPV6, port);
      try {
        await v6.start();
      } catch (err) {
        await v4.stop();
        lastErr = err;
        continue;
      }
      this.proxies.push(v4, v6);
      this.port = port;
      return;
    }
    throw this.listenError(lastErr, `[${DNS_PROXY_IPV6}]:${want}`);
  }

  private listenError(err: unknown, where: string): ConfigError {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    return new ConfigError(
      `dns.proxy.port: the DNS proxy cannot listen on ${where} (UDP and TCP): ${code || (err as Error).message}${code === 'EADDRINUSE' ? '; another process uses the port: pick another or 0 (any free port)' : ''}`,
      ['dns.proxy.port'],
    );
  }

  async stop(): Promise<void> {
    // At once, in this turn (the agent does not wait for the rest): a save in flight sees `stopping`
    // before its rename and gives up, so this file is the one that stays.
    this.stopping = true;
    if (this.saveTimer || this.savedRunning || this.saving) {
      if (this.saveTimer) clearTimeout(this.saveTimer);
      this.saveTimer = undefined;
      this.saveComplete();
    }
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    await Promise.all([...this.proxies.splice(0).map((p) => p.stop()), this.saving]);
    this.fast = undefined;
  }

  private workloadOf(address: string): WorkloadRecord | undefined {
    if (!this.byAddress) {
      const m = new Map<string, WorkloadRecord>();
      for (const w of this.deps.store.workloadList()) m.set(w.ipv4, w).set(w.ipv6, w);
      this.byAddress = m;
    }
    return this.byAddress.get(address);
  }

  /**
   * Before the learned entries are written (under the agent's mutex): the host's destinations as now
   * listed, not as up to a second ago. The host-address watch lists a new address and writes its host
   * entries under the same mutex; a learned write right after, judging by an older reading, would
   * take the new host entry and keep it until the next full refresh.
   */
  private hostAddressesReread(): void {
    this.hostAddresses = undefined;
  }

  /**
   * The host's destinations: the kernel's listing (current: the watch replaces it on every change),
   * or before there is one, node:os's addresses read again when older than a second.
   */
  private hostAddressesRecent(): HostDestinationSet {
    const listedSet = hostDestinationSetListed();
    if (listedSet) return listedSet;
    const now = performance.now();
    if (!this.hostAddresses || now - this.hostAddresses.readAt > HOST_ADDRESSES_MAX_AGE_MS) {
      this.hostAddresses = { readAt: now, set: new HostDestinationSet(hostDestinations()) };
    }
    return this.hostAddresses.set;
  }

  private upstream(client: DnsEndpoint, transport: DnsTransport, addressed?: DnsEndpoint | null): DnsEndpoint | undefined {
    const protocol = transport === 'udp' ? 17 : 6;
    const orig = addressed !== undefined ? (addressed ?? undefined) : this.maps?.originalDestination(client.address, client.port, protocol);
    this.lastClient = client;
    this.lastProtocol = protocol;
    this.lastOrig = orig;
    if (!orig) return undefined;
    const configured = this.deps.config.proxy.upstream;
    if (!configured) return orig;
    if (this.configuredUpstream?.text !== configured) this.configuredUpstream = { text: configured, endpoint: upstreamParse(configured) };
    return this.configuredUpstream.endpoint;
  }

  /** What `policy trace --to-fqdn` answers from (agent/policy/trace-fqdn.ts). */
  traceFacts(): FqdnTraceFacts {
    return {
      proxy: this.maps !== undefined && this.port !== 0,
      steered: (endpointId) => this.steered.has(endpointId),
      learned: (name) => this.cache.entries(name),
      ipcache: () => [...this.applied].map(([cidr, identity]) => ({ cidr, identity })),
      resolverIdentity: (address) => this.identityOf(address),
    };
  }

  /** The resolver a steered query was addressed to (the DNS flow's destination), from the datapath's map. */
  originalDestination(client: DnsEndpoint, transport: DnsTransport): DnsEndpoint | undefined {
    return this.maps?.originalDestination(client.address, client.port, transport === 'udp' ? 17 : 6);
  }

  /** The labels of an identity the policy knows (CIDR and FQDN identities included), for the DNS flows' ends. */
  identityLabels(identity: number): readonly string[] | undefined {
    return this.deps.engine.compiled().identities.get(identity);
  }

  /** The identity the datapath gives an address (what the policy sees as the resolver; the DNS flows' ends). */
  identityOf(address: string): number {
    const w = this.workloadOf(address);
    if (w) return w.identity;
    if (this.hostAddressesRecent().has(address)) return ReservedIdentity.host;
    // Never world: the host's own (loopback, unspecified, link-local: they end on the host), the IPv4
    // address an IPv4-mapped one stands for, nobody's (multicast, broadcast, the reserved rest).
    const special = specialAddressKind(address);
    if (special === 'loopback' || special === 'unspecified' || special === 'link-local') return ReservedIdentity.host;
    if (special === 'ipv4-mapped') return this.identityOf(ipaddr.IPv6.parse(address).toIPv4Address().toString());
    if (special) return ReservedIdentity.unknown;
    const remote = this.deps.engine.remoteAddressResolve(address);
    if (remote !== undefined) return remote;
    const a = hostPrefix(address);
    let best: { len: number; identity: number } | undefined;
    const consider = (cidr: string, identity: number) => {
      const c = cidrParsed(cidr);
      if (cidrContainsCidr(c, a) && (!best || c.prefixLength > best.len)) best = { len: c.prefixLength, identity };
    };
    for (const e of this.deps.engine.compiled().ipcache) consider(e.cidr, e.identity);
    // Learned addresses are host prefixes: one exact lookup, not a scan of every learned address per
    // query (this runs for every lookup to a resolver outside the host). The proxy holds a policy's own
    // host prefix only merged with it (learnedKeyHolder): then the learned identity is the one in the map.
    const learned = this.applied.get(fqdnAddressCidr(address));
    if (learned !== undefined && (!best || best.len <= a.prefixLength)) return learned;
    if (best) return best.identity;
    return address.includes(':') ? ReservedIdentity['world-ipv6'] : ReservedIdentity['world-ipv4'];
  }

  private verdict(client: DnsEndpoint, name: string, transport: DnsTransport, upstream?: DnsEndpoint): DnsVerdict {
    const w = this.workloadOf(client.address);
    if (!w) return { allowed: false, rule: 'the client is not a workload of this host' };
    const protocol = transport === 'udp' ? 17 : 6;
    // The proxy asks upstream() and then verdict() for the same query object: one map read for both.
    const orig = this.lastClient === client && this.lastProtocol === protocol ? this.lastOrig : this.maps?.originalDestination(client.address, client.port, protocol);
    this.lastClient = undefined;
    this.lastOrig = undefined;
    if (!orig) return { allowed: false, rule: 'not steered to the proxy by the datapath' };
    // Forwarded from the host's own sockets, a query to one of these would reach what the workload
    // cannot (resolvers listening on the host only: 127.0.0.53, 0.0.0.0:53; any IPv4 address through
    // ::ffff:a.b.c.d over TCP) with the host's identity, past the workload's egress and the target's
    // ingress policy. The configured upstream is the operator's and is not judged here.
    const special = specialAddressKind(orig.address);
    if (special || orig.address === DNS_PROXY_IPV4 || orig.address === DNS_PROXY_IPV6) {
      return { allowed: false, refusal: 'resolver', rule: `resolver ${orig.address} is ${special ? `${/^[aeiou]/.test(special) ? 'an' : 'a'} ${special} address` : 'the DNS proxy itself'}, which the workload cannot reach itself: not forwarded`, resolver: orig };
    }
    const { engine } = this.deps;
    if (this.sectionsFor?.policies !== engine.parsed) {
      this.sectionsFor = { policies: engine.parsed, sections: sectionIndex(engine.parsed.flatMap((p) => p.rules)) };
    }
    const state = engine.compiled();
    const sections = this.sectionsFor.sections;
    if (this.verdicts?.state !== state || this.verdicts.sections !== sections || this.verdicts.byKey.size >= VERDICT_MEMO_MAX) {
      this.verdicts = { state, sections, byKey: new Map(), ingress: new Map() };
    }
    const resolver = this.identityOf(orig.address);
    const key = `${w.endpointId}/${resolver}/${protocol}/${orig.port}`;
    let plan = this.verdicts.byKey.get(key);
    if (!plan) {
      const policy = engine.endpointPolicy(w.endpointId).policy;
      plan = policy ? dnsQueryPlan(state, sections, policy, resolver, protocol, orig.port) : { fixed: { allowed: true, rule: 'no policy' } };
      this.verdicts.byKey.set(key, plan);
    }
    const v = dnsPlanVerdict(plan, name);
    if (!v.allowed) return { allowed: v.allowed, rule: v.rule, resolver: orig };
    // Where the query goes: the resolver addressed, or the configured upstream. Only a workload's
    // identity (label-derived) costs more than this comparison.
    const target = upstream ?? orig;
    const targetIdentity = target.address === orig.address ? resolver : this.workloadIdentityOf(target.address);
    if (targetIdentity !== undefined && isLabelDerived(targetIdentity)) {
      const refused = this.resolverIngressRefusal(w, target, targetIdentity, protocol);
      if (refused) return { allowed: false, refusal: 'resolver', rule: refused, resolver: orig };
    }
    return { allowed: true, rule: v.rule, resolver: orig, names: dnsPlanNames(plan) };
  }

  /** A local workload's identity, or another node's (label-derived) workload's, at an address; else undefined. */
  private workloadIdentityOf(address: string): number | undefined {
    const w = this.workloadOf(address);
    if (w) return w.identity;
    const remote = this.deps.engine.remoteAddressResolve(address);
    return remote !== undefined && isLabelDerived(remote) ? remote : undefined;
  }

  /**
   * Why a query of workload `w` must not be forwarded to `target`, a workload resolver, if it must not.
   * The proxy's sockets are the host's: the resolver's datapath judges the query as the host (allow-
   * localhost admits it) or, on another node, as that node, never as `w`. So it is forwarded only when
   * the resolver's ingress policy admits `w` itself on that protocol and port, as it would judge `w`'s
   * own packet: a local resolver by its compiled policy (`policy trace`), another node's of this
   * cluster by the shared policies compiled for its identity (agent/policy/remote-ingress.ts); a peer
   * cluster's by nothing this host knows, so never. Kept per compiled state (a policy, workload or
   * identity change makes a new one), with the query plans.
   */
  private resolverIngressRefusal(w: WorkloadRecord, target: DnsEndpoint, targetIdentity: number, protocol: number): string | undefined {
    const memo = this.verdicts!.ingress;
    const key = `${w.endpointId}/${target.address}/${targetIdentity}/${protocol}/${target.port}`;
    if (memo.has(key)) return memo.get(key);
    const { engine } = this.deps;
    // The query would have left `w` from its address of the resolver's family.
    const from = target.address.includes(':') ? w.ipv6 : w.ipv4;
    const proto = protocol === 17 ? 'UDP' : 'TCP';
    const local = this.workloadOf(target.address);
    let refused: string | undefined;
    if (local) {
      const side = local.endpointId === w.endpointId ? undefined : engine.trace({ ip: from }, { ip: target.address }, protocol, target.port).result.ingress;
      if (side?.verdict === 'DENIED') {
        refused = `resolver ${target.address} is workload ${local.spec.namespace}/${local.spec.name} whose ingress policy does not admit this workload on ${proto} ${target.port} (${side.reason}): not forwarded from the host`;
      }
    } else {
      const side = remoteIngressDecide(engine.compiled(), engine.parsed, engine.localCluster, targetIdentity, { identity: w.identity, address: from }, protocol, target.port);
      if (!side) refused = `resolver ${target.address} is a workload (identity ${targetIdentity}) of another cluster or of unknown labels whose ingress policy this host cannot judge: not forwarded from the host`;
      else if (side.verdict === 'DENIED') refused = `resolver ${target.address} is another node's workload (identity ${targetIdentity}) whose ingress policy does not admit this workload on ${proto} ${target.port} (${side.reason}): not forwarded from this node`;
    }
    if (memo.size >= VERDICT_MEMO_MAX) memo.clear();
    memo.set(key, refused);
    return refused;
  }

  /**
   * Records an answer and resolves once the maps have its addresses. An answer that teaches nothing
   * new (every name already had each address, and each address is in the ipcache) only moves the
   * expiry and is released at once: its addresses' label sets, so their identities and entries, stay
   * what the maps hold. Not while a refresh is queued or running (a policy change may be giving those
   * addresses new identities): then it waits as a new answer does. A new answer waits for one write
   * under the agent's mutex, shared by every answer that arrives before that write starts (all in the
   * cache by then), which covers only their addresses (learnedApply).
   */
  private learn(client: DnsEndpoint, learned: LearnedName[]): Promise<void> {
    const now = Date.now();
    const settled = !this.refreshQueued && !this.refreshing && this.learnedRefresh === undefined;
    const known = settled && learned.every((l) => l.addresses.every((a) => this.cache.has(l.name, a) && (this.applied.has(fqdnAddressCidr(a)) || this.yielded.has(fqdnAddressCidr(a)))));
    // Only an answer with something new has addresses to count against its workload.
    const owner = known ? undefined : (this.workloadOf(client.address)?.endpointId ?? client.address);
    if (owner !== undefined) {
      const refusal = this.learnLimit(owner, learned);
      if (refusal) return Promise.reject(refusal);
    }
    const evictions = this.cache.evictions;
    for (const l of learned) this.cache.learn(l.name, l.addresses, l.ttl, now, owner);
    if (known) {
      // The fast path may release the next such answer itself, while the addresses stay this long.
      if (this.fast) for (const l of learned) for (const a of l.addresses) this.fast.known(l.name, a, this.cache.expiresAt(l.name, a) ?? 0);
      this.saveSoon(EXPIRY_SAVE_DELAY_MS);
      return Promise.resolve();
    }
    // An address a name no longer keeps may leave the maps: the fast path must not release it as known.
    if (this.cache.evictions !== evictions) this.fast?.forget({ known: true });
    for (const l of learned) {
      for (const a of l.addresses) {
        const names = this.learnedPending.get(a);
        if (names) names.add(l.name);
        else this.learnedPending.set(a, new Set([l.name]));
      }
    }
    // Written at the end of this turn of the event loop: the answers read in the same turn (a burst of
    // new names) share one write.
    return (this.learnedRefresh ??= new Promise<void>((resolve) => setImmediate(resolve)).then(() =>
      this.deps.exclusive(() => {
        this.learnedRefresh = undefined;
        const addresses = this.learnedPending;
        this.learnedPending = new Map();
        return this.learnedApply(addresses);
      }),
    ));
  }

  /**
   * Why an answer's new addresses may not be learned, if they may not: the cache would pass
   * dns.proxy.maxLearnedAddresses, or the asking workload its share (each address counts against the
   * workload whose answer brought it, until it leaves). A workload allowed a wildcard it controls
   * (random names, an address each, long TTLs) would otherwise fill the ipcache map the whole host
   * shares, and no other workload could be added or learn a name.
   */
  private learnLimit(owner: DnsAddressOwner, learned: LearnedName[]): DnsLearnLimitError | undefined {
    const addresses = learned.length === 1 ? learned[0]!.addresses : learned.flatMap((l) => l.addresses);
    const fresh = this.cache.unknownAmong(addresses);
    if (fresh === 0) return undefined;
    const { maxLearnedAddresses: all, maxLearnedAddressesPerWorkload: each } = this.deps.config.proxy;
    const held = this.cache.ownedBy(owner);
    if (held + fresh > each) {
      return new DnsLearnLimitError('workload', `${typeof owner === 'number' ? `endpoint ${owner}` : `client ${owner}`} holds ${held} learned addresses and dns.proxy.maxLearnedAddressesPerWorkload is ${each}: the answer's ${fresh} new addresses are not learned`);
    }
    if (this.cache.addressCount + fresh > all) {
      return new DnsLearnLimitError('total', `the proxy holds ${this.cache.addressCount} learned addresses and dns.proxy.maxLearnedAddresses is ${all}: the answer's ${fresh} new addresses are not learned`);
    }
    return undefined;
  }

  /**
   * Under the mutex: the identities and ipcache entries of just these addresses (their names only
   * gained addresses, so their label sets only grew), new identities into the policy first. A full
   * refresh instead when the policies changed since the last one (selectors, covering prefixes), or
   * when an address moved to another identity (the old one may have no address left).
   */
  private async learnedApply(addresses: ReadonlyMap<string, ReadonlySet<string>>): Promise<void> {
    const { engine, datapath } = this.deps;
    const ids = this.ids;
    const basis = this.refreshBasis;
    if (!ids || !basis || this.refreshQueued || basis.policies !== engine.parsed || basis.cidrs !== engine.compiled().cidrIdentities) return this.refresh();
    this.refreshing = true;
    try {
      const { added, ipcache } = this.cache.identitiesAdd(addresses, basis.matchers, ids, basis.coverOf);
      if (added.size > 0) {
        const r = await engine.remoteIdentitiesUpdate(added);
        if (r === undefined) await engine.applySliced();
      }
      let moved = false;
      this.hostAddressesReread();
      const policyKeys = this.policyKeysOf(engine.compiled());
      const labelsOf = (id: number) => ids.identities.get(id);
      const writes: Array<readonly [string, IpcacheEntry]> = [];
      for (const { cidr, identity } of ipcache) {
        if (!this.learnedMayWrite(cidr, identity, labelsOf, policyKeys)) {
          this.learnedYield(cidr, policyKeys);
          continue;
        }
        this.yielded.delete(cidr);
        const before = this.applied.get(cidr);
        if (before === identity) continue;
        writes.push([cidr, { identity, hostId: 0 }]);
        if (before !== undefined) moved = true;
      }
      // One write for the batch (one policy revision bump); recorded as applied only once it is in.
      if (writes.length) datapath.ipcacheUpsertMany(writes);
      // A resolver's address learned: its identity, which the fast path's verdicts were made with, changed.
      if (this.fast && writes.some(([cidr]) => this.fast!.isResolver(cidr.slice(0, cidr.lastIndexOf('/'))))) this.fast.forget({ verdicts: true });
      for (const [cidr, { identity }] of writes) this.applied.set(cidr, identity);
      if (moved) this.refreshSoon();
      // Known now: the next answer with these addresses may be released by the fast path itself.
      else if (this.fast && !this.refreshQueued) this.fastKnownAdd(addresses);
      this.saveSoon();
    } finally {
      this.refreshing = false;
    }
  }

  /** The learned (name, address) pairs the maps now hold, for the fast path (as learn() finds them known). */
  private fastKnownAdd(addresses: ReadonlyMap<string, ReadonlySet<string>>): void {
    for (const [address, names] of addresses) {
      const cidr = fqdnAddressCidr(address);
      if (!this.applied.has(cidr) && !this.yielded.has(cidr)) continue;
      for (const name of names) {
        const until = this.cache.expiresAt(name, address);
        if (until !== undefined) this.fast!.known(name, address, until);
      }
    }
  }

  /**
   * Brings identities, policy and ipcache in line with the cache and the policies' selectors. Under the
   * agent's mutex. Additions: identities and policy first, then the ipcache; removals the other way.
   */
  private async refresh(): Promise<void> {
    // Identities and learned entries change here: the fast path decides nothing until they are in again.
    this.fast?.forget({ verdicts: true, known: true });
    this.refreshing = true;
    try {
      await this.refreshLocked();
    } finally {
      this.refreshing = false;
    }
  }

  private async refreshLocked(): Promise<void> {
    const { engine, datapath } = this.deps;
    const selectors = fqdnSelectorsOf(engine.parsed);
    this.selectorsKey = this.policyKey();
    const cidrs = engine.compiled().cidrIdentities;
    if (this.cover?.cidrs !== cidrs) this.cover = { cidrs, fn: coverFn(cidrs.map((c) => cidrParsed(c.cidr))) };
    const coverOf = this.cover.fn;
    const next = this.cache.identities(selectors, this.ids?.keys, coverOf);
    this.refreshBasis = { policies: engine.parsed, cidrs, matchers: fqdnLabelMatchers(selectors), coverOf };
    const prev = this.ids?.identities ?? new Map<number, string[]>();
    const added = new Map<number, readonly string[]>();
    const removed = new Map<number, undefined>();
    for (const [id, labels] of next.identities) if (prev.get(id)?.join(';') !== labels.join(';')) added.set(id, labels);
    for (const id of prev.keys()) if (!next.identities.has(id)) removed.set(id, undefined);
    if (added.size > 0) {
      const r = await engine.remoteIdentitiesUpdate(added);
      if (r === undefined) await engine.applySliced();
    }
    const desired = new Map(next.ipcache.map((e) => [e.cidr, e.identity]));
    this.hostAddressesReread();
    const policyKeys = this.policyKeysOf(engine.compiled());
    const labelsOf = (id: number) => next.identities.get(id);
    for (const [cidr, identity] of desired) {
      if (!this.learnedMayWrite(cidr, identity, labelsOf, policyKeys)) {
        this.learnedYield(cidr, policyKeys);
        continue;
      }
      this.yielded.delete(cidr);
      if (this.applied.get(cidr) === identity) continue;
      datapath.ipcacheUpsert(cidr, { identity, hostId: 0 });
      this.applied.set(cidr, identity);
    }
    for (const cidr of [...this.applied.keys()]) if (!desired.has(cidr)) this.learnedRelease(cidr, policyKeys);
    for (const cidr of [...this.yielded]) if (!desired.has(cidr)) this.yielded.delete(cidr);
    if (removed.size > 0) await engine.remoteIdentitiesUpdate(removed);
    this.ids = next;
    this.saveSoon();
  }

  /**
   * Who else holds the ipcache key of a learned address, if anyone: the one place that says which
   * entry wins. The host's own addresses, this host's workloads and other nodes' workloads (remote
   * entries, host field not 0) always do: an FQDN identity never displaces theirs (as in Cilium), is
   * not written while they hold the key, and when one of them takes a key the proxy wrote, the proxy
   * leaves it to them (learnedRelease). A policy's own CIDR entry of the same host prefix (toCIDR
   * 169.254.169.254/32) is merged, as Cilium merges the two label sets: the learned identity carries
   * `cidr:<that prefix>` (coverOf: the longest policy prefix covering the address, here the prefix
   * itself), so every CIDR rule, allow or deny, that selects the prefix's identity selects it too
   * (fqdnCidrIdentities); it may stand there only then, and the policy's entry is written back when the
   * proxy lets the key go.
   */
  private learnedKeyHolder(cidr: string, policyKeys: ReadonlyMap<string, number>): LearnedKeyHolder | undefined {
    const address = cidr.slice(0, cidr.lastIndexOf('/'));
    if (this.hostAddressesRecent().has(address)) return { kind: 'host', identity: ReservedIdentity.host };
    const w = this.workloadOf(address);
    if (w) return { kind: 'workload', identity: w.identity };
    if (this.pinnedRemote?.has(cidr) || this.deps.engine.remoteAddressResolve(address) !== undefined) return { kind: 'remote' };
    const p = policyKeys.get(cidr);
    if (p !== undefined) return { kind: 'policy-cidr', identity: p };
    return undefined;
  }

  /** Whether the proxy may write `identity` (labels from `labelsOf`) at `cidr` now (learnedKeyHolder). */
  private learnedMayWrite(cidr: string, identity: number, labelsOf: (id: number) => readonly string[] | undefined, policyKeys: ReadonlyMap<string, number>): boolean {
    const holder = this.learnedKeyHolder(cidr, policyKeys);
    if (!holder) return true;
    return holder.kind === 'policy-cidr' && (labelsOf(identity)?.includes(`cidr:${cidr}`) ?? false);
  }

  /** Another holder has the key of a learned address: the proxy lets go of it if it held it, and waits. */
  private learnedYield(cidr: string, policyKeys: ReadonlyMap<string, number>): void {
    this.yielded.add(cidr);
    if (this.applied.has(cidr)) this.learnedRelease(cidr, policyKeys);
  }

  /**
   * Gives back a key the proxy wrote: what its other holder wants there (the host's, a workload's, the
   * policy CIDR's entry), left to its writer (another node's workload: the cluster watch wrote it over
   * the proxy's), or deleted when nobody else has it.
   */
  private learnedRelease(cidr: string, policyKeys: ReadonlyMap<string, number>): void {
    const { datapath } = this.deps;
    this.applied.delete(cidr);
    const holder = this.learnedKeyHolder(cidr, policyKeys);
    if (!holder) datapath.ipcacheDelete(cidr);
    else if (holder.kind !== 'remote') datapath.ipcacheUpsert(cidr, { identity: holder.identity, hostId: 0 });
  }

  /** The host-prefix entries of a compiled state's CIDR identities, by key (kept while that state is). */
  private policyKeysOf(compiled: CompiledPolicy | undefined): ReadonlyMap<string, number> {
    if (this.policyKeys && this.policyKeys.of === compiled) return this.policyKeys.keys;
    const keys = new Map<string, number>();
    for (const e of compiled?.ipcache ?? []) if (e.cidr.endsWith('/32') || e.cidr.endsWith('/128')) keys.set(e.cidr, e.identity);
    this.policyKeys = { of: compiled, keys };
    return keys;
  }

  /**
   * The learned entries a full ipcache sync keeps (agent/policy/ipcache-sync.ts), for the state it
   * writes: those the proxy wrote and may still hold; the others are their holders' (learnedKeyHolder).
   */
  private *ipcacheExtra(compiled: CompiledPolicy | undefined): Generator<readonly [string, number]> {
    const policyKeys = this.policyKeysOf(compiled);
    const labelsOf = (id: number) => this.ids?.identities.get(id);
    for (const [cidr, identity] of this.applied) if (this.learnedMayWrite(cidr, identity, labelsOf, policyKeys)) yield [cidr, identity];
  }

  /** Soon, once: whether a held key is free again, or (workloads changed) a workload took a written one. */
  private ownersRecheckSoon(workloads: boolean): void {
    if (this.ownersRecheckQueued) return;
    this.ownersRecheckQueued = true;
    setImmediate(() => {
      this.ownersRecheckQueued = false;
      // queued by a change just before stop(): the store may be closed by now
      if (this.stopping || this.refreshQueued) return;
      try {
        this.ownersRecheck(workloads);
      } catch (err) {
        this.deps.log.error({ err }, 'DNS steering: checking who holds learned addresses failed; the next change or expiry tick checks again');
      }
    });
  }

  /** Whether a learned key another holder took is free again, or a workload took one: then a refresh. */
  private ownersRecheck(workloads: boolean): void {
    const policyKeys = this.policyKeysOf(this.deps.engine.compiled());
    const labelsOf = (id: number) => this.ids?.identities.get(id);
    let due = false;
    for (const cidr of this.yielded) {
      if (this.learnedKeyHolder(cidr, policyKeys) === undefined) due = true;
      if (due) break;
    }
    if (!due && workloads) {
      for (const w of this.deps.store.workloadList()) {
        for (const cidr of [fqdnAddressCidr(w.ipv4), fqdnAddressCidr(w.ipv6)]) {
          const id = this.applied.get(cidr);
          if (id !== undefined && !this.learnedMayWrite(cidr, id, labelsOf, policyKeys)) due = true;
        }
        if (due) break;
      }
    }
    if (due) this.refreshSoon();
  }

  /**
   * The previous run's learned state, before the first compile: its FQDN identities (same numbers)
   * join the policy universe and its ipcache entries stay, so what the pinned maps hold for them is
   * what the restored agent compiles, and connections to learned addresses go on.
   */
  private async restore(): Promise<void> {
    const { store, engine, datapath, log, stateDir } = this.deps;
    const saved = dnsStateRead(stateDir);
    if (!saved) return;
    if ('error' in saved) {
      log.warn({ file: join(stateDir, DNS_STATE_FILE), error: saved.error }, 'DNS proxy: the learned state file is unusable; starting without it');
      return;
    }
    let policies: ParsedPolicy[];
    try {
      policies = policiesFromObjects(store.policyList().map((p) => p.document));
    } catch (err) {
      log.warn({ err }, 'DNS proxy: stored policies do not parse; learned state not restored');
      return;
    }
    // Written while running, expiry-only changes reach the file up to EXPIRY_SAVE_DELAY_MS late: never
    // restore one shorter. A clean stop's file is current.
    const lag = saved.complete ? 0 : EXPIRY_SAVE_DELAY_MS;
    // No longer than dns.proxy.maxTTL from now (a file of an earlier run may hold TTLs of decades).
    const latest = Date.now() + this.deps.config.proxy.maxTTL * 1000 + lag;
    // Nor special addresses (agent/dns/special-address.ts), which an earlier run learned.
    const names = saved.names.map((n) => ({ name: n.name, addresses: n.addresses.filter((a) => specialAddressKind(a.address) === undefined).map((a) => ({ ...a, expiresAt: Math.min(a.expiresAt + lag, latest) })) }));
    this.cache = FqdnCache.restore({ names }, { maxAddressesPerName: this.deps.config.proxy.maxIPsPerName, maxNamesPerAddress: this.deps.config.proxy.maxNamesPerIP });
    const live = new Set(store.workloadList().map((w) => w.endpointId));
    for (const owner of this.cache.owners()) if (typeof owner === 'number' && !live.has(owner)) this.cache.ownerRelease(owner);
    const next = this.cache.identities(fqdnSelectorsOf(policies), new Map(saved.identities), coverFn(policyCidrs(policies)));
    if (next.identities.size > 0) await engine.remoteIdentitiesUpdate(next.identities);
    // Before the cluster's watch adopts its pinned entries (agent.ts): those the map holds for other
    // nodes are theirs. The policy's CIDR entries are those of the stored CIDR identities.
    this.pinnedRemote = new Set(datapath.ipcacheList().flatMap(([cidr, e]) => (e.hostId !== 0 ? [cidr] : [])));
    const policyKeys = new Map([...store.cidrIdentities()].filter(([cidr]) => cidr.endsWith('/32') || cidr.endsWith('/128')));
    try {
      for (const { cidr, identity } of next.ipcache) {
        if (!this.learnedMayWrite(cidr, identity, (id) => next.identities.get(id), policyKeys)) {
          this.yielded.add(cidr);
          continue;
        }
        datapath.ipcacheUpsert(cidr, { identity, hostId: 0 });
        this.applied.set(cidr, identity);
      }
    } finally {
      this.pinnedRemote = undefined;
    }
    this.ids = next;
    log.info({ names: saved.names.length, addresses: this.applied.size }, 'DNS proxy: learned state restored');
  }

  /** Saves the learned state within delayMs (sooner if a save is due sooner already). */
  private saveSoon(delayMs = SAVE_DELAY_MS): void {
    const due = performance.now() + delayMs;
    if (this.saveTimer) {
      if (this.saveDue <= due) return;
      clearTimeout(this.saveTimer);
    }
    this.saveDue = due;
    this.saveTimer = setTimeout(() => this.save(), delayMs);
    this.saveTimer.unref();
  }

  /**
   * Writes the learned state while running, a slice of names per turn of the event loop (lookups are
   * answered between slices: dnsStateWriteSliced). One write at a time: a save due meanwhile follows it.
   */
  private save(): void {
    if (this.saveTimer) clearTimeout(this.saveTimer);
    this.saveTimer = undefined;
    if (this.saving) {
      this.saveAgain = true;
      return;
    }
    const file = join(this.deps.stateDir, DNS_STATE_FILE);
    this.saving = dnsStateWriteSliced(this.deps.stateDir, this.cache.snapshotNames(), () => [...(this.ids?.keys ?? [])], () => this.stopping)
      .then((replaced) => {
        if (replaced) this.savedRunning = true;
      })
      .catch((err: unknown) => this.deps.log.warn({ err, file }, 'DNS proxy: saving the learned state failed'))
      .finally(() => {
        this.saving = undefined;
        if (this.saveAgain && !this.stopping) this.saveSoon();
        this.saveAgain = false;
      });
  }

  /** At a clean stop: the whole file at once, every expiry current. */
  private saveComplete(): void {
    try {
      dnsStateWrite(this.deps.stateDir, { version: 1, names: this.cache.snapshot().names, identities: [...(this.ids?.keys ?? [])], complete: true });
      this.savedRunning = false;
    } catch (err) {
      this.deps.log.warn({ err, file: join(this.deps.stateDir, DNS_STATE_FILE) }, 'DNS proxy: saving the learned state failed');
    }
  }

  /** After a policy write: the steered endpoints follow the rules; new selectors get their identities. */
  private policyWritten(): void {
    this.fast?.forget({ verdicts: true });
    try {
      this.endpointsSync();
    } catch (err) {
      this.deps.log.error({ err }, 'DNS steering: writing the steered endpoints failed');
    }
    if (this.policyKey() !== this.selectorsKey) this.refreshSoon();
  }

  /** What FQDN identities depend on in the policies: the toFQDNs selectors and the CIDR prefixes (covering labels). */
  private policyKey(): string {
    const { engine } = this.deps;
    return JSON.stringify([fqdnSelectorsOf(engine.parsed), engine.compiled().cidrIdentities.map((c) => c.cidr)]);
  }

  private refreshSoon(): void {
    this.fast?.forget({ verdicts: true, known: true });
    if (this.refreshQueued) return;
    this.refreshQueued = true;
    setImmediate(() => {
      this.refreshQueued = false;
      if (this.stopping) return;
      this.deps.exclusive(() => this.refresh()).catch((err: unknown) => this.deps.log.error({ err }, 'DNS steering: updating FQDN identities failed'));
    });
  }

  private endpointsSync(): void {
    if (!this.maps || this.port === 0) return;
    const { store, engine } = this.deps;
    const eps = store.workloadList().map((w) => ({ endpointId: w.endpointId, labels: store.identityLabels(w.identity) ?? [] }));
    const ids = dnsSelectedEndpoints(engine.parsed, eps);
    const key = [...ids].sort((a, b) => a - b).join(',');
    if (key === this.endpointsKey) return;
    this.maps.endpointsSet(ids);
    this.endpointsKey = key;
    this.steered = ids;
  }

  private expireTick(): void {
    let inUse: Set<string> | undefined;
    const used = (address: string) => {
      inUse ??= new Set(this.deps.datapath.conntrackList().flatMap((c) => [c.srcAddr, c.dstAddr]));
      return inUse.has(address);
    };
    if (this.cache.expire(Date.now(), used)) this.refreshSoon();
    else if (this.yielded.size > 0) this.ownersRecheckSoon(false);
  }
}
