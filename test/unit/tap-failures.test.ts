import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tapFailures } from '../helpers/tap-failures.js';

// node's TAP as its runner writes it: a failed subtest, its parent's summary, a skipped test, and a
// file failed by an error outside any test.
const TAP = `TAP version 13
# Subtest: outer
    # Subtest: passes
    ok 1 - passes
      ---
      duration_ms: 1
      ...
    # Subtest: fails here
    not ok 2 - fails here
      ---
      duration_ms: 2
      error: |-
        one is not two
      ...
    # Subtest: skipped
    ok 3 - skipped # SKIP why
      ---
      duration_ms: 0
      ...
not ok 1 - outer
  ---
  error: '1 subtest failed'
  ...
# Subtest: ok one
ok 2 - ok one
  ---
  duration_ms: 1
  ...
# Error: A resource generated asynchronous activity after the test ended. This activity created the error "Error: late" which triggered an uncaughtException event, caught by the test runner.
# Subtest: /x/b.test.js
not ok 3 - /x/b.test.js
  ---
  exitCode: 1
  error: 'test failed'
  ...
1..3
`;

test("tapFailures: failed leaves with their errors and parents, not the parents' summaries; an error outside a test goes with its file", () => {
  assert.deepEqual(tapFailures(TAP), [
    { path: ['outer', 'fails here'], diagnostic: ['duration_ms: 2', 'error: |-', '  one is not two'] },
    { path: ['/x/b.test.js'], diagnostic: ['Error: A resource generated asynchronous activity after the test ended. This activity created the error "Error: late" which triggered an uncaughtException event, caught by the test runner.', 'exitCode: 1', "error: 'test failed'"] },
  ]);
  assert.deepEqual(tapFailures('TAP version 13\n# Subtest: a\nok 1 - a\n1..1\n'), []);
});
