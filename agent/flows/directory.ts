import { reservedIdentityLabels } from '../identity/reserved.js';
import type { Store } from '../store/store.js';
import type { WorkloadRecord } from '../store/types.js';
import type { HubbleEndpoint } from './hubble.js';

function endpointOf(w: WorkloadRecord, labels: string[]): HubbleEndpoint {
  return {
    ID: w.endpointId,
    identity: w.identity,
    namespace: w.spec.namespace,
    labels,
    pod_name: w.spec.name,
    workloads: [{ name: w.spec.name, kind: w.spec.kind === 'netns' ? 'ExternalWorkload' : 'VirtualMachine' }],
  };
}

/**
 * The MACs on a workload's link, and the `ethernet` of a unicast packet each way (shared objects).
 * `workload`: the MAC it sends from (the guest NIC's for kinds vm and tap, else the peer device's);
 * `gateway`: the host side's, which the workload's gateway addresses resolve to.
 */
export interface EndpointL2 {
  workload: string;
  gateway: string;
  egress: { source: string; destination: string };
  ingress: { source: string; destination: string };
}

/** A workload's link MACs; undefined where the link has none (netkit in L3 mode) or the device is not known yet. */
export function endpointL2Of(w: WorkloadRecord): EndpointL2 | undefined {
  if (w.mode === 'netkit' || !w.observed) return undefined;
  const workload = (w.spec.vm?.mac ?? w.spec.tap?.mac ?? w.observed.peerMac).toLowerCase();
  const gateway = w.observed.hostMac.toLowerCase();
  if (!workload || !gateway) return undefined;
  return { workload, gateway, egress: { source: workload, destination: gateway }, ingress: { source: gateway, destination: workload } };
}

/**
 * What the flow pipeline knows about endpoints and identities, as plain maps — so enriching a flow is
 * a few hash lookups, never a query. Rebuilt from the store at start and after bulk changes
 * (namespace labels, workloads the watch removed); single workload changes update it in place.
 * Endpoint objects are shared by every flow that names them and must not be mutated: a change makes
 * a new object, so flows keep what was true when they were seen.
 */
export class EndpointDirectory {
  private byEndpointId = new Map<number, HubbleEndpoint>();
  private byAddress = new Map<string, HubbleEndpoint>();
  /** Local workloads by IPv4 address as a number: the flow hot path looks peers up without formatting. */
  private byIpv4 = new Map<number, HubbleEndpoint>();
  private identityLabels = new Map<number, string[]>();
  /** Local workloads per identity: labels of identities no workload has any more are dropped. */
  private identityRefs = new Map<number, number>();
  /** Each local endpoint's addresses (its keys in byAddress). */
  private addresses = new Map<number, [string, string]>();
  /** Peers that are not local workloads, per identity (one shared object each). */
  private remote = new Map<number, HubbleEndpoint>();
  /** Link MACs by the host-side device's ifindex (null: a link without MACs). */
  private l2ByIfindex = new Map<number, EndpointL2 | null>();
  private l2ReadAt = -Infinity;

  /**
   * Cluster mode: another node's workload at an address (from the cluster ipcache), so flows name it.
   * Looked up per flow; its objects are cached per address and identity like local ones.
   */
  remotePeer: ((address: string) => { identity: number; namespace: string; podName: string; labels: readonly string[] } | undefined) | undefined;
  private remoteByAddress = new Map<string, { ep: HubbleEndpoint; source: readonly string[] }>();
  /**
   * Names the DNS proxy learned (`source_names` / `destination_names`): `active` says whether it knows
   * any, `of` gives an address's (`ofIpv4` an IPv4 address by number, as events carry it, so no
   * address is formatted), undefined for none.
   */
  fqdnNames:
    | { active(): boolean; of(address: string): readonly string[] | undefined; ofIpv4(address: number): readonly string[] | undefined }
    | undefined;
  /** Cluster mode: labels of other nodes' and peer clusters' identities (the policy universe's). */
  remoteLabels: (identity: number) => string[] | undefined = () => undefined;

  constructor(private readonly store: Store) {
    this.refresh();
  }

  refresh(): void {
    const identityLabels = this.store.identityLabelsAll();
    const byEndpointId = new Map<number, HubbleEndpoint>();
    const byAddress = new Map<string, HubbleEndpoint>();
    const byIpv4 = new Map<number, HubbleEndpoint>();
    const identityRefs = new Map<number, number>();
    const addresses = new Map<number, [string, string]>();
    for (const w of this.store.workloadList()) {
      const ep = endpointOf(w, identityLabels.get(w.identity) ?? []);
      byEndpointId.set(w.endpointId, ep);
      byAddress.set(w.ipv4, ep);
      byAddress.set(w.ipv6, ep);
      if (w.ipv4) byIpv4.set(ipv4Number(w.ipv4), ep);
      addresses.set(w.endpointId, [w.ipv4, w.ipv6]);
      identityRefs.set(w.identity, (identityRefs.get(w.identity) ?? 0) + 1);
    }
    this.addresses = addresses;
    this.identityLabels = identityLabels;
    this.identityRefs = identityRefs;
    this.byEndpointId = byEndpointId;
    this.byAddress = byAddress;
    this.byIpv4 = byIpv4;
    this.remote = new Map();
    this.l2Read();
  }

  /**
   * The MACs of the link with this host-side ifindex. A device the reconciler re-created has a new
   * ifindex (and a veth new MACs): an unknown index reads the workloads again, at most once a second.
   */
  l2Of(ifindex: number): EndpointL2 | undefined {
    const known = this.l2ByIfindex.get(ifindex);
    if (known !== undefined) return known ?? undefined;
    if (performance.now() - this.l2ReadAt < 1000) return undefined;
    this.l2Read();
    return this.l2ByIfindex.get(ifindex) ?? undefined;
  }

  private l2Read(): void {
    this.l2ReadAt = performance.now();
    const byIfindex = new Map<number, EndpointL2 | null>();
    for (const w of this.store.workloadList()) if (w.observed?.hostIfindex) byIfindex.set(w.observed.hostIfindex, endpointL2Of(w) ?? null);
    this.l2ByIfindex = byIfindex;
  }

  /** A workload was registered or changed (labels, identity): `labels` are its identity's. */
  workloadSet(w: WorkloadRecord, labels: string[]): void {
    const old = this.byEndpointId.get(w.endpointId);
    if (old) this.forget(w.endpointId, old);
    const ep = endpointOf(w, labels);
    this.byEndpointId.set(w.endpointId, ep);
    this.byAddress.set(w.ipv4, ep);
    this.byAddress.set(w.ipv6, ep);
    if (w.ipv4) this.byIpv4.set(ipv4Number(w.ipv4), ep);
    this.addresses.set(w.endpointId, [w.ipv4, w.ipv6]);
    this.identityLabels.set(w.identity, labels);
    this.identityRefs.set(w.identity, (this.identityRefs.get(w.identity) ?? 0) + 1);
    this.remote.delete(w.identity);
    if (w.observed?.hostIfindex) this.l2ByIfindex.set(w.observed.hostIfindex, endpointL2Of(w) ?? null);
  }

  /** A workload was removed. */
  workloadRemove(w: WorkloadRecord): void {
    if (w.observed?.hostIfindex) this.l2ByIfindex.delete(w.observed.hostIfindex);
    const old = this.byEndpointId.get(w.endpointId);
    if (!old) return;
    this.forget(w.endpointId, old);
    this.byEndpointId.delete(w.endpointId);
  }

  private forget(endpointId: number, ep: HubbleEndpoint): void {
    for (const addr of this.addresses.get(endpointId) ?? []) if (this.byAddress.get(addr) === ep) this.byAddress.delete(addr);
    const v4 = this.addresses.get(endpointId)?.[0];
    if (v4 && this.byIpv4.get(ipv4Number(v4)) === ep) this.byIpv4.delete(ipv4Number(v4));
    this.addresses.delete(endpointId);
    const refs = (this.identityRefs.get(ep.identity) ?? 1) - 1;
    if (refs > 0) {
      this.identityRefs.set(ep.identity, refs);
    } else {
      this.identityRefs.delete(ep.identity);
      this.identityLabels.delete(ep.identity);
      this.remote.delete(ep.identity);
    }
  }

  endpointById(id: number): HubbleEndpoint | undefined {
    return this.byEndpointId.get(id);
  }

  /** The endpoint for a peer address: a local workload, else just the identity the datapath saw. */
  endpointForPeer(address: string, identity: number): HubbleEndpoint {
    return this.byAddress.get(address) ?? this.remoteEndpoint(address, identity);
  }

  /** endpointForPeer for an IPv4 address given as a number (ipv4Number). */
  endpointForPeerIpv4(address: number, identity: number): HubbleEndpoint {
    return this.byIpv4.get(address) ?? this.remoteEndpoint(address, identity);
  }

  /** Another node's workload (cluster mode), else the identity's shared endpoint. */
  private remoteEndpoint(address: string | number, identity: number): HubbleEndpoint {
    if (this.remotePeer) {
      // Only in cluster mode does a peer need the address as text.
      const text = typeof address === 'number' ? ipv4Text(address) : address;
      const peer = this.remotePeer(text);
      if (peer && peer.identity === identity) {
        const cached = this.remoteByAddress.get(text);
        // The labels array is the identity's own (replaced, never mutated, when the identity changes).
        if (cached && cached.source === peer.labels && cached.ep.identity === identity && cached.ep.pod_name === peer.podName && cached.ep.namespace === peer.namespace) return cached.ep;
        const ep: HubbleEndpoint = { identity, namespace: peer.namespace, labels: [...peer.labels], pod_name: peer.podName };
        if (this.remoteByAddress.size > 65_536) this.remoteByAddress.clear();
        this.remoteByAddress.set(text, { ep, source: peer.labels });
        return ep;
      }
    }
    let ep = this.remote.get(identity);
    if (!ep) {
      ep = { identity, labels: this.identityLabels.get(identity) ?? this.remoteLabels(identity) ?? reservedIdentityLabels(identity) };
      if (this.remote.size > 65_536) this.remote.clear();
      this.remote.set(identity, ep);
    }
    return ep;
  }
}

/** ipv4Number's inverse: dotted quad text. */
function ipv4Text(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** An IPv4 address as the unsigned 32-bit number of its bytes in network order (NaN for anything else). */
export function ipv4Number(address: string): number {
  const p = address.split('.');
  if (p.length !== 4) return NaN;
  return ((Number(p[0]) << 24) | (Number(p[1]) << 16) | (Number(p[2]) << 8) | Number(p[3])) >>> 0;
}
