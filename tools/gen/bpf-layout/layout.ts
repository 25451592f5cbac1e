import type { FieldSpec, ScalarType, StructSpec } from './structs.js';

// ---------------------------------------------------------------------------------------------------
// Layout computation (C natural alignment, which is what clang does for BPF).
// ---------------------------------------------------------------------------------------------------

const SIZE: Record<ScalarType, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

export interface FieldLayout extends FieldSpec {
  offset: number;
  size: number;
}
export interface StructLayout {
  name: string;
  size: number;
  align: number;
  fields: FieldLayout[];
}

export function structLayout(s: StructSpec): StructLayout {
  let off = 0;
  let align = 1;
  const fields: FieldLayout[] = [];
  for (const f of s.fields) {
    const a = SIZE[f.type];
    if (off % a !== 0) throw new Error(`${s.name}.${f.name}: offset ${off} not aligned to ${a}; add explicit padding`);
    const size = a * (f.count ?? 1);
    fields.push({ ...f, offset: off, size });
    off += size;
    align = Math.max(align, a);
  }
  if (off % align !== 0) throw new Error(`${s.name}: size ${off} leaves tail padding; add explicit padding`);
  return { name: s.name, size: off, align, fields };
}
