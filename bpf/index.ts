// The datapath's public surface for agent/: load the object (maps pinned and reused), attach endpoints
// with pinned links, write endpoint/ipcache state, read flow events. Everything kernel-facing throws
// KernelError (common/kernel-error.ts) with a hint.
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { DatapathImpl } from './datapath.js';
import type { KitnetDatapath } from './kitnet-datapath.js';
import { linkDetach, linkList, linksRetarget } from './links.js';
import type { LoadedObject } from './loader.js';
import { objectLoad, pinPaths, pinRootCheck } from './loader.js';
import type { FillMapName } from './map-fill.js';
import { PIN_ROOT_DEFAULT } from './types.js';

export * from './types.js';
export type { AttachResult, LinkRole } from './links.js';
export { LINK_ROLES, linkIsCurrent, linkIsOnDevice, progForRole } from './links.js';
export type { DatapathConfig } from './maps/config.js';
export type { DnsSteeringMaps, DnsProxyAddress } from './maps/dns.js';
export type { ConntrackEntry } from './maps/conntrack.js';
export type { Counter, MetricName } from './maps/metrics.js';
export type { LinkInfo, TestRunResult } from '../common/native.js';
export type { ProgName } from './loader.js';
/** Whether a pin root lies on bpffs (statfs only): the agent checks it with its config, before the lock. */
export { pinRootCheck } from './loader.js';
export { KernelError, UnsupportedFeatureError } from '../common/kernel-error.js';
export { VerifierError } from './errors.js';
export { DROP_REASON, DROP_REASON_DESC } from './layout.gen.js';
/** endpoint_info.flags for endpointUpsert: anti-spoofing (source IP / MAC must be the workload's), L3 device. */
export { EP_F_ENFORCE_SRC_IP, EP_F_ENFORCE_SRC_MAC, EP_F_NO_L2 } from './layout.gen.js';
/** Gateways of every workload (169.254.1.1, fe80::1): the datapath answers ARP / NS for them (EndpointInfo.hostMac). */
export { GATEWAY_IPV4, GATEWAY_IPV6 } from './layout.gen.js';
/** Policy map layout constants (struct policy_key / policy_value, prefix lengths, capacity). */
export {
  POLICY_F_DENY,
  POLICY_KEY,
  POLICY_VALUE,
  POLICY_MAP_MAX,
  POLICY_PREFIX_ANY_PROTO,
  POLICY_PREFIX_PROTO,
  POLICY_PREFIX_FULL,
} from './layout.gen.js';
export { PolicyApplyError } from './maps/policy.js';
export { policyEntryDecode } from './maps/policy-key.js';
export type { KitnetDatapath } from './kitnet-datapath.js';
export { FILL_MAP_NAMES } from './map-fill.js';
export type { FillMapName } from './map-fill.js';

/**
 * Load the datapath object. Maps are created under `<pinRoot>/maps` on first load and reused afterwards,
 * so endpoint, ipcache and conntrack state survive agent restarts; already pinned links are adopted by
 * attach(). Throws KernelError (VerifierError for a rejected program) with a hint.
 */
export async function datapathLoad(
  opts: {
    pinRoot?: string;
    objectPath?: string;
    /** Size of the flow event ring buffer (a power of two, at least a page); default EVENTS_RINGBUF_BYTES. */
    eventsRingBytes?: number;
    /**
     * Fill the exact-match hashes from the tries at load (default true). Off only for readers that
     * must see the maps as they were left (test/helpers/consistency.ts checks them with exactCheck).
     */
    exactSync?: boolean;
    /**
     * max_entries of maps that fill with state, instead of the generated sizes (capacity tests: a small
     * policy map fills with a few workloads). Only for a fresh pin root: libbpf refuses a pinned map of
     * another size (except `conntrack`, whose entries are migrated into a map of the size asked for).
     */
    mapSizes?: Partial<Record<FillMapName, number>>;
    /** Where the load says what it did to pinned state it could not reuse (the daemon's pino logger). */
    log?: DatapathLoadLog;
  } = {},
): Promise<KitnetDatapath> {
  const pinRoot = opts.pinRoot ?? PIN_ROOT_DEFAULT;
  const sizes: Record<string, number> = { ...opts.mapSizes };
  if (opts.eventsRingBytes !== undefined) {
    const b = opts.eventsRingBytes;
    if (b < 4096 || (b & (b - 1)) !== 0) throw new RangeError(`eventsRingBytes ${b} must be a power of two of at least 4096`);
    sizes.events = b;
    // The ring only carries events to a reader; a pinned ring of another size is dropped rather
    // than refused (events written while no agent reads are lost either way).
    rmSync(join(pinPaths(pinRoot).maps, 'events'), { force: true });
  }
  const obj = objectLoad(pinRoot, opts.objectPath, sizes);
  let dp: DatapathImpl;
  try {
    dp = new DatapathImpl(obj, opts.exactSync ?? true);
  } catch (err) {
    if (obj.conntrackPin && 'close' in obj.conntrackPin) obj.conntrackPin.close();
    obj.close();
    throw err;
  }
  conntrackPinSettle(obj, opts.log);
  return dp;
}

/** The subset of a pino logger the load uses. */
export interface DatapathLoadLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/**
 * A pinned conntrack map of another flags or size (an upgrade): its entries are copied into the new map,
 * every pinned link is switched to the new programs at once (so the old map stops changing), and what
 * the old programs wrote meanwhile is copied again; no tracked connection is lost. One that could not
 * hold this version's entries was replaced: said as a warning.
 */
function conntrackPinSettle(obj: LoadedObject, log: DatapathLoadLog | undefined): void {
  const pin = obj.conntrackPin;
  if (!pin) return;
  const { report } = pin;
  if (!('copy' in pin)) {
    log?.warn({ map: 'conntrack', pinRoot: obj.pinRoot, old: report.old, want: report.want }, `conntrack map replaced: ${report.reason}; tracked connections are checked by policy again`);
    return;
  }
  const t0 = performance.now();
  let copied: number, again: number, links: ReturnType<typeof linksRetarget>;
  try {
    copied = pin.copy(obj.maps.conntrack);
    links = linksRetarget(obj.pinRoot, obj.progFds, obj.progIds);
    again = pin.finish(obj.maps.conntrack);
  } catch (err) {
    // Not worth failing the start over: the connections are then checked by policy again.
    pin.close();
    log?.warn({ map: 'conntrack', pinRoot: obj.pinRoot, old: report.old, want: report.want, err }, `conntrack map migration failed part-way (${report.reason}); connections not copied are checked by policy again`);
    return;
  }
  const fields = { map: 'conntrack', pinRoot: obj.pinRoot, old: report.old, want: report.want, copied, copiedAgain: again, linksSwitched: links.updated, ms: Math.round(performance.now() - t0) };
  if (links.failed.length) {
    log?.warn({ ...fields, linksFailed: links.failed }, `conntrack map migrated (${report.reason}); some links still run the old programs until the workload is reconciled`);
  } else {
    log?.info(fields, `conntrack map migrated: ${report.reason}`);
  }
}

/** Detach every pinned link and remove every pin under pinRoot (maps go with their last user). Idempotent. */
export async function datapathUnpinAll(pinRoot: string = PIN_ROOT_DEFAULT): Promise<void> {
  if (!existsSync(pinRoot)) return;
  pinRootCheck(pinRoot);
  for (const ifname of linkList(pinRoot)) linkDetach(pinRoot, ifname);
  rmSync(pinRoot, { recursive: true, force: true });
}
