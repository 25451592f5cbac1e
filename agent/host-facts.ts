import si from 'systeminformation';

export interface HostFacts {
  hostname: string;
  os: { distro: string; release: string; kernel: string; arch: string };
  cpu: { brand: string; cores: number; physicalCores: number };
  memoryBytes: number;
  /** Physical or default-route interfaces: where traffic leaves the host. */
  uplinks: Array<{ name: string; ipv4: string; ipv6: string; mac: string; speedMbps: number | null; default: boolean }>;
}

/** Gathered once at start: these facts do not change while the agent runs. */
export async function hostFactsGather(): Promise<HostFacts> {
  const [os, cpu, mem, ifaces, defaultIface] = await Promise.all([
    si.osInfo(),
    si.cpu(),
    si.mem(),
    si.networkInterfaces(),
    si.networkInterfaceDefault().catch(() => ''),
  ]);
  const list = Array.isArray(ifaces) ? ifaces : [ifaces];
  const uplinks = list
    .filter((i) => i.iface === defaultIface || (!i.virtual && !i.internal && i.type !== 'virtual'))
    .filter((i) => !i.iface.startsWith('kn'))
    .map((i) => ({
      name: i.iface,
      ipv4: i.ip4,
      ipv6: i.ip6,
      mac: i.mac,
      speedMbps: i.speed ?? null,
      default: i.iface === defaultIface,
    }));
  return {
    hostname: os.hostname,
    os: { distro: os.distro, release: os.release, kernel: os.kernel, arch: os.arch },
    cpu: { brand: `${cpu.manufacturer} ${cpu.brand}`.trim(), cores: cpu.cores, physicalCores: cpu.physicalCores },
    memoryBytes: mem.total,
    uplinks,
  };
}
