import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cidrParse } from '../../agent/ipam.js';
import { cidrContainsCidr, cidrIdentitiesAllocate, cidrPeerIdentities } from '../../agent/policy/cidr.js';
import { mulberry32 as prng } from '../helpers/random.js';

/** Prefixes clustered in a few small ranges, so containment and excepts happen often. */
function randomPrefix(r: () => number): string {
  if (r() < 0.3) return `fd00:${Math.floor(r() * 4).toString(16)}::${Math.floor(r() * 65536).toString(16)}/${96 + Math.floor(r() * 33)}`;
  const len = [0, 8, 16, 20, 24, 26, 28, 30, 32][Math.floor(r() * 9)]!;
  return `10.${Math.floor(r() * 3)}.${Math.floor(r() * 4)}.${Math.floor(r() * 256)}/${len}`;
}

test('cidrPeerIdentities (range search) selects what the definition says, on random prefix sets', () => {
  for (let seed = 1; seed <= 40; seed++) {
    const r = prng(seed);
    const named = Array.from({ length: 20 + Math.floor(r() * 200) }, () => cidrParse(randomPrefix(r))).filter((c) => c.prefixLength > 0);
    const unique = [...new Map(named.map((c) => [c.text, c])).values()];
    const ids = cidrIdentitiesAllocate(unique);
    for (let k = 0; k < 30; k++) {
      const peer = randomPrefix(r);
      const except = Array.from({ length: Math.floor(r() * 3) }, () => randomPrefix(r));
      const c = cidrParse(peer);
      const ex = except.map((e) => cidrParse(e));
      // The definition: every named prefix inside the peer and inside none of its excepts.
      const want = ids.filter((ci) => {
        const p = cidrParse(ci.cidr);
        return cidrContainsCidr(c, p) && !ex.some((e) => cidrContainsCidr(e, p));
      }).map((ci) => ci.identity);
      // Without the world identities a /0 peer adds (the next test).
      const got = cidrPeerIdentities(peer, except, ids).filter((id) => ids.some((ci) => ci.identity === id));
      assert.deepEqual([...got].sort((a, b) => a - b), [...want].sort((a, b) => a - b), `seed ${seed}: ${peer} except ${except.join(',')}`);
    }
  }
});

test('cidrPeerIdentities: a /0 adds the world identities of its family; an except of /0 removes them', () => {
  const ids = cidrIdentitiesAllocate(['10.0.0.0/8', 'fd00::/64'].map((t) => cidrParse(t)));
  const v4 = cidrPeerIdentities('0.0.0.0/0', [], ids);
  assert.equal(v4.length, 3, JSON.stringify(v4));
  assert.deepEqual(cidrPeerIdentities('0.0.0.0/0', ['0.0.0.0/0'], ids), []);
  assert.deepEqual(cidrPeerIdentities('10.1.0.0/16', [], ids), [], 'a wider named prefix is not inside a narrower peer');
});
