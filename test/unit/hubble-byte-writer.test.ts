// The flow encoder's in-place protobuf writer gives protobufjs's Writer's bytes, for random messages:
// strings of every length class (also non-ASCII), nesting with bodies past 127 and 16383 bytes,
// varints up to 2^53.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import protobuf from 'protobufjs';
import { ByteWriter } from '../../api/hubble/byte-writer.js';

test('ByteWriter writes what protobufjs.Writer writes', () => {
  let seed = 7;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 4) % n;
  const chars = ['a', 'Z', '0', '-', 'é', '→', '😀'];
  const str = () => Array.from({ length: [0, 1, 36, 42, 43, 200, 5000][rnd(7)]! }, () => chars[rnd(chars.length)]).join('');
  const mine = new ByteWriter();
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
    assert.deepEqual(mine.finish(), Buffer.from(theirs.finish()), `round ${round}`);
  }
});

test('ByteWriter refuses what the encoder never writes instead of writing it wrong', () => {
  const w = new ByteWriter();
  assert.throws(() => w.int32(-1), /negative/);
  assert.throws(() => w.int64(-1), /non-negative/);
  assert.throws(() => w.reset().ldelim(), /without fork/);
  assert.throws(() => w.reset().fork().finish(), /open fork/);
});
