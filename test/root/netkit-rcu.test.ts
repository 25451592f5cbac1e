// netkit/rcu.ts against the real /sys/kernel/rcu_expedited. The knob is host-wide: the test flips it
// for a moment only and always puts the old value back. Needs root.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { RCU_EXPEDITED_PATH, rcuExpeditedGet, rcuExpeditedSet } from '../../netkit/index.js';
import { isRoot } from './netkit-helpers.js';

const skip = !isRoot && 'needs root';
const raw = (): string => readFileSync(RCU_EXPEDITED_PATH, 'utf8').trim();

test('rcu_expedited: read, set, previous value returned, restored', { skip }, (t) => {
  const original = rcuExpeditedGet();
  t.after(() => rcuExpeditedSet(original));
  assert.equal(original, raw() !== '0');
  assert.equal(rcuExpeditedSet(original), original, 'setting the current value returns it');
  assert.equal(rcuExpeditedSet(!original), original, 'the previous value comes back');
  assert.equal(raw(), original ? '0' : '1');
  assert.equal(rcuExpeditedGet(), !original);
  assert.equal(rcuExpeditedSet(original), !original);
  assert.equal(raw(), original ? '1' : '0');
});
