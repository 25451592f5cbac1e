// A typed-size view of one BPF map fd: checks Buffer sizes before they reach the kernel (which reads
// exactly key_size / value_size bytes), handles per-CPU value arrays, and iterates keys.
import { kcall } from '../errors.js';
import { native } from '../../common/native.js';

const PERCPU_TYPES = new Set([5 /* PERCPU_HASH */, 6 /* PERCPU_ARRAY */, 10 /* LRU_PERCPU_HASH */]);

export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;

export class BpfMap {
  readonly keySize: number;
  readonly valueSize: number;
  /** Bytes of one lookup result: valueSize, or round_up(valueSize, 8) * possible CPUs for per-CPU maps. */
  readonly valueBufSize: number;
  readonly perCpu: boolean;
  readonly ncpus: number;
  /** BPF_MAP_TYPE_* */
  readonly type: number;
  /** max_entries as the kernel created the map (bpf/include/maps.h, sizes from tools/gen/bpf-layout.ts). */
  readonly maxEntries: number;

  constructor(
    readonly name: string,
    readonly fd: number,
  ) {
    const info = kcall(() => native().mapInfo(fd));
    this.keySize = info.keySize;
    this.valueSize = info.valueSize;
    this.type = info.type;
    this.maxEntries = info.maxEntries;
    this.perCpu = PERCPU_TYPES.has(info.type);
    this.ncpus = this.perCpu ? native().numPossibleCpus() : 1;
    this.valueBufSize = this.perCpu ? (Math.ceil(info.valueSize / 8) * 8) * this.ncpus : info.valueSize;
  }

  private checkKey(key: Buffer): void {
    if (key.length !== this.keySize) throw new RangeError(`map ${this.name}: key is ${key.length} bytes, want ${this.keySize}`);
  }

  update(key: Buffer, value: Buffer, flags = BPF_ANY): void {
    this.checkKey(key);
    if (value.length !== this.valueBufSize) throw new RangeError(`map ${this.name}: value is ${value.length} bytes, want ${this.valueBufSize}`);
    kcall(() => native().mapUpdate(this.fd, key, value, flags), undefined, { map: this });
  }

  lookup(key: Buffer): Buffer | undefined {
    const out = Buffer.alloc(this.valueBufSize);
    return this.lookupInto(key, out) ? out : undefined;
  }

  /**
   * lookup() into a buffer of the caller's (valueBufSize bytes), for reads on a hot path: no buffer per
   * call. Returns whether the key exists; `out` holds its value then.
   */
  lookupInto(key: Buffer, out: Buffer): boolean {
    this.checkKey(key);
    if (out.length !== this.valueBufSize) throw new RangeError(`map ${this.name}: value buffer is ${out.length} bytes, want ${this.valueBufSize}`);
    return kcall(() => native().mapLookup(this.fd, key, out));
  }

  /** True when the key existed. */
  delete(key: Buffer): boolean {
    this.checkKey(key);
    return kcall(() => native().mapDelete(this.fd, key));
  }

  *keys(): Generator<Buffer> {
    let prev: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(this.keySize);
      if (!kcall(() => native().mapNextKey(this.fd, prev, next))) return;
      yield next;
      prev = next;
    }
  }

  /** Entries present at iteration time; keys deleted concurrently are skipped. */
  *entries(): Generator<[Buffer, Buffer]> {
    for (const k of this.keys()) {
      const v = this.lookup(k);
      if (v) yield [k, v];
    }
  }
}
