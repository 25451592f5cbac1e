import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ErrorCatalogue } from '../../common/errors.js';

test('every error code is documented in docs/errors.md with its status, and no stale codes remain', () => {
  const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');
  const documented = new Map([...doc.matchAll(/^\| `(AGENT_ERR_[A-Z_]+)` \| (\d{3}) \|/gm)].map((m) => [m[1]!, Number(m[2])]));
  for (const [code, { status }] of Object.entries(ErrorCatalogue)) {
    assert.equal(documented.get(code), status, `${code} must be documented with HTTP ${status}`);
  }
  assert.deepEqual([...documented.keys()].sort(), Object.keys(ErrorCatalogue).sort());
});
