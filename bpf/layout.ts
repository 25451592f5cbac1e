// Generic encode/decode of the generated struct layouts (bpf/layout.gen.ts). Used for map keys and
// values, where clarity beats speed; the flow decoder (flow-decode.ts) has its own unrolled path.
import type { StructLayout } from './layout.gen.js';

export type FieldValue = number | bigint | Uint8Array;
export type StructValues = Record<string, FieldValue>;

/** Encode named fields into a zeroed Buffer of the struct's size; absent fields (and padding) stay 0. */
export function structEncode(layout: StructLayout, values: StructValues, out = Buffer.alloc(layout.size), base = 0): Buffer {
  for (const [name, v] of Object.entries(values)) {
    const f = layout.fields[name];
    if (!f) throw new TypeError(`struct ${layout.name} has no field ${name}`);
    const o = base + f.offset;
    if (f.count) {
      if (!(v instanceof Uint8Array) || v.length > f.size) throw new TypeError(`${layout.name}.${name}: expected up to ${f.size} bytes`);
      out.set(v, o);
      continue;
    }
    switch (f.type) {
      case 'u8':
        out.writeUInt8(Number(v), o);
        break;
      case 'u16':
        out.writeUInt16LE(Number(v), o);
        break;
      case 'u32':
        out.writeUInt32LE(Number(v), o);
        break;
      case 'u64':
        out.writeBigUInt64LE(BigInt(v as number | bigint), o);
        break;
    }
  }
  return out;
}

/** Decode every field (u64 as bigint, arrays as copies). */
export function structDecode(layout: StructLayout, buf: Buffer, base = 0): StructValues {
  const r: StructValues = {};
  for (const [name, f] of Object.entries(layout.fields)) {
    const o = base + f.offset;
    if (f.count) r[name] = Uint8Array.prototype.slice.call(buf, o, o + f.size);
    else if (f.type === 'u8') r[name] = buf.readUInt8(o);
    else if (f.type === 'u16') r[name] = buf.readUInt16LE(o);
    else if (f.type === 'u32') r[name] = buf.readUInt32LE(o);
    else r[name] = buf.readBigUInt64LE(o);
  }
  return r;
}
