// A workload device pair's spec, checked before the kernel sees it (with defaults filled in), and the
// MACs kitnet derives for it.
import { createHash } from 'node:crypto';
import { ipBytes, macBytes } from './attrs.js';
import { EndpointSpecError, aliasValidate, ifnameValidate } from './errors.js';
import type { DeviceMode, EndpointDeviceSpec } from './types.js';
import { KITNET_ALIAS_PREFIX } from './types.js';

const MODES: readonly DeviceMode[] = ['netkit', 'netkit-l2', 'veth'];

/** A locally administered unicast MAC derived from `seed` (stable across restarts and hosts). */
export function macDerive(seed: string): string {
  const h = createHash('sha256').update(seed).digest();
  h[0] = (h[0]! & 0xfe) | 0x02;
  return Array.from(h.subarray(0, 6)).map((b) => b.toString(16).padStart(2, '0')).join(':');
}

function ipValidate(field: string, ip: unknown, bytes: 4 | 16): string {
  const b = typeof ip === 'string' ? ipBytes(ip) : undefined;
  if (!b || b.length !== bytes) {
    throw new EndpointSpecError(field, `${field}: "${String(ip)}" is not a bare ${bytes === 4 ? 'IPv4' : 'IPv6'} address`);
  }
  return ip as string;
}

function macValidate(field: string, mac: string | undefined): string | undefined {
  if (mac === undefined) return undefined;
  const b = macBytes(mac);
  if (!b || (b[0]! & 1) !== 0 || b.every((x) => x === 0)) {
    throw new EndpointSpecError(field, `${field}: "${mac}" is not a unicast MAC address (aa:bb:cc:dd:ee:ff)`);
  }
  return mac.toLowerCase();
}

/** Checks a spec before the kernel sees it; returns it with defaults filled in. */
export function endpointSpecValidate(spec: EndpointDeviceSpec): EndpointDeviceSpec {
  if (!MODES.includes(spec.mode)) {
    throw new EndpointSpecError('mode', `mode "${String(spec.mode)}" is not one of ${MODES.join(', ')}`);
  }
  ifnameValidate('hostIfname', spec.hostIfname);
  const peerIfname = ifnameValidate('peerIfname', spec.peerIfname || 'eth0');
  aliasValidate('alias', spec.alias);
  if (!spec.alias.startsWith(KITNET_ALIAS_PREFIX)) {
    throw new EndpointSpecError('alias', `alias "${spec.alias}" must start with "${KITNET_ALIAS_PREFIX}" so kitnet can find its links`);
  }
  ipValidate('ipv4', spec.ipv4, 4);
  ipValidate('ipv6', spec.ipv6, 16);
  if (spec.mtu !== undefined && (!Number.isInteger(spec.mtu) || spec.mtu < 68 || spec.mtu > 65535)) {
    throw new EndpointSpecError('mtu', `mtu ${spec.mtu} is outside 68..65535`);
  }
  for (const f of ['headroom', 'tailroom'] as const) {
    const v = spec[f];
    if (v !== undefined && (!Number.isInteger(v) || v < 0 || v > 0xffff)) throw new EndpointSpecError(f, `${f} ${v} is outside 0..65535`);
  }
  if (spec.mode === 'netkit' && (spec.hostMac || spec.peerMac)) {
    throw new EndpointSpecError('peerMac', 'netkit in L3 mode has no MAC addresses; use mode netkit-l2 for fixed MACs');
  }
  const out: EndpointDeviceSpec = { ...spec, peerIfname };
  const hostMac = macValidate('hostMac', spec.hostMac);
  const peerMac = macValidate('peerMac', spec.peerMac);
  if (spec.mode === 'netkit-l2') {
    out.hostMac = hostMac ?? macDerive(`${spec.hostIfname}/host`);
    out.peerMac = peerMac ?? macDerive(`${spec.hostIfname}/peer`);
  } else {
    if (hostMac) out.hostMac = hostMac; else delete out.hostMac;
    if (peerMac) out.peerMac = peerMac; else delete out.peerMac;
  }
  return out;
}
