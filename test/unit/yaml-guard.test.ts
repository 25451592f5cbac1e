import assert from 'node:assert/strict';
import { test } from 'node:test';
import { yamlNestingProblem } from '../../common/yaml-guard.js';
import { configParse } from '../../agent/config.js';
import { policiesParse } from '../../agent/policy/index.js';

const deepBlock = (n: number) => Array.from({ length: n }, (_, i) => `${'    '.repeat(i)}- a:`).join('\n');

test('ordinary config and policies pass the nesting check', () => {
  assert.equal(yamlNestingProblem('api:\n  tcp:\n    tls:\n      cert: /c\n'), undefined);
  assert.equal(yamlNestingProblem('spec: {ingress: [{fromEndpoints: [{matchLabels: {a: b}}]}]}'), undefined);
  assert.ok(configParse({}));
});

test('deep block or flow nesting is refused before the parser can exhaust memory', () => {
  assert.match(yamlNestingProblem(deepBlock(300)) ?? '', /nested too deeply \(indentation/);
  assert.match(yamlNestingProblem(`${'['.repeat(100)}${']'.repeat(100)}`) ?? '', /open brackets/);
  assert.throws(() => policiesParse(deepBlock(600)), (e: Error) => /nested too deeply/.test(e.message));
});
