import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CASES, probesAll } from '../fixtures/policy/conformance-cases.js';
import { conformanceCompile, conformanceEnv, conformanceTrace } from '../fixtures/policy/conformance-env.js';

describe('policy conformance matrix (trace over compiled state)', () => {
  const env = conformanceEnv();
  const probes = probesAll();
  for (const c of CASES) {
    test(c.name, () => {
      const state = conformanceCompile(env, c.policies);
      const wrong: string[] = [];
      for (const p of probes) {
        const want = c.expected(p);
        for (const r of conformanceTrace(env, state, p)) {
          const got = r.verdict === 'ALLOWED';
          if (got !== want) {
            const why = [r.egress, r.ingress].filter(Boolean).map((s) => `${s!.direction}:${s!.reason}[${s!.rules.join('; ')}]`);
            wrong.push(`${p.from} -> ${p.to} ${p.port}/${p.protocol}: want ${want ? 'allow' : 'deny'}, got ${r.verdict} (${why.join(' ')})`);
          }
        }
      }
      assert.deepEqual(wrong, [], `${wrong.length} probes disagree:\n${wrong.slice(0, 15).join('\n')}`);
    });
  }
});
