// `drop_limit` (bpf/include/maps.h): each endpoint's drop event budgets and the drops over them it did
// not report, read from the map of the object the agent loaded.
import { DROP_LIMIT } from '../layout.gen.js';

const COUNTS = [DROP_LIMIT.fields.ingress_suppressed, DROP_LIMIT.fields.egress_suppressed];

/**
 * The drops an endpoint did not report, both directions together, from one `drop_limit` value in the
 * loaded object's layout. An earlier release's object (the upgrade runs this agent with it until the
 * new one replaces it) keeps one budget per endpoint in a 16-byte value whose count sits where
 * ingress_suppressed is now: the fields a shorter value lacks read as 0, so its count reads as before.
 */
export function dropLimitSuppressed(value: Buffer): bigint {
  let n = 0n;
  for (const f of COUNTS) if (value.length >= f.offset + f.size) n += value.readBigUInt64LE(f.offset);
  return n;
}
