import type { ServerWritableStream, UntypedServiceImplementation } from '@grpc/grpc-js';
import { streamRefusal, type HubbleContext } from './context.js';

/**
 * peer.Peer/Notify: hubble-relay asks each server it knows for the nodes to connect to. A kitnet host
 * names itself once (PEER_ADDED) and keeps the stream open, as Cilium's peer service does between changes.
 */
export function peerService(ctx: HubbleContext): UntypedServiceImplementation {
  return {
    Notify: (call: ServerWritableStream<unknown, unknown>) => {
      const backend = ctx.backend();
      if (!backend) return void call.emit('error', ctx.startingError());
      const refused = streamRefusal(ctx);
      if (refused) return void call.emit('error', refused);
      call.write({
        name: backend.nodeName,
        address: ctx.address(),
        type: 'PEER_ADDED',
        ...(ctx.tls.enabled ? { tls: { server_name: ctx.tls.serverName } } : {}),
      });
      const stop = () => {
        ctx.followers.delete(stop);
      };
      ctx.followers.add(stop);
      call.on('cancelled', stop);
      call.on('close', stop);
    },
  };
}
