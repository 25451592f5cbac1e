import { reservedIdentityLabels } from '../identity/reserved.js';
import type { SqliteStore } from '../store/sqlite-store.js';
import type { HubbleEndpoint } from './hubble.js';

/**
 * What the flow pipeline knows about endpoints and identities, as plain maps rebuilt from the store
 * whenever workloads or identities change — so enriching a flow is a few hash lookups, never a query.
 */
export class EndpointDirectory {
  private byEndpointId = new Map<number, HubbleEndpoint>();
  private byAddress = new Map<string, HubbleEndpoint>();
  private identityLabels = new Map<number, string[]>();

  constructor(private readonly store: SqliteStore) {
    this.refresh();
  }

  refresh(): void {
    const identityLabels = new Map<number, string[]>();
    for (const i of this.store.identityList()) identityLabels.set(i.id, i.labels);
    const byEndpointId = new Map<number, HubbleEndpoint>();
    const byAddress = new Map<string, HubbleEndpoint>();
    for (const w of this.store.workloadList()) {
      const ep: HubbleEndpoint = {
        ID: w.endpointId,
        identity: w.identity,
        namespace: w.spec.namespace,
        labels: identityLabels.get(w.identity) ?? [],
        pod_name: w.spec.name,
        workloads: [{ name: w.spec.name, kind: w.spec.kind === 'netns' ? 'ExternalWorkload' : 'VirtualMachine' }],
      };
      byEndpointId.set(w.endpointId, ep);
      byAddress.set(w.ipv4, ep);
      byAddress.set(w.ipv6, ep);
    }
    this.identityLabels = identityLabels;
    this.byEndpointId = byEndpointId;
    this.byAddress = byAddress;
  }

  endpointById(id: number): HubbleEndpoint | undefined {
    return this.byEndpointId.get(id);
  }

  /** The endpoint for a peer address: a local workload, else just the identity the datapath saw. */
  endpointForPeer(address: string, identity: number): HubbleEndpoint {
    const local = this.byAddress.get(address);
    if (local) return local;
    return { identity, labels: this.identityLabels.get(identity) ?? reservedIdentityLabels(identity) };
  }
}
