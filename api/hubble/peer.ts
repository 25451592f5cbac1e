import type { ServerWritableStream, UntypedServiceImplementation } from '@grpc/grpc-js';
import type { ClusterNode } from './backend.js';
import { peerAddress } from './cluster-peers.js';
import { streamRefusal, type HubbleContext } from './context.js';

type ChangeType = 'PEER_ADDED' | 'PEER_DELETED' | 'PEER_UPDATED';

/**
 * peer.Peer/Notify: hubble-relay asks each server it knows for the nodes to connect to. A kitnet host
 * names itself (PEER_ADDED) and, in cluster mode, every other node of the cluster at its node address
 * and this host's Hubble port; then it keeps the stream open and tells of nodes that join, change or
 * leave (their lease ran out), as Cilium's peer service does. Without a TCP listener here only this
 * host is named (the other nodes' port is unknown).
 */
export function peerService(ctx: HubbleContext): UntypedServiceImplementation {
  return {
    Notify: (call: ServerWritableStream<unknown, unknown>) => {
      const backend = ctx.backend();
      if (!backend) return void call.emit('error', ctx.startingError());
      const refused = streamRefusal(ctx);
      if (refused) return void call.emit('error', refused);
      const note = (name: string, address: string, type: ChangeType, serverName = name) =>
        call.write({ name, address, type, ...(ctx.tls.enabled ? { tls: { server_name: serverName } } : {}) });
      note(backend.nodeName, ctx.address(), 'PEER_ADDED', ctx.tls.serverName);
      // Other nodes by name: the address last announced.
      const announced = new Map<string, string>();
      const announce = (nodes: readonly ClusterNode[]) => {
        for (const n of nodes) {
          const address = peerAddress(n, ctx.address());
          if (!address || n.name === backend.nodeName || announced.get(n.name) === address) continue;
          note(n.name, address, announced.has(n.name) ? 'PEER_UPDATED' : 'PEER_ADDED');
          announced.set(n.name, address);
        }
      };
      announce(backend.clusterNodes?.list() ?? []);
      const unfollow = backend.clusterNodes?.follow((changed, gone) => {
        announce(changed);
        for (const name of gone) {
          const address = announced.get(name);
          if (address === undefined) continue;
          announced.delete(name);
          note(name, address, 'PEER_DELETED');
        }
      });
      const stop = () => {
        unfollow?.();
        ctx.followers.delete(stop);
      };
      ctx.followers.add(stop);
      call.on('cancelled', stop);
      call.on('close', stop);
    },
  };
}
