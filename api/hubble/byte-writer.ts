/**
 * A protobuf writer into one reusable buffer, with the protobufjs Writer methods the flow encoder uses
 * (uint32, int32, int64, bool, string, bytes, fork/ldelim, finish). protobufjs's Writer records every
 * field as an operation object and copies them out in finish(): a few dozen objects per flow, which at
 * 100k+ flows/s is most of the encoder's time and the garbage collector's. This one writes the bytes in
 * place: a nested message reserves one length byte and moves its body on in the rare case it is 128
 * bytes or longer. Not re-entrant: one message at a time, copied out by finish().
 */
export class ByteWriter {
  private buf = Buffer.allocUnsafe(16 << 10);
  private pos = 0;
  private readonly starts: number[] = [];

  reset(): this {
    this.pos = 0;
    this.starts.length = 0;
    return this;
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
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

  /** The message written since reset(), copied out (small copies come from Node's shared pool). */
  finish(): Buffer {
    if (this.starts.length) throw new Error('ByteWriter.finish with an open fork');
    const out = Buffer.allocUnsafe(this.pos);
    this.buf.copy(out, 0, 0, this.pos);
    return out;
  }
}
