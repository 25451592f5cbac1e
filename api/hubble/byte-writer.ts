/**
 * A protobuf writer into one reusable buffer, with the protobufjs Writer methods the flow encoder uses
 * (uint32, int32, int64, bool, string, bytes, fork/ldelim, finish). protobufjs's Writer records every
 * field as an operation object and copies them out in finish(): a few dozen objects per flow, which at
 * 100k+ flows/s is most of the encoder's time and the garbage collector's. This one writes the bytes in
 * place: a nested message reserves one length byte and moves its body on in the rare case it is 128
 * bytes or longer. Not re-entrant: one message at a time.
 *
 * Two modes. A scratch writer (the default) reuses its buffer from the start for every message and
 * copies each out in finish(). A framed writer (`{ framed: true }`) never reuses a byte: it writes each
 * message after the last one into a slab, behind the 5 bytes of its gRPC frame (flags 0, big-endian
 * length), and finish() returns a view of the message, no copy. A stream's queued messages then lie one
 * after the other, frames and all, and go to HTTP/2 as views of the slab (`framedRuns`, batch-writes.ts)
 * instead of being copied out, then copied again into one frame buffer. A framed writer given its slabs
 * by its caller (a follow stream's pool, follow-stream.ts) writes a slab again only when the caller
 * hands it back, once every byte written there was sent; finishFramed() tells the caller where each
 * message lies without making a view of it.
 */
const HEX = Buffer.from('0123456789abcdef', 'latin1');

export class ByteWriter {
  private buf: Buffer;
  private pos = 0;
  /** Where the current message (its frame header, when framed) starts in buf. */
  private base = 0;
  private readonly starts: number[] = [];
  private readonly framed: boolean;
  /** Where the last message finishFramed() ended lies: its slab, and its frame's first byte and end. */
  frameSlab: Buffer | undefined;
  frameStart = 0;
  frameEnd = 0;

  /** Where a framed writer's slabs come from (slabAlloc unless given: a pool that takes them back). */
  private readonly slabTake: (bytes: number) => Buffer;

  /**
   * `slabs`: a framed writer takes its slabs from here instead of allocating each (its caller then
   * knows when the writer moved on from one, frameSlab changing, and when what was written there has
   * been sent).
   */
  constructor(opts: { framed?: boolean; slabs?: (bytes: number) => Buffer } = {}) {
    this.framed = opts.framed ?? false;
    this.slabTake = opts.slabs ?? slabAlloc;
    this.buf = this.framed ? this.slabTake(SLAB_BYTES) : Buffer.allocUnsafe(16 << 10);
  }

  reset(): this {
    this.starts.length = 0;
    if (!this.framed) {
      this.pos = this.base = 0;
      return this;
    }
    // A fresh slab when this one is nearly full (a message that outgrows it moves on in room()).
    if (this.buf.length - this.pos < SLAB_MIN_FREE) {
      this.buf = this.slabTake(SLAB_BYTES);
      this.pos = 0;
    }
    this.base = this.pos;
    this.pos += FRAME_HEADER;
    return this;
  }

  /** Room for n more bytes: a bigger buffer takes the current message only (views of earlier ones keep theirs). */
  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const used = this.pos - this.base;
    const next = this.framed ? this.slabTake(Math.max(SLAB_BYTES, 2 * (used + n))) : Buffer.allocUnsafe(Math.max(this.buf.length * 2, used + n));
    this.buf.copy(next, 0, this.base, this.pos);
    for (let i = 0; i < this.starts.length; i++) this.starts[i]! -= this.base;
    this.pos = used;
    this.base = 0;
    this.buf = next;
  }

  /** An unsigned varint of a non-negative integer up to 2^53. */
  private varint(v: number): void {
    this.room(10);
    const b = this.buf;
    let p = this.pos;
    while (v > 0x7fffffff) {
      b[p++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    while (v > 0x7f) {
      b[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    b[p++] = v;
    this.pos = p;
  }

  uint32(v: number): this {
    this.varint(v >>> 0);
    return this;
  }

  /** A non-negative int32 (enum values, nanos): the encoder writes no negative one. */
  int32(v: number): this {
    if (v < 0) throw new RangeError(`ByteWriter.int32: ${v} is negative`);
    this.varint(v);
    return this;
  }

  /** A non-negative int64 given as a number (Timestamp seconds). */
  int64(v: number): this {
    if (v < 0 || !Number.isSafeInteger(v)) throw new RangeError(`ByteWriter.int64: ${v} is not a non-negative safe integer`);
    this.varint(v);
    return this;
  }

  bool(v: boolean): this {
    this.room(1);
    this.buf[this.pos++] = v ? 1 : 0;
    return this;
  }

  string(s: string): this {
    // ASCII-length strings up to 42 characters fit a one-byte length even at 3 bytes a character
    if (s.length <= 42) {
      this.room(1 + s.length * 3);
      const len = this.buf.write(s, this.pos + 1, 'utf8');
      this.buf[this.pos] = len;
      this.pos += 1 + len;
      return this;
    }
    const len = Buffer.byteLength(s);
    this.varint(len);
    this.room(len);
    this.pos += this.buf.write(s, this.pos, 'utf8');
    return this;
  }

  bytes(b: Uint8Array): this {
    this.varint(b.length);
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    return this;
  }

  /**
   * A length-delimited ASCII string: `prefix` then `value` in `digits` lowercase hex digits (a flow's
   * uuid from its sequence number, flow-uuid.ts), without making the string.
   */
  prefixedHex(prefix: Uint8Array, value: number, digits: number): this {
    const len = prefix.length + digits;
    this.varint(len);
    this.room(len);
    const b = this.buf;
    b.set(prefix, this.pos);
    let p = this.pos + len;
    for (let i = 0; i < digits; i++) {
      b[--p] = HEX[value % 16]!;
      value = Math.floor(value / 16);
    }
    this.pos += len;
    return this;
  }

  /** Starts a length-delimited part (after its tag): its length is written by ldelim(). */
  fork(): this {
    this.room(1);
    this.starts.push(this.pos);
    this.pos += 1;
    return this;
  }

  ldelim(): this {
    const start = this.starts.pop();
    if (start === undefined) throw new Error('ByteWriter.ldelim without fork');
    const len = this.pos - start - 1;
    if (len < 128) {
      this.buf[start] = len;
      return this;
    }
    let extra = 0;
    for (let v = len >>> 7; v > 0; v >>>= 7) extra++;
    this.room(extra);
    this.buf.copyWithin(start + 1 + extra, start + 1, this.pos);
    const end = this.pos + extra;
    this.pos = start;
    this.varint(len);
    this.pos = end;
    return this;
  }

  /** Bytes as they are, no length before them (a message encoded elsewhere, copied into a framed slab). */
  raw(b: Uint8Array): this {
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    return this;
  }

  /**
   * The message written since reset(): copied out (small copies come from Node's shared pool), or when
   * framed, its frame header written and a view of it returned (the slab's bytes are never written again).
   */
  finish(): Buffer {
    if (!this.framed) {
      if (this.starts.length) throw new Error('ByteWriter.finish with an open fork');
      const out = Buffer.allocUnsafe(this.pos);
      this.buf.copy(out, 0, 0, this.pos);
      return out;
    }
    const start = this.base + FRAME_HEADER;
    this.finishFramed();
    return this.buf.subarray(start, this.pos);
  }

  /**
   * Framed only: ends the message (its frame header written) without making a view of it. It lies, frame
   * header included, at `frameStart`..`frameEnd` of `frameSlab`; the next message starts right after it in
   * the same slab unless reset() or a message too big for the rest of the slab takes another.
   */
  finishFramed(): void {
    if (!this.framed) throw new Error('ByteWriter.finishFramed: not a framed writer');
    if (this.starts.length) throw new Error('ByteWriter.finish with an open fork');
    this.buf[this.base] = 0;
    this.buf.writeUInt32BE(this.pos - this.base - FRAME_HEADER, this.base + 1);
    this.frameStart = this.base;
    this.frameEnd = this.base = this.pos;
    this.frameSlab = this.buf;
  }

}

/** A gRPC message's frame header: a flags byte (0: not compressed) and the length, big-endian u32. */
export const FRAME_HEADER = 5;
export const SLAB_BYTES = 256 << 10;
/** A flow is ~0.6 KB: below this a message would likely outgrow the slab, so a new one is taken first. */
const SLAB_MIN_FREE = 4 << 10;
/** The slabs of framed writers: only their views are known to sit right behind a valid frame header. */
const framedSlabs = new WeakSet<ArrayBufferLike>();

export function slabAlloc(bytes: number): Buffer {
  // Not from Node's shared pool: the slab's ArrayBuffer must be this writer's alone.
  const b = Buffer.allocUnsafeSlow(bytes);
  framedSlabs.add(b.buffer);
  return b;
}

/**
 * Messages as the bytes of their gRPC frames, for one write each run: a run is a series of framed
 * writers' views lying one after the other in one slab, sent as one view of it (frames included, no
 * copy); any other message is framed into a buffer of its own.
 */
export function framedRuns(messages: readonly Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  let runBuf: ArrayBufferLike | undefined;
  let runStart = 0;
  let runEnd = 0;
  const flush = () => {
    if (runBuf) out.push(Buffer.from(runBuf, runStart, runEnd - runStart));
    runBuf = undefined;
  };
  for (const m of messages) {
    if (framedSlabs.has(m.buffer) && m.byteOffset >= FRAME_HEADER) {
      if (runBuf === m.buffer && m.byteOffset - FRAME_HEADER === runEnd) {
        runEnd = m.byteOffset + m.length;
        continue;
      }
      flush();
      runBuf = m.buffer;
      runStart = m.byteOffset - FRAME_HEADER;
      runEnd = m.byteOffset + m.length;
      continue;
    }
    flush();
    const f = Buffer.allocUnsafe(FRAME_HEADER + m.length);
    f[0] = 0;
    f.writeUInt32BE(m.length, 1);
    m.copy(f, FRAME_HEADER);
    out.push(f);
  }
  flush();
  return out;
}
