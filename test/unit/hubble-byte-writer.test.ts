// The flow encoder's in-place protobuf writer gives protobufjs's Writer's bytes, for random messages:
// strings of every length class (also non-ASCII), nesting with bodies past 127 and 16383 bytes,
// varints up to 2^53; framed, every message stays as written behind its gRPC frame header, and runs
// of them go out as the same bytes as frames made one by one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import protobuf from 'protobufjs';
import { ByteWriter, FRAME_HEADER, framedRuns } from '../../api/hubble/byte-writer.js';

/** A message as a gRPC frame, made the plain way. */
const frameOf = (m: Uint8Array) => {
  const f = Buffer.alloc(FRAME_HEADER + m.length);
  f.writeUInt32BE(m.length, 1);
  f.set(m, FRAME_HEADER);
  return f;
};

for (const framed of [false, true]) test(`ByteWriter writes what protobufjs.Writer writes (${framed ? 'framed, into slabs' : 'scratch'})`, () => {
  let seed = 7;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 4) % n;
  const chars = ['a', 'Z', '0', '-', 'é', '→', '😀'];
  const str = () => Array.from({ length: [0, 1, 36, 42, 43, 200, 5000][rnd(7)]! }, () => chars[rnd(chars.length)]).join('');
  const mine = new ByteWriter({ framed });
  const written: Array<{ view: Buffer; want: Buffer }> = [];
  for (let round = 0; round < 300; round++) {
    const theirs = protobuf.Writer.create();
    mine.reset();
    let depth = 0;
    for (let op = 0; op < 40; op++) {
      const k = rnd(8);
      if (k === 0) {
        const v = [0, 1, 127, 128, 16383, 16384, 0xffffffff][rnd(7)]!;
        theirs.uint32(v);
        mine.uint32(v);
      } else if (k === 1) {
        const v = [0, 5, 999_999_999, 2 ** 31 - 1][rnd(4)]!;
        theirs.int32(v);
        mine.int32(v);
      } else if (k === 2) {
        const v = [0, 1_700_000_000, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER][rnd(4)]!;
        theirs.int64(v);
        mine.int64(v);
      } else if (k === 3) {
        const v = rnd(2) === 1;
        theirs.bool(v);
        mine.bool(v);
      } else if (k === 4) {
        const s = str();
        theirs.string(s);
        mine.string(s);
      } else if (k === 5) {
        const b = Buffer.from(str());
        theirs.bytes(b);
        mine.bytes(b);
      } else if (k === 6 && depth < 6) {
        theirs.fork();
        mine.fork();
        depth++;
      } else if (depth > 0) {
        theirs.ldelim();
        mine.ldelim();
        depth--;
      }
    }
    for (; depth > 0; depth--) {
      theirs.ldelim();
      mine.ldelim();
    }
    const want = Buffer.from(theirs.finish());
    const view = mine.finish();
    assert.deepEqual(view, want, `round ${round}`);
    written.push({ view, want });
  }
  if (!framed) return;
  // Nothing written later (slabs filled, messages that outgrew one) changed an earlier message.
  written.forEach(({ view, want }, i) => assert.deepEqual(view, want, `message ${i} after all were written`));
  // As frames: runs of slab views and other buffers (a message of protobufjs's, a pooled copy) between them.
  const mixed: Buffer[] = [];
  written.forEach(({ view, want }, i) => mixed.push(...(i % 7 === 3 ? [view, Buffer.from(want)] : [view])));
  const runs = framedRuns(mixed);
  assert.ok(runs.length < mixed.length / 2, `${runs.length} writes for ${mixed.length} messages: runs of the slab were not joined`);
  assert.deepEqual(Buffer.concat(runs), Buffer.concat(mixed.map(frameOf)));
});

test('prefixedHex writes the string a prefix and a zero-padded lowercase hex number make', () => {
  const prefix = Buffer.from('0a1b2c3d-0000-4abc-8def-', 'latin1');
  let seed = 11;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  const values = [0, 1, 15, 16, 255, 4096, 2 ** 32, 2 ** 48 - 1, ...Array.from({ length: 200 }, () => Math.floor(rnd() * 2 ** 48))];
  for (const framed of [false, true]) {
    const mine = new ByteWriter({ framed });
    for (const v of values) {
      const text = `${prefix.toString('latin1')}${v.toString(16).padStart(12, '0')}`;
      assert.deepEqual(mine.reset().uint32(10).prefixedHex(prefix, v, 12).finish(), Buffer.from(protobuf.Writer.create().uint32(10).string(text).finish()), `${v}`);
    }
  }
});

test('framedRuns: messages of a framed writer lie one after the other in one slab and go out as one view of it', () => {
  const w = new ByteWriter({ framed: true });
  const views = Array.from({ length: 100 }, (_, i) => w.reset().uint32(10).string(`flow ${i}`).finish());
  const runs = framedRuns(views);
  assert.equal(runs.length, 1);
  assert.equal(runs[0]!.buffer, views[0]!.buffer, 'a view of the slab, not a copy');
  assert.deepEqual(runs[0], Buffer.concat(views.map(frameOf)));
  // Out of order, they are no run: each is framed on its own, bytes still right.
  const shuffled = [views[2]!, views[0]!, views[1]!];
  assert.deepEqual(Buffer.concat(framedRuns(shuffled)), Buffer.concat(shuffled.map(frameOf)));
  // A scratch writer's output (or any buffer) is never taken for a framed one, whatever sits before it.
  // (the bytes before this one happen to be a valid header: the frame must not alias them, since their
  // owner may change them before the write goes out)
  const pool = Buffer.from([0, 0, 0, 0, 3, 1, 2, 3]);
  const [framedCopy] = framedRuns([pool.subarray(5)]);
  pool.fill(0xee, 0, 5);
  assert.deepEqual(framedCopy, frameOf(Buffer.from([1, 2, 3])), 'a frame of its own, not a view of the bytes before it');
});

test('ByteWriter refuses what the encoder never writes instead of writing it wrong', () => {
  const w = new ByteWriter();
  assert.throws(() => w.int32(-1), /negative/);
  assert.throws(() => w.int64(-1), /non-negative/);
  assert.throws(() => w.reset().ldelim(), /without fork/);
  assert.throws(() => w.reset().fork().finish(), /open fork/);
});
