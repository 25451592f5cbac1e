import { readFileSync, realpathSync } from 'node:fs';
import { arch, cpus, hostname, networkInterfaces, release, totalmem } from 'node:os';
import type { NetworkInterfaceInfo } from 'node:os';
import { join } from 'node:path';
import si from 'systeminformation';

export interface HostFacts {
  hostname: string;
  os: { distro: string; release: string; kernel: string; arch: string };
  cpu: { brand: string; cores: number; physicalCores: number };
  memoryBytes: number;
  /** Physical or default-route interfaces: where traffic leaves the host. */
  uplinks: Array<{ name: string; ipv4: string; ipv6: string; mac: string; speedMbps: number | null; default: boolean }>;
}

/**
 * Gathered once, while the agent starts: these facts do not change while it runs. Not awaited by the
 * start itself; `kitnet status` waits for them. systeminformation for the OS, CPU, memory and default
 * interface; the uplinks from node:os and sysfs, not from si.networkInterfaces(), which runs ~10
 * commands per interface (on a host with many workload devices, seconds of process starts).
 */
export async function hostFactsGather(): Promise<HostFacts> {
  const [os, cpu, mem, defaultIface] = await Promise.all([si.osInfo(), si.cpu(), si.mem(), si.networkInterfaceDefault().catch(() => '')]);
  return {
    hostname: os.hostname,
    os: { distro: os.distro, release: os.release, kernel: os.kernel, arch: os.arch },
    cpu: { brand: `${cpu.manufacturer} ${cpu.brand}`.trim(), cores: cpu.cores, physicalCores: cpu.physicalCores },
    memoryBytes: mem.total,
    uplinks: uplinksOf(networkInterfaces(), defaultIface),
  };
}

type Uplink = HostFacts['uplinks'][number];

/**
 * Where traffic leaves the host: the default-route interface, and every interface with an address that
 * is neither loopback nor virtual (sysfs places virtual devices under /sys/devices/virtual); never a
 * workload's device (kn*).
 */
export function uplinksOf(ifaces: NodeJS.Dict<NetworkInterfaceInfo[]>, defaultIface: string, sysfsNet = '/sys/class/net'): Uplink[] {
  const out: Uplink[] = [];
  for (const [name, addrs] of Object.entries(ifaces)) {
    if (!addrs?.length || name.startsWith('kn')) continue;
    const isDefault = name === defaultIface;
    if (!isDefault && (addrs.some((a) => a.internal) || deviceIsVirtual(sysfsNet, name))) continue;
    const v4 = addrs.find((a) => a.family === 'IPv4');
    // A global IPv6 address says more than the link-local one every interface has.
    const v6 = addrs.find((a) => a.family === 'IPv6' && !a.address.startsWith('fe80:')) ?? addrs.find((a) => a.family === 'IPv6');
    out.push({ name, ipv4: v4?.address ?? '', ipv6: v6?.address ?? '', mac: addrs[0]!.mac, speedMbps: linkSpeed(sysfsNet, name), default: isDefault });
  }
  return out;
}

function deviceIsVirtual(sysfsNet: string, name: string): boolean {
  try {
    return realpathSync(join(sysfsNet, name)).includes('/devices/virtual/');
  } catch {
    return true; // gone meanwhile, or no sysfs: not an uplink to report
  }
}

/** Mb/s as the driver reports it (-1: unknown to the driver), null when it reports nothing (down, no carrier). */
function linkSpeed(sysfsNet: string, name: string): number | null {
  try {
    const n = Number(readFileSync(join(sysfsNet, name, 'speed'), 'utf8').trim());
    return Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}

/** What node:os tells when gathering failed (no distro, no uplinks), so status still answers. */
export function hostFactsFallback(): HostFacts {
  const c = cpus();
  return { hostname: hostname(), os: { distro: '', release: '', kernel: release(), arch: arch() }, cpu: { brand: c[0]?.model ?? '', cores: c.length, physicalCores: c.length }, memoryBytes: totalmem(), uplinks: [] };
}
