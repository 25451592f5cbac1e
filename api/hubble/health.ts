import { status, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { grpcError, streamRefusal, type HubbleContext } from './context.js';

/** The service name `hubble status` asks the health service about (Cilium's ObserverServiceName). */
export const OBSERVER_HEALTH_NAME = 'hubble.server.Observer';

const KNOWN = new Set(['', OBSERVER_HEALTH_NAME]);

/** grpc.health.v1.Health: SERVING once the agent serves, NOT_SERVING while it starts (Watch tells the change). */
export function healthService(ctx: HubbleContext): UntypedServiceImplementation {
  const current = () => (ctx.backend() ? 'SERVING' : 'NOT_SERVING');
  return {
    Check: (call: ServerUnaryCall<{ service?: string }, unknown>, cb: sendUnaryData<unknown>) => {
      const service = call.request.service ?? '';
      if (!KNOWN.has(service)) return cb(grpcError(status.NOT_FOUND, `unknown service "${service.slice(0, 128)}"`));
      cb(null, { status: current() });
    },
    Watch: (call: ServerWritableStream<{ service?: string }, unknown>) => {
      const service = call.request.service ?? '';
      const refused = streamRefusal(ctx);
      if (refused) return void call.emit('error', refused);
      call.write({ status: KNOWN.has(service) ? current() : 'SERVICE_UNKNOWN' });
      const serving = () => call.write({ status: 'SERVING' });
      if (KNOWN.has(service) && !ctx.backend()) ctx.servingWaiters.add(serving);
      const stop = () => {
        ctx.followers.delete(stop);
        ctx.servingWaiters.delete(serving);
      };
      ctx.followers.add(stop);
      call.on('cancelled', stop);
      call.on('close', stop);
    },
  };
}
