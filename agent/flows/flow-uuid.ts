import { randomUUID } from 'node:crypto';

/**
 * Flow uuids: a random (version 4) uuid drawn once per agent run, its last group (48 bits) replaced by
 * a sequence number. As unique as a fresh random uuid per flow (the other 74 random bits differ
 * between runs and hosts, the sequence within a run), without drawing and formatting 16 random bytes
 * for every flow: the gRPC encoder writes the text straight from the number (ByteWriter.prefixedHex).
 */
const PREFIX = randomUUID().slice(0, 24); // xxxxxxxx-xxxx-4xxx-yxxx-
/** The uuid's text before its last group, as bytes. */
export const FLOW_UUID_PREFIX: Uint8Array = Buffer.from(PREFIX, 'latin1');
/** Hex digits of the last group. */
export const FLOW_UUID_SEQUENCE_DIGITS = 12;
const SEQUENCE_SPAN = 2 ** 48;

let sequence = 0;

/**
 * The next flow's sequence number (wraps after 2^48 flows: nine years at a million a second); with
 * count, the first of that many in a row (the others are flowUuidNext() of it).
 */
export function flowUuidTake(count = 1): number {
  const n = sequence;
  sequence = (sequence + count) % SEQUENCE_SPAN;
  return n;
}

/** The sequence number after n. */
export function flowUuidNext(n: number): number {
  return (n + 1) % SEQUENCE_SPAN;
}

/** The uuid's text for a sequence number. */
export function flowUuidText(n: number): string {
  return PREFIX + n.toString(16).padStart(FLOW_UUID_SEQUENCE_DIGITS, '0');
}
