// netkit/: rtnetlink for kitnet — netkit and veth pairs, addresses, routes, neighbours, network
// namespaces and capability probes. Knows nothing of policy or identities. This file is the API
// agent/ codes against; the modules behind it are split by kernel object.
export type { DeviceMode, EndpointDevice, EndpointDeviceSpec, KernelFeatures, KitnetLink } from './types.js';
export { GATEWAY_V4, GATEWAY_V6, KITNET_ALIAS_PREFIX } from './types.js';

export { featuresProbe, PROBE_ALIAS } from './probe.js';
export { endpointDeviceClose, endpointDeviceCreate, endpointDeviceDelete, endpointDeviceOpen, endpointDeviceRepair, kitnetLinksList } from './endpoint-device.js';
export { endpointDeviceObserve } from './endpoint-observe.js';
export { endpointSpecValidate, macDerive } from './endpoint-spec.js';
export { netkitPeerPolicySet, NETKIT_REQUIREMENT } from './netkit.js';
export type { NetkitPolicy } from './netkit.js';
export { hostForwardingEnsure } from './sysctl.js';
export { hostAddressesList, hostLocalDeliveryList, hostLoopbackAddressEnsure } from './host-address.js';
export type { HostAddress } from './host-address.js';
export { RCU_EXPEDITED_PATH, rcuExpeditedGet, rcuExpeditedSet } from './rcu.js';
export { netnsBindingCheck, netnsCreate, netnsDelete, netnsIdEqual, netnsPathId, netnsPathOf, netnsPathValidate, netnsReservedIds, NETNS_RUN_DIR } from './netns.js';
export type { NetnsId } from './netns.js';
export { netnsSurvey } from './netns-survey.js';
export type { NetnsSurvey } from './netns-survey.js';
export { EndpointSpecError } from './errors.js';
export { addressChangesWatch, linkRemovalsWatch } from './monitor.js';
export type { LinkGone, LinkMonitor } from './monitor.js';
export {
  tapAdopt, tapObserve, tapRelease, vmNetnsEnsure, vmNetnsNameFor, vmPlumbingCreate, vmPlumbingDelete, vmPlumbingObserve,
} from './vm-plumbing.js';
export type { TapAdoptSpec, TapAdopted, VmPlumbing, VmPlumbingSpec } from './vm-plumbing.js';
