/** A kvstore value read as one JSON object, or why it is not one (values are written by anyone with etcd access). */
export function jsonObjectParse(value: string): { object: Record<string, unknown> } | { reason: string } {
  let v: unknown;
  try {
    v = JSON.parse(value);
  } catch {
    return { reason: 'value is not JSON' };
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) return { reason: 'value is not a JSON object' };
  return { object: v as Record<string, unknown> };
}
