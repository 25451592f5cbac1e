// A pinned `conntrack` map that this build cannot reuse as it is. libbpf refuses a pinned map whose
// flags or size differ from the object's (an upgrade that changed CONNTRACK_MAP_FLAGS or
// CONNTRACK_MAP_MAX): the load would fail, and removing the pin by hand would drop every tracked
// connection (their next packet in the original direction is checked by policy again, and a reply
// whose entry is gone counts as a new connection the other way). Instead the loader takes the old map
// aside (pin removed, fd kept), lets libbpf create the new one, and copies the entries over twice:
// once right after the load, and once more after every pinned link runs the new programs, for the
// connections the old programs created or touched in between (bpf/index.ts, datapathLoad).
//
// A pinned object that cannot hold connections of this build (not a map, another map type, key or
// value size) is not copied: it is replaced, and the caller logs why.
import { existsSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { KernelError } from '../../common/kernel-error.js';
import type { MapInfo } from '../../common/native.js';
import { native } from '../../common/native.js';
import { kcall } from '../errors.js';
import { CT_ENTRY } from '../layout.gen.js';
import type { BpfMap } from './map.js';
import { BPF_ANY } from './map.js';

export const BPF_MAP_TYPE_LRU_HASH = 9;
const BPF_MAP_TYPE_HASH = 1;
const LAST_SEEN_OFFSET = CT_ENTRY.fields.last_seen_ns.offset;

/** What this build creates (the object's map definition, after any size override). */
export interface ConntrackMapWant {
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

type MapShape = Pick<MapInfo, 'type' | 'keySize' | 'valueSize' | 'maxEntries' | 'flags'>;

/** What the loader did with the pinned map; `migrated` counts entries once finish() ran. */
export interface ConntrackPinReport {
  action: 'migrate' | 'replace';
  /** Operator text: what differed. */
  reason: string;
  old?: MapShape;
  want: ConntrackMapWant;
}

export interface ConntrackMigration {
  readonly report: ConntrackPinReport;
  /** Every entry of the old map into the new one; returns how many were copied. */
  copy(map: BpfMap): number;
  /**
   * Once no program uses the old map any more: the entries it has that the new one lacks, and those
   * the old programs saw a later packet of than the new map did (last_seen_ns), copied again; then the
   * old map is released. Returns how many were written.
   */
  finish(map: BpfMap): number;
  /** The load failed: pin the old map back where it was (if the path is free) and release it. */
  restore(): void;
  /** Release the old map without copying (idempotent). */
  close(): void;
}

function shapeText(s: MapShape): string {
  return `type ${s.type}, key ${s.keySize} B, value ${s.valueSize} B, max_entries ${s.maxEntries}, flags 0x${s.flags.toString(16)}`;
}

/**
 * Looks at `<mapsDir>/conntrack` before the object is loaded. undefined: no pin, or one libbpf reuses as
 * it is. A replaced pin is gone when this returns (report only); a migrated one is gone from the path
 * and held open by the returned migration. A directory at the path is an error (nothing is removed).
 */
export function conntrackPinPrepare(mapsDir: string, want: ConntrackMapWant): ConntrackMigration | { report: ConntrackPinReport } | undefined {
  const pin = join(mapsDir, 'conntrack');
  if (!existsSync(pin)) return undefined;
  if (statSync(pin).isDirectory()) {
    throw new KernelError({ op: 'BPF_OBJ_GET', errno: 21, hint: `${pin} is a directory, where kitnet pins its conntrack map: remove it (rmdir) and start again` });
  }
  const n = native();
  const fd = kcall(() => n.objGet(pin), undefined, { path: pin });
  let info: MapInfo;
  try {
    info = n.mapInfo(fd);
  } catch {
    // a program or link pinned there: no entries to keep
    n.fdClose(fd);
    unlinkSync(pin);
    return { report: { action: 'replace', reason: `${pin} is not a BPF map`, want } };
  }
  const old: MapShape = { type: info.type, keySize: info.keySize, valueSize: info.valueSize, maxEntries: info.maxEntries, flags: info.flags };
  const copyable = (old.type === BPF_MAP_TYPE_LRU_HASH || old.type === BPF_MAP_TYPE_HASH) && old.keySize === want.keySize && old.valueSize === want.valueSize;
  if (!copyable) {
    n.fdClose(fd);
    unlinkSync(pin);
    const reason = `the pinned map (${shapeText(old)}) cannot hold this version's connections (key ${want.keySize} B, value ${want.valueSize} B): replaced, its entries dropped`;
    return { report: { action: 'replace', reason, old, want } };
  }
  if (old.type === BPF_MAP_TYPE_LRU_HASH && old.maxEntries === want.maxEntries && old.flags === want.flags) {
    n.fdClose(fd);
    return undefined;
  }
  unlinkSync(pin);
  const reason = `the pinned map (${shapeText(old)}) differs from this version's (max_entries ${want.maxEntries}, flags 0x${want.flags.toString(16)}): entries copied into a new map`;
  return migrationOf(fd, pin, { action: 'migrate', reason, old, want });
}

function migrationOf(oldFd: number, pin: string, report: ConntrackPinReport): ConntrackMigration {
  const n = native();
  const oldSize = report.old!;
  let fd = oldFd;
  const dump = (map: { fd: number; keySize: number; valueSize: number; maxEntries: number }) => {
    try {
      return n.mapDumpBatch(map.fd, map.keySize, map.valueSize, map.maxEntries);
    } catch {
      return kcall(() => n.mapDump(map.fd, map.keySize, map.valueSize, map.maxEntries));
    }
  };
  const oldDump = () => dump({ fd, keySize: oldSize.keySize, valueSize: oldSize.valueSize, maxEntries: oldSize.maxEntries });
  const write = (map: BpfMap, keys: Buffer, values: Buffer): number => {
    if (!keys.length) return 0;
    try {
      return n.mapUpdateBatch(map.fd, keys, values, map.keySize, map.valueSize, BPF_ANY);
    } catch {
      // a kernel without batch updates for this map type: one by one
      for (let i = 0; i * map.keySize < keys.length; i++) {
        map.update(keys.subarray(i * map.keySize, (i + 1) * map.keySize), values.subarray(i * map.valueSize, (i + 1) * map.valueSize));
      }
      return keys.length / map.keySize;
    }
  };
  const close = () => {
    if (fd >= 0) n.fdClose(fd);
    fd = -1;
  };
  return {
    report,
    copy(map) {
      if (fd < 0) return 0;
      const d = oldDump();
      return write(map, d.keys.subarray(0, d.count * map.keySize), d.values.subarray(0, d.count * map.valueSize));
    },
    finish(map) {
      if (fd < 0) return 0;
      try {
        const ks = map.keySize;
        const vs = map.valueSize;
        const now = dump(map);
        const seen = new Map<string, bigint>();
        for (let i = 0; i < now.count; i++) {
          seen.set(now.keys.toString('latin1', i * ks, (i + 1) * ks), now.values.readBigUInt64LE(i * vs + LAST_SEEN_OFFSET));
        }
        const d = oldDump();
        const keys: Buffer[] = [];
        const values: Buffer[] = [];
        for (let i = 0; i < d.count; i++) {
          const have = seen.get(d.keys.toString('latin1', i * ks, (i + 1) * ks));
          if (have !== undefined && have >= d.values.readBigUInt64LE(i * vs + LAST_SEEN_OFFSET)) continue;
          keys.push(d.keys.subarray(i * ks, (i + 1) * ks));
          values.push(d.values.subarray(i * vs, (i + 1) * vs));
        }
        return write(map, Buffer.concat(keys), Buffer.concat(values));
      } finally {
        close();
      }
    },
    restore() {
      if (fd < 0) return;
      try {
        if (!existsSync(pin)) n.objPin(fd, pin);
      } finally {
        close();
      }
    },
    close,
  };
}
