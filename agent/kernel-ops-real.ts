import type { KitnetDatapath } from '../bpf/index.js';
import * as netkit from '../netkit/index.js';
import type { KernelOps } from './kernel-ops.js';

export function kernelOpsReal(datapath: KitnetDatapath): KernelOps {
  return {
    datapath,
    features: () => netkit.featuresProbe(),
    netnsValidate: async (path) => {
      await netkit.netnsPathValidate(path);
    },
    netnsSurvey: (path) => netkit.netnsSurvey(path),
    netnsId: (path) => netkit.netnsPathId(path).catch(() => undefined),
    netnsReserved: () => netkit.netnsReservedIds(),
    deviceDelete: (name) => netkit.endpointDeviceDelete(name),
    deviceObserve: (spec) => netkit.endpointDeviceObserve(spec),
    deviceRepair: (spec) => netkit.endpointDeviceRepair(spec),
    linksList: () => netkit.kitnetLinksList(),
    linkRemovalsWatch: (onGone, onResync) => netkit.linkRemovalsWatch(onGone, onResync),
    addressChangesWatch: (onChange) => netkit.addressChangesWatch(onChange),
    hostAddressesList: () => netkit.hostAddressesList(),
    hostLocalDeliveryList: () => netkit.hostLocalDeliveryList(),
    vmNetnsEnsure: (spec) => netkit.vmNetnsEnsure(spec),
    vmPlumbingCreate: (spec) => netkit.vmPlumbingCreate(spec),
    vmPlumbingObserve: (spec) => netkit.vmPlumbingObserve(spec),
    vmPlumbingDelete: (spec) => netkit.vmPlumbingDelete(spec),
    tapAdopt: (spec) => netkit.tapAdopt(spec),
    tapObserve: (spec) => netkit.tapObserve(spec),
    tapRelease: (spec) => netkit.tapRelease(spec),
    deviceOpen: (spec) => netkit.endpointDeviceOpen(spec),
    deviceClose: (spec) => netkit.endpointDeviceClose(spec),
  };
}
