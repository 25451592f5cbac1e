/** The catalogue error a client gets for a failure of a lower layer during a workload change. */
import { KernelError, UnsupportedFeatureError, isMapFull } from '../common/kernel-error.js';
import { KitnetError } from '../common/errors.js';
import { IdentityExhaustedError } from './identity/allocator.js';
import { ClusterIdentityError, ClusterIdentityExhaustedError } from './cluster/identity-allocator.js';
import { IpamError } from './ipam.js';
import { WorkloadGoneError } from './reconciler.js';

/** Maps errors from lower layers to catalogue errors a client can act on. */
export function errorToKitnet(err: unknown, context: string): KitnetError {
  if (err instanceof KitnetError) return err;
  if (err instanceof IpamError) {
    const code = {
      BAD_ADDRESS: 'AGENT_ERR_IPAM_BAD_ADDRESS',
      OUT_OF_POOL: 'AGENT_ERR_IPAM_OUT_OF_POOL',
      ADDRESS_TAKEN: 'AGENT_ERR_IPAM_ADDRESS_TAKEN',
      POOL_EXHAUSTED: 'AGENT_ERR_IPAM_POOL_EXHAUSTED',
    } as const;
    return new KitnetError(code[err.code], err.message, { cause: err });
  }
  if (err instanceof WorkloadGoneError) return new KitnetError('AGENT_ERR_WORKLOAD_NETNS', `${context}: ${err.message}`, { field: 'netns', cause: err });
  if (err instanceof IdentityExhaustedError || err instanceof ClusterIdentityExhaustedError) return new KitnetError('AGENT_ERR_IDENTITY_EXHAUSTED', err.message, { cause: err });
  if (err instanceof ClusterIdentityError) return new KitnetError('AGENT_ERR_CLUSTER_UNAVAILABLE', `${context}: ${err.message}`, { cause: err });
  if (err instanceof UnsupportedFeatureError) {
    // netkit is asked for with `mode`; everything else the kernel may lack (tun for VMs) comes with `kind`
    return new KitnetError('AGENT_ERR_DATAPATH_UNSUPPORTED', `${context}: ${err.message}`, { field: err.feature === 'netkit' ? 'mode' : 'kind', cause: err });
  }
  if (err instanceof KernelError) {
    // Kernel refusals caused by the request itself: a route kitnet needs is taken in the namespace
    // (its own default route), or the interface name is.
    if (err.errnoName === 'EEXIST' && err.device?.netns && err.op === 'RTM_NEWROUTE') {
      return new KitnetError('AGENT_ERR_WORKLOAD_NETNS_ROUTES', `${context}: ${err.message}`, { field: 'netns', cause: err });
    }
    if (err.errnoName === 'EEXIST' && err.device?.netns) {
      return new KitnetError('AGENT_ERR_WORKLOAD_INTERFACE', `${context}: ${err.message}`, { field: 'interface', cause: err });
    }
    if (isMapFull(err)) return new KitnetError('AGENT_ERR_MAP_FULL', `${context}: ${err.message}; the registration was rolled back`, { cause: err });
    return new KitnetError('AGENT_ERR_KERNEL', `${context}: ${err.message}`, { cause: err });
  }
  return new KitnetError('AGENT_ERR_INTERNAL', `${context}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}
