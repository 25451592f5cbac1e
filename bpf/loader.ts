// Loads the datapath object with libbpf: maps declared LIBBPF_PIN_BY_NAME are created under
// <pinRoot>/maps on first load and reused afterwards (state survives agent restarts and upgrades);
// programs are pinned under <pinRoot>/progs for inspection with bpftool.
import { existsSync, mkdirSync, statfsSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KernelError } from '../common/kernel-error.js';
import { kcall } from './errors.js';
import { CONNTRACK_MAP_FLAGS, CONNTRACK_MAP_MAX, CT_ENTRY, CT_KEY, DP_CONFIG, ENDPOINT_INFO } from './layout.gen.js';
import type { ConntrackMigration, ConntrackPinReport } from './maps/conntrack-migrate.js';
import { conntrackPinPrepare } from './maps/conntrack-migrate.js';
import { BpfMap } from './maps/map.js';
import type { NativeHandle } from '../common/native.js';
import { native } from '../common/native.js';

export const PROG_NAMES = ['from_workload', 'to_workload', 'to_workload_netkit'] as const;
export type ProgName = (typeof PROG_NAMES)[number];
export const MAP_NAMES = ['endpoints', 'endpoint_addrs', 'ipcache', 'policy', 'conntrack', 'events', 'metrics', 'config'] as const;
export type MapName = (typeof MAP_NAMES)[number];
/**
 * Maps that objects of earlier releases lack (the exact-match hashes in front of the ipcache and policy
 * tries, maps.h). Handed out when the object has them; the map writers fall back to the trie alone.
 */
export const OPTIONAL_MAP_NAMES = ['ipcache_exact', 'policy_exact', 'policy_wild', 'dns_proxy', 'dns_endpoints', 'dns_redirect', 'drop_limit'] as const;
export type OptionalMapName = (typeof OPTIONAL_MAP_NAMES)[number];

/** Where bash bpf/build.sh writes the object; KITNET_BPF_OBJECT overrides (packaging). */
export const OBJECT_PATH_DEFAULT =
  process.env.KITNET_BPF_OBJECT ?? fileURLToPath(new URL('../../bpf/build/kitnet.bpf.o', import.meta.url));

const BPF_FS_MAGIC = 0xcafe4a11;

export interface LoadedObject {
  readonly pinRoot: string;
  readonly progFds: Readonly<Record<ProgName, number>>;
  readonly progIds: Readonly<Record<ProgName, number>>;
  readonly maps: Readonly<Record<MapName, BpfMap>> & Readonly<Partial<Record<OptionalMapName, BpfMap>>>;
  /** A pinned conntrack map this build could not reuse as it was: replaced, or to migrate (bpf/index.ts). */
  readonly conntrackPin?: ConntrackMigration | { report: ConntrackPinReport };
  close(): void;
}

export function pinPaths(pinRoot: string): { maps: string; progs: string; links: string } {
  return { maps: join(pinRoot, 'maps'), progs: join(pinRoot, 'progs'), links: join(pinRoot, 'links') };
}

/** pinRoot must live on bpffs, or pinning fails later with a confusing errno. */
export function pinRootCheck(pinRoot: string): void {
  let dir = pinRoot;
  while (!existsSync(dir)) dir = join(dir, '..');
  const fsType = statfsSync(dir).type;
  if (fsType !== BPF_FS_MAGIC) {
    throw new KernelError({
      op: 'BPF_OBJ_PIN',
      errno: 22,
      hint: `${pinRoot} is not on bpffs (${dir} has fs type 0x${fsType.toString(16)}): mount -t bpf bpf /sys/fs/bpf`,
    });
  }
}

/**
 * A pinned map whose value size differs from this build's struct (an upgrade that added fields:
 * endpoint_info.host_mac, dp_config.drop_events_*) cannot be reused by libbpf. Its entries are read, the
 * pin removed (the running programs keep the old map until their links are updated), and migrate() writes
 * them into the new map: the structs only grow at their end, so the common prefix is kept and new fields
 * start zeroed (which both structs read as "the default").
 */
function valueGrowPrepare(mapsDir: string, name: MapName, valueSize: number): { migrate(map: BpfMap): number } | undefined {
  const pin = join(mapsDir, name);
  if (!existsSync(pin)) return undefined;
  const n = native();
  const fd = kcall(() => n.objGet(pin), undefined, { path: pin });
  let entries: Array<[Buffer, Buffer]>;
  try {
    const old = new BpfMap(name, fd);
    if (old.valueSize === valueSize) return undefined;
    entries = [...old.entries()];
  } finally {
    n.fdClose(fd);
  }
  unlinkSync(pin);
  return {
    migrate(map: BpfMap): number {
      for (const [k, v] of entries) {
        const value = Buffer.alloc(map.valueSize);
        v.copy(value, 0, 0, Math.min(v.length, value.length));
        map.update(k, value);
      }
      return entries.length;
    },
  };
}

export function objectLoad(pinRoot: string, objectPath = OBJECT_PATH_DEFAULT, mapSizes: Record<string, number> = {}): LoadedObject {
  pinRootCheck(pinRoot);
  const paths = pinPaths(pinRoot);
  for (const d of [paths.maps, paths.progs, paths.links]) mkdirSync(d, { recursive: true });
  const upgrade = valueGrowPrepare(paths.maps, 'endpoints', ENDPOINT_INFO.size);
  const configUpgrade = valueGrowPrepare(paths.maps, 'config', DP_CONFIG.size);
  const conntrackPin = conntrackPinPrepare(paths.maps, {
    keySize: CT_KEY.size,
    valueSize: CT_ENTRY.size,
    maxEntries: mapSizes.conntrack ?? CONNTRACK_MAP_MAX,
    flags: CONNTRACK_MAP_FLAGS,
  });
  const restore = () => (conntrackPin && 'restore' in conntrackPin ? conntrackPin.restore() : undefined);

  const n = native();
  let obj: ReturnType<typeof n.objectOpen>;
  try {
    obj = kcall(() => n.objectOpen(objectPath, paths.maps, mapSizes), undefined, { path: objectPath });
  } catch (err) {
    // libbpf unpins the maps it created when a load fails: the old conntrack map goes back to its pin
    restore();
    throw err;
  }
  const handle: NativeHandle = obj.handle;
  try {
    const progFds = {} as Record<ProgName, number>;
    const progIds = {} as Record<ProgName, number>;
    for (const p of PROG_NAMES) {
      const fd = obj.progs[p];
      if (fd === undefined) throw new Error(`BPF object ${objectPath} has no program ${p}`);
      progFds[p] = fd;
      progIds[p] = kcall(() => n.progInfo(fd)).id;
      // Re-pin so bpftool shows the running version; the old program stays alive while links use it.
      const pin = join(paths.progs, p);
      if (existsSync(pin)) unlinkSync(pin);
      kcall(() => n.objPin(fd, pin), undefined, { path: pin });
    }
    const maps = {} as Record<MapName, BpfMap> & Partial<Record<OptionalMapName, BpfMap>>;
    for (const m of MAP_NAMES) {
      const fd = obj.maps[m];
      if (fd === undefined) throw new Error(`BPF object ${objectPath} has no map ${m}`);
      maps[m] = new BpfMap(m, fd);
    }
    for (const m of OPTIONAL_MAP_NAMES) {
      const fd = obj.maps[m];
      if (fd !== undefined) maps[m] = new BpfMap(m, fd);
    }
    upgrade?.migrate(maps.endpoints);
    configUpgrade?.migrate(maps.config);
    let closed = false;
    return {
      pinRoot,
      progFds,
      progIds,
      maps,
      ...(conntrackPin ? { conntrackPin } : {}),
      close() {
        if (closed) return;
        closed = true;
        n.objectClose(handle);
      },
    };
  } catch (err) {
    n.objectClose(handle);
    restore();
    throw err;
  }
}
